r"""Training data for window score models: the windows of ``W`` consecutive states of trajectories.

From trajectories ``x`` [N, L, C, *spatial] there are ``N (L - W + 1)`` windows (stride 1).
Two layouts of a window for a snapshot network:

* ``"channels"``: the states stacked as channels, ``[W C, *spatial]`` (state ``j``'s channels at
  ``j C .. j C + C - 1``) -- for a ``UNet(channels=W * C, dims=d)``; scored back through
  :class:`~scidiff.trajectories.StackedWindowScore`;
* ``"axis"``: time as one more leading axis, ``[C, W, *spatial]`` -- for a ``UNet(channels=C,
  dims=d + 1)`` (its padding then also applies along time); scored back through
  :class:`~scidiff.trajectories.AxisWindowScore`.

:class:`WindowDataset` is a map-style dataset that the trainer (:func:`scidiff.train`) reads
like any field dataset; :func:`window_fields` materialises all windows as one tensor.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torch.utils.data import Dataset

from scidiff.trajectories.windows import check_window

__all__ = ["WindowDataset", "window_fields", "WindowLayout", "to_layout", "from_layout"]

WindowLayout = Literal["channels", "axis"]
_LAYOUTS = ("channels", "axis")


def _check_layout(layout: str) -> str:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    return layout


def to_layout(windows: Tensor, layout: WindowLayout) -> Tensor:
    """Windows ``[B, W, C, *spatial]`` as network inputs: ``[B, W C, *spatial]`` or ``[B, C, W, *spatial]``."""
    _check_layout(layout)
    if layout == "channels":
        return windows.reshape(windows.shape[0], windows.shape[1] * windows.shape[2], *windows.shape[3:])
    return windows.transpose(1, 2)


def from_layout(fields: Tensor, layout: WindowLayout, window: int) -> Tensor:
    """The inverse of :func:`to_layout`: back to ``[B, W, C, *spatial]``."""
    _check_layout(layout)
    if layout == "channels":
        return fields.reshape(fields.shape[0], window, fields.shape[1] // window, *fields.shape[2:])
    return fields.transpose(1, 2)


class WindowDataset(Dataset):
    """All windows of ``W`` states of trajectories ``x`` [N, L, C, *spatial], one item each.

    Item ``i`` is window ``s = i mod n_w`` of trajectory ``i // n_w`` (``n_w = L - W + 1``), in
    ``layout``; the dataset keeps a reference to ``x`` (no copy).
    """

    def __init__(self, x: Tensor, window: int, *, layout: WindowLayout = "channels") -> None:
        if not isinstance(x, Tensor) or x.ndim < 4:
            raise ValueError(f"trajectories must be a tensor [N, L, C, *spatial], got "
                             f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        self.window = check_window(window, x.shape[1])
        self.layout = _check_layout(layout)
        self.x = x
        self.per_trajectory = x.shape[1] - self.window + 1

    def __len__(self) -> int:
        return self.x.shape[0] * self.per_trajectory

    def __getitem__(self, i: int) -> Tensor:
        n, s = divmod(int(i), self.per_trajectory)
        return to_layout(self.x[n, s:s + self.window][None], self.layout)[0]


def window_fields(x: Tensor, window: int, *, layout: WindowLayout = "channels") -> Tensor:
    """Every window of ``x`` [N, L, C, *spatial] as a tensor ``[N (L - W + 1), *item]`` (copied)."""
    check_window(window, x.shape[1])
    w = x.unfold(1, window, 1).movedim(-1, 2)                         # [N, n_w, W, C, *spatial]
    return to_layout(w.reshape(-1, *w.shape[2:]), layout).contiguous()
