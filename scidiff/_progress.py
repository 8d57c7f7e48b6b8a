"""The one progress bar of scidiff: tqdm when asked for, a silent stand-in otherwise.

``progress_bar(total, desc, enabled=...)`` returns an object with ``update(n)``,
``set_postfix(dict)`` and ``close()`` (and works as a context manager) whether or not a bar
is shown, so callers never test for None; ``progress(iterable, ...)`` wraps an iterable.
tqdm is imported only when a bar is shown, so ``import scidiff`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["progress_bar", "progress"]

T = TypeVar("T")


class _Silent:
    """Does nothing, in tqdm's shape."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(
    total: float | None,
    desc: str,
    *,
    enabled: bool = True,
    unit: str = "it",
    initial: float = 0,
    leave: bool = True,
    bar_format: str | None = None,
) -> Any:
    """A bar over ``total`` units labelled ``desc`` (tqdm), or a silent stand-in if not ``enabled``."""
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                bar_format=bar_format)


def progress(
    iterable: Iterable[T], *, total: float | None = None, desc: str = "", enabled: bool = True, unit: str = "it",
    leave: bool = True,
) -> Iterator[T] | Iterable[T]:
    """``iterable`` itself, or wrapped in a tqdm bar if ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
