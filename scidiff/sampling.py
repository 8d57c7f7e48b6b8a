r"""Samplers: from x_1 ~ N(0, I) back to data, given any score s(x, t).

Every sampler here takes a score callable (``model.score``, a guided score, a closed-form
score) and a :class:`~scidiff.sde.VPSDE`:

* :class:`Ancestral` -- the DDPM posterior step q(x_s | x_t, x0-hat) on any grid 1 = t_0 > ... > t_K = 0
  (Ho et al. 2020), with alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = 1 - alpha_{t|s}^2:
      mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0-hat,
      var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
* :class:`EulerMaruyama` -- the reverse SDE dx = -beta (x / 2 + s) dt + sqrt(beta) dw-bar, stepped
  backwards on a uniform grid (Song et al. 2021).
* :class:`PredictorCorrector` -- Euler-Maruyama predictor plus Langevin corrector steps
  x <- x + eps s + sqrt(2 eps) z, eps = 2 (1 - beta dt) (r |z| / |s|)^2 (Song et al. 2021, Alg. 5),
  norms averaged over the batch.
* :class:`ProbabilityFlowODE` -- dx/dt = -beta (x + s) / 2 through ``torchdiffeq.odeint``, any
  of its methods, adaptive (dopri5) by default, integrated in log-SNR by default.

The public entry point is :func:`sample`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from scidiff._ode import NFECounter, PFODEDrift, TimeVariableName, time_variable
from scidiff.sde import VPSDE

__all__ = [
    "sample",
    "SampleResult",
    "Sampler",
    "Ancestral",
    "EulerMaruyama",
    "PredictorCorrector",
    "ProbabilityFlowODE",
    "SAMPLERS",
    "uniform_grid",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


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


def uniform_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> list[float]:
    """``steps + 1`` times equally spaced from ``t_start`` down to ``t_end`` (python floats)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return [t_start + (t_end - t_start) * k / steps for k in range(steps + 1)]


def _check_t_min(t_min: float) -> float:
    t_min = float(t_min)
    if not (0.0 < t_min < 1.0):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    return t_min


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


