"""Validation helpers for the simulators: one clear sentence per bad value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from scidiff._validate import check_int


def check_size(size: object, *, name: str = "size", minimum: int = 2) -> int:
    """Return ``size`` as an int, or raise ValueError if it is not an integer >= ``minimum``."""
    return check_int(name, size, minimum=minimum)


def check_dims(dims: object, *, allowed: Sequence[int] = (1, 2, 3)) -> int:
    """Return ``dims`` as an int, or raise ValueError if it is not one of ``allowed``."""
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in allowed:
        raise ValueError(f"dims must be one of {tuple(allowed)}, got {dims!r}.")
    return dims


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or >= 0), else raise ValueError naming it."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    ok = v >= 0 if allow_zero else v > 0
    if not (math.isfinite(v) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return v


def check_finite(value: object, name: str) -> float:
    """Return ``value`` as a finite float, else raise ValueError naming it."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return v


def check_tensor_param(value: Tensor, name: str, *, positive: bool = False) -> None:
    """Raise ValueError if a parameter tensor has non-finite (or non-positive) entries."""
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite everywhere, got a tensor with non-finite values.")
    if positive and not (value > 0).all():
        raise ValueError(f"{name} must be > 0 everywhere, got a tensor with values <= 0.")


def make_generator(generator: torch.Generator | None, seed: int | None,
                   device: torch.device | str | None = None) -> torch.Generator | None:
    """The generator to draw from: ``generator``, or a new one seeded with ``seed``, or None."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both.")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        g = torch.Generator(device=device if device is not None else "cpu")
        g.manual_seed(seed)
        return g
    return generator
