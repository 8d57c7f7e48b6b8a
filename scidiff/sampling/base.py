r"""The sampler base classes: what every sampler shares.

A :class:`Sampler` maps prior draws x_1 ~ N(0, I) [B, *event] to approximate draws of p_0.
:meth:`Sampler.sample` owns what is common to all of them: it wraps the score in an
evaluation counter (the NFE), runs the sampler's transport and returns a
:class:`SampleResult`.

A :class:`GridSampler` is a sampler on a fixed time grid 1 = t_0 > ... > t_{n-1} = t_min
(:mod:`scidiff.sampling.grids`).  It owns the loop over the grid, the progress bar and the
final denoising x0-hat(x_{t_{n-1}}) (Tweedie's formula, the step to sigma = 0); a subclass
writes only :meth:`GridSampler.step`, the move from t_k to t_{k+1}, and keeps whatever a
multistep method remembers in the run's :class:`StepContext`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from scidiff._ode import NFECounter
from scidiff._progress import progress_bar
from scidiff.parameterisation import x0_hat
from scidiff.sampling.grids import TimeGrid, make_grid
from scidiff.sde import VPSDE

__all__ = ["SampleResult", "Sampler", "GridSampler", "StepContext", "ScoreFn", "GridLike"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
GridLike = str | TimeGrid | Sequence[float] | Tensor


@dataclass
class SampleResult:
    """What a sampler returns with ``return_result=True``.

    Attributes:
        x: the samples, [B, *event].
        nfe: score evaluations used (network forwards for a model score).
        method: the sampler's name.
        options: the sampler's options, for provenance.
    """

    x: Tensor
    nfe: int
    method: str
    options: dict[str, Any] = field(default_factory=dict)


def check_steps(steps: int, *, name: str = "steps", minimum: int = 1) -> int:
    """``steps`` as an int >= ``minimum``, or a ValueError naming it."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {steps!r}")
    return steps


def check_t_min(t_min: float) -> float:
    """``t_min`` as a float in (0, 1), or a ValueError naming it."""
    t_min = float(t_min)
    if not (0.0 < t_min < 1.0):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    return t_min