class Sampler(ABC):
    """A sampler: maps x_1 ~ N(0, I) to an approximate draw from p_0."""

    name: str

    @abstractmethod
    def run(
        self, score: NFECounter, sde: VPSDE, x: Tensor, *, generator: torch.Generator | None, progress: bool
    ) -> Tensor:
        """Transport ``x`` (a draw of the prior) to t = 0; ``score`` counts its evaluations."""

    def options(self) -> dict[str, Any]:
        """The sampler's options (for provenance attributes)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _tweedie(score: NFECounter, sde: VPSDE, x: Tensor, t: float) -> Tensor:
    """x0-hat = (x + sigma_t^2 s(x, t)) / alpha_t at a python-float time t."""
    t_vec = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
    log_alpha = float(sde.schedule._log_alpha(torch.tensor(t, dtype=torch.float64)))
    sigma2 = -math.expm1(2.0 * log_alpha)
    return (x + sigma2 * score(x, t_vec)) / math.exp(log_alpha)


class Ancestral(Sampler):
    """DDPM ancestral sampling on a uniform grid of ``steps`` steps from t = 1 to t = 0.

    The last step (to t = 0) returns the Tweedie mean x0-hat.  NFE = ``steps``.
    """

    name = "ancestral"

    def __init__(self, steps: int = 1000) -> None:
        uniform_grid(steps)
        self.steps = steps

    def run(self, score, sde, x, *, generator, progress):
        times = uniform_grid(self.steps, 1.0, 0.0)
        log_alpha = sde.schedule._log_alpha(torch.tensor(times, dtype=torch.float64)).tolist()
        t_grid = torch.tensor(times, dtype=x.dtype, device=x.device)  # one tensor, viewed per step
        bsz = x.shape[0]
        bar = _progress(self.steps, "ancestral", progress)
        for k in range(self.steps):
            s = times[k + 1]
            la_t, la_s = log_alpha[k], log_alpha[k + 1]
            sigma2_t = -math.expm1(2.0 * la_t)
            score_t = score(x, t_grid[k].expand(bsz))
            if s <= 0.0:
                # x0-hat = (x + sigma_t^2 s) / alpha_t
                x = x.add(score_t, alpha=sigma2_t).mul_(math.exp(-la_t))
            else:
                sigma2_s = -math.expm1(2.0 * la_s)
                sigma2_ts = -math.expm1(2.0 * (la_t - la_s))
                c_x = math.exp(la_t - la_s) * sigma2_s / sigma2_t
                c_0 = math.exp(la_s) * sigma2_ts / sigma2_t
                std = math.sqrt(sigma2_ts * sigma2_s / sigma2_t)
                # c_x x + c_0 x0-hat + std z, with x0-hat expanded: three kernels and the noise
                a_x = c_x + c_0 * math.exp(-la_t)
                a_s = c_0 * sigma2_t * math.exp(-la_t)
                x = x.mul(a_x).add_(score_t, alpha=a_s).add_(_noise(x, generator), alpha=std)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        return x


class EulerMaruyama(Sampler):
    """Euler-Maruyama on the reverse SDE, ``steps`` uniform steps from t = 1 to ``t_min``.

    x <- x + (beta x / 2 + beta s) dt + sqrt(beta dt) z; then, if ``denoise``, the Tweedie mean
    at t_min (one more evaluation).  NFE = steps (+ 1).
    """

    name = "euler_maruyama"

    def __init__(self, steps: int = 1000, *, t_min: float = 1e-3, denoise: bool = True) -> None:
        uniform_grid(steps)
        self.steps = steps
        self.t_min = _check_t_min(t_min)
        self.denoise = bool(denoise)

    def _predictor(self, score, sde, x, t: float, dt: float, beta: float, generator) -> Tensor:
        return x + (0.5 * beta * dt) * x + (beta * dt) * score(x, _full(x, t)) + math.sqrt(beta * dt) * _noise(
            x, generator
        )

    def run(self, score, sde, x, *, generator, progress):
        times = uniform_grid(self.steps, 1.0, self.t_min)
        betas = sde.schedule._beta(torch.tensor(times, dtype=torch.float64)).tolist()
        bar = _progress(self.steps, self.name, progress)
        for k in range(self.steps):
            x = self._step(score, sde, x, times[k], times[k] - times[k + 1], betas[k], generator)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        return _tweedie(score, sde, x, self.t_min) if self.denoise else x

    def _step(self, score, sde, x, t, dt, beta, generator):
        return self._predictor(score, sde, x, t, dt, beta, generator)


class PredictorCorrector(EulerMaruyama):
    """Predictor-corrector: at each grid time, ``corrector_steps`` Langevin steps then one
    Euler-Maruyama step.  The Langevin step size follows the signal-to-noise rule
    eps = 2 (1 - beta dt) (snr |z| / |s|)^2, with |z| and |s|
    averaged over the batch.  NFE = steps (1 + corrector_steps) (+ 1).
    """

    name = "pc"

    def __init__(
        self,
        steps: int = 500,
        *,
        snr: float = 0.16,
        corrector_steps: int = 1,
        t_min: float = 1e-3,
        denoise: bool = True,
    ) -> None:
        super().__init__(steps, t_min=t_min, denoise=denoise)
        if not (snr > 0 and math.isfinite(snr)):
            raise ValueError(f"snr must be a positive number, got {snr}")
        if not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
        self.snr = float(snr)
        self.corrector_steps = corrector_steps

    def _step(self, score, sde, x, t, dt, beta, generator):
        alpha_i = math.exp(-beta * dt)
        t_vec = _full(x, t)
        for _ in range(self.corrector_steps):
            s = score(x, t_vec)
            z = _noise(x, generator)
            # norms averaged over the batch, as in Song et al.'s implementation: a per-sample
            # ratio is too noisy in few dimensions (|s| ~ 0 near a mode gives huge steps)
            s_norm = s.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            eps = 2.0 * alpha_i * (self.snr * z_norm / s_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
            x = x + eps * s + torch.sqrt(2.0 * eps) * z
        return self._predictor(score, sde, x, t, dt, beta, generator)


class ProbabilityFlowODE(Sampler):
    """The probability-flow ODE from t = 1 to ``t_min`` with ``torchdiffeq.odeint``.

    Args:
        method: any torchdiffeq method ("dopri5", "bosh3", "adaptive_heun", "rk4", "euler", ...).
        rtol, atol: tolerances of adaptive methods.
        steps: number of steps for fixed-grid methods (ignored by adaptive ones).
        time_variable: "logsnr" (default; better conditioned, fewer evaluations) or "t".
        t_min: the final time; then, if ``denoise``, the Tweedie mean (one more evaluation).
    """

    name = "ode"
    _FIXED = {"euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2", "heun3"}

    def __init__(
        self,
        *,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int = 100,
        time_variable: TimeVariableName = "logsnr",
        t_min: float = 1e-3,
        denoise: bool = True,
    ) -> None:
        solvers = _torchdiffeq_methods()
        if solvers and method not in solvers:
            raise ValueError(f"unknown ODE method {method!r}; torchdiffeq offers {sorted(solvers)}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        uniform_grid(steps)
        if time_variable not in ("t", "logsnr", "sigma"):
            raise ValueError(f"unknown time_variable {time_variable!r}; expected 't', 'logsnr' or 'sigma'")
        self.method = method
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.steps = steps
        self.time_variable = time_variable
        self.t_min = _check_t_min(t_min)
        self.denoise = bool(denoise)

    def run(self, score, sde, x, *, generator, progress):
        from torchdiffeq import odeint

        var = time_variable(self.time_variable, sde.schedule)
        u = var.u_of_t(torch.tensor([1.0, self.t_min], dtype=torch.float64, device=x.device))
        drift = PFODEDrift(score, var, self.t_min, 1.0)
        x_end = odeint(drift, x, u, **solver_options(self.method, u, self.rtol, self.atol, self.steps))[-1]
        return _tweedie(score, sde, x_end, self.t_min) if self.denoise else x_end


def _torchdiffeq_methods() -> set[str]:
    """The method names torchdiffeq accepts (empty if its private table moved: then odeint checks)."""
    try:
        from torchdiffeq._impl.odeint import SOLVERS
    except ImportError:  # pragma: no cover - a future torchdiffeq layout
        return set()
    return set(SOLVERS)


def solver_options(method: str, u: Tensor, rtol: float, atol: float, steps: int) -> dict[str, Any]:
    """Keyword arguments of ``odeint`` for an interval u = [u_0, u_1].

    Adaptive methods get ``step_t = [u_1]`` so that no step overshoots the end of the interval
    (the score is then never evaluated outside [t_min, 1]); fixed-grid methods get a step size.
    """
    if method in ProbabilityFlowODE._FIXED:
        return {"method": method, "options": {"step_size": float(abs(u[-1] - u[0])) / steps}}
    return {"method": method, "rtol": rtol, "atol": atol, "options": {"step_t": u[-1:]}}


def _full(x: Tensor, t: float) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


SAMPLERS: dict[str, type[Sampler]] = {
    "ancestral": Ancestral,
    "euler_maruyama": EulerMaruyama,
    "pc": PredictorCorrector,
    "ode": ProbabilityFlowODE,
}


def sample(
    score: ScoreFn,
    sde: VPSDE,
    shape: Sequence[int],
    method: str | Sampler = "ode",
    *,
    generator: torch.Generator | None = None,
    x1: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    return_result: bool = False,
    **options: Any,
) -> Tensor | SampleResult:
    """Draw samples from the model whose score is ``score``.

    Args:
        score: ``score(x, t) -> Tensor`` like x, t of shape [B].
        sde: the VP-SDE the score belongs to.
        shape: [B, *event], e.g. (16, 1, 64, 64).
        method: "ode" (default), "ancestral", "euler_maruyama", "pc", or a :class:`Sampler`.
        generator: a torch.Generator; the same seed gives the same samples.
        x1: start from these prior draws [B, *event] instead of drawing them.
        dtype, device: of the samples (default: the generator's device, torch's default dtype).
        progress: show a progress bar.
        return_result: return a :class:`SampleResult` (samples, NFE, options) instead of a tensor.
        **options: the chosen sampler's options (``steps``, ``rtol``, ``atol``, ``t_min``,
            ``time_variable``, ``snr``, ``corrector_steps``, ``denoise``, ODE ``method`` as ``ode_method``).

    Returns:
        The samples [B, *event] (or a :class:`SampleResult`).
    """
    sampler = make_sampler(method, **options)
    if not isinstance(sde, VPSDE):
        raise TypeError(f"sde must be a scidiff.VPSDE, got {type(sde).__name__}")
    shape = tuple(int(s) for s in shape)
    if x1 is None:
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be [B, *event] with positive sizes, got {list(shape)}")
        x = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    else:
        if tuple(x1.shape) != shape:
            raise ValueError(f"x1 has shape {list(x1.shape)} but shape is {list(shape)}")
        x = x1
    counter = NFECounter(score)
    with torch.no_grad():
        x = sampler.run(counter, sde, x, generator=generator, progress=progress)
    if return_result:
        return SampleResult(x=x, nfe=counter.nfe, method=sampler.name, options=sampler.options())
    return x


def make_sampler(method: str | Sampler, **options: Any) -> Sampler:
    """A :class:`Sampler` from its name and options (``ode_method`` names the ODE solver)."""
    if isinstance(method, Sampler):
        if options:
            raise ValueError(f"options {sorted(options)} given with a Sampler instance; set them on the instance")
        return method
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SAMPLERS)}")
    if "ode_method" in options:
        if method != "ode":
            raise ValueError(f"ode_method only applies to method='ode', not {method!r}")
        options["method"] = options.pop("ode_method")
    try:
        return SAMPLERS[method](**options)
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(SAMPLERS[method]).parameters if p != "self"]
        raise ValueError(f"bad option for method={method!r}: {err}; its options are {allowed}") from None
