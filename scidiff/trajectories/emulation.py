r"""Emulation in time: whole trajectories sampled jointly, or rolled out autoregressively.

* :func:`sample_trajectories` -- ``x_{1:L}`` drawn jointly from the composed score
  :class:`~scidiff.trajectories.MarkovBlanketScore` with any sampler of :func:`scidiff.sample`.
  Cost: ``NFE x (L - W + 1)`` window evaluations per trajectory, i.e. ``NFE (L - W + 1) / L`` per state.
* :func:`autoregressive_rollout` -- from ``p`` known states, repeatedly sample a window of
  ``W`` states whose first ``p`` are the last ``p`` states so far, conditioned on them through
  :class:`~scidiff.trajectories.MMPSGuidance` with an identity observation of small noise
  ``noise_std``, and keep the ``m = W - p`` new states:

      x_{j+1..j+m} ~ p(x_{j+1..j+m} | x_{j-p+1..j})           (the window model's conditional).

  For a Gaussian window model the MMPS conditional is exact (up to ``noise_std``).  Cost:
  ``NFE (cg_steps + 2) / m`` window forward-or-backward passes per new state.

Both return ``[B, L, *state]``.  Reference: Rozet & Louppe, "Score-based data assimilation",
NeurIPS 2023 (sec. 3 and the autoregressive baseline of sec. 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from scidiff.sde import VPSDE
from scidiff.guidance.mmps import MMPSGuidance
from scidiff.trajectories.observe import StateObservation
from scidiff.trajectories.score import MarkovBlanketScore
from scidiff.trajectories.windows import check_window

__all__ = ["sample_trajectories", "autoregressive_rollout", "Identity"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class Identity:
    """The identity operator on states, ``A(x) = x`` (linear, A A^T = I)."""

    linear = True

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def aat_diag(self, like: Tensor) -> Tensor:
        return torch.ones(like.shape[1:], dtype=like.dtype, device=like.device)

    def __repr__(self) -> str:
        return "Identity()"


def sample_trajectories(window_score: ScoreFn, sde: VPSDE, shape: Sequence[int], *, window: int,
                        method: str = "ode", **options: Any) -> Tensor:
    """Trajectories ``[B, L, *state]`` (``shape``) sampled jointly from the composed window score.

    ``options``: those of :func:`scidiff.sample` (``generator``, ``steps``, ``dtype``, ...).
    """
    from scidiff.sampling import sample

    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise ValueError(f"shape must be [B, L, *state], got {list(shape)}")
    check_window(window, shape[1])
    return sample(MarkovBlanketScore(window_score, window), sde, shape, method, **options)


def autoregressive_rollout(
    window_score: ScoreFn,
    sde: VPSDE,
    x_past: Tensor,
    length: int,
    *,
    window: int,
    noise_std: float = 1e-2,
    cg_steps: int = 3,
    method: str = "ode",
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """Extend ``x_past`` [B, p, *state] (``1 <= p < W``) to ``length`` states, ``m = W - p`` at a time.

    Returns ``[B, length, *state]`` whose first ``p`` states are ``x_past``.  ``noise_std`` is the
    standard deviation of the (identity) observation of the ``p`` known states in each window, in
    the units of x; ``options`` go to :func:`scidiff.sample`.
    """
    from scidiff.sampling import sample

    check_window(window)
    if not isinstance(x_past, Tensor) or x_past.ndim < 3:
        raise ValueError("x_past must be a tensor [B, p, *state]")
    p = x_past.shape[1]
    if not 1 <= p < window:
        raise ValueError(f"x_past holds {p} states; a window of W = {window} needs 1 <= p < W known states")
    if isinstance(length, bool) or not isinstance(length, int) or length < p:
        raise ValueError(f"length must be an integer >= {p} (the known states), got {length!r}")
    state = tuple(x_past.shape[2:])
    m = window - p
    observe = StateObservation(Identity(), list(range(p)), window, state)
    states = list(x_past.unbind(1))
    while len(states) < length:
        known = torch.stack(states[-p:], dim=1)
        guided = MMPSGuidance(window_score, sde, observe, known, noise_std, cg_steps=cg_steps)
        w = sample(guided, sde, (known.shape[0], window, *state), method, generator=generator,
                   dtype=known.dtype, device=known.device, progress=progress, **options)
        states.extend(w[:, p:].unbind(1))
    return torch.stack(states[:length], dim=1)
