"""Validation of network options and of the tensors a network is called with.

Every check raises one ValueError / TypeError sentence that names the network,
the offending argument, the expected shape and the shape received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from scidiff._validate import check_int

_AXES: dict[int, str] = {1: "L", 2: "H, W", 3: "D, H, W"}


def positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise (``scidiff._validate.check_int``)."""
    return check_int(name, value, minimum=minimum)


def channel_mults(value: Sequence[int]) -> tuple[int, ...]:
    """Return ``value`` as a non-empty tuple of positive ints, else raise."""
    mults = tuple(value)
    if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
        raise ValueError(f"channel_mults must be a non-empty tuple of positive integers; got {value!r}")
    return mults


def attention_levels(value: Sequence[int] | None, levels: int) -> tuple[int, ...]:
    """Normalise attention level indices (negative ones count from the coarsest) to 0..levels-1.

    ``None`` means the coarsest level only.
    """
    if value is None:
        return (levels - 1,)
    out: list[int] = []
    for level in value:
        if isinstance(level, bool) or not isinstance(level, int) or not -levels <= level < levels:
            raise ValueError(
                f"attention_levels must hold level indices in 0..{levels - 1} (there are {levels} levels, "
                f"one per entry of channel_mults); got {tuple(value)!r}"
            )
        out.append(level % levels)
    return tuple(sorted(set(out)))


def dropout(value: float) -> float:
    """Return ``value`` if it is a probability in [0, 1), else raise."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {value!r}")
    return float(value)


def field_description(dims: int, channels: int) -> str:
    """E.g. ``"2-D fields with 3 channels, shaped [B, 3, H, W]"``."""
    noun = "channel" if channels == 1 else "channels"
    return f"{dims}-D fields with {channels} {noun}, shaped [B, {channels}, {_AXES[dims]}]"


def field(net: str, x: object, *, dims: int, channels: int) -> Tensor:
    """Check that ``x`` is a floating tensor [B, channels, *spatial] with ``dims`` spatial axes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{net} expects x to be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != dims + 2 or x.shape[1] != channels:
        raise ValueError(f"{net} expects {field_description(dims, channels)}; got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{net} expects a floating-point x; got dtype {x.dtype}")
    return x


def time(net: str, t: object, batch: int, *, like: Tensor) -> Tensor:
    """Return t as a tensor [batch] in the dtype and on the device of ``like``.

    Accepts a Python number, a 0-d or one-element tensor (broadcast to the batch),
    or a tensor of shape [batch].
    """
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(float(t))
    if not isinstance(t, Tensor):
        raise TypeError(f"{net} expects t to be a float or a torch.Tensor of shape [{batch}]; got {type(t).__name__}")
    t = t.to(dtype=like.dtype, device=like.device)
    if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == 1):
        return t.reshape(1).expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(
            f"{net} expects t of shape [{batch}] (one time per sample of x, whose batch size is {batch}) "
            f"or a scalar; got shape {list(t.shape)}"
        )
    return t


def cond(net: str, c: object, batch: int, *, cond_dim: int, like: Tensor) -> Tensor | None:
    """Return the conditioning vector as [batch, cond_dim] in ``like``'s dtype and device.

    A single vector [cond_dim] or [1, cond_dim] is broadcast over the batch.
    """
    if cond_dim == 0:
        if c is not None:
            raise ValueError(f"{net} was built with cond_dim=0 and takes no cond; got cond (pass cond_dim > 0 to condition)")
        return None
    if c is None:
        raise ValueError(f"{net} was built with cond_dim={cond_dim} and needs cond of shape [B, {cond_dim}]; got None")
    if not isinstance(c, Tensor):
        raise TypeError(f"{net} expects cond to be a torch.Tensor of shape [B, {cond_dim}]; got {type(c).__name__}")
    if c.ndim == 1 and c.shape[0] == cond_dim:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != cond_dim or c.shape[0] not in (1, batch):
        raise ValueError(
            f"{net} expects cond of shape [{batch}, {cond_dim}] (or [{cond_dim}], shared by the batch); "
            f"got shape {list(c.shape)}"
        )
    return c.to(dtype=like.dtype, device=like.device).expand(batch, cond_dim)


def extra(net: str, e: object, *, extra_channels: int, like: Tensor) -> Tensor | None:
    """Return the extra input fields as [B, extra_channels, *spatial of like].

    A batch of one is broadcast over the batch of ``like``.
    """
    batch, spatial = like.shape[0], tuple(like.shape[2:])
    if extra_channels == 0:
        if e is not None:
            raise ValueError(f"{net} was built with extra_channels=0 and takes no extra fields; got extra")
        return None
    expected = [batch, extra_channels, *spatial]
    if e is None:
        raise ValueError(f"{net} was built with extra_channels={extra_channels} and needs extra of shape {expected}; got None")
    if not isinstance(e, Tensor):
        raise TypeError(f"{net} expects extra to be a torch.Tensor of shape {expected}; got {type(e).__name__}")
    if e.ndim != like.ndim or e.shape[1] != extra_channels or tuple(e.shape[2:]) != spatial or e.shape[0] not in (1, batch):
        raise ValueError(f"{net} expects extra of shape {expected} (batch 1 is broadcast); got shape {list(e.shape)}")
    return e.to(dtype=like.dtype, device=like.device).expand(batch, *e.shape[1:])


def periodic_sizes(net: str, spatial: Sequence[int], *, downsamples: int) -> None:
    """Raise unless every spatial size is a multiple of 2**downsamples (needed for exact periodicity)."""
    factor = 2**downsamples
    for n in spatial:
        if n % factor:
            below, above = (n // factor) * factor, (n // factor + 1) * factor
            sizes = f"{below} or {above}" if below > 0 else f"{above}"
            raise ValueError(
                f"spatial size {n} is not a multiple of {factor} (the {net} downsamples {downsamples} times): "
                f"use {sizes}, or periodic=False"
            )
