"""Padding-aware convolutions and resampling layers for 1-, 2- and 3-D fields.

Every layer here takes ``periodic``: with ``periodic=True`` all padding is
circular, so a layer commutes with a cyclic shift of its input (by any whole
number of pixels for stride-1 layers, by an even number for the stride-2
downsampling, producing half the shift at the coarse level).  With
``periodic=False`` padding is with zeros.

Shapes: a field is ``[B, C, *spatial]`` with ``len(spatial) == dims``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class _CircularPad(torch.autograd.Function):
    """Circular padding whose backward folds the wrapped borders back in a few small adds.

    ``F.pad(mode="circular")`` is composed of slices; its backward allocates and fills a full
    zero tensor per slice and adds them up, which costs several times the convolution it feeds
    when many vector-Jacobian products run at once (the likelihood's divergence).  Here the
    backward per padded axis is one copy of the interior plus two border additions.  It is an
    ``autograd.Function`` with a forward-mode rule and a generated vmap rule, so ``torch.func``
    transforms (``vjp``, ``jvp``, ``vmap``) and double backward work through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, pad: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        return F.pad(x, pad, mode="circular")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.pad = inputs[1]

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        pad = ctx.pad
        for k in range(len(pad) // 2):  # F.pad order: last axis first
            axis = g.ndim - 1 - k
            lo, hi = pad[2 * k], pad[2 * k + 1]
            n = g.shape[axis] - lo - hi
            out = g.narrow(axis, lo, n).clone()
            if lo:
                out.narrow(axis, n - lo, lo).add_(g.narrow(axis, 0, lo))
            if hi:
                out.narrow(axis, 0, hi).add_(g.narrow(axis, lo + n, hi))
            g = out
        return g, None

    @staticmethod
    def jvp(ctx, x_t: Tensor, _pad: None) -> Tensor:  # type: ignore[override]
        return F.pad(x_t, ctx.pad, mode="circular")


def circular_pad(x: Tensor, pad: tuple[int, ...]) -> Tensor:
    """``F.pad(x, pad, mode="circular")`` with a cheap backward (see :class:`_CircularPad`)."""
    return _CircularPad.apply(x, tuple(pad))


def _periodic_conv_class(base: type[nn.Module]) -> type[nn.Module]:
    class PeriodicConv(base):  # type: ignore[misc, valid-type]
        """A convolution on a periodic grid: circular 'same' padding, then a valid convolution.

        The parameters are those of the plain convolution (same names and shapes).
        """

        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1) -> None:
            super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
            self.circular = (kernel_size // 2,) * (2 * len(self.kernel_size))

        def forward(self, x: Tensor) -> Tensor:
            return super().forward(circular_pad(x, self.circular))

    PeriodicConv.__name__ = PeriodicConv.__qualname__ = f"Periodic{base.__name__}"
    return PeriodicConv


_PERIODIC_CONV: dict[int, type[nn.Module]] = {d: _periodic_conv_class(c) for d, c in _CONV.items()}


def check_dims(dims: int) -> int:
    """Return ``dims`` if it is 1, 2 or 3, else raise ValueError."""
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in _CONV:
        raise ValueError(f"dims must be 1, 2 or 3 (spatial dimensions of the field); got {dims!r}")
    return dims


def conv(
    in_channels: int,
    out_channels: int,
    dims: int,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    periodic: bool = False,
) -> nn.Module:
    """A ``dims``-D convolution with 'same' padding (``kernel_size // 2`` per side).

    The padding is circular when ``periodic`` and zeros otherwise.  With
    ``stride=2`` and an even input size N the output has size N / 2.
    """
    if periodic:
        return _PERIODIC_CONV[check_dims(dims)](in_channels, out_channels, kernel_size, stride=stride)
    return _CONV[check_dims(dims)](in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


class Downsample(nn.Module):
    """Halve every spatial size by a stride-2, 3-wide convolution.

    ``[B, C, *N] -> [B, C, *ceil(N / 2)]``.  Circular padding when periodic,
    so a shift of the input by 2k pixels shifts the output by k pixels.
    """

    def __init__(self, channels: int, dims: int, *, periodic: bool = False) -> None:
        super().__init__()
        self.conv = conv(channels, channels, dims, stride=2, periodic=periodic)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Double every spatial size: nearest-neighbour repeat, then a 3-wide convolution.

    ``[B, C, *N] -> [B, C, *2N]``.  Circular padding when periodic, so a shift
    of the input by k pixels shifts the output by 2k pixels.
    """

    def __init__(self, channels: int, dims: int, *, periodic: bool = False) -> None:
        super().__init__()
        self.conv = conv(channels, channels, dims, periodic=periodic)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm over ``groups`` groups of ``channels``; raises if they do not divide."""
    if channels % groups != 0:
        raise ValueError(
            f"GroupNorm needs the channel count to be a multiple of groups: {channels} channels "
            f"cannot be split into groups={groups}; choose base_channels, channel_mults and "
            "groups so that every level width is a multiple of groups"
        )
    return nn.GroupNorm(groups, channels)


def padded_size(size: int, factor: int) -> int:
    """The smallest multiple of ``factor`` that is at least ``size``."""
    return -(-size // factor) * factor


def pad_to_multiple(x: Tensor, factor: int) -> Tensor:
    """Zero-pad every spatial axis of ``x`` [B, C, *N] at its end to a multiple of ``factor``."""
    spatial = x.shape[2:]
    pad: list[int] = []
    for n in reversed(spatial):  # F.pad lists the last axis first
        pad.extend((0, padded_size(n, factor) - n))
    if not any(pad):
        return x
    return F.pad(x, pad)


def crop_to(x: Tensor, spatial: tuple[int, ...] | torch.Size) -> Tensor:
    """Keep the leading ``spatial`` entries of each spatial axis of ``x`` [B, C, *N]."""
    index = (slice(None), slice(None), *(slice(0, n) for n in spatial))
    return x[index]
