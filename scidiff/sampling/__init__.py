r"""Samplers: from x_1 ~ N(0, I) back to data, given any score s(x, t).

A sampler is a time grid (:mod:`scidiff.sampling.grids`: uniform in t, uniform in log-SNR,
Karras, or a list) plus a step rule; the base class (:mod:`scidiff.sampling.base`) owns the
loop, the NFE count, the progress bar and the final denoising.  The step rules:

=================  ===================================================  =====  ===============
name               step                                                 order  NFE
=================  ===================================================  =====  ===============
``ancestral``      DDPM posterior step (Ho et al. 2020)                 --     steps
``euler_maruyama`` reverse SDE, Euler-Maruyama (Song et al. 2021)       --     steps + 1
``pc``             Langevin corrector + EM predictor (Song et al. 2021) --     2 steps + 1
``ddim``           DDIM, eta in [0, 1] (Song, Meng & Ermon 2021)        1      steps
``dpmpp_2m``       DPM-Solver++ 2M (Lu et al. 2022)                     2      steps
``dpmpp_3m``       DPM-Solver++ 3M                                      3      steps
``unipc_2``        UniP-2 + UniC corrector (Zhao et al. 2023)           3      steps
``unipc_3``        UniP-3 + UniC corrector                              3      steps
``auto``           per step by log-SNR step size: UniPC-3, 2M, UniPC-2  3      steps
``heun``           EDM Heun, optional churn (Karras et al. 2022)        2      2 steps - 1
``ode``            PF-ODE through torchdiffeq, any method               any    adaptive
=================  ===================================================  =====  ===============

The public entry point is :func:`sample`; :data:`SAMPLERS` is the registry the command line
reads its ``--method`` choices and options from (:func:`sampler_options`).
"""

from __future__ import annotations

from scidiff._ode import ODESolve
from scidiff.sampling.auto import StepSizeMultistep
from scidiff.sampling.base import GridSampler, SampleResult, Sampler, StepContext
from scidiff.sampling.ddim import DDIM
from scidiff.sampling.dpmpp import DPMSolverPP, DPMSolverPP2M, DPMSolverPP3M
from scidiff.sampling.grids import GRIDS, GivenTimes, Karras, TimeGrid, UniformLogSNR, UniformT, make_grid
from scidiff.sampling.heun import Heun
from scidiff.sampling.ode import ProbabilityFlowODE
from scidiff.sampling.registry import (
    DEFAULT_METHOD,
    SAMPLERS,
    SamplerOption,
    make_sampler,
    sample,
    sampler_options,
    solver_options,
    uniform_grid,
)
from scidiff.sampling.stochastic import Ancestral, EulerMaruyama, PredictorCorrector
from scidiff.sampling.unipc import UniPC, UniPC2, UniPC3

__all__ = [
    "sample",
    "SampleResult",
    "Sampler",
    "GridSampler",
    "StepContext",
    "Ancestral",
    "EulerMaruyama",
    "PredictorCorrector",
    "DDIM",
    "DPMSolverPP",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "UniPC",
    "UniPC2",
    "UniPC3",
    "StepSizeMultistep",
    "Heun",
    "ProbabilityFlowODE",
    "ODESolve",
    "TimeGrid",
    "UniformT",
    "UniformLogSNR",
    "Karras",
    "GivenTimes",
    "GRIDS",
    "make_grid",
    "SAMPLERS",
    "DEFAULT_METHOD",
    "SamplerOption",
    "sampler_options",
    "make_sampler",
    "solver_options",
    "uniform_grid",
]
