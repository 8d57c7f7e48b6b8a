r"""The shared machinery of guided scores: s_guided(x, t) = s(x, t) + scale * grad_x log p(y | x_t).

A subclass supplies :meth:`GuidedScore._score_and_log_p`, returning the prior score s(x, t)
[B, *event] and log p(y | x_t) [B] computed from a leaf copy of x that requires grad.  The
base class takes the gradient with ``torch.autograd.grad(log_p.sum(), x)`` -- inputs x only,
so parameters of any network involved never get a ``.grad`` -- inside
``torch.inference_mode(False)`` and ``torch.enable_grad()`` (samplers call scores under
``torch.no_grad``; users may call them under ``torch.inference_mode``), and returns the
detached sum.  log p(y | x_t) of different samples are independent, so the gradient of the
batch sum is the per-sample gradient.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from scidiff.parameterisation import batch_time
from scidiff.sde import VPSDE

__all__ = ["GuidedScore", "ScoreFn", "check_scale", "batch_time"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def check_scale(scale: float) -> float:
    """``scale`` as a finite python float (ValueError otherwise)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


class GuidedScore(ABC):
    """A score plus a scaled likelihood gradient; call it as ``guided(x, t) -> Tensor like x``.

    Args:
        score: the prior score s(x, t) [B, *event] (``model.score``, a closed form, ...).
        sde: the VP-SDE of the score (gives alpha_t and sigma_t).
        scale: the guidance weight; 1 is Bayes' rule, other values sharpen (> 1) or flatten
            the likelihood (p(y | x_t)^scale).

    A guided score takes a gradient itself (``takes_gradients``), so the likelihood's
    divergence goes through autograd rather than ``torch.func`` for it.
    """

    takes_gradients = True

    def __init__(self, score: ScoreFn, sde: VPSDE, *, scale: float = 1.0) -> None:
        if not callable(score):
            raise TypeError(f"score must be a callable score(x, t), got {type(score).__name__}")
        if not isinstance(sde, VPSDE):
            raise TypeError(f"sde must be a scidiff.VPSDE, got {type(sde).__name__}")
        self.score = score
        self.sde = sde
        self.scale = check_scale(scale)

    @abstractmethod
    def _score_and_log_p(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(s(x, t) [B, *event], log p(y | x_t) [B]) from a leaf ``x`` that requires grad."""

    def _graph_inputs(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Normal (non-inference) copies: x as a leaf requiring grad, t as [B]."""
        x_in = x.detach().clone().requires_grad_(True)
        t_in = batch_time(t, x_in).detach().clone()
        return x_in, t_in

    def score_and_grad(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(s(x, t), grad_x log p(y | x_t), log p(y | x_t)), all detached; shapes x, x, [B]."""
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point tensor [B, *event], got {type(x).__name__}")
        with torch.inference_mode(False), torch.enable_grad():
            x_in, t_in = self._graph_inputs(x, t)
            s, log_p = self._score_and_log_p(x_in, t_in)
            if log_p.shape != (x.shape[0],):
                raise ValueError(
                    f"log p(y | x_t) must have one value per sample, shape [{x.shape[0]}], got {list(log_p.shape)}"
                )
            if not log_p.requires_grad:
                raise ValueError("log p(y | x_t) does not depend on x_t: nothing to guide with")
            (grad,) = torch.autograd.grad(log_p.sum(), x_in)
        return s.detach(), grad.detach(), log_p.detach()

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        """s(x, t) + scale * grad_x log p(y | x_t), shaped like x, with no autograd graph."""
        s, grad, _ = self.score_and_grad(x, t)
        return (s + self.scale * grad).to(x.dtype)

    def log_p(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The guiding log p(y | x_t) [B] at x (a diagnostic; costs what a call costs)."""
        return self.score_and_grad(x, t)[2]

    def _alpha_sigma(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t and sigma_t as [B, 1, ...] in x's dtype (built from normal tensors)."""
        c = self.sde.coefficients(t).like(x)
        return c.alpha, c.sigma
