r"""Classifier (or regressor) guidance (Dhariwal & Nichol 2021, sec. 4; Song et al. 2021, sec. 5).

    s_guided(x, t) = s(x, t) + scale * grad_x log p(y | x_t = x, t)

with log p(y | x_t) any differentiable function of (x_t, t): a noise-conditional classifier's
log-softmax of the wanted label, a Gaussian regressor's log-density of the wanted parameter
value (:class:`scidiff.guidance.NoisyRegressor`), or, in a linear-Gaussian problem, the exact
likelihood -- in which case ``scale = 1`` gives the exact posterior score.

Cost per evaluation: one prior-score evaluation (no graph) plus one forward and one backward
of ``log_prob_fn``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scidiff.guidance.base import GuidedScore, ScoreFn
from scidiff.sde import VPSDE

__all__ = ["ClassifierGuidance"]


class ClassifierGuidance(GuidedScore):
    """The score s(x, t) + scale * grad_x log_prob_fn(x, t).

    Args:
        score: prior score s(x, t) -> [B, *event].
        sde: its VP-SDE.
        log_prob_fn: ``log_prob_fn(x_t, t) -> [B]``, log p(y | x_t) per sample (nats); x_t is
            [B, *event] and t is [B].  It must be differentiable in x_t.
        scale: guidance weight (1 = Bayes' rule).

    Call: ``guided(x, t)`` with x [B, *event], t [B]; returns a tensor like x with no graph.
    """

    def __init__(
        self,
        score: ScoreFn,
        sde: VPSDE,
        log_prob_fn: Callable[[Tensor, Tensor], Tensor],
        scale: float = 1.0,
    ) -> None:
        super().__init__(score, sde, scale=scale)
        if not callable(log_prob_fn):
            raise TypeError(f"log_prob_fn must be callable log_prob_fn(x_t, t) -> [B], got {type(log_prob_fn).__name__}")
        self.log_prob_fn = log_prob_fn

    def _score_and_log_p(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            s = self.score(x.detach(), t)
        log_p = self.log_prob_fn(x, t)
        if not isinstance(log_p, Tensor):
            raise TypeError(f"log_prob_fn must return a tensor [B], got {type(log_p).__name__}")
        return s, log_p

    def __repr__(self) -> str:
        return f"ClassifierGuidance(scale={self.scale}, log_prob_fn={getattr(self.log_prob_fn, '__name__', self.log_prob_fn)!r})"
