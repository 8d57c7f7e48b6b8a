"""Validation of options at the edge: one sentence naming the option, the rule and the bad value.

Every public entry point checks its keyword options with these before any work, so a
mistake ends in ``ValueError: steps must be an integer >= 1; got 0`` rather than deep
inside a loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["check_int", "check_number", "check_options"]


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in [minimum, maximum], else a ValueError naming ``name``."""
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum  # type: ignore[operator]
    if not ok:
        rule = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {rule}; got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_number(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high``, else a ValueError naming ``name``.

    The interval is closed at ``low`` unless ``low_open`` and open at ``high`` unless
    ``high_open`` is False.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}; got {value!r}")
    return v


def check_options(source: str, given: object, known: Iterable[str], *, what: str = "option") -> None:
    """Raise unless ``given`` is a mapping whose keys are all ``known``; the message names ``source``,
    the unknown keys and the known ones (``what`` words them, e.g. "training option")."""
    if not isinstance(given, Mapping):
        raise TypeError(f"{source} must be a table/dict of {what}s, got {type(given).__name__}")
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{source} has unknown {what}(s) {unknown}; known {what}s are {sorted(known)}")
