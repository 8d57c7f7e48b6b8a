r"""Scores of whole trajectories composed from a score over windows of ``W`` states.

* :class:`MarkovBlanketScore` -- ``score(x, t)`` for trajectories ``x`` [B, L, *state] of any
  length ``L >= W`` from a window score ``window_score(x_w, t)`` over ``x_w`` [B', W, *state]:
  all ``B (L - W + 1)`` windows in one call, composed by
  :func:`~scidiff.trajectories.windows.compose_windows` (Rozet & Louppe, NeurIPS 2023).
  It is itself a score: every sampler, the guidance and the likelihood take it.
* :class:`StackedWindowScore` -- a window score from a snapshot-style score network that sees
  the ``W`` states stacked as channels, ``[B', W C, *spatial]`` (``model.score`` of a
  :class:`~scidiff.ScoreModel` on a ``UNet(channels=W * C, ...)``).
* :class:`AxisWindowScore` -- the same for a network with time as one more leading axis,
  ``[B', C, W, *spatial]`` (a ``UNet(channels=C, dims=d + 1)``).
* :class:`ExactScore` -- ``s(x, t) = process.marginal_score(x, alpha_t, sigma_t)`` for any
  object with closed-form noised scores (:class:`~scidiff.simulators.AR1Field` windows or
  trajectories, :class:`~scidiff.simulators.GaussianRandomField` fields).

The VP noising acts on every state of the trajectory with the same ``t``, so a window of a
noised trajectory is a noised window: the window score at ``t`` is the score of the same
diffusion on windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from scidiff.parameterisation import batch_time
from scidiff.sde import VPSDE
from scidiff.trajectories.windows import check_window, compose_windows, unfold_windows

__all__ = ["MarkovBlanketScore", "StackedWindowScore", "AxisWindowScore", "ExactScore"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class MarkovBlanketScore:
    """The trajectory score composed from a window score (Markov blanket of order ``k = (W - 1) / 2``).

    Args:
        window_score: ``window_score(x_w, t) -> Tensor like x_w`` with ``x_w`` [B', W, *state], t [B'].
        window: ``W``, odd.
        max_windows: evaluate at most this many windows per call of ``window_score`` (None: all
            ``B (L - W + 1)`` windows in one call).

    Call: ``score(x, t)``, x [B, L, *state] with ``L >= W``, t [B] (or a scalar); returns [B, L, *state].
    Cost: ``L - W + 1`` window evaluations per trajectory (:meth:`windows_per_trajectory`).
    """

    def __init__(self, window_score: ScoreFn, window: int, *, max_windows: int | None = None) -> None:
        if not callable(window_score):
            raise TypeError(f"window_score must be a callable score(x, t), got {type(window_score).__name__}")
        self.window_score = window_score
        self.window = check_window(window)
        self.order = (self.window - 1) // 2
        if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                        or max_windows < 1):
            raise ValueError(f"max_windows must be None or a positive integer, got {max_windows!r}")
        self.max_windows = max_windows

    def windows_per_trajectory(self, length: int) -> int:
        """``L - W + 1``, the window evaluations one trajectory score costs."""
        return length - check_window(self.window, length) + 1

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 3:
            raise ValueError(f"trajectories must be a tensor [B, L, *state], got "
                             f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        batch, length = x.shape[:2]
        t = batch_time(t, x)
        windows = unfold_windows(x, self.window)                      # [B, n_w, W, *state]
        n_w = windows.shape[1]
        flat = windows.reshape(batch * n_w, *windows.shape[2:])
        t_flat = t.repeat_interleave(n_w)
        if self.max_windows is None or flat.shape[0] <= self.max_windows:
            out = self.window_score(flat, t_flat)
        else:
            out = torch.cat([self.window_score(flat[i:i + self.max_windows], t_flat[i:i + self.max_windows])
                             for i in range(0, flat.shape[0], self.max_windows)])
        if out.shape != flat.shape:
            raise ValueError(f"window_score returned shape {list(out.shape)} for windows of shape {list(flat.shape)}")
        return compose_windows(out.reshape(windows.shape), length)

    def __repr__(self) -> str:
        return f"MarkovBlanketScore(window={self.window}, order={self.order})"


class StackedWindowScore:
    """A window score from a network over states stacked as channels.

    ``x_w`` [B', W, C, *spatial] is reshaped to [B', W C, *spatial] (state ``j``'s channels at
    ``j C .. j C + C - 1``), scored by ``score(x, t, **kwargs)``, and reshaped back.

    Args:
        score: a snapshot score over ``W C`` channels, e.g. ``model.score``.
        **kwargs: passed to every call (e.g. ``cond=...``).
    """

    def __init__(self, score: Callable[..., Tensor], **kwargs: Any) -> None:
        if not callable(score):
            raise TypeError(f"score must be callable, got {type(score).__name__}")
        self.score = score
        self.kwargs = kwargs

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        if x.ndim < 4:
            raise ValueError(f"windows must be [B, W, C, *spatial], got shape {list(x.shape)}")
        stacked = x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])
        return self.score(stacked, batch_time(t, x), **self.kwargs).reshape(x.shape)


class AxisWindowScore:
    """A window score from a network that sees time as one more leading axis.

    ``x_w`` [B', W, C, *spatial] is transposed to [B', C, W, *spatial] (for a network with
    ``dims = d + 1``), scored by ``score(x, t, **kwargs)`` and transposed back.
    """

    def __init__(self, score: Callable[..., Tensor], **kwargs: Any) -> None:
        if not callable(score):
            raise TypeError(f"score must be callable, got {type(score).__name__}")
        self.score = score
        self.kwargs = kwargs

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        if x.ndim < 4:
            raise ValueError(f"windows must be [B, W, C, *spatial], got shape {list(x.shape)}")
        return self.score(x.transpose(1, 2), batch_time(t, x), **self.kwargs).transpose(1, 2)


class _Process(Protocol):
    def marginal_score(self, x: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor: ...


class ExactScore:
    """``s(x, t) = process.marginal_score(x, alpha_t, sigma_t)``: a closed-form score of the VP diffusion.

    Args:
        process: an object with ``marginal_score(x, alpha_t, sigma_t)`` (alpha_t, sigma_t [B]).
        sde: the VP-SDE giving ``alpha_t``, ``sigma_t`` (float64).
    """

    def __init__(self, process: _Process, sde: VPSDE) -> None:
        if not hasattr(process, "marginal_score"):
            raise TypeError(f"process must have a marginal_score(x, alpha_t, sigma_t) method, got "
                            f"{type(process).__name__}")
        self.process = process
        self.sde = sde

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        c = self.sde.coefficients(batch_time(t, x).to(torch.float64))
        return self.process.marginal_score(x, c.alpha, c.sigma)
