r"""The few-step default: per step, the member of the log-SNR multistep family that suits its size.

DPM-Solver++(2M) (Lu et al. 2022) and UniPC (Zhao et al. 2023) are one family of exponential
integrators of the probability-flow ODE in the half log-SNR lambda = log(alpha / sigma): a
predictor that integrates a polynomial through the last data predictions x0-hat exactly, and
optionally the corrector UniC, which reuses the next evaluation (:mod:`scidiff.sampling.unipc`).
Which member is best depends on the step h = lambda_{k+1} - lambda_k.  On one Gaussian mode of
variance v the data prediction along the flow is x0-hat(lambda) = sqrt(v) z (1 + e^{-2 u})^{-1/2},
u = lambda + ln(v) / 2: it grows like e^u below its transition and is flat above it, a change over
about one unit of lambda.  A polynomial through points further apart than that extrapolates the
rise past the plateau, the more so the higher its degree.  So this sampler takes

    h <= h_small            UniP-3 + UniC-3 (third order; the points resolve the transition),
    h_small < h <= h_large  UniP-2 without corrector, weight 1/2 (DPM-Solver++(2M)),
    h > h_large             UniP-2 + UniC-2 with every weight solved ("exact": the exact integral
                            of the linear interpolant through the two latest x0-hat).

The thresholds (h_small = 0.55, h_large = 1.75) are measured, not derived: in docs/samplers.md,
each member on the demo's trained model and on the closed-form k^-3 field, the default grid
(uniform in log-SNR, t_min = 1e-3: h = 9.58 / (steps - 1) for the linear VP) gives the exact
variant up to 6 steps, 2M from 7 to 18 and UniPC-3 from 19.  On a grid with steps of unequal
size each step chooses for itself.  NFE = steps; the order of convergence is UniPC-3's.
Shapes: x and every x0-hat are [B, *event].
"""

from __future__ import annotations

from torch import Tensor

from scidiff.sampling.base import GridLike, StepContext
from scidiff.sampling.unipc import UniPC

__all__ = ["StepSizeMultistep"]


class StepSizeMultistep(UniPC):
    """The multistep member chosen by the log-SNR step h (module docstring). NFE = steps.

    Args:
        h_small: steps of at most this size (in half log-SNR) are UniPC-3 steps.
        h_large: steps larger than this are UniPC-2 steps with exact weights; in between, 2M.
        lower_order_final: the step from point k has order <= n - k (as in :class:`UniPC`).
    """

    name = "auto"
    order = 3
    solver_order = 3
    summary = "few-step default: UniPC-3 on small log-SNR steps, DPM-Solver++ 2M on medium, exact UniPC-2 on large"

    def __init__(
        self,
        steps: int | None = None,
        *,
        grid: GridLike | None = None,
        t_min: float = 1e-3,
        denoise: bool = True,
        h_small: float = 0.55,
        h_large: float = 1.75,
        lower_order_final: bool = True,
    ) -> None:
        super().__init__(steps, grid=grid, t_min=t_min, denoise=denoise, lower_order_final=lower_order_final)
        for key, value in (("h_small", h_small), ("h_large", h_large)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{key} must be a non-negative number (inf allowed), got {value!r}")
        if h_large < h_small:
            raise ValueError(f"h_large must be >= h_small = {h_small}, got {h_large!r}")
        self.h_small = float(h_small)
        self.h_large = float(h_large)
        del self.variant, self.corrector  # chosen per step

    def member(self, h: float) -> tuple[int, bool, str]:
        """(predictor order, corrector, variant) for a step of size ``h`` in half log-SNR."""
        if h <= self.h_small:
            return 3, True, "bh2"
        if h <= self.h_large:
            return 2, False, "bh2"
        return 2, True, "exact"

    def step(self, ctx: StepContext, k: int, x: Tensor) -> Tensor:
        mem = ctx.memory
        history: list[Tensor] = mem.setdefault("D", [])
        d_k = ctx.x0(x, k)
        if k > 0 and mem["corrector"]:
            x = self._update(ctx, k - 1, mem["x"], history[: mem["order"]], d_k, mem["variant"])
        history.insert(0, d_k)
        del history[3:]
        p, corrector, variant = self.member(0.5 * (ctx.log_snr[k + 1] - ctx.log_snr[k]))
        order = min(p, len(history))
        if self.lower_order_final:
            order = min(order, ctx.n - k)
        mem.update(x=x, order=order, corrector=corrector, variant=variant)
        return self._update(ctx, k, x, history[:order], None, variant)
