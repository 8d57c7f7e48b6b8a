r"""The variance-preserving SDE and its reverse-time forms (Song et al., ICLR 2021).

Forward process, t in [0, 1]:

    dx = f(x, t) dt + g(t) dw,      f(x, t) = -beta(t) x / 2,   g(t) = sqrt(beta(t)),

with Gaussian marginals q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I) and prior
p_1 ~= N(0, I).  Given a score s(x, t) ~= grad_x log p_t(x):

    reverse SDE:           dx = [f - g^2 s] dt + g dw-bar = [-beta x / 2 - beta s] dt + sqrt(beta) dw-bar
    probability-flow ODE:  dx/dt = f - g^2 s / 2 = -beta (x + s) / 2

Shapes: ``x`` is [B, *event]; ``t`` is [B] (or a 0-d tensor, broadcast over the batch).
All quantities are returned in the dtype and on the device of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from scidiff.schedules import Coefficients, CosineSchedule, LinearSchedule, VPSchedule, check_time, schedule_from_dict

__all__ = ["VPSDE", "expand_like"]


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample vector ``v`` [B] (or a scalar) to broadcast against ``x`` [B, *event].

    The result has the dtype and device of ``x``.
    """
    v = v.to(dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"time/coefficient vector of shape {list(v.shape)} does not match a batch of {x.shape[0]} "
            f"samples (x has shape {list(x.shape)}); pass t with shape [{x.shape[0]}]"
        )
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


class VPSDE:
    r"""The variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw on t in [0, 1].

    ``VPSDE(beta_min, beta_max)`` is the linear schedule beta(t) = beta_min + t (beta_max -
    beta_min); ``VPSDE.cosine()`` the (truncated) cosine schedule; ``VPSDE(schedule=...)``
    any :class:`~scidiff.schedules.VPSchedule`.

    Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative
    Modeling through Stochastic Differential Equations", ICLR 2021.
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        *,
        schedule: VPSchedule | None = None,
    ) -> None:
        self.schedule: VPSchedule = schedule if schedule is not None else LinearSchedule(beta_min, beta_max)

    @classmethod
    def cosine(cls, s: float = 0.008, log_snr_min: float = -10.0) -> "VPSDE":
        """The VP-SDE with the cosine schedule of Nichol & Dhariwal (2021); see :class:`CosineSchedule`."""
        return cls(schedule=CosineSchedule(s=s, log_snr_min=log_snr_min))

    # ---- the schedule, validated ----------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t), the signal scale of q(x_t | x_0); same shape and dtype as ``t``."""
        check_time(t)
        return self.schedule.alpha(t)

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) = sqrt(1 - alpha(t)^2), the noise scale of q(x_t | x_0)."""
        check_time(t)
        return self.schedule.sigma(t)

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = -2 d log alpha / dt = g(t)^2."""
        check_time(t)
        return self.schedule.beta(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha(t)^2 / sigma(t)^2)."""
        check_time(t)
        return self.schedule.log_snr(t)

    def coefficients(self, t: Tensor | float) -> Coefficients:
        """alpha, sigma, log-SNR and beta at ``t`` in float64, shaped like ``t``; see
        :meth:`VPSchedule.coefficients` (``.like(x)`` broadcasts them against a batch).
        No validation: it is meant for use inside loops."""
        return self.schedule.coefficients(t)

    # ---- coefficients broadcast against x (no validation: used inside loops) ------
    def _coef(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha_t, sigma_t, beta_t) computed in float64 and broadcast against ``x``
        (kept for older callers; new code uses ``coefficients(t).like(x)``)."""
        c = self.schedule.coefficients(t)
        return expand_like(c.alpha, x), expand_like(c.sigma, x), expand_like(c.beta, x)

    def _sigma_like(self, t: Tensor, x: Tensor) -> Tensor:
        """sigma(t) = sqrt(-expm1(2 log alpha(t))) in float64, cast and broadcast against ``x``
        (the one coefficient the score needs: 4 fewer kernels than :meth:`_coef`)."""
        return expand_like(torch.sqrt(-torch.expm1(2.0 * self.schedule._log_alpha(t.double()))), x)

    # ---- the forward process ---------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t) = -beta(t) x / 2; shape of ``x``."""
        beta = expand_like(self.schedule._beta(t.double()), x)
        return -0.5 * beta * x

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) = sqrt(beta(t)); shape and dtype of ``t``."""
        return torch.sqrt(self.schedule.beta(t))

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean alpha(t) x_0 [B, *event] and std sigma(t) [B, 1, ...] of q(x_t | x_0)."""
        check_time(t)
        c = self.coefficients(t).like(x0)
        return c.alpha * x0, c.sigma

    def perturb(
        self,
        x0: Tensor,
        t: Tensor,
        *,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw x_t = alpha(t) x_0 + sigma(t) eps from q(x_t | x_0); returns (x_t, eps)."""
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif eps.shape != x0.shape:
            raise ValueError(f"eps has shape {list(eps.shape)} but x0 has shape {list(x0.shape)}")
        c = self.coefficients(t).like(x0)
        return c.alpha * x0 + c.sigma * eps, eps

    # ---- the prior -------------------------------------------------------------------
    def prior_sample(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_1 ~ N(0, I) of the given shape [B, *event]."""
        if generator is not None and device is None:
            device = generator.device
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, I) summed over non-batch dimensions: -|x|^2 / 2 - D log(2 pi) / 2; shape [B]."""
        d = x[0].numel()
        return -0.5 * x.flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2.0 * math.pi)

    # ---- reverse-time dynamics for a given score value -------------------------------
    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse SDE, f - g^2 s = -beta (x / 2 + s); shape of ``x``."""
        beta = expand_like(self.schedule._beta(t.double()), x)
        return -beta * (0.5 * x + score)

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE, f - g^2 s / 2 = -beta (x + s) / 2; shape of ``x``."""
        beta = expand_like(self.schedule._beta(t.double()), x)
        return -0.5 * beta * (x + score)

    # ---- saving ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable description; :meth:`from_dict` rebuilds the SDE."""
        return {"schedule": self.schedule.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "VPSDE":
        """Rebuild an SDE from :meth:`to_dict`."""
        return cls(schedule=schedule_from_dict(d["schedule"]))  # type: ignore[arg-type]

    @property
    def beta_min(self) -> float:
        """beta(0)."""
        return float(self.schedule._beta(torch.zeros((), dtype=torch.float64)))

    @property
    def beta_max(self) -> float:
        """beta(1)."""
        return float(self.schedule._beta(torch.ones((), dtype=torch.float64)))

    def __repr__(self) -> str:
        return f"VPSDE({self.schedule!r})"
