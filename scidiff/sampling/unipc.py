r"""UniPC: a multistep predictor (UniP) and a corrector (UniC) that reuses the next evaluation.

Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", NeurIPS 2023 (arXiv:2302.04867), data-prediction form (their Alg. 2 / Eq. 9).
In the half log-SNR lambda = log(alpha / sigma), from t_{i-1} to t_i with h = lambda_i - lambda_{i-1},
the p previous data predictions x0-hat_{i-1}, x0-hat_{i-1-m} (m = 1..p-1) enter as

    r_m = (lambda_{i-1-m} - lambda_{i-1}) / h,      Delta_m = (x0-hat_{i-1-m} - x0-hat_{i-1}) / r_m,

    UniP-p:  x~_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h} - 1) x0-hat_{i-1}
                    - alpha_i B(h) sum_{m<p} a_m Delta_m,

and once x0-hat_i = x0-hat(x~_i, t_i) is known (the evaluation the next step needs anyway, so the
corrector costs no network evaluation) the corrector adds r_p = 1, Delta_p = x0-hat_i - x0-hat_{i-1}:

    UniC-p:  x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h} - 1) x0-hat_{i-1}
                   - alpha_i B(h) sum_{m<=p} a^c_m Delta_m.

The weights solve R a = g with R_{jm} = r_m^{j-1} and g_j = j! (-h) phi_{j+1}(-h) / B(h), where
phi_1(z) = (e^z - 1) / z and phi_{j+1}(z) = (phi_j(z) - 1 / j!) / z (the Taylor weights of the
exact integral); a single weight is 1/2 (the paper's choice for a 1 x 1 system, which makes
UniP-2 with B(h) = e^{-h} - 1 the DPM-Solver++(2M) step).  B(h) is ``variant``: "bh1" is
B(h) = -h, "bh2" is B(h) = e^{-h} - 1; "exact" solves the 1 x 1 system as well (the exact integral
of the linear interpolant; B(h) cancels).  UniP-p is of order p; UniC-p raises the order to p + 1.

The corrected x_i is the start of the next predictor step, whose x0-hat_i stays the one taken
at x~_i.  The first steps use the orders their history allows, the last steps the orders the
remaining points allow (``lower_order_final``); after the last grid point the base class returns
x0-hat(x~_{t_min}), so the corrector is not applied there.  Shapes: x and every x0-hat are [B, *event].
"""

from __future__ import annotations

import math

from torch import Tensor

from scidiff.sampling.base import GridLike, GridSampler, StepContext

__all__ = ["UniPC", "UniPC2", "UniPC3", "unipc_weights"]

