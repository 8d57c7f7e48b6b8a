r"""Heun's second-order method on the probability-flow ODE (Karras, Aittala, Aila & Laine,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022).

In x-tilde = x / alpha and the noise level sigma-tilde = sigma / alpha the PF-ODE of a VP
process is dx-tilde / dsigma-tilde = (x-tilde - D(x, t)) / sigma-tilde, D = x0-hat (the paper's
Eq. 3 with s(t) = alpha).  Algorithm 1, from sigma-tilde_k to sigma-tilde_{k+1}:

    d   = (x-tilde_k - D(x_k, t_k)) / sigma-tilde_k
    x'  = x-tilde_k + (sigma-tilde_{k+1} - sigma-tilde_k) d                       (Euler)
    d'  = (x' - D(alpha_{k+1} x', t_{k+1})) / sigma-tilde_{k+1}
    x-tilde_{k+1} = x-tilde_k + (sigma-tilde_{k+1} - sigma-tilde_k) (d + d') / 2   (trapezoid)

and the last step, to sigma-tilde = 0, is Euler's: x_0 = D(x_{n-1}, t_{n-1}).  Algorithm 2 first
raises the noise: gamma = min(S_churn / n, sqrt(2) - 1) for S_tmin <= sigma-tilde_k <= S_tmax,
sigma-hat = (1 + gamma) sigma-tilde_k, x-tilde <- x-tilde + sqrt(sigma-hat^2 - sigma-tilde_k^2) S_noise z,
then takes the Heun step from sigma-hat.  Shapes: x is [B, *event].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scidiff.parameterisation import x0_hat
from scidiff.sampling.base import GridLike, GridSampler, StepContext

__all__ = ["Heun"]


class Heun(GridSampler):
    """EDM's Heun sampler: ``steps`` grid points (EDM's N; default Karras rho = 7), N - 1 Heun
    steps of two evaluations, then x0-hat at t_min.  NFE = 2 steps - 1.

    Args:
        s_churn, s_tmin, s_tmax, s_noise: Algorithm 2's stochasticity (S_churn = 0: Algorithm 1,
            deterministic); S_tmin and S_tmax bound sigma-tilde = sigma / alpha.
    """

    name = "heun"
    default_steps = 18
    order = 2
    summary = "EDM Heun: second-order ODE steps in sigma/alpha, 2 evaluations a step (optional churn)"
    default_grid = "karras"

    def __init__(
        self,
        steps: int | None = None,
        *,
        grid: GridLike | None = None,
        t_min: float = 1e-3,
        denoise: bool = True,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)
        for key, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        if not (isinstance(s_tmax, (int, float)) and s_tmax >= s_tmin):
            raise ValueError(f"s_tmax must be >= s_tmin = {s_tmin}, got {s_tmax!r}")
        self.s_churn = float(s_churn)
        self.s_tmin = float(s_tmin)
        self.s_tmax = float(s_tmax)
        self.s_noise = float(s_noise)

    @property
    def nfe(self) -> int:
        return 2 * (self.points() - 1) + int(self.denoise)

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        st_k, st_next = ctx.sigma_tilde[k], ctx.sigma_tilde[k + 1]
        xt = x / ctx.alpha[k]  # x-tilde
        gamma = 0.0
        if self.s_churn > 0 and self.s_tmin <= st_k <= self.s_tmax:
            gamma = min(self.s_churn / ctx.n, math.sqrt(2.0) - 1.0)
        # sigma-hat, capped at the grid's start (the score is known only for t <= t_0)
        st_hat = min(st_k * (1.0 + gamma), ctx.sigma_tilde[0])
        if st_hat > st_k:
            xt = xt.add(ctx.noise(x), alpha=self.s_noise * math.sqrt(st_hat**2 - st_k**2))
            t_hat = ctx.sde.schedule.t_of_log_snr(torch.tensor(-2.0 * math.log(st_hat), dtype=torch.float64))
            c = ctx.sde.schedule.coefficients(t_hat)
            a_hat = float(c.alpha)
            x_hat = xt * a_hat
            s = ctx.score_at(x_hat, t_hat)
            d0 = x0_hat(x_hat, s, c.alpha.to(x.dtype), c.sigma.to(x.dtype))
        else:
            x_hat = x
            d0 = ctx.x0(x, k)
        dst = st_next - st_hat
        d = (xt - d0) / st_hat
        x_euler = xt + dst * d
        d1 = ctx.x0(x_euler * ctx.alpha[k + 1], k + 1)
        d_prime = (x_euler - d1) / st_next
        return (xt + (0.5 * dst) * (d + d_prime)) * ctx.alpha[k + 1]
