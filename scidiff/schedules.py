r"""Noise schedules of variance-preserving (VP) diffusions in continuous time.

A VP schedule gives, for t in [0, 1] (data at t = 0, noise at t = 1),

    x_t = alpha(t) x_0 + sigma(t) eps,   alpha(t)^2 + sigma(t)^2 = 1,   eps ~ N(0, I),

and the rate beta(t) = -2 d log alpha(t) / dt of the VP-SDE (Song et al., 2021)

    dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw.

The log signal-to-noise ratio is lambda(t) = log(alpha^2 / sigma^2); it decreases
monotonically from +inf at t = 0 and every schedule can be inverted, t = t(lambda).

All time quantities are computed in float64 (whatever the dtype of ``t``) with
``expm1``/``log1p`` where cancellation would otherwise lose digits, and returned in
the dtype of ``t``.  Callers that mix dtypes should cast the result themselves.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VPSchedule", "LinearSchedule", "CosineSchedule", "Coefficients", "check_time"]


def check_time(t: Tensor, *, name: str = "t") -> None:
    """Raise a ValueError if any entry of ``t`` lies outside [0, 1] or is not finite.

    This synchronises with the device; call it at the edge (public entry points),
    never inside an integration loop.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    bad = ~torch.isfinite(t) | (t < 0) | (t > 1)
    if bool(bad.any()):
        values = t[bad].flatten()[:5].tolist()
        raise ValueError(
            f"{name} must lie in [0, 1] (data at 0, noise at 1); got {values}"
            + (" ..." if int(bad.sum()) > 5 else "")
        )


@dataclass(frozen=True)
class Coefficients:
    r"""The four coefficients of a VP schedule at times t, all float64 and shaped like t.

    alpha = alpha(t), sigma = sqrt(1 - alpha^2), log_snr = log(alpha^2 / sigma^2) and
    beta = -2 d log alpha / dt.  Built by :meth:`VPSchedule.coefficients`; :meth:`like`
    reshapes them to broadcast against a batch of fields.
    """

    alpha: Tensor
    sigma: Tensor
    log_snr: Tensor
    beta: Tensor

    def like(self, x: Tensor) -> "Coefficients":
        """The same coefficients reshaped to [B, 1, ..., 1] against ``x`` [B, *event], in x's dtype
        and on x's device (a 0-d or one-element t is broadcast over the batch)."""
        batch = x.shape[0]
        shape = (batch, *([1] * (x.ndim - 1)))

        def fit(v: Tensor) -> Tensor:
            if v.ndim == 0 or v.shape == (1,):
                v = v.reshape(1).expand(batch)
            elif v.shape != (batch,):
                raise ValueError(
                    f"coefficients of shape {list(v.shape)} do not match a batch of {batch} samples "
                    f"(x has shape {list(x.shape)}); pass t with shape [{batch}] or a scalar"
                )
            return v.to(dtype=x.dtype, device=x.device).reshape(shape)

        return Coefficients(fit(self.alpha), fit(self.sigma), fit(self.log_snr), fit(self.beta))