_VARIANTS = ("bh1", "bh2", "exact")


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting on a small dense system of python floats."""
    n = len(rhs)
    a = [list(r) + [v] for r, v in zip(rows, rhs)]
    for c in range(n):
        p = max(range(c, n), key=lambda i: abs(a[i][c]))
        a[c], a[p] = a[p], a[c]
        for i in range(c + 1, n):
            f = a[i][c] / a[c][c]
            for j in range(c, n + 1):
                a[i][j] -= f * a[c][j]
    out = [0.0] * n
    for i in reversed(range(n)):
        out[i] = (a[i][n] - sum(a[i][j] * out[j] for j in range(i + 1, n))) / a[i][i]
    return out


def unipc_weights(r: list[float], h: float, variant: str) -> tuple[list[float], float]:
    """(a, B(h)): the weights a_1..a_q of the differences Delta_m with ratios ``r`` (q = len(r)).

    g_j = j! z phi_{j+1}(z) / B(h) with z = -h.  For "bh1" and "bh2" a single weight is 1/2
    (module docstring); "exact" solves the 1 x 1 system too, a_1 B(h) = z phi_2(z): the exact
    integral of the linear interpolant of x0-hat (B(h) then cancels from every product a_m B(h)).
    """
    z = -h
    big_b = z if variant == "bh1" else math.expm1(z)
    q = len(r)
    if q == 1 and variant != "exact":
        return [0.5], big_b
    g = []
    z_phi = math.expm1(z) / z - 1.0  # z phi_2(z) = phi_1(z) - 1
    fact = 1.0
    for j in range(1, q + 1):
        g.append(z_phi * fact / big_b)
        fact *= j + 1
        z_phi = z_phi / z - 1.0 / fact  # z phi_{j+2}(z) = phi_{j+1}(z) - 1 / (j + 1)!
    rows = [[rm ** (j - 1) for rm in r] for j in range(1, q + 1)]
    return _solve(rows, g), big_b


class UniPC(GridSampler):
    """UniPC of predictor order ``solver_order`` (1, 2 or 3) with the UniC corrector, on any grid.

    ``steps`` grid points (default uniform in log-SNR): steps - 1 predictor(-corrector) steps, then
    x0-hat at t_min.  NFE = steps: one data prediction per grid point, the corrector included.

    Args:
        variant: B(h), "bh1" (-h) or "bh2" (e^{-h} - 1), or "exact" (no B(h): every weight solved).
        corrector: apply UniC after every predictor step except into the last point.
        lower_order_final: the step from point k has order <= n - k, the steps left with the final
            denoising counted (so <= 2 into t_min, <= 3 into the point before).
    """

    name = "unipc"
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
        variant: str = "bh2",
        corrector: bool = True,
        lower_order_final: bool = True,
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise)
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {list(_VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.corrector = bool(corrector)
        self.lower_order_final = bool(lower_order_final)

    def _update(
        self, ctx: StepContext, k: int, x: Tensor, ds: list[Tensor], d_new: Tensor | None, variant: str | None = None
    ) -> Tensor:
        """The step from (t_k, x) to t_{k+1}: UniP with history ``ds`` = [x0-hat_k, x0-hat_{k-1}, ...],
        or UniC when ``d_new`` = x0-hat_{k+1} is given; ``variant`` defaults to the sampler's."""
        lam = ctx.log_snr  # log(alpha^2 / sigma^2): the paper's lambda is half of it
        h = 0.5 * (lam[k + 1] - lam[k])
        r = [0.5 * (lam[k - m] - lam[k]) / h for m in range(1, len(ds))]
        diffs = [(ds[m] - ds[0]) / r[m - 1] for m in range(1, len(ds))]
        if d_new is not None:
            r.append(1.0)
            diffs.append(d_new - ds[0])
        a_s = ctx.alpha[k + 1]
        out = x.mul(ctx.sigma[k + 1] / ctx.sigma[k]).add_(ds[0], alpha=-a_s * math.expm1(-h))
        if diffs:
            weights, big_b = unipc_weights(r, h, self.variant if variant is None else variant)
            for w, d in zip(weights, diffs):
                out.add_(d, alpha=-a_s * big_b * w)
        return out

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        mem = ctx.memory
        history: list[Tensor] = mem.setdefault("D", [])
        d_k = ctx.x0(x, k)
        if self.corrector and k > 0:
            # UniC at t_k from the step k - 1 -> k, with the order its predictor had
            x = self._update(ctx, k - 1, mem["x"], history[: mem["order"]], d_k)
        history.insert(0, d_k)
        del history[self.solver_order :]
        order = len(history)
        if self.lower_order_final:
            order = min(order, ctx.n - k)
        mem["x"], mem["order"] = x, order
        return self._update(ctx, k, x, history[:order], None)


class UniPC2(UniPC):
    """UniPC with UniP-2 and UniC-2 (B(h) = e^{-h} - 1 by default): third order. NFE = steps."""

    name = "unipc_2"
    order = 3
    solver_order = 2
    summary = "UniPC: UniP-2 predictor + UniC corrector (free), exponential integrator in log-SNR"


class UniPC3(UniPC):
    """UniPC with UniP-3 and UniC-3. NFE = steps.

    Third order overall, not fourth: the first step (UniP-1 + UniC-1) and the uncorrected last
    step into t_min (UniP-2) each make a local error O(h^3).
    """

    name = "unipc_3"
    order = 3
    solver_order = 3
    summary = "UniPC: UniP-3 predictor + UniC corrector (free), exponential integrator in log-SNR"
