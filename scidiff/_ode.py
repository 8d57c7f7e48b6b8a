r"""The probability-flow ODE in a choice of time variable, shared by sampling and likelihood.

In time t the PF-ODE of a VP process is dx/dt = -beta(t) (x + s(x, t)) / 2.  It is stiff near
t = 0: the score grows like 1/sigma(t) and sigma(1e-5) ~ 1e-3.  In the log-SNR
lambda = log(alpha^2 / sigma^2), using d log alpha^2 / d lambda = sigma^2,

    dx/dlambda = sigma^2(lambda) (x + s(x, t(lambda))) / 2,   sigma^2(lambda) = sigmoid(-lambda),

whose right-hand side stays O(sigma) as lambda -> +inf.  Measured (docs/samplers.md,
benchmarks/results): on near-degenerate spectra the log-SNR needs fewer evaluations at loose
tolerances, but on Gaussian mixtures and a trained Gaussian-random-field model t needs as few
or fewer at equal accuracy, so t is the likelihood's default and log-SNR the ODE sampler's.
Both forms are ``dx/du = c(u) (x + s)`` with a scalar
c(u): -beta(t)/2 for u = t and sigma^2/2 for u = lambda.  The divergence of the right-hand
side is therefore c(u) (D + div s), which the likelihood uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from scidiff.schedules import VPSchedule

__all__ = [
    "TimeVariable",
    "TimeT",
    "TimeLogSNR",
    "TimeSigma",
    "time_variable",
    "TimeVariableName",
    "ODESolve",
    "NFECounter",
    "PFODEDrift",
]

TimeVariableName = Literal["t", "logsnr", "sigma"]


class TimeVariable(ABC):
    """A monotone reparametrisation u(t) of the PF-ODE's time; all maps in float64."""

    name: str

    def __init__(self, schedule: VPSchedule) -> None:
        self.schedule = schedule

    @abstractmethod
    def u_of_t(self, t: Tensor) -> Tensor:
        """u(t)."""

    @abstractmethod
    def t_of_u(self, u: Tensor) -> Tensor:
        """t(u), clamped to [0, 1]."""

    @abstractmethod
    def coefficient(self, u: Tensor, t: Tensor) -> Tensor:
        """c(u) in dx/du = c(u) (x + s(x, t(u)))."""


class TimeT(TimeVariable):
    """u = t: dx/dt = -beta(t) (x + s) / 2."""

    name = "t"

    def u_of_t(self, t: Tensor) -> Tensor:
        return t

    def t_of_u(self, u: Tensor) -> Tensor:
        return u.clamp(0.0, 1.0)

    def coefficient(self, u: Tensor, t: Tensor) -> Tensor:
        return -0.5 * self.schedule.coefficients(t).beta


class TimeLogSNR(TimeVariable):
    """u = lambda = log(alpha^2/sigma^2): dx/dlambda = sigmoid(-lambda) (x + s) / 2."""

    name = "logsnr"

    def u_of_t(self, t: Tensor) -> Tensor:
        return self.schedule.coefficients(t).log_snr

    def t_of_u(self, u: Tensor) -> Tensor:
        return self.schedule.t_of_log_snr(u.double())

    def coefficient(self, u: Tensor, t: Tensor) -> Tensor:
        return 0.5 * torch.sigmoid(-u)


class TimeSigma(TimeVariable):
    """u = sigma/alpha = exp(-lambda/2), the noise level of x/alpha (Song et al. 2021 DDIM; Karras
    et al. 2022): dx/du = -(sigma^2 / u) (x + s)."""

    name = "sigma"

    def u_of_t(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.schedule.coefficients(t).log_snr)

    # an adaptive solver's first-step probe can land at u <= 0 (beyond t = 0): clamp, as t is
    _U_MIN = 1e-12

    def t_of_u(self, u: Tensor) -> Tensor:
        return self.schedule.t_of_log_snr(-2.0 * torch.log(u.double().clamp_min(self._U_MIN)))

    def coefficient(self, u: Tensor, t: Tensor) -> Tensor:
        u = u.clamp_min(self._U_MIN)
        return -torch.sigmoid(2.0 * torch.log(u)) / u


def time_variable(name: str, schedule: VPSchedule) -> TimeVariable:
    """The time variable called ``name`` ("t", "logsnr" or "sigma")."""
    kinds: dict[str, type[TimeVariable]] = {"t": TimeT, "logsnr": TimeLogSNR, "sigma": TimeSigma}
    if name not in kinds:
        raise ValueError(f"unknown time_variable {name!r}; expected one of {sorted(kinds)}")
    return kinds[name](schedule)


