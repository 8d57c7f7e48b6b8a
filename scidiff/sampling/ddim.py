r"""DDIM: the denoising diffusion implicit model's step, deterministic (eta = 0) to ancestral (eta = 1).

Between grid times t > s, with x0-hat = x0-hat(x_t, t) and eps-hat = (x_t - alpha_t x0-hat) / sigma_t
(Song, Meng & Ermon, ICLR 2021, Eq. 12 and 16):

    x_s = alpha_s x0-hat + sqrt(sigma_s^2 - c^2) eps-hat + c z,
    c   = eta (sigma_s / sigma_t) sigma_{t|s},   sigma_{t|s}^2 = 1 - alpha_t^2 / alpha_s^2.

eta = 0 is the first-order exponential integrator of the probability-flow ODE: in the
variables x-tilde = x / alpha and sigma-tilde = sigma / alpha it is Euler's step
x-tilde_s = x-tilde_t + (sigma-tilde_s - sigma-tilde_t) eps-hat, exact when x0-hat is constant
(DPM-Solver-1, Lu et al. 2022).  eta = 1 is the DDPM ancestral step q(x_s | x_t, x0-hat).
Shapes: x is [B, *event]; z ~ N(0, I) like x.
"""

from __future__ import annotations

import math

from torch import Tensor

from scidiff.sampling.base import GridLike, GridSampler, StepContext

__all__ = ["DDIM"]


class DDIM(GridSampler):
    """DDIM with stochasticity ``eta`` in [0, 1] on any grid.

    ``steps`` grid points (default uniform in log-SNR): steps - 1 DDIM steps, then x0-hat at
    t_min.  NFE = steps.  Deterministic for eta = 0 (order 1).
    """

    name = "ddim"
    default_steps = 50
    order = 1
    summary = "DDIM (eta = 0: first-order exponential ODE step; eta = 1: ancestral)"
    default_grid = "logsnr"

    def __init__(
        self,
        steps: int | None = None,
        *,
        eta: float = 0.0,
        grid: GridLike | None = None,
        t_min: float = 1e-3,
        denoise: bool = True,
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)
        if not (isinstance(eta, (int, float)) and 0.0 <= float(eta) <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.eta = float(eta)

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        a_t, a_s = ctx.alpha[k], ctx.alpha[k + 1]
        s_t, s_s = ctx.sigma[k], ctx.sigma[k + 1]
        x0 = ctx.x0(x, k)
        if self.eta == 0.0:
            # x_s = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) x0-hat
            r = s_s / s_t
            return x.mul(r).add_(x0, alpha=a_s - a_t * r)
        s_ts = math.sqrt(-math.expm1(2.0 * (math.log(a_t) - math.log(a_s))))  # sigma_{t|s}
        c = self.eta * (s_s / s_t) * s_ts
        d = math.sqrt(max(s_s * s_s - c * c, 0.0))
        # eps-hat = (x_t - alpha_t x0-hat) / sigma_t, folded into the coefficients of x_t and x0-hat
        return x.mul(d / s_t).add_(x0, alpha=a_s - d * a_t / s_t).add_(ctx.noise(x), alpha=c)