class VPSchedule(ABC):
    """A variance-preserving schedule, defined by log alpha(t) and its rate beta(t).

    Subclasses implement :meth:`log_alpha`, :meth:`beta` and :meth:`t_of_log_snr` on
    float64 tensors; the public methods handle dtype conversion.
    """

    # ---- to implement, on float64 tensors -------------------------------------------
    @abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t), float64."""

    @abstractmethod
    def _beta(self, t: Tensor) -> Tensor:
        """beta(t) = -2 d log alpha / dt, float64."""

    @abstractmethod
    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        """The inverse of lambda(t), float64."""

    # ---- public, dtype-preserving --------------------------------------------------
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t); shape and dtype of ``t``."""
        return self._log_alpha(t.double()).to(t.dtype)

    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t) = exp(log alpha(t)); shape and dtype of ``t``."""
        return self._log_alpha(t.double()).exp().to(t.dtype)

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) = sqrt(1 - alpha(t)^2) = sqrt(-expm1(2 log alpha)); shape and dtype of ``t``."""
        return self._sigma64(t.double()).to(t.dtype)

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = -2 d log alpha(t) / dt; shape and dtype of ``t``."""
        return self._beta(t.double()).to(t.dtype)

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2) = 2 log alpha - log(-expm1(2 log alpha))."""
        return self._log_snr64(t.double()).to(t.dtype)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """The time t at which lambda(t) = ``lam``; shape and dtype of ``lam``."""
        return self._t_of_log_snr(lam.double()).clamp(0.0, 1.0).to(lam.dtype)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """The time t at which sigma(t) = ``sigma`` (in (0, 1)), through
        lambda = log(1 - sigma^2) - 2 log sigma; shape and dtype of ``sigma``."""
        s64 = sigma.double()
        lam = torch.log1p(-(s64**2)) - 2.0 * torch.log(s64)
        return self._t_of_log_snr(lam).clamp(0.0, 1.0).to(sigma.dtype)

    def coefficients(self, t: Tensor | float) -> Coefficients:
        """alpha, sigma, log-SNR and beta at ``t``, in float64, shaped like ``t`` and on its device.

        One evaluation of log alpha serves all four: sigma = sqrt(-expm1(2 log alpha)),
        lambda = 2 log alpha - log(-expm1(2 log alpha)).  No validation (it is called inside
        sampling loops); :func:`check_time` is the check at the edge.
        """
        t64 = t.double() if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
        two_log_alpha = 2.0 * self._log_alpha(t64)
        sigma2 = -torch.expm1(two_log_alpha)
        return Coefficients(
            alpha=torch.exp(0.5 * two_log_alpha),
            sigma=torch.sqrt(sigma2),
            log_snr=two_log_alpha - torch.log(sigma2),
            beta=self._beta(t64),
        )

    # ---- float64 helpers shared by the samplers ------------------------------------
    def _sigma64(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def _log_snr64(self, t: Tensor) -> Tensor:
        two_log_alpha = 2.0 * self._log_alpha(t)
        return two_log_alpha - torch.log(-torch.expm1(two_log_alpha))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    @abstractmethod
    def _params(self) -> dict[str, float]:
        """The constructor's arguments (for repr and saving)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable description, inverse of :func:`schedule_from_dict`."""
        return {"type": type(self).__name__, **self._params()}


def _log_sigmoid_neg_softplus(lam: Tensor) -> Tensor:
    """-log sigmoid(lam) = softplus(-lam), i.e. -2 log alpha at log-SNR ``lam``."""
    return torch.nn.functional.softplus(-lam)


class LinearSchedule(VPSchedule):
    r"""The linear VP schedule of Song et al. (2021), the continuous limit of Ho et al.'s DDPM.

    beta(t) = beta_min + t (beta_max - beta_min),
    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2.

    Args:
        beta_min: beta(0) > 0.
        beta_max: beta(1) >= beta_min.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min, beta_max = float(beta_min), float(beta_max)
        if not (math.isfinite(beta_min) and beta_min > 0):
            raise ValueError(f"beta_min must be a positive number, got {beta_min}")
        if not (math.isfinite(beta_max) and beta_max >= beta_min):
            raise ValueError(f"beta_max must be >= beta_min = {beta_min}, got {beta_max}")
        self.beta_min = beta_min
        self.beta_max = beta_max

    def _params(self) -> dict[str, float]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def _log_alpha(self, t: Tensor) -> Tensor:
        delta = self.beta_max - self.beta_min
        return -0.25 * delta * t**2 - 0.5 * self.beta_min * t

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        # c = -2 log alpha = t^2 delta / 2 + t beta_min; the positive root, written
        # as 2c / (beta_min + sqrt(beta_min^2 + 2 delta c)) so that delta = 0 works.
        c = _log_sigmoid_neg_softplus(lam)
        delta = self.beta_max - self.beta_min
        return 2.0 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * delta * c))


class CosineSchedule(VPSchedule):
    r"""The cosine schedule of Nichol & Dhariwal (2021), truncated to a finite final log-SNR.

    alpha(t)^2 = cos^2(phi(t)) / cos^2(phi_0),   phi(t) = phi_0 + t (phi_1 - phi_0),

    with phi_0 = (pi / 2) s / (1 + s) as in the paper, and phi_1 < pi / 2 chosen so that
    lambda(1) = ``log_snr_min``.  The paper's alpha^2 reaches 0 at t = 1, where beta is
    infinite; the truncation keeps beta(t) = 2 (phi_1 - phi_0) tan(phi(t)) finite (about
    470 at t = 1 for the default), so every sampler can start at t = 1.  The default
    log_snr_min = -10 matches the end of the linear schedule (beta_max = 20), where the
    N(0, I) prior is off from p_1 by alpha(1)^2 = 4.5e-5 in variance.

    Args:
        s: the offset that keeps beta small near t = 0 (paper: 0.008).
        log_snr_min: lambda(1).
    """

    def __init__(self, s: float = 0.008, log_snr_min: float = -10.0) -> None:
        s, log_snr_min = float(s), float(log_snr_min)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"s must be a positive number, got {s}")
        if not (math.isfinite(log_snr_min) and -30.0 <= log_snr_min <= 0.0):
            raise ValueError(f"log_snr_min must lie in [-30, 0], got {log_snr_min}")
        self.s = s
        self.log_snr_min = log_snr_min
        self._phi0 = 0.5 * math.pi * s / (1.0 + s)
        self._phi1 = float(self._phi_of_log_snr(torch.tensor(log_snr_min, dtype=torch.float64)))

    def _params(self) -> dict[str, float]:
        return {"s": self.s, "log_snr_min": self.log_snr_min}

    def _phi_of_log_snr(self, lam: Tensor) -> Tensor:
        # cos^2 phi = cos^2 phi_0 sigmoid(lam);  sin^2 phi = sin^2 phi_0 + cos^2 phi_0 sigmoid(-lam)
        c0sq = math.cos(self._phi0) ** 2
        s0sq = math.sin(self._phi0) ** 2
        cos_sq = c0sq * torch.sigmoid(lam)
        sin_sq = s0sq + c0sq * torch.sigmoid(-lam)
        return torch.atan2(torch.sqrt(sin_sq), torch.sqrt(cos_sq))

    def _log_alpha(self, t: Tensor) -> Tensor:
        # log(cos(phi_0 + d) / cos(phi_0)) = log1p(-2 sin^2(d/2) - tan(phi_0) sin(d)), stable for small d
        d = t * (self._phi1 - self._phi0)
        ratio_m1 = -2.0 * torch.sin(0.5 * d) ** 2 - math.tan(self._phi0) * torch.sin(d)
        return torch.log1p(ratio_m1)

    def _beta(self, t: Tensor) -> Tensor:
        phi = self._phi0 + t * (self._phi1 - self._phi0)
        return 2.0 * (self._phi1 - self._phi0) * torch.tan(phi)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (self._phi_of_log_snr(lam) - self._phi0) / (self._phi1 - self._phi0)


def schedule_from_dict(d: dict[str, object]) -> VPSchedule:
    """Rebuild a schedule from :meth:`VPSchedule.to_dict`."""
    kinds: dict[str, type[VPSchedule]] = {"LinearSchedule": LinearSchedule, "CosineSchedule": CosineSchedule}
    d = dict(d)
    name = d.pop("type", None)
    if name not in kinds:
        raise ValueError(f"unknown schedule type {name!r}; expected one of {sorted(kinds)}")
    return kinds[str(name)](**d)  # type: ignore[arg-type]
