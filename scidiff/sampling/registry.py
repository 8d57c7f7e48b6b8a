"""The registry of samplers by name, their options, and :func:`sample`, the public entry point."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scidiff._ode import NFECounter, ODESolve
from scidiff.sampling.auto import StepSizeMultistep
from scidiff.sampling.base import SampleResult, Sampler, ScoreFn
from scidiff.sampling.ddim import DDIM
from scidiff.sampling.dpmpp import DPMSolverPP2M, DPMSolverPP3M
from scidiff.sampling.grids import GRIDS
from scidiff.sampling.heun import Heun
from scidiff.sampling.ode import ProbabilityFlowODE
from scidiff.sampling.stochastic import Ancestral, EulerMaruyama, PredictorCorrector
from scidiff.sampling.unipc import UniPC2, UniPC3
from scidiff.sde import VPSDE

__all__ = [
    "SAMPLERS",
    "DEFAULT_METHOD",
    "SamplerOption",
    "sampler_options",
    "make_sampler",
    "sample",
    "solver_options",
    "uniform_grid",
]

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (Ancestral, EulerMaruyama, PredictorCorrector, DDIM, DPMSolverPP2M, DPMSolverPP3M, UniPC2, UniPC3,
                StepSizeMultistep, Heun, ProbabilityFlowODE)
}

#: The command line's default sampler (at its class's ``default_steps``), chosen from the
#: measurements in docs/samplers.md.
DEFAULT_METHOD: str = "auto"

# the help of each option, shared by every sampler that takes it
_HELP: dict[str, str] = {
    "steps": "grid points (= NFE for ancestral/ddim/dpmpp_*/unipc_*/auto; EDM's N for heun, NFE 2N-1; transitions for "
    "euler_maruyama/pc; fixed-grid steps for ode)",
    "grid": f"time grid: {' | '.join(GRIDS)} (uniform in t, uniform in log-SNR, Karras rho = 7)",
    "t_min": "last grid time, where the final denoising x0-hat is taken",
    "denoise": "end with x0-hat at t_min (one evaluation)",
    "eta": "DDIM stochasticity in [0, 1] (0: deterministic, 1: ancestral)",
    "snr": "predictor-corrector's Langevin signal-to-noise ratio",
    "corrector_steps": "Langevin steps per predictor step",
    "lower_order_final": "lower the order of the last steps (dpmpp_*: the step into t_min at order <= 2 on grids of "
    "fewer than 15 points; unipc_*: order <= the steps left)",
    "variant": "UniPC's B(h): bh1 (-h) or bh2 (e^-h - 1), h the step in half log-SNR; exact: every weight solved",
    "corrector": "apply the UniC corrector (no extra evaluation)",
    "h_small": "auto: log-SNR steps up to this size (half log-SNR) are UniPC-3 steps",
    "h_large": "auto: log-SNR steps above this size are exact-weight UniPC-2 steps; in between DPM-Solver++ 2M",
    "s_churn": "EDM churn S_churn (0: deterministic)",
    "s_tmin": "EDM churn applies for sigma/alpha >= s_tmin",
    "s_tmax": "EDM churn applies for sigma/alpha <= s_tmax",
    "s_noise": "EDM noise inflation S_noise",
    "method": "torchdiffeq method of the ODE (dopri5, bosh3, rk4, euler, ...)",
    "rtol": "relative tolerance of an adaptive ODE method",
    "atol": "absolute tolerance of an adaptive ODE method",
    "time_variable": "variable the ODE is integrated in: t | logsnr | sigma",
}


@dataclass(frozen=True)
class SamplerOption:
    """One keyword option of one or more samplers.

    Attributes:
        name: the keyword (``ode_method`` for the ODE's ``method``).
        type: its python type (int, float, bool, str).
        default: per sampler name, the default value.
        methods: the samplers that take it.
        help: one line.
        choices: the allowed strings, where there is a fixed set.
    """

    name: str
    type: type
    default: dict[str, Any]
    methods: tuple[str, ...]
    help: str
    choices: tuple[str, ...] | None = None


def _option_type(default: Any) -> type:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def sampler_options(method: str | None = None) -> dict[str, SamplerOption]:
    """The keyword options of the sampler ``method`` (all samplers when None), by name.

    Read from the samplers' signatures, so that a new sampler's options appear on the
    command line without a hand-kept list.
    """
    names = list(SAMPLERS) if method is None else [_check_method(method)]
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        for p in inspect.signature(SAMPLERS[name].__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            key = "ode_method" if (name == "ode" and p.name == "method") else p.name
            entry = found.setdefault(key, {"default": {}, "methods": [], "type": None})
            default = p.default
            if default is None and p.name in ("steps", "grid"):  # the class's own default
                default = getattr(SAMPLERS[name], f"default_{p.name}", None)
            entry["default"][name] = default
            entry["methods"].append(name)
            if default is not None and entry["type"] is None:
                entry["type"] = _option_type(default)
    out: dict[str, SamplerOption] = {}
    for key, e in found.items():
        choices = None
        if key == "grid":
            choices = tuple(GRIDS)
        elif key == "variant":
            choices = ("bh1", "bh2", "exact")
        elif key == "time_variable":
            choices = ("t", "logsnr", "sigma")
        out[key] = SamplerOption(
            name=key, type=e["type"] or str, default=e["default"], methods=tuple(e["methods"]),
            help=_HELP.get("method" if key == "ode_method" else key, ""), choices=choices,
        )
    return out


def _check_method(method: str) -> str:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SAMPLERS)}")
    return method


def make_sampler(method: str | Sampler, **options: Any) -> Sampler:
    """A :class:`Sampler` from its name and options (``ode_method`` names the ODE solver)."""
    if isinstance(method, Sampler):
        if options:
            raise ValueError(f"options {sorted(options)} given with a Sampler instance; set them on the instance")
        return method
    _check_method(method)
    if "ode_method" in options:
        if method != "ode":
            raise ValueError(f"ode_method only applies to method='ode', not {method!r}")
        options["method"] = options.pop("ode_method")
    cls = SAMPLERS[method]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        shown = ["ode_method" if (method == "ode" and p == "method") else p for p in allowed]
        raise ValueError(f"bad option for method={method!r}: {unknown}; its options are {shown}")
    return cls(**options)


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
        score: ``score(x, t) -> Tensor`` like x, t of shape [B] (a model's score, a guided
            score, a closed form).
        sde: the VP-SDE the score belongs to.
        shape: [B, *event], e.g. (16, 1, 64, 64).
        method: a name of :data:`SAMPLERS` ("ode" default, "ancestral", "euler_maruyama", "pc",
            "ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "auto", "heun") or a :class:`Sampler`.
        generator: a torch.Generator; the same seed gives the same samples.
        x1: start from these prior draws [B, *event] instead of drawing them.
        dtype, device: of the samples (default: the generator's device, torch's default dtype).
        progress: show a progress bar.
        return_result: return a :class:`SampleResult` (samples, NFE, options) instead of a tensor.
        **options: the chosen sampler's options (``steps``, ``grid``, ``t_min``, ``eta``, ``rtol``,
            ``atol``, ``time_variable``, ``snr``, ``corrector_steps``, ``s_churn``, ``denoise``, ODE
            ``method`` as ``ode_method``); :func:`sampler_options` lists them per sampler.

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
    result = sampler.sample(NFECounter(score), sde, x, generator=generator, progress=progress)
    return result if return_result else result.x


def solver_options(method: str, u: Tensor, rtol: float, atol: float, steps: int) -> dict[str, Any]:
    """Keyword arguments of ``odeint`` for an interval u = [u_0, u_1]; see :class:`~scidiff._ode.ODESolve`."""
    return ODESolve(method=method, rtol=rtol, atol=atol, steps=steps).odeint_options(u)


def uniform_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> list[float]:
    """``steps + 1`` times equally spaced from ``t_start`` down to ``t_end`` (python floats)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (math.isfinite(t_start) and math.isfinite(t_end)):
        raise ValueError(f"t_start and t_end must be finite, got {t_start}, {t_end}")
    return [t_start + (t_end - t_start) * k / steps for k in range(steps + 1)]
