r"""Time grids: where a fixed-step sampler evaluates the score.

A grid of ``n`` points is a float64 vector of times 1 >= t_0 > t_1 > ... > t_{n-1} > 0,
descending from the noise end (``t_max``, default 1) to the smallest time ``t_min`` at which
the score is trusted.  Samplers step from point to point and, after the last one, return the
Tweedie mean x0-hat(x_{t_{n-1}}) (the step to sigma = 0).  Each grid is one spacing rule:

* :class:`UniformT` -- equal steps in t (Ho et al. 2020; Song et al. 2021).
* :class:`UniformLogSNR` -- equal steps in lambda = log(alpha^2 / sigma^2), the variable in
  which DPM-Solver's exponential integrators are exact for a constant data prediction
  (Lu et al., NeurIPS 2022, Sec. 3.4).
* :class:`Karras` -- rho-spacing of the noise level sigma-tilde = sigma / alpha,
  sigma-tilde_i = (s_max^(1/rho) + i / (n - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho
  (Karras et al., NeurIPS 2022, Eq. 5; rho = 7).
* :class:`GivenTimes` -- any decreasing list of times.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from scidiff.schedules import VPSchedule

__all__ = ["TimeGrid", "UniformT", "UniformLogSNR", "Karras", "GivenTimes", "GRIDS", "make_grid"]

F64 = torch.float64


def _check_points(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"a grid needs a positive integer number of points, got {n!r}")
    return n


def _check_range(t_min: float, t_max: float) -> tuple[float, float]:
    t_min, t_max = float(t_min), float(t_max)
    if not (0.0 < t_min < t_max <= 1.0):
        raise ValueError(f"a grid needs 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    return t_min, t_max


class TimeGrid(ABC):
    """A spacing rule: :meth:`times` gives ``n`` decreasing float64 times from t_max to t_min."""

    name: str

    @abstractmethod
    def times(self, n: int, schedule: VPSchedule, t_min: float, t_max: float = 1.0) -> Tensor:
        """The grid t_0 = t_max > ... > t_{n-1} = t_min, float64 [n] (for n = 1 only [t_max])."""

    def describe(self) -> str | list[float]:
        """The grid as a provenance value: its name, with its parameters where they differ from the defaults."""
        return self.name

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


class UniformT(TimeGrid):
    """t_i = t_max + i (t_min - t_max) / (n - 1)."""

    name = "uniform"

    def times(self, n: int, schedule: VPSchedule, t_min: float, t_max: float = 1.0) -> Tensor:
        n = _check_points(n)
        t_min, t_max = _check_range(t_min, t_max)
        if n == 1:
            return torch.tensor([t_max], dtype=F64)
        return torch.linspace(t_max, t_min, n, dtype=F64)


class UniformLogSNR(TimeGrid):
    """lambda_i = lambda(t_max) + i (lambda(t_min) - lambda(t_max)) / (n - 1), t_i = t(lambda_i)."""

    name = "logsnr"

    def times(self, n: int, schedule: VPSchedule, t_min: float, t_max: float = 1.0) -> Tensor:
        n = _check_points(n)
        t_min, t_max = _check_range(t_min, t_max)
        if n == 1:
            return torch.tensor([t_max], dtype=F64)
        lam = schedule.coefficients(torch.tensor([t_max, t_min], dtype=F64)).log_snr
        t = schedule.t_of_log_snr(torch.linspace(float(lam[0]), float(lam[1]), n, dtype=F64))
        t[0], t[-1] = t_max, t_min  # the inverse is exact only to rounding: pin the ends
        return t


class Karras(TimeGrid):
    """rho-spacing of sigma-tilde = sigma / alpha = exp(-lambda / 2) (Karras et al. 2022, Eq. 5).

    Args:
        rho: the exponent; larger rho puts more points at low noise (paper: 7).
    """

    name = "karras"

    def __init__(self, rho: float = 7.0) -> None:
        rho = float(rho)
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive number, got {rho}")
        self.rho = rho

    def describe(self) -> str:
        return self.name if self.rho == 7.0 else f"{self.name}(rho={self.rho:g})"

    def times(self, n: int, schedule: VPSchedule, t_min: float, t_max: float = 1.0) -> Tensor:
        n = _check_points(n)
        t_min, t_max = _check_range(t_min, t_max)
        if n == 1:
            return torch.tensor([t_max], dtype=F64)
        lam = schedule.coefficients(torch.tensor([t_max, t_min], dtype=F64)).log_snr
        inv_rho = 1.0 / self.rho
        s_max, s_min = torch.exp(-0.5 * lam) ** inv_rho
        frac = torch.linspace(0.0, 1.0, n, dtype=F64)
        sigma_tilde = (s_max + frac * (s_min - s_max)) ** self.rho
        t = schedule.t_of_log_snr(-2.0 * torch.log(sigma_tilde))
        t[0], t[-1] = t_max, t_min
        return t


class GivenTimes(TimeGrid):
    """A user's grid: strictly decreasing times in (0, 1]; ``n`` must equal their number.

    ``t_min`` and ``t_max`` of the sampler are ignored (the list is the grid).
    """

    name = "given"

    def __init__(self, times: Sequence[float] | Tensor) -> None:
        t = torch.as_tensor(times, dtype=F64).flatten()
        if t.numel() < 1:
            raise ValueError("a given grid needs at least one time")
        if not bool(torch.isfinite(t).all()) or float(t.min()) <= 0.0 or float(t.max()) > 1.0:
            raise ValueError(f"grid times must lie in (0, 1], got {t.tolist()}")
        if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"grid times must be strictly decreasing (noise to data), got {t.tolist()}")
        self._t = t

    @property
    def size(self) -> int:
        """The number of points."""
        return int(self._t.numel())

    def times(self, n: int, schedule: VPSchedule, t_min: float, t_max: float = 1.0) -> Tensor:
        if n != self.size:
            raise ValueError(f"the given grid has {self.size} points but the sampler asked for {n}")
        return self._t.clone()

    def describe(self) -> list[float]:
        return self._t.tolist()

    def __repr__(self) -> str:
        return f"GivenTimes({self._t.tolist()!r})"


GRIDS: dict[str, type[TimeGrid]] = {"uniform": UniformT, "logsnr": UniformLogSNR, "karras": Karras}


def make_grid(grid: str | TimeGrid | Sequence[float] | Tensor) -> TimeGrid:
    """A :class:`TimeGrid` from its name ("uniform", "logsnr", "karras"), an instance, or a list of times."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; expected one of {sorted(GRIDS)}, a TimeGrid or a list of times")
        return GRIDS[grid]()
    if isinstance(grid, (Sequence, Tensor)):
        return GivenTimes(grid)
    raise TypeError(f"grid must be a name, a TimeGrid or a list of times, got {type(grid).__name__}")