class Sampler(ABC):
    """A sampler: maps x_1 ~ N(0, I) [B, *event] to an approximate draw from p_0.

    Class attributes:
        name: the registry name (``sd.sample(..., method=name)``).
        order: the global order p of a deterministic sampler (error ~ steps^-p on a smooth
            problem), None for a stochastic one.
        summary: one line for ``--help`` and the docs.
    """

    name: ClassVar[str]
    order: ClassVar[int | None] = None
    summary: ClassVar[str] = ""

    @abstractmethod
    def run(
        self, score: NFECounter, sde: VPSDE, x: Tensor, *, generator: torch.Generator | None, progress: bool
    ) -> Tensor:
        """Transport ``x`` (a draw of the prior) to t = 0; ``score`` counts its evaluations."""

    def sample(
        self,
        score: ScoreFn,
        sde: VPSDE,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> SampleResult:
        """Run from prior draws ``x`` [B, *event]; the score's evaluations are counted."""
        counter = score if isinstance(score, NFECounter) else NFECounter(score)
        start = counter.nfe
        with torch.no_grad():
            x = self.run(counter, sde, x, generator=generator, progress=progress)
        return SampleResult(x=x, nfe=counter.nfe - start, method=self.name, options=self.options())

    def options(self) -> dict[str, Any]:
        """The sampler's options (for provenance attributes)."""
        return {k: v.describe() if isinstance(v, TimeGrid) else v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class StepContext:
    """One run of a :class:`GridSampler`: the grid, its coefficients and the score.

    Coefficients at grid point k are python floats computed in float64: ``t[k]``,
    ``alpha[k]``, ``sigma[k]``, ``log_snr[k]``, ``beta[k]``; ``sigma_tilde[k]`` =
    sigma / alpha = exp(-log_snr / 2) (the noise level of x / alpha).  ``memory`` is
    free for a multistep method's history.
    """

    def __init__(
        self, score: NFECounter, sde: VPSDE, times: Tensor, x: Tensor, generator: torch.Generator | None
    ) -> None:
        self._score = score
        self.sde = sde
        self.generator = generator
        self.n = int(times.numel())
        c = sde.schedule.coefficients(times)
        self.t: list[float] = times.tolist()
        self.alpha: list[float] = c.alpha.tolist()
        self.sigma: list[float] = c.sigma.tolist()
        self.log_snr: list[float] = c.log_snr.tolist()
        self.beta: list[float] = c.beta.tolist()
        self.sigma_tilde: list[float] = [math.exp(-0.5 * lam) for lam in self.log_snr]
        # the same, as tensors in x's dtype on its device: indexed per step, never copied back
        self._t_x = times.to(dtype=x.dtype, device=x.device)
        self._alpha_x = c.alpha.to(dtype=x.dtype, device=x.device)
        self._sigma_x = c.sigma.to(dtype=x.dtype, device=x.device)
        self.memory: dict[str, Any] = {}

    def score(self, x: Tensor, k: int) -> Tensor:
        """s(x, t_k) [B, *event]: one evaluation."""
        return self._score(x, self._t_x[k].expand(x.shape[0]))

    def score_at(self, x: Tensor, t: Tensor) -> Tensor:
        """s(x, t) at an off-grid time ``t`` (0-d or [B] tensor in [0, 1]): one evaluation."""
        return self._score(x, t.to(dtype=x.dtype, device=x.device).expand(x.shape[0]))

    def x0(self, x: Tensor, k: int) -> Tensor:
        """Tweedie's x0-hat(x, t_k) = (x + sigma_k^2 s) / alpha_k [B, *event]: one evaluation."""
        return x0_hat(x, self.score(x, k), self._alpha_x[k], self._sigma_x[k])

    def noise(self, x: Tensor) -> Tensor:
        """z ~ N(0, I) like ``x`` from the run's generator."""
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)


class GridSampler(Sampler):
    """A sampler on a fixed time grid; subclasses write :meth:`step`.

    Args:
        steps: the sampler's size (see each subclass: network evaluations for single-call
            steps, EDM's N for Heun, transitions for Euler-Maruyama); None: the class's
            ``default_steps``, or the size of a grid given as a list of times.
        grid: "uniform" (in t), "logsnr", "karras", a :class:`~scidiff.sampling.grids.TimeGrid`
            or a decreasing list of times (then ``steps`` may be omitted).
        t_min: the last grid time, where the final denoising x0-hat is taken.
        denoise: end with x0-hat(x_{t_min}) (one evaluation); otherwise return x_{t_min}.
    """

    default_grid: ClassVar[str] = "uniform"
    default_steps: ClassVar[int] = 20

    def __init__(
        self,
        steps: int | None = None,
        *,
        grid: GridLike | None = None,
        t_min: float = 1e-3,
        denoise: bool = True,
    ) -> None:
        self.grid: TimeGrid = make_grid(self.default_grid if grid is None else grid)
        if steps is None:
            size = getattr(self.grid, "size", None)  # a given list of times fixes the size
            steps = self.default_steps if size is None else self._steps_for_points(size)
        self.steps = check_steps(steps)
        self.t_min = check_t_min(t_min)
        self.denoise = bool(denoise)
        size = getattr(self.grid, "size", None)
        if size is not None and self.points() != size:
            raise ValueError(
                f"the given grid has {size} points but {self.name} with steps={self.steps} needs {self.points()}; "
                "omit steps to take the grid's size"
            )

    # ---- sizes ------------------------------------------------------------------------
    def points(self) -> int:
        """Grid points for ``steps``: here ``steps`` (n - 1 transitions, then the denoising)."""
        return self.steps

    def _steps_for_points(self, n: int) -> int:
        return n

    @property
    def nfe(self) -> int:
        """Score evaluations of one run."""
        return self.points() - 1 + int(self.denoise)

    # ---- the loop -------------------------------------------------------------------------
    @abstractmethod
    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        """x_{t_{k+1}} from x_{t_k} [B, *event]."""

    def run(
        self, score: NFECounter, sde: VPSDE, x: Tensor, *, generator: torch.Generator | None, progress: bool
    ) -> Tensor:
        times = self.grid.times(self.points(), sde.schedule, self.t_min)
        ctx = StepContext(score, sde, times, x, generator)
        bar = progress_bar(ctx.n - 1 + int(self.denoise), self.name, enabled=progress, leave=False)
        for k in range(ctx.n - 1):
            x = self.step(ctx, k, x)
            bar.update()
        if self.denoise:
            x = ctx.x0(x, ctx.n - 1)
            bar.update()
        bar.close()
        return x
