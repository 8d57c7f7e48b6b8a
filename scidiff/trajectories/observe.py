r"""Observations of a trajectory sparse in space and time: one state operator at chosen times.

For a trajectory ``x_{1:L}`` [B, L, *state] and observation times ``tau_1 < ... < tau_T`` (state
indices, 0-based), :class:`StateObservation` is the operator

    A(x_{1:L}) = [A_s(x_{tau_1}), ..., A_s(x_{tau_T})]          [B, T, *obs],

with ``A_s`` any snapshot operator of :mod:`scidiff.operators` (point sensors, masks,
subsampling, coarse-graining, a matrix) acting on one state [B, *state].  It is an
:class:`~scidiff.operators.Operator`, so :class:`~scidiff.DPSGuidance` and
:class:`~scidiff.trajectories.MMPSGuidance` take it unchanged.  For a linear ``A_s``,
A A^T is block diagonal over times, with the blocks of ``A_s``; :meth:`StateObservation.linear_observations`
gives the dense ``H`` per time for the Kalman smoother.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

try:  # the operators' home may move under scidiff.guidance; both paths are kept
    from scidiff.guidance.operators import Operator
except ImportError:  # pragma: no cover - older layout
    from scidiff.operators import Operator

from scidiff.trajectories.kalman import LinearObservation

__all__ = ["StateObservation", "every_nth"]


def every_nth(length: int, n: int, *, offset: int = 0) -> list[int]:
    """Observation times ``offset, offset + n, ...`` below ``length`` (state indices)."""
    for name, v in (("length", length), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < length:
        raise ValueError(f"offset must be an integer in [0, {length}), got {offset!r}")
    return list(range(offset, length, n))


class StateObservation(Operator):
    """``A(x) = stack_j A_s(x[:, tau_j])``: a state operator at chosen times of a trajectory.

    Args:
        operator: the operator on one state, ``A_s(x)`` [B, *state] -> [B, *obs] (a
            :class:`~scidiff.operators.Operator` or any differentiable callable).
        times: observation times as state indices in ``[0, length)``, distinct.
        length: ``L``, the number of states of the trajectories observed.
        state_shape: ``[*state]`` (e.g. ``(C, *spatial)``); checked against the operator now.
    """

    def __init__(self, operator, times: Sequence[int], length: int, state_shape: Sequence[int]) -> None:
        if not callable(operator):
            raise TypeError(f"operator must be callable on states [B, *state], got {type(operator).__name__}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        times = [int(k) for k in times]
        if not times:
            raise ValueError("times must name at least one observed state")
        outside = sorted(k for k in times if not 0 <= k < length)
        if outside:
            raise ValueError(f"observation times {outside} lie outside the trajectory of {length} states "
                             f"(indices 0..{length - 1})")
        if len(set(times)) != len(times):
            raise ValueError(f"observation times must be distinct, got {times}")
        self.operator = operator
        self.times = times
        self.length = length
        self.state_shape = tuple(int(n) for n in state_shape)
        self.linear = bool(getattr(operator, "linear", False))
        dummy = torch.zeros((1, *self.state_shape), dtype=torch.float64)
        try:
            with torch.no_grad():
                self.obs_shape = tuple(operator(dummy).shape[1:])
        except Exception as err:  # noqa: BLE001 - the operator's own message is kept
            raise ValueError(f"the state operator {operator!r} does not accept states of shape "
                             f"{list(self.state_shape)}: {err}") from None
        self._index = torch.tensor(times, dtype=torch.long)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """``(L, *state)``."""
        return (self.length, *self.state_shape)

    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"StateObservation was built for trajectories [B, {', '.join(map(str, self.event_shape))}] "
                             f"but x has shape {list(x.shape)}")
        sel = x.index_select(1, self._index.to(x.device))                # [B, T, *state]
        out = self.operator(sel.reshape(-1, *self.state_shape))
        return out.reshape(x.shape[0], len(self.times), *out.shape[1:])

    def aat_diag(self, like: Tensor) -> Tensor | None:
        fn = getattr(self.operator, "aat_diag", None)
        if fn is None:
            return None
        d = fn(like.reshape(-1, *like.shape[2:]))
        return None if d is None else d.expand(len(self.times), *d.shape)

    def matrix(self) -> Tensor:
        """The state operator as a dense matrix ``H`` [M, D] (float64; linear operators only)."""
        if not self.linear:
            raise ValueError(f"the state operator {self.operator!r} is not linear; it has no matrix")
        d = math.prod(self.state_shape)
        basis = torch.eye(d, dtype=torch.float64).reshape(d, *self.state_shape)
        with torch.no_grad():
            return self.operator(basis).reshape(d, -1).T.contiguous()

    def linear_observations(self, y: Tensor, noise_std: float | Tensor) -> dict[int, LinearObservation]:
        """``{tau_j: LinearObservation(H, y_j, noise_std^2)}`` for :func:`~scidiff.trajectories.kalman_smoother`.

        ``y``: [T, *obs] (one trajectory's observations); ``noise_std``: a number or broadcastable to [*obs].
        """
        H = self.matrix()
        y = torch.as_tensor(y, dtype=torch.float64)
        if tuple(y.shape) != (len(self.times), *self.obs_shape):
            raise ValueError(f"y must be [T, *obs] = {[len(self.times), *self.obs_shape]}, got {list(y.shape)}")
        var = torch.broadcast_to(torch.as_tensor(noise_std, dtype=torch.float64) ** 2, self.obs_shape).reshape(-1)
        return {k: LinearObservation(H, y[j].reshape(-1), var) for j, k in enumerate(self.times)}

    def __repr__(self) -> str:
        return f"StateObservation({self.operator!r}, times={self.times}, length={self.length})"
