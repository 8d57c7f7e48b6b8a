"""Errors raised on bad input files, and the spatial-size check for networks."""

from __future__ import annotations

from collections.abc import Sequence
from scidiff._validate import check_int

__all__ = ["DataError", "check_spatial_size"]


class DataError(ValueError):
    """A user's data file cannot be used as it is.

    The message is one sentence naming the file, the variable and the position
    (sample index, dimension) at fault, and what would work instead.
    """


def _nearest_multiples(size: int, multiple: int) -> tuple[int, ...]:
    """The multiples of ``multiple`` just below and just above ``size`` (positive only)."""
    below = (size // multiple) * multiple
    above = below + multiple
    return tuple(s for s in (below, above) if s > 0)


def check_spatial_size(
    shape: Sequence[int],
    multiple: int,
    *,
    dims: Sequence[str] | None = None,
    source: str | None = None,
) -> None:
    """Check that every spatial size is divisible by ``multiple``.

    A U-Net that halves the grid ``L`` times needs every spatial size to be a
    multiple of ``2**L``; pass ``multiple = 2**L``.

    Args:
        shape: the spatial sizes ``(*spatial)``, e.g. ``(H, W)``.
        multiple: the divisor every size must have (positive integer).
        dims: optional names of the spatial dims, used in the message.
        source: optional file name, used in the message.

    Raises:
        DataError: naming each offending dim, its size, and the nearest sizes that work.
    """
    check_int("multiple", multiple)
    shape = tuple(int(s) for s in shape)
    if dims is None:
        dims = [f"axis {i}" for i in range(len(shape))]
    elif len(dims) != len(shape):
        raise ValueError(f"dims {tuple(dims)} do not match the spatial shape {shape}")
    bad = []
    for name, size in zip(dims, shape):
        if size % multiple:
            works = " or ".join(str(s) for s in _nearest_multiples(size, multiple))
            bad.append(f"{name!s} has size {size} (nearest sizes that work: {works})")
    if bad:
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}spatial shape {shape} cannot be taken by a network that needs every size to be "
            f"a multiple of {multiple}: " + "; ".join(bad)
            + "; crop or pad the fields, or use a network with fewer resolution levels."
        )
