r"""Windows of consecutive states, and the Markov-blanket composition of window scores.

A trajectory ``x_{1:L}`` is a tensor ``[B, L, *state]`` (``state = (C, *spatial)``).  A window
of ``W = 2k + 1`` consecutive states starts at ``s = 0..L-W``; there are ``n_w = L - W + 1``.

If the process is Markov of order ``k``, the Markov blanket of state ``i`` is the ``k`` states
on each side of it, so

    grad_{x_i} log p(x_{1:L}) = grad_{x_i} log p(x_{i-k:i+k})          (k < i <= L - k),

and for the first (last) ``k + 1`` states the same holds with the first (last) window
(Rozet & Louppe, "Score-based data assimilation", NeurIPS 2023, sec. 3.1).  The composed
score therefore takes

* states ``1..k+1`` from the window starting at state 1,
* state ``i`` for ``k + 1 < i < L - k`` from the centre of the window centred on ``i``,
* states ``L-k..L`` from the window ending at state ``L``,

which uses every window once: one trajectory score costs ``L - 2k`` window evaluations
(each of ``W`` states), done here as one batched call of ``B (L - 2k)`` windows.
(0-based indices below: window ``s`` covers states ``s..s+2k`` and has its centre at ``s + k``.)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_window", "num_windows", "unfold_windows", "compose_windows"]


def check_window(window: int, length: int | None = None) -> int:
    """``window`` as an odd positive int ``W = 2k + 1`` (and ``<= length`` when given), else ValueError."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer W = 2k + 1, got {window!r}")
    if length is not None and window > length:
        raise ValueError(f"window W = {window} is longer than the trajectory (L = {length} states); "
                         f"use W <= L")
    return window


def num_windows(length: int, window: int) -> int:
    """``n_w = L - W + 1``: the window evaluations one trajectory score costs."""
    return length - check_window(window, length) + 1


def unfold_windows(x: Tensor, window: int) -> Tensor:
    """All windows of ``x`` [B, L, *state] as ``[B, n_w, W, *state]`` (a view; no copy)."""
    if x.ndim < 2:
        raise ValueError(f"trajectories must be [B, L, *state], got shape {list(x.shape)}")
    check_window(window, x.shape[1])
    return x.unfold(1, window, 1).movedim(-1, 2)


def compose_windows(window_values: Tensor, length: int) -> Tensor:
    """Compose per-window outputs ``[B, n_w, W, *state]`` into ``[B, L, *state]`` (module docstring)."""
    _, n_w, window = window_values.shape[:3]
    k = (check_window(window) - 1) // 2
    if n_w != length - window + 1:
        raise ValueError(f"{n_w} windows of W = {window} do not tile a trajectory of L = {length} states "
                         f"(expected {length - window + 1})")
    if n_w == 1:
        return window_values[:, 0]
    first = window_values[:, 0, : k + 1]                 # states 0..k
    middle = window_values[:, 1:-1, k]                   # states k+1..L-k-2: window centres
    last = window_values[:, -1, k:]                      # states L-k-1..L-1
    return torch.cat([first, middle, last], dim=1)
