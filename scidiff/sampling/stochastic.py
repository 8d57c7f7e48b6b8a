r"""Stochastic samplers of the reverse process: DDPM ancestral, Euler-Maruyama, predictor-corrector.

* :class:`Ancestral` -- the DDPM posterior step q(x_s | x_t, x0-hat) between grid times
  t > s (Ho et al., NeurIPS 2020, Eq. 7, written for any grid), with
  alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = 1 - alpha_{t|s}^2:

      x_s = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0-hat
            + (sigma_{t|s} sigma_s / sigma_t) z.

* :class:`EulerMaruyama` -- the reverse SDE dx = -beta (x / 2 + s) dt + sqrt(beta) dw-bar
  stepped backwards, x <- x + beta dt (x / 2 + s) + sqrt(beta dt) z (Song et al., ICLR 2021).
* :class:`PredictorCorrector` -- Langevin corrector steps x <- x + eps s + sqrt(2 eps) z, then an
  Euler-Maruyama predictor (Song et al. 2021, Alg. 5), with the step size of the
  signal-to-noise rule eps = 2 alpha_i (r |z| / |s|)^2, alpha_i = exp(-beta dt), norms averaged
  over the batch.

Shapes: x is [B, *event] throughout; z ~ N(0, I) like x.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scidiff.sampling.base import GridLike, GridSampler, StepContext, check_steps

__all__ = ["Ancestral", "EulerMaruyama", "PredictorCorrector"]


class Ancestral(GridSampler):
    """DDPM ancestral sampling on any grid (default: ``steps`` points uniform in t to ``t_min``).

    ``steps`` grid points: steps - 1 posterior steps, then x0-hat at t_min.  NFE = steps.
    """

    name = "ancestral"
    default_steps = 1000
    summary = "DDPM posterior steps q(x_s | x_t, x0-hat) (stochastic)"

    def __init__(
        self, steps: int | None = None, *, grid: GridLike | None = None, t_min: float = 1e-3, denoise: bool = True
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        a_t, a_s = ctx.alpha[k], ctx.alpha[k + 1]
        s2_t, s2_s = ctx.sigma[k] ** 2, ctx.sigma[k + 1] ** 2
        s2_ts = -math.expm1(2.0 * (math.log(a_t) - math.log(a_s)))  # sigma_{t|s}^2
        c_x = (a_t / a_s) * s2_s / s2_t
        c_0 = a_s * s2_ts / s2_t
        std = math.sqrt(s2_ts * s2_s / s2_t)
        x0 = ctx.x0(x, k)
        return x.mul(c_x).add_(x0, alpha=c_0).add_(ctx.noise(x), alpha=std)


class EulerMaruyama(GridSampler):
    """Euler-Maruyama on the reverse SDE: ``steps`` steps on steps + 1 grid points from t = 1 to ``t_min``.

    x <- x + beta_k dt_k (x / 2 + s(x, t_k)) + sqrt(beta_k dt_k) z, dt_k = t_k - t_{k+1}; then the
    denoising.  NFE = steps (+ 1).
    """

    name = "euler_maruyama"
    default_steps = 1000
    summary = "Euler-Maruyama on the reverse SDE (stochastic)"

    def __init__(
        self, steps: int | None = None, *, grid: GridLike | None = None, t_min: float = 1e-3, denoise: bool = True
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)

    def points(self) -> int:
        return self.steps + 1

    def _steps_for_points(self, n: int) -> int:
        return n - 1

    def predictor(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        """One reverse Euler-Maruyama step from t_k to t_{k+1}."""
        beta_dt = ctx.beta[k] * (ctx.t[k] - ctx.t[k + 1])
        s = ctx.score(x, k)
        return x.mul(1.0 + 0.5 * beta_dt).add_(s, alpha=beta_dt).add_(ctx.noise(x), alpha=math.sqrt(beta_dt))

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        return self.predictor(ctx, k, x)


class PredictorCorrector(EulerMaruyama):
    """Predictor-corrector: at each grid time t_k, ``corrector_steps`` Langevin steps, then one
    Euler-Maruyama step to t_{k+1}.

    Langevin step (Song et al. 2021, Alg. 5): x <- x + eps s + sqrt(2 eps) z with
    eps = 2 alpha_i (snr |z| / |s|)^2, alpha_i = exp(-beta_k dt_k) (the signal kept over the step:
    positive on any grid), |z| and |s| the per-sample norms averaged over the batch.
    NFE = steps (1 + corrector_steps) (+ 1).
    """

    name = "pc"
    default_steps = 500
    summary = "Euler-Maruyama predictor + Langevin corrector (stochastic, 2 evaluations a step)"

    def __init__(
        self,
        steps: int | None = None,
        *,
        snr: float = 0.16,
        corrector_steps: int = 1,
        grid: GridLike | None = None,
        t_min: float = 1e-3,
        denoise: bool = True,
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)
        if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr > 0):
            raise ValueError(f"snr must be a positive number, got {snr}")
        self.snr = float(snr)
        self.corrector_steps = check_steps(corrector_steps, name="corrector_steps", minimum=0)

    @property
    def nfe(self) -> int:
        return self.steps * (1 + self.corrector_steps) + int(self.denoise)

    def langevin_step_size(self, s: Tensor, z: Tensor, alpha_i: float) -> Tensor:
        """eps = 2 alpha_i (snr mean|z| / mean|s|)^2, a 0-d tensor (no host sync)."""
        # norms averaged over the batch, as in Song et al.'s implementation: a per-sample
        # ratio is too noisy in few dimensions (|s| ~ 0 near a mode gives huge steps)
        s_norm = s.flatten(1).norm(dim=1).mean()
        z_norm = z.flatten(1).norm(dim=1).mean()
        return 2.0 * alpha_i * (self.snr * z_norm / s_norm.clamp_min(torch.finfo(s.dtype).tiny)) ** 2

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        alpha_i = math.exp(-ctx.beta[k] * (ctx.t[k] - ctx.t[k + 1]))
        for _ in range(self.corrector_steps):
            s = ctx.score(x, k)
            z = ctx.noise(x)
            eps = self.langevin_step_size(s, z, alpha_i)
            x = x + eps * s + torch.sqrt(2.0 * eps) * z
        return self.predictor(ctx, k, x)
