"""What every subcommand shares: the help formatter, small argument types, common options, printing."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "Formatter",
    "subcommand",
    "finish",
    "add_run_argument",
    "open_run",
    "names",
    "ints",
    "positive_int",
    "param_value",
    "params",
    "assignments",
    "add_common",
    "add_sampler_options",
    "sampler_kwargs",
    "show_progress",
    "say",
    "check_out_folder",
    "check_output",
    "lock_if_inside",
    "NETCDF_SUFFIXES",
]

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5")
"""File name endings of netCDF-4 (HDF5) files, the format fields are written in."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "default" in text:
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: {default})"
        return text


# ---- argument types ---------------------------------------------------------------------------
def names(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (at least one name)."""
    out = [v.strip() for v in text.split(",") if v.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME,NAME,..., got {text!r}")
    return out


def ints(text: str) -> list[int]:
    """``"1,2,2"`` -> ``[1, 2, 2]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 1,2,2, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def param_value(text: str) -> Any:
    """An int, else a float, else true/false, else the text itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def params(items: list[str] | None) -> dict[str, Any]:
    """``["slope=3", "reynolds=500:2000"]`` -> ``{"slope": 3, "reynolds": (500, 2000)}`` (LOW:HIGH is a range)."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--param expects NAME=VALUE or NAME=LOW:HIGH, got {part!r}")
            if ":" in value:
                low, _, high = value.partition(":")
                out[name.strip()] = (param_value(low.strip()), param_value(high.strip()))
            else:
                out[name.strip()] = param_value(value.strip())
    return out


def assignments(items: list[str] | None, *, what: str = "--cond") -> dict[str, float]:
    """``["theta=0.5", "a=1,b=2"]`` -> ``{"theta": 0.5, "a": 1.0, "b": 2.0}``."""
    out: dict[str, float] = {}
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{what} expects NAME=VALUE, got {part!r}")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"{what} {name.strip()}: {value!r} is not a number") from None
    return out


# ---- building a subcommand ----------------------------------------------------------------------
def subcommand(sub: argparse._SubParsersAction, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """A new subcommand parser with the shared formatter."""
    return sub.add_parser(name, formatter_class=Formatter, help=help, description=description)


def finish(p: argparse.ArgumentParser, func: Any, **common: Any) -> argparse.ArgumentParser:
    """Add the general options (:func:`add_common`, with ``common``) and the function that runs ``p``."""
    add_common(p, **common)
    p.set_defaults(func=func)
    return p


def add_run_argument(p: argparse.ArgumentParser) -> None:
    """The positional RUN folder."""
    p.add_argument("run", help="the run folder written by `scidiff train`")


def open_run(args: argparse.Namespace) -> Any:
    """The run of ``args.run``, loaded on ``args.device`` (a :class:`scidiff.runs.LoadedModel`)."""
    from scidiff.runs import Run

    return Run.open(args.run).load(device=args.device)


# ---- options shared by several subcommands ----------------------------------------------------
def add_common(p: argparse.ArgumentParser, *, seed: bool = True, device: bool = True, seed_default: int | None = 0) -> None:
    """--seed, --device, --no-progress and --debug."""
    g = p.add_argument_group("general")
    if seed:
        g.add_argument("--seed", type=int, default=seed_default,
                       help="random seed (same seed, same result)" + ("" if seed_default is not None else
                                                                     "; default: the configuration's, else 0"))
    if device:
        g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    g.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _sampler_registry() -> tuple[dict[str, Any], Any, str]:
    from scidiff.sampling import DEFAULT_METHOD, SAMPLERS, sampler_options

    return SAMPLERS, sampler_options(), DEFAULT_METHOD


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """--method and the options of the samplers, read from the sampler registry (see docs/samplers.md)."""
    samplers, options, default = _sampler_registry()
    g = p.add_argument_group("sampler (see docs/samplers.md)")
    g.add_argument(
        "--method", default=default, choices=list(samplers),
        help="; ".join(f"{name}: {cls.summary}" for name, cls in samplers.items()) + f" (default: {default})",
    )
    for name, opt in options.items():
        if opt.type is bool:
            continue
        kind = positive_int if opt.type is int else opt.type
        shown = {m: f"{v:g}" if isinstance(v, float) else str(v) for m, v in opt.default.items() if v is not None}
        if len(set(shown.values())) == 1 and len(shown) > 1:
            defaults = f"{', '.join(shown)}; default {next(iter(shown.values()))}"
        else:
            defaults = "defaults: " + ", ".join(f"{m} {v}" for m, v in shown.items())
        g.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, choices=opt.choices,
                       help=f"{opt.help} ({defaults})")


def sampler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options of :func:`add_sampler_options` as keyword arguments of ``runs.sample``."""
    _, options, _ = _sampler_registry()
    return {name: getattr(args, name) for name in options if hasattr(args, name)}


# ---- printing and checks ----------------------------------------------------------------------
def show_progress(args: argparse.Namespace) -> bool:
    """Whether progress bars are wanted (no --no-progress)."""
    return not getattr(args, "no_progress", False)


def say(text: str = "") -> None:
    """Print one line to stdout at once."""
    print(text, flush=True)


def check_out_folder(out: Path) -> None:
    """Raise before any work if the folder of an output file does not exist."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {out}: folder {folder} does not exist")


def check_output(out: Path, *, suffixes: tuple[str, ...] | None = None, kind: str = "netCDF",
                 inputs: tuple[Any, ...] = (), option: str = "--out") -> None:
    """Raise before any work if ``out`` cannot be written, has the wrong suffix, or is one of ``inputs``.

    Args:
        out: the output file.
        suffixes: the endings its format allows (lower case, with the dot); None: any.
        kind: the format's name, for the message.
        inputs: the command's input files (None entries skipped): the output never replaces one.
        option: the option that named ``out``, for the message.
    """
    check_out_folder(out)
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {str(out)!r}: this command writes {kind} files; give a name ending in "
                         f"{', '.join(suffixes)}")
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        same = out.resolve() == source.resolve()
        if not same and out.exists() and source.exists():
            same = os.path.samefile(out, source)
        if same:
            raise ValueError(f"{option} {str(out)!r} is the input file {str(source)!r}: writing it would destroy "
                             "the input; choose another output name")


def lock_if_inside(run: Any, out: Path) -> Any:
    """The run folder's lock (:meth:`scidiff.runs.Run.lock`) if ``out`` lies inside ``run``, else a no-op context.

    A command writing into a run folder holds its lock like a training does, so that it never
    writes into a folder another process is changing.
    """
    import contextlib

    from scidiff.runs import Run

    root = Path(run).resolve()
    if not Path(out).resolve().is_relative_to(root):
        return contextlib.nullcontext()
    return Run.lock(root)
