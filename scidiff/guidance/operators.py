r"""Observation operators A for inverse problems y = A(x) + N(0, sigma_y^2 I).

An operator maps a batch of fields x [B, *event] to observations A(x) [B, *obs].  The
posterior-sampling guidance (:class:`scidiff.guidance.DPSGuidance`) differentiates through
it, so every operator is written in differentiable torch operations.  Linear operators
also report the diagonal of A A^T when that matrix is diagonal, which the variance-inflated
likelihood of Rozet & Louppe (2023) uses exactly:

=======================  ================================  =====================
operator                 A(x)                              diag of A A^T
=======================  ================================  =====================
:class:`SparseSensors`   x at P chosen elements, [B, P]    ones [P]
:class:`Mask`            x where mask is True, [B, P]      ones [P]
:class:`Subsample`       x[..., ::f, ::f] (every f-th)     ones [*obs]
:class:`CoarseGrain`     mean over f^d blocks              f^-d [*obs]
:class:`MatrixOperator`  x.flatten(1) @ A^T, [B, M]        A A^T is dense [M, M]
:class:`Lambda`          fn(x), any differentiable fn      user-supplied or None
=======================  ================================  =====================

Shapes: x is [B, *event] with event = (C, *spatial) for gridded fields; ``Subsample`` and
``CoarseGrain`` act on the trailing ``dims`` axes (default: every axis after the channel).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from scidiff._validate import check_int

__all__ = [
    "Operator",
    "SparseSensors",
    "Mask",
    "Subsample",
    "CoarseGrain",
    "MatrixOperator",
    "Lambda",
    "random_sensors",
]


class Operator:
    """Base class of observation operators: ``A(x)`` [B, *event] -> [B, *obs].

    Subclasses implement :meth:`__call__`; linear ones set ``linear = True`` and, where A A^T
    is diagonal, :meth:`aat_diag`.
    """

    linear: bool = False

    def __call__(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def aat_diag(self, like: Tensor) -> Tensor | None:
        """The diagonal of A A^T, shaped like one observation [*obs], when A A^T is diagonal.

        ``like`` is an observation batch [B, *obs] giving dtype, device and shape.  ``None``
        means A A^T is not known to be diagonal (nonlinear or dense operators).
        """
        return None

    def aat_dense(self, like: Tensor) -> Tensor | None:
        """The dense matrix A A^T [M, M] (M = prod(obs)), for small linear operators, else None."""
        return None

    @property
    def event_shape(self) -> tuple[int, ...] | None:
        """The field shape [*event] the operator is built for, when it fixes one."""
        return None


def _check_event(x: Tensor, event_shape: tuple[int, ...], who: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != event_shape:
        raise ValueError(
            f"{who} was built for fields of shape [B, {', '.join(map(str, event_shape))}] "
            f"but x has shape {list(x.shape)}"
        )


class SparseSensors(Operator):
    """Point sensors: A(x) = x at P chosen elements of each field, in the given order; [B, P].

    Args:
        indices: integer grid indices of the sensors, [P, len(event_shape)] (one row per
            sensor, e.g. (channel, row, column)), or flat indices [P] into the event.
        event_shape: the field shape [*event] (without the batch).

    A A^T = I_P.  :meth:`random` draws a random sensor set from a seed.
    """

    linear = True

    def __init__(self, indices: Tensor | Sequence, event_shape: Sequence[int]) -> None:
        self._event_shape = tuple(check_int("event_shape entry", int(n)) for n in event_shape)
        idx = torch.as_tensor(indices)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise TypeError(f"indices must be integers, got dtype {idx.dtype} (use Mask for a boolean mask)")
        idx = idx.long()
        numel = math.prod(self._event_shape)
        if idx.ndim == 2:
            if idx.shape[1] != len(self._event_shape):
                raise ValueError(
                    f"indices have {idx.shape[1]} columns but the event shape {list(self._event_shape)} has "
                    f"{len(self._event_shape)} axes"
                )
            bounds = torch.tensor(self._event_shape)
            if bool(((idx < 0) | (idx >= bounds)).any()):
                raise ValueError(f"sensor indices out of range for event shape {list(self._event_shape)}")
            strides = torch.tensor([math.prod(self._event_shape[i + 1 :]) for i in range(len(self._event_shape))])
            flat = (idx * strides).sum(1)
        elif idx.ndim == 1:
            if bool(((idx < 0) | (idx >= numel)).any()):
                raise ValueError(f"flat sensor indices must lie in [0, {numel}), got min {int(idx.min())}, max {int(idx.max())}")
            flat = idx
        else:
            raise ValueError(f"indices must be [P, {len(self._event_shape)}] or flat [P], got shape {list(idx.shape)}")
        if flat.numel() == 0:
            raise ValueError("at least one sensor is needed")
        if flat.unique().numel() != flat.numel():
            raise ValueError("sensor indices contain duplicates")
        self.flat_indices = flat

    @classmethod
    def random(cls, event_shape: Sequence[int], fraction: float = 0.05, *, seed: int = 0) -> "SparseSensors":
        """round(fraction * prod(event)) distinct sensors drawn uniformly (without replacement)."""
        return cls(random_sensors(event_shape, fraction, seed=seed), event_shape)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._event_shape

    @property
    def num_sensors(self) -> int:
        """P."""
        return int(self.flat_indices.numel())

    @property
    def mask(self) -> Tensor:
        """Boolean mask [*event], True at the sensors."""
        m = torch.zeros(math.prod(self._event_shape), dtype=torch.bool)
        m[self.flat_indices] = True
        return m.reshape(self._event_shape)

    @property
    def indices(self) -> Tensor:
        """Grid indices of the sensors, [P, len(event)]."""
        return torch.stack(torch.unravel_index(self.flat_indices, self._event_shape), dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        """x [B, *event] -> x.flatten(1)[:, indices], [B, P]."""
        _check_event(x, self._event_shape, type(self).__name__)
        return x.flatten(1)[:, self.flat_indices.to(x.device)]

    def scatter(self, y: Tensor, *, fill: float = math.nan) -> Tensor:
        """Observations y [B, P] (or [P]) back on the grid, ``fill`` elsewhere: [B, *event] (or [*event])."""
        batched = y.ndim == 2
        yb = y if batched else y[None]
        if yb.ndim != 2 or yb.shape[1] != self.num_sensors:
            raise ValueError(f"y must be [B, {self.num_sensors}] or [{self.num_sensors}], got {list(y.shape)}")
        out = torch.full((yb.shape[0], math.prod(self._event_shape)), fill, dtype=y.dtype, device=y.device)
        out[:, self.flat_indices.to(y.device)] = yb
        out = out.reshape(yb.shape[0], *self._event_shape)
        return out if batched else out[0]

    def aat_diag(self, like: Tensor) -> Tensor:
        return torch.ones(self.num_sensors, dtype=like.dtype, device=like.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.num_sensors}, event_shape={list(self._event_shape)})"


class Mask(SparseSensors):
    """Masking: A(x) = the elements of x where ``mask`` is True (row-major order), [B, P].

    Args:
        mask: boolean [*event] (the field shape without the batch), at least one True.

    A A^T = I_P.  ``scatter(y)`` puts observations back on the grid.
    """

    def __init__(self, mask: Tensor) -> None:
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor, got dtype {m.dtype}")
        if not bool(m.any()):
            raise ValueError("mask observes nothing (all False)")
        super().__init__(m.flatten().nonzero().flatten().cpu(), tuple(m.shape))


def random_sensors(event_shape: Sequence[int], fraction: float = 0.05, *, seed: int = 0) -> Tensor:
    """Flat indices [P] of round(fraction * prod(event)) distinct elements, drawn from ``seed``, sorted.

    With a channel axis of size 1 (event = (1, *spatial)) these are sensor positions on the grid.
    """
    numel = math.prod(int(n) for n in event_shape)
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    p = max(1, round(fraction * numel))
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(numel, generator=gen)[:p].sort().values


def _trailing_dims(x: Tensor, dims: int | None, who: str) -> int:
    d = max(1, x.ndim - 2) if dims is None else dims
    if d > x.ndim - 1:
        raise ValueError(f"{who} acts on {d} trailing axes but x has shape {list(x.shape)}")
    return d


class Subsample(Operator):
    """Subsampling: A(x) = x[..., o::f, o::f] on the trailing ``dims`` axes (every f-th point).

    Args:
        factor: the stride f >= 1.
        dims: number of trailing (spatial) axes to subsample; default every axis after the
            channel axis of x [B, C, *spatial] (the last axis for x [B, n]).
        offset: first index o kept on each axis, 0 <= o < f.

    A A^T = I.
    """

    linear = True

    def __init__(self, factor: int, *, dims: int | None = None, offset: int = 0) -> None:
        self.factor = check_int("factor", factor)
        self.dims = None if dims is None else check_int("dims", dims)
        if isinstance(offset, bool) or not isinstance(offset, int) or not (0 <= offset < factor):
            raise ValueError(f"offset must be an integer in [0, {factor}), got {offset!r}")
        self.offset = offset

    def __call__(self, x: Tensor) -> Tensor:
        """x [B, ..., n_1, .., n_d] -> [B, ..., ceil((n_i - o) / f)]."""
        d = _trailing_dims(x, self.dims, "Subsample")
        index = (Ellipsis,) + (slice(self.offset, None, self.factor),) * d
        return x[index]

    def aat_diag(self, like: Tensor) -> Tensor:
        return torch.ones(like.shape[1:], dtype=like.dtype, device=like.device)

    def __repr__(self) -> str:
        return f"Subsample(factor={self.factor}, dims={self.dims}, offset={self.offset})"


class CoarseGrain(Operator):
    """Coarse-graining: the mean of x over non-overlapping f x ... x f blocks of the trailing axes.

    A(x)_J = f^-d sum_{i in block J} x_i, so (A A^T)_JJ = f^d / f^(2d) = f^-d and the
    off-diagonal entries vanish (blocks do not overlap).

    Args:
        factor: block side f; every subsampled axis must be divisible by it.
        dims: number of trailing axes averaged; default every axis after the channel axis.
    """

    linear = True

    def __init__(self, factor: int, *, dims: int | None = None) -> None:
        self.factor = check_int("factor", factor)
        self.dims = None if dims is None else check_int("dims", dims)

    def __call__(self, x: Tensor) -> Tensor:
        """x [B, ..., n_1, .., n_d] -> [B, ..., n_1 / f, .., n_d / f]."""
        d = _trailing_dims(x, self.dims, "CoarseGrain")
        f = self.factor
        lead = x.shape[: x.ndim - d]
        sizes = x.shape[x.ndim - d :]
        if any(n % f for n in sizes):
            raise ValueError(f"CoarseGrain(factor={f}) needs sizes divisible by {f}, got spatial sizes {list(sizes)}")
        split: list[int] = []
        for n in sizes:
            split += [n // f, f]
        h = x.reshape(*lead, *split)
        block_axes = tuple(len(lead) + 2 * i + 1 for i in range(d))
        return h.mean(dim=block_axes)

    def aat_diag(self, like: Tensor) -> Tensor:
        d = _trailing_dims(like, self.dims, "CoarseGrain")
        return torch.full(like.shape[1:], float(self.factor) ** (-d), dtype=like.dtype, device=like.device)

    def __repr__(self) -> str:
        return f"CoarseGrain(factor={self.factor}, dims={self.dims})"


class MatrixOperator(Operator):
    """A dense linear map on the flattened field: A(x) = x.flatten(1) @ A^T, [B, M].

    Args:
        A: [M, D] with D = prod(event); it is moved to x's dtype and device when applied.

    A A^T [M, M] is available exactly (:meth:`aat_dense`); meant for small problems and tests.
    """

    linear = True

    def __init__(self, A: Tensor) -> None:
        A = torch.as_tensor(A)
        if A.ndim != 2 or not A.dtype.is_floating_point:
            raise ValueError(f"A must be a floating-point matrix [M, D], got dtype {A.dtype} and shape {list(A.shape)}")
        if not bool(torch.isfinite(A).all()):
            raise ValueError("A contains NaN or inf")
        self.A = A

    def __call__(self, x: Tensor) -> Tensor:
        xf = x.flatten(1)
        if xf.shape[1] != self.A.shape[1]:
            raise ValueError(f"A is {list(self.A.shape)} but fields have {xf.shape[1]} elements (x shape {list(x.shape)})")
        return xf @ self.A.to(dtype=x.dtype, device=x.device).T

    def aat_diag(self, like: Tensor) -> Tensor | None:
        aat = self.aat_dense(like)
        off = aat - torch.diag_embed(torch.diagonal(aat))
        return torch.diagonal(aat).clone() if bool((off == 0).all()) else None

    def aat_dense(self, like: Tensor) -> Tensor:
        A = self.A.to(dtype=like.dtype, device=like.device)
        return A @ A.T

    def __repr__(self) -> str:
        return f"MatrixOperator(A of shape {list(self.A.shape)})"


class Lambda(Operator):
    """Any differentiable user function: A(x) = fn(x), fn mapping [B, *event] to [B, *obs].

    Args:
        fn: the forward model, written in differentiable torch operations.
        aat_diag: optional diagonal of A A^T [*obs] (for a linear fn whose A A^T is diagonal);
            used by the variance-inflated likelihood, which otherwise approximates A A^T by I.
        linear: whether fn is linear (informative only).
    """

    def __init__(
        self, fn: Callable[[Tensor], Tensor], *, aat_diag: Tensor | None = None, linear: bool = False
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self._aat_diag = None if aat_diag is None else torch.as_tensor(aat_diag)
        self.linear = bool(linear)

    def __call__(self, x: Tensor) -> Tensor:
        out = self.fn(x)
        if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"the operator function must return a tensor [B, *obs] with B = {x.shape[0]}, got "
                f"{type(out).__name__ if not isinstance(out, Tensor) else list(out.shape)}"
            )
        return out

    def aat_diag(self, like: Tensor) -> Tensor | None:
        if self._aat_diag is None:
            return None
        if tuple(self._aat_diag.shape) != tuple(like.shape[1:]):
            raise ValueError(
                f"aat_diag has shape {list(self._aat_diag.shape)} but observations are {list(like.shape[1:])}"
            )
        return self._aat_diag.to(dtype=like.dtype, device=like.device)

    def __repr__(self) -> str:
        return f"Lambda({getattr(self.fn, '__name__', type(self.fn).__name__)})"
