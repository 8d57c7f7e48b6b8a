r"""DPM-Solver++ multistep (2M, 3M): exponential integrators of the probability-flow ODE in log-SNR.

In the half log-SNR lambda = log(alpha / sigma) (half the ``log_snr`` of the schedules) the
PF-ODE for the data prediction x0-hat reads exactly (Lu, Zhou, Bao, Chen, Li & Zhu,
"DPM-Solver++", arXiv:2211.01095, Eq. 9)

    x_s = (sigma_s / sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0-hat(lambda) dlambda.

With h = lambda_s - lambda_t, phi_1 = expm1(-h), phi_2 = phi_1 / h + 1 and phi_3 = phi_2 / h - 1/2,
a polynomial x0-hat(lambda_t + tau) = D + tau D' + tau^2 D'' / 2 integrates to

    x_s = (sigma_s / sigma_t) x_t + alpha_s (-phi_1 D + h phi_2 D' - h^2 phi_3 D'').

* order 1 (D' = D'' = 0) is DDIM with eta = 0;
* 2M (Alg. 2 of the paper) replaces D by (1 + 1 / (2 r)) D_k - D_{k-1} / (2 r), r = h_{k-1} / h_k,
  with the previous step's data prediction;
* 3M integrates the quadratic through the last three data predictions exactly
  (D' and D'' from divided differences in lambda).

The first steps use the orders their history allows; the final step to sigma = 0 is the
denoising x0-hat(x_{t_min}).  Shapes: x and every D are [B, *event].
"""

from __future__ import annotations

import math

from torch import Tensor

from scidiff.sampling.base import GridLike, GridSampler, StepContext

__all__ = ["DPMSolverPP", "DPMSolverPP2M", "DPMSolverPP3M"]


class DPMSolverPP(GridSampler):
    """DPM-Solver++ multistep of order ``solver_order`` (1, 2 or 3) on any grid.

    ``steps`` grid points (default uniform in log-SNR): steps - 1 multistep steps, then x0-hat at
    t_min.  NFE = steps: one data prediction per grid point.

    Args:
        lower_order_final: with fewer than 15 points, take the step into t_min at order <= 2
            (stabilises very coarse grids, as in the reference implementation).
    """

    name = "dpmpp"
    default_steps = 20
    solver_order = 2
    default_grid = "logsnr"

    def __init__(
        self,
        steps: int | None = None,
        *,
        grid: GridLike | None = None,
        t_min: float = 1e-3,
        denoise: bool = True,
        lower_order_final: bool = True,
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)
        self.lower_order_final = bool(lower_order_final)

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        history: list[Tensor] = ctx.memory.setdefault("D", [])
        d_k = ctx.x0(x, k)
        history.insert(0, d_k)
        del history[self.solver_order :]
        order = min(self.solver_order, len(history))
        if self.lower_order_final and ctx.n < 15 and k + 1 == ctx.n - 1:
            order = min(order, 2)
        lam = ctx.log_snr  # log(alpha^2 / sigma^2): the paper's lambda is half of it
        h = 0.5 * (lam[k + 1] - lam[k])
        phi_1 = math.expm1(-h)
        ratio = ctx.sigma[k + 1] / ctx.sigma[k]
        a_s = ctx.alpha[k + 1]
        out = x.mul(ratio)
        if order == 1:
            return out.add_(d_k, alpha=-a_s * phi_1)
        h0 = 0.5 * (lam[k] - lam[k - 1])
        if order == 2:
            half_inv_r = 0.5 * h / h0  # 1 / (2 r), r = h0 / h
            out.add_(d_k, alpha=-a_s * phi_1 * (1.0 + half_inv_r))
            return out.add_(history[1], alpha=a_s * phi_1 * half_inv_r)
        h1 = 0.5 * (lam[k - 1] - lam[k - 2])
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        big_a = h * phi_2  # multiplies D'
        big_b = -h * h * phi_3  # multiplies D''
        # D'' = 2 (d1 - d2) / (h0 + h1), D' = d1 + h0 D'' / 2, d1 = (D_k - D_{k-1}) / h0, d2 = (D_{k-1} - D_{k-2}) / h1
        e = (0.5 * big_a * h0 + big_b) * 2.0 / (h0 + h1)
        c_k = -phi_1 + (big_a + e) / h0
        c_1 = -(big_a + e) / h0 - e / h1
        c_2 = e / h1
        out.add_(d_k, alpha=a_s * c_k).add_(history[1], alpha=a_s * c_1)
        return out.add_(history[2], alpha=a_s * c_2)


class DPMSolverPP2M(DPMSolverPP):
    """DPM-Solver++(2M): second-order multistep, data prediction (Lu et al. 2022, Alg. 2). NFE = steps."""

    name = "dpmpp_2m"
    order = 2
    solver_order = 2
    summary = "DPM-Solver++ 2M: second-order multistep exponential integrator in log-SNR"


class DPMSolverPP3M(DPMSolverPP):
    """DPM-Solver++(3M): third-order multistep, data prediction. NFE = steps."""

    name = "dpmpp_3m"
    order = 3
    solver_order = 3
    summary = "DPM-Solver++ 3M: third-order multistep exponential integrator in log-SNR"
