r"""The probability-flow ODE sampler: dx/du = c(u) (x + s(x, t(u))) through ``torchdiffeq.odeint``.

In time t the PF-ODE of a VP process is dx/dt = -beta(t) (x + s(x, t)) / 2 (Song et al.,
ICLR 2021, Eq. 13); :mod:`scidiff._ode` writes it in a choice of time variable u.  The solve
runs from t = 1 to ``t_min`` with an :class:`~scidiff._ode.ODESolve` (the object the
likelihood uses too), then the sampler's final denoising takes x0-hat at t_min.
"""

from __future__ import annotations

import torch

from torch import Tensor

from scidiff._ode import NFECounter, ODESolve, PFODEDrift, TimeVariableName
from scidiff.sampling.base import Sampler, StepContext, check_t_min
from scidiff.sde import VPSDE

__all__ = ["ProbabilityFlowODE"]


class ProbabilityFlowODE(Sampler):
    """The probability-flow ODE from t = 1 to ``t_min`` with ``torchdiffeq.odeint``.

    Args:
        method: any torchdiffeq method ("dopri5", "bosh3", "adaptive_heun", "rk4", "euler", ...).
        rtol, atol: tolerances of adaptive methods.
        steps: number of steps for fixed-grid methods (ignored by adaptive ones).
        time_variable: "logsnr" (default), "t" or "sigma".
        t_min: the final time; then, if ``denoise``, the Tweedie mean (one more evaluation).

    NFE: chosen by the adaptive solver; steps x stages for a fixed-grid one (+ 1).
    """

    name = "ode"
    summary = "probability-flow ODE through torchdiffeq (adaptive dopri5 by default; deterministic)"

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
        self.solver = ODESolve(method=method, rtol=rtol, atol=atol, steps=steps, time_variable=time_variable)
        self.t_min = check_t_min(t_min)
        self.denoise = bool(denoise)

    def options(self) -> dict[str, object]:
        s = self.solver
        return {"method": s.method, "rtol": s.rtol, "atol": s.atol, "steps": s.steps,
                "time_variable": s.time_variable, "t_min": self.t_min, "denoise": self.denoise}

    def run(
        self, score: NFECounter, sde: VPSDE, x: Tensor, *, generator: torch.Generator | None, progress: bool
    ) -> Tensor:
        var = self.solver.variable(sde.schedule)
        u = var.u_of_t(torch.tensor([1.0, self.t_min], dtype=torch.float64, device=x.device))
        x_end = self.solver(PFODEDrift(score, var, self.t_min, 1.0), x, u)
        if not self.denoise:
            return x_end
        ctx = StepContext(score, sde, torch.tensor([self.t_min], dtype=torch.float64), x_end, generator)
        return ctx.x0(x_end, 0)
