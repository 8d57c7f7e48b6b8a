"""Reading TOML configuration files with one clear error per problem (tomllib, or tomli on 3.10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["read_toml"]


def read_toml(path: str | Path, *, what: str = "configuration file") -> dict[str, Any]:
    """The parsed document of ``path``; FileNotFoundError / ValueError naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not valid TOML: {err}") from None
