r"""Training for classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021).

With the conditioning convention of :mod:`scidiff.guidance.cfg` (c = [theta, 1] conditioned,
c = 0 the null condition), one network learns both s(x, t | theta) and s(x, t) if, during
training, each sample's condition is replaced by the null condition with probability p_uncond:

* :func:`drop_condition` -- that replacement on a batch of conditions [B, P + 1];
* :func:`cfg_loss` -- a per-sample loss (``dsm_loss`` by default) with condition dropout, for
  your own loop;
* :class:`ConditionDropout` -- a network wrapper that drops conditions in training mode, so the
  standard :class:`~scidiff.training.Trainer` trains for guidance.

The guided score itself is :class:`scidiff.guidance.ClassifierFreeGuidance`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from scidiff.guidance.cfg import condition
from scidiff.training.losses import dsm_loss

__all__ = ["drop_condition", "cfg_loss", "ConditionDropout"]


def drop_condition(cond: Tensor, p_uncond: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Each row of cond [B, P + 1] replaced by the null condition (zeros) with probability p_uncond."""
    if not (0.0 <= p_uncond <= 1.0):
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    if cond.ndim != 2:
        raise ValueError(f"cond must be [B, P + 1], got shape {list(cond.shape)}")
    if p_uncond == 0.0:
        return cond
    gen_device = generator.device if generator is not None else cond.device
    keep = torch.rand(cond.shape[0], generator=generator, device=gen_device).to(cond.device) >= p_uncond
    return cond * keep[:, None].to(cond.dtype)


def cfg_loss(
    model: nn.Module,
    x0: Tensor,
    theta: Tensor,
    *,
    p_uncond: float = 0.1,
    loss: Callable[..., Tensor] | None = None,
    generator: torch.Generator | None = None,
    **loss_options: Any,
) -> Tensor:
    """Per-sample training loss [B] of a conditioned model with condition dropout.

    ``loss(model, x0, cond=drop_condition(condition(theta), p_uncond), generator=generator,
    **loss_options)``; ``loss`` defaults to ``scidiff.training.dsm_loss``.  x0 is [B, C, *spatial],
    theta [B, P].
    """
    if loss is None:
        loss = dsm_loss
    if theta.ndim == 1:
        theta = theta[:, None]
    if theta.shape[0] != x0.shape[0]:
        raise ValueError(f"theta holds {theta.shape[0]} parameter vectors for {x0.shape[0]} fields")
    cond = drop_condition(condition(theta.to(x0.dtype)), p_uncond, generator=generator)
    return loss(model, x0, cond=cond, generator=generator, **loss_options)


class ConditionDropout(nn.Module):
    """Wraps a conditioned network: in training mode each sample's condition is replaced by the
    null condition with probability ``p_uncond``; in eval mode it is the network itself.

    ``ScoreModel(ConditionDropout(net, 0.1), sde)`` trains for classifier-free guidance with
    the standard ``Trainer`` (pass ``cond = condition(theta)``).  The attributes ``channels``,
    ``dims`` and ``cond_dim`` are those of ``net``; save ``wrapper.net`` for later use.
    """

    def __init__(self, net: nn.Module, p_uncond: float = 0.1) -> None:
        super().__init__()
        if not (0.0 <= p_uncond <= 1.0):
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        self.net = net
        self.p_uncond = float(p_uncond)

    @property
    def channels(self) -> Any:
        return getattr(self.net, "channels", None)

    @property
    def dims(self) -> Any:
        arch = getattr(self.net, "arch", None)
        return getattr(self.net, "dims", getattr(arch, "dims", None))

    @property
    def cond_dim(self) -> Any:
        return getattr(self.net, "cond_dim", None)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, **kwargs: Any) -> Tensor:
        if cond is not None and self.training and self.p_uncond > 0:
            cond = drop_condition(cond, self.p_uncond)
        return self.net(x, t, cond=cond, **kwargs)
