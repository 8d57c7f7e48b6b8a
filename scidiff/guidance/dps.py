r"""Diffusion posterior sampling for y = A(x_0) + N(0, sigma_y^2 I) (Chung et al., ICLR 2023).

The likelihood of the noisy state, p(y | x_t) = int p(y | x_0) p(x_0 | x_t) dx_0, is
approximated by collapsing p(x_0 | x_t) onto Tweedie's mean

    x0-hat(x_t) = E[x_0 | x_t] = (x_t + sigma_t^2 s(x_t, t)) / alpha_t,

    log p(y | x_t) ~= log N(y; A(x0-hat(x_t)), Sigma_t),

and the guided score is s(x_t, t) + scale * grad_{x_t} log p(y | x_t), the gradient flowing
through the network (the Jacobian of x0-hat).  Two choices of Sigma_t:

* ``inflation=None`` (DPS): Sigma_t = sigma_y^2 I, Chung et al.'s Gaussian likelihood.
* ``inflation=gamma`` (score-based data assimilation, Rozet & Louppe, NeurIPS 2023):
  Sigma_t = sigma_y^2 I + gamma (sigma_t^2 / alpha_t^2) A A^T, which accounts for the
  spread of p(x_0 | x_t), Cov[x_0 | x_t] ~= gamma sigma_t^2 / alpha_t^2 I, and keeps the
  guidance from over-committing at high noise.  A A^T is used exactly where the operator
  reports it: diagonal for :class:`~scidiff.guidance.operators.SparseSensors` / ``Mask`` /
  ``Subsample`` (ones) and ``CoarseGrain`` (f^-d), dense for ``MatrixOperator``.  For other
  operators (nonlinear ``Lambda``) A A^T is replaced by the identity, i.e.
  Sigma_t = sigma_y^2 I + gamma sigma_t^2 / alpha_t^2 I, as Rozet & Louppe do for general A
  (pass ``Lambda(fn, aat_diag=...)`` to use a known diagonal instead).

Chung et al.'s experiments use, in place of ``scale`` times the Gaussian likelihood, a step
zeta / ||y - A(x0-hat)|| on grad ||y - A(x0-hat)||^2 that is not a score; here the Gaussian
likelihood with a constant ``scale`` is kept, so that the guided callable is a score and works
with every sampler.  ``scale = 1`` is the Bayes-rule weight of the approximate likelihood.

Cost per evaluation: one score forward with graph and one backward -- the same forward gives
the prior score and x0-hat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scidiff.guidance.base import GuidedScore, ScoreFn
from scidiff.guidance.operators import Lambda, Operator
from scidiff.parameterisation import x0_hat
from scidiff.sde import VPSDE

__all__ = ["DPSGuidance"]

_LOG_2PI = math.log(2.0 * math.pi)


class DPSGuidance(GuidedScore):
    r"""The DPS (optionally variance-inflated) posterior score for y = A(x_0) + N(0, noise_std^2 I).

    Args:
        score: prior score s(x, t) -> [B, *event].
        sde: its VP-SDE.
        operator: an :class:`~scidiff.guidance.operators.Operator` or any differentiable callable
            A(x) [B, *event] -> [B, *obs].
        y: the observations, [*obs] (one observation shared by the batch of posterior
            samples) or [B, *obs] (one per sample; B may also be 1); finite.
        noise_std: sigma_y > 0, a number or a tensor broadcastable to [*obs] (units of y).
        scale: guidance weight on log p(y | x_t).
        inflation: None (plain DPS) or gamma > 0 for Sigma_t = sigma_y^2 I + gamma sigma_t^2 / alpha_t^2 A A^T.
        event_shape: the field shape [*event], to check y against operator(x) now rather than
            at the first call (operators like ``SparseSensors`` know it already).

    Call: ``guided(x, t)`` with x [B, *event], t [B]; returns a tensor like x with no graph.
    """

    def __init__(
        self,
        score: ScoreFn,
        sde: VPSDE,
        operator: Operator | Callable[[Tensor], Tensor],
        y: Tensor,
        noise_std: float | Tensor,
        scale: float = 1.0,
        *,
        inflation: float | None = None,
        event_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(score, sde, scale=scale)
        if not isinstance(operator, Operator):
            if not callable(operator):
                raise TypeError(f"operator must be a scidiff.guidance.operators.Operator or a callable, got {type(operator).__name__}")
            operator = Lambda(operator)
        self.operator: Operator = operator
        if not isinstance(y, Tensor) or not torch.is_floating_point(y):
            raise TypeError(f"y must be a floating-point tensor, got {type(y).__name__ if not isinstance(y, Tensor) else y.dtype}")
        if y.ndim == 0:
            raise ValueError("y must have at least one dimension ([*obs] or [B, *obs]), got a 0-d tensor")
        n_bad = int((~torch.isfinite(y)).sum())
        if n_bad:
            raise ValueError(f"y contains {n_bad} NaN or infinite values (of {y.numel()}); remove or mask them in the operator")
        with torch.inference_mode(False):
            self.y = y.detach().clone()
        self.noise_std = _check_noise_std(noise_std)
        if inflation is not None:
            if isinstance(inflation, bool) or not isinstance(inflation, (int, float)) or not (
                math.isfinite(inflation) and inflation > 0
            ):
                raise ValueError(f"inflation must be None or a positive number gamma, got {inflation!r}")
            inflation = float(inflation)
        self.inflation = inflation
        shape = event_shape if event_shape is not None else operator.event_shape
        self.event_shape = None if shape is None else tuple(int(n) for n in shape)
        self.obs_shape: tuple[int, ...] | None = None
        if self.event_shape is not None:
            with torch.inference_mode(False), torch.no_grad():
                dummy = torch.zeros((1, *self.event_shape), dtype=self.y.dtype, device=self.y.device)
                self._set_obs_shape(tuple(self.operator(dummy).shape[1:]))

    # ---- shapes --------------------------------------------------------------------
    def _set_obs_shape(self, obs: tuple[int, ...]) -> None:
        """Check y ([*obs] or [B, *obs]) and noise_std (broadcastable to [*obs]) against obs."""
        if tuple(self.y.shape) != obs and tuple(self.y.shape[1:]) != obs:
            raise ValueError(
                f"y has shape {list(self.y.shape)} but operator(x) gives observations of shape {list(obs)} per "
                f"field; pass y as [{', '.join(map(str, obs))}] or [B, {', '.join(map(str, obs))}]"
            )
        if isinstance(self.noise_std, Tensor):
            try:
                torch.broadcast_shapes(self.noise_std.shape, obs)
            except RuntimeError:
                raise ValueError(
                    f"noise_std of shape {list(self.noise_std.shape)} does not broadcast to observations {list(obs)}"
                ) from None
            if len(torch.broadcast_shapes(self.noise_std.shape, obs)) != len(obs):
                raise ValueError(f"noise_std of shape {list(self.noise_std.shape)} has more axes than observations {list(obs)}")
        self.obs_shape = obs

    def _batched_y(self, a_x: Tensor) -> Tensor:
        """y as [B or 1, *obs] matching A(x0-hat) [B, *obs]."""
        obs = tuple(a_x.shape[1:])
        if self.obs_shape is None:
            self._set_obs_shape(obs)
        elif obs != self.obs_shape:
            raise ValueError(f"operator(x) gave observations of shape {list(obs)}, expected {list(self.obs_shape)}")
        y = self.y[None] if tuple(self.y.shape) == obs else self.y
        if y.shape[0] not in (1, a_x.shape[0]):
            raise ValueError(
                f"y holds {y.shape[0]} observations but the batch has {a_x.shape[0]} fields; pass one y per "
                f"field or one shared y of shape {list(obs)}"
            )
        return y.to(dtype=a_x.dtype, device=a_x.device)

    # ---- the likelihood ------------------------------------------------------------
    def denoise(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(s(x, t), x0-hat = (x + sigma_t^2 s) / alpha_t), both [B, *event], with graph if x requires grad."""
        s = self.score(x, t)
        alpha, sigma = self._alpha_sigma(t, x)
        return s, x0_hat(x, s, alpha, sigma)

    def observation_variance(self, t: Tensor, like: Tensor) -> tuple[Tensor, bool]:
        """(Sigma_t, dense): Sigma_t is [B or 1, *obs] (its diagonal) when ``dense`` is False, else
        the full matrices [B, M, M] (M = prod(obs)); ``like`` is A(x0-hat) [B, *obs]."""
        std = self.noise_std
        if not isinstance(std, Tensor):
            std = torch.tensor(std, dtype=like.dtype, device=like.device)
        var = torch.broadcast_to(std.to(dtype=like.dtype, device=like.device) ** 2, like.shape[1:])[None]
        if self.inflation is None:
            return var, False
        alpha, sigma = self._alpha_sigma(t, like)  # [B, 1, ...]
        ratio = self.inflation * (sigma / alpha) ** 2
        diag = self.operator.aat_diag(like)
        if diag is not None:
            return var + ratio * diag[None], False
        dense = self.operator.aat_dense(like)
        if dense is not None:
            return torch.diag_embed(var.flatten(1)) + ratio.flatten(1)[:, :, None] * dense[None], True
        return var + ratio, False  # A A^T ~= I for operators that do not report it (module docstring)

    def _score_and_log_p(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        s, x0_hat = self.denoise(x, t)
        a_x = self.operator(x0_hat)
        y = self._batched_y(a_x)
        r = (y - a_x).flatten(1)  # [B, M]
        cov, dense = self.observation_variance(t, a_x)
        m = r.shape[1]
        if dense:
            chol = torch.linalg.cholesky(cov)
            z = torch.linalg.solve_triangular(chol, r[..., None], upper=False)[..., 0]
            logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            log_p = -0.5 * (z.pow(2).sum(1) + logdet + m * _LOG_2PI)
        else:
            v = cov.flatten(1).expand(r.shape[0], m)
            log_p = -0.5 * (r.pow(2) / v + torch.log(v) + _LOG_2PI).sum(1)
        return s, log_p

    def __repr__(self) -> str:
        return (
            f"DPSGuidance(operator={self.operator!r}, y of shape {list(self.y.shape)}, "
            f"noise_std={self.noise_std if not isinstance(self.noise_std, Tensor) else 'tensor'}, "
            f"scale={self.scale}, inflation={self.inflation})"
        )


def _check_noise_std(noise_std: float | Tensor) -> float | Tensor:
    """A positive finite number, or a tensor of them (ValueError naming the bad value otherwise)."""
    if isinstance(noise_std, Tensor):
        if not torch.is_floating_point(noise_std):
            raise TypeError(f"noise_std must be a number or a floating-point tensor, got dtype {noise_std.dtype}")
        if not bool((torch.isfinite(noise_std) & (noise_std > 0)).all()):
            raise ValueError(
                f"noise_std must be positive and finite everywhere, got min {float(noise_std.min())}; "
                "a noise-free observation needs a small positive noise_std"
            )
        with torch.inference_mode(False):
            return noise_std.detach().clone()
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)):
        raise TypeError(f"noise_std must be a positive number or tensor, got {type(noise_std).__name__}")
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(
            f"noise_std must be a positive finite number, got {noise_std!r}; a noise-free observation needs a "
            "small positive noise_std"
        )
    return float(noise_std)