class NFECounter:
    """Wraps a score callable: broadcasts t to [B] in x's dtype and counts evaluations."""

    def __init__(self, score: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(score):
            raise TypeError(f"score must be a callable score(x, t), got {type(score).__name__}")
        self.score = score
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        s = self.score(x, t.to(x.dtype))
        if s.shape != x.shape:
            raise ValueError(f"the score returned shape {list(s.shape)} for x of shape {list(x.shape)}")
        return s


class PFODEDrift(torch.nn.Module):
    """dx/du for torchdiffeq: ``drift(u, x) = c(u) (x + s(x, t(u)))``.

    ``t_lo`` and ``t_hi`` bound the times at which the score is evaluated (an adaptive
    solver's trial stage can land a hair outside the interval of integration).
    """

    def __init__(self, score: NFECounter, var: TimeVariable, t_lo: float, t_hi: float) -> None:
        super().__init__()
        self.score = score
        self.var = var
        self.t_lo = t_lo
        self.t_hi = t_hi

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        u = u.double()
        t = self.var.t_of_u(u).clamp(self.t_lo, self.t_hi)
        c = self.var.coefficient(u, t).to(x.dtype)
        return c * (x + self.score(x, t))


def _torchdiffeq_solvers() -> dict[str, bool]:
    """torchdiffeq's method names, each with whether it is adaptive (empty if its private table
    moved: then ``odeint`` does the checking)."""
    try:
        from torchdiffeq._impl.odeint import SOLVERS
        from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver
    except ImportError:  # pragma: no cover - a future torchdiffeq layout
        return {}
    return {name: issubclass(cls, AdaptiveStepsizeODESolver) for name, cls in SOLVERS.items() if name != "scipy_solver"}


_FIXED_FALLBACK = {"euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "fixed_adams", "heun2", "heun3"}


@dataclass(frozen=True)
class ODESolve:
    r"""How an ODE dy/du = f(u, y) is solved over [u_0, u_1]: one object for sampling and likelihood.

    The state y may be a tensor or a tuple of tensors (the likelihood integrates (x, log p)
    together).  ``__call__`` runs ``torchdiffeq.odeint`` and returns the state at u_1.

    Args:
        method: a torchdiffeq method ("dopri5", "bosh3", "adaptive_heun", "rk4", "euler", ...).
        rtol, atol: tolerances of adaptive methods (positive).
        steps: steps of fixed-grid methods over the interval (ignored by adaptive ones).
        time_variable: the u of :func:`time_variable` in which the PF-ODE is integrated
            ("t", "logsnr" or "sigma").

    Adaptive methods get ``step_t = [u_1]`` so that no step overshoots the end of the interval
    (the score is then never evaluated outside it); fixed-grid methods take equal steps of
    (u_1 - u_0) / steps.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int = 100
    time_variable: TimeVariableName = "t"

    def __post_init__(self) -> None:
        solvers = _torchdiffeq_solvers()
        if not isinstance(self.method, str) or (solvers and self.method not in solvers):
            raise ValueError(f"unknown ODE method {self.method!r}; torchdiffeq offers {sorted(solvers)}")
        for key in ("rtol", "atol"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"rtol and atol must be positive, got rtol={self.rtol}, atol={self.atol}")
            object.__setattr__(self, key, float(value))
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.time_variable not in ("t", "logsnr", "sigma"):
            raise ValueError(f"unknown time_variable {self.time_variable!r}; expected 't', 'logsnr' or 'sigma'")

    @property
    def adaptive(self) -> bool:
        """Whether the method chooses its own steps (then NFE depends on rtol and atol)."""
        solvers = _torchdiffeq_solvers()
        return solvers[self.method] if solvers else self.method not in _FIXED_FALLBACK

    def variable(self, schedule: VPSchedule) -> TimeVariable:
        """The time variable u(t) of this solve."""
        return time_variable(self.time_variable, schedule)

    def odeint_options(self, u: Tensor) -> dict[str, Any]:
        """Keyword arguments of ``torchdiffeq.odeint`` for the interval u = [u_0, u_1] (float64 [2])."""
        if not self.adaptive:
            return {"method": self.method, "options": {"step_size": float(abs(u[-1] - u[0])) / self.steps}}
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "options": {"step_t": u[-1:]}}

    def __call__(self, f: Callable[[Tensor, Any], Any], y0: Any, u: Tensor) -> Any:
        """The solution at u[-1] of dy/du = f(u, y), y(u[0]) = y0 (a tensor or tuple of tensors)."""
        from torchdiffeq import odeint

        ys = odeint(f, y0, u, **self.odeint_options(u[[0, -1]]))
        if isinstance(ys, tuple):
            return tuple(y[-1] for y in ys)
        return ys[-1]

    def path(self, f: Callable[[Tensor, Tensor], Tensor], y0: Tensor, u: Tensor) -> Tensor:
        """The solution of dy/du = f(u, y), y(u[0]) = y0, at every u (monotone, float64 [n]): [n, *y0.shape].

        Adaptive methods place their own steps and put y at the u by their dense output, so
        the u cost no evaluations; fixed-grid methods keep ``steps`` steps over [u_0, u_-1] and
        interpolate cubically between them.
        """
        from torchdiffeq import odeint

        options = self.odeint_options(u[[0, -1]])
        if not self.adaptive:
            options["options"]["interp"] = "cubic"
        return odeint(f, y0, u, **options)
