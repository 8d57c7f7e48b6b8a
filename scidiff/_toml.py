"""TOML configuration files: reading (tomllib, or tomli on 3.10) with one clear error per problem,
and the one writer of scidiff's own files (flat tables of scalars and lists)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["read_toml", "toml_value", "toml_table"]


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


def toml_value(value: Any) -> str:
    """One TOML value: a boolean, integer, float (inf and nan included), string or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string (escapes included) is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def toml_table(name: str | None, options: Mapping[str, Any]) -> str:
    """``[name]`` (omitted if None) and one ``key = value`` line per option, ending in a newline."""
    lines = [f"[{name}]"] if name else []
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"
