r"""Parameter-conditioned models: emulating a simulator at given parameters theta, with optional
classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021).

Conditioning convention.  A network built with ``cond_dim = P + 1`` receives

    c = [theta_1, ..., theta_P, 1]      (conditioned on theta)
    c = [0, ..., 0, 0]                  (the null condition: unconditional)

so one network learns both s(x, t | theta) and s(x, t): the last entry is the "is
conditioned" flag, which keeps theta = 0 distinguishable from "no theta".  Build conditions
with :func:`condition` and :func:`null_condition`.

Training for classifier-free guidance replaces the condition of each sample by the null
condition with probability p_uncond: :func:`scidiff.training.drop_condition`,
:func:`scidiff.training.cfg_loss` and :class:`scidiff.training.ConditionDropout` (training
sits above guidance in the layers, so those live with the training loop).

Sampling: :class:`ClassifierFreeGuidance` is the score

    s_w(x, t | theta) = (1 + w) s(x, t | theta) - w s(x, t),

w = 0 being the plain conditional score (the emulator of p(x | theta)) and w > 0 sharpening
toward theta; the two evaluations share one batched network forward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scidiff.models import ScoreModel
from scidiff.parameterisation import batch_time

__all__ = [
    "condition",
    "null_condition",
    "ClassifierFreeGuidance",
    "conditional_score",
]


def condition(theta: Tensor) -> Tensor:
    """[theta, 1]: theta [B, P] -> [B, P + 1] (or [P] -> [P + 1]); the last entry flags "conditioned"."""
    theta = torch.as_tensor(theta)
    if not torch.is_floating_point(theta):
        theta = theta.to(torch.get_default_dtype())
    if theta.ndim not in (1, 2):
        raise ValueError(f"theta must be [P] or [B, P], got shape {list(theta.shape)}")
    if not bool(torch.isfinite(theta).all()):
        raise ValueError("theta contains NaN or inf")
    return torch.cat([theta, torch.ones_like(theta[..., :1])], dim=-1)


def null_condition(
    batch: int, num_params: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """The null (unconditional) condition, zeros [batch, num_params + 1]."""
    return torch.zeros(batch, num_params + 1, dtype=dtype, device=device)


def _cond_dim(model: ScoreModel) -> int:
    net = model.net
    cond_dim = getattr(net, "cond_dim", None)
    if not isinstance(cond_dim, int) or cond_dim < 2:
        raise ValueError(
            f"the model's network must be conditioned with cond_dim = P + 1 >= 2 (parameters plus the flag), "
            f"got cond_dim={cond_dim!r}"
        )
    return cond_dim


class ClassifierFreeGuidance:
    r"""The score s_w(x, t | theta) = (1 + w) s(x, t | theta) - w s(x, t) of a conditioned model.

    Args:
        model: a :class:`~scidiff.models.ScoreModel` whose network has ``cond_dim = P + 1`` and
            was trained with the convention of this module.
        theta: the simulator parameters, [P] (shared by the batch) or [B, P] (one per sample).
        scale: w >= 0 (or > -1); 0 is the conditional score itself (one forward per call), w > 0
            costs one forward on a doubled batch.

    Call: ``score(x, t)`` with x [B, *event], t [B]; returns a tensor like x.
    """

    def __init__(self, model: ScoreModel, theta: Tensor, scale: float = 0.0) -> None:
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a scidiff.ScoreModel, got {type(model).__name__}")
        cond_dim = _cond_dim(model)
        theta = torch.as_tensor(theta)
        if theta.ndim == 0:
            theta = theta[None]
        if theta.shape[-1] != cond_dim - 1 or theta.ndim > 2:
            raise ValueError(
                f"theta must be [{cond_dim - 1}] or [B, {cond_dim - 1}] for a network with cond_dim={cond_dim} "
                f"(P parameters + the flag), got shape {list(theta.shape)}"
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > -1):
            raise ValueError(f"scale must be a finite number > -1, got {scale!r}")
        self.model = model
        self.cond = condition(theta)
        self.scale = float(scale)

    def _cond(self, x: Tensor) -> Tensor:
        c = self.cond.to(dtype=x.dtype, device=x.device)
        if c.ndim == 1:
            return c[None].expand(x.shape[0], -1)
        if c.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"theta holds {c.shape[0]} parameter vectors but the batch has {x.shape[0]} fields")
        return c.expand(x.shape[0], -1)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        cond = self._cond(x)
        if self.scale == 0.0:
            return self.model.score(x, t, cond)
        t_vec = batch_time(t, x)
        both = self.model.score(
            torch.cat([x, x]), torch.cat([t_vec, t_vec]), torch.cat([cond, torch.zeros_like(cond)])
        )
        s_cond, s_uncond = both.chunk(2)
        return (1.0 + self.scale) * s_cond - self.scale * s_uncond

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(theta of shape {list(self.cond.shape[:-1])} + flag, scale={self.scale})"


def conditional_score(model: ScoreModel, theta: Tensor) -> ClassifierFreeGuidance:
    """s(x, t | theta), the emulator's score at parameters theta (classifier-free scale 0)."""
    return ClassifierFreeGuidance(model, theta, 0.0)
