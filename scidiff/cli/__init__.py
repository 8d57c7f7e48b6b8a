"""The ``scidiff`` command line: argument parsing and printing over :mod:`scidiff.runs`.

    scidiff demo                                   the whole path on a built-in dataset, on a CPU
    scidiff data make NAME --n N --size S --out FILE.nc
    scidiff data list | scidiff data info FILE
    scidiff train --data FILE --var NAME[,NAME] [--cond P,...] --out RUN [--config FILE.toml]
    scidiff sample RUN --n N [--method NAME --steps N] [--cond theta=...] --out FILE.nc
    scidiff loglik RUN --data FILE [--divergence exact|hutchinson] --out FILE.nc|csv
    scidiff evaluate RUN --data FILE [--samples FILE.nc] [--out DIR]
    scidiff trajectory train --data FILE --var NAME --window W --out RUN
    scidiff trajectory sample RUN --length L --n N --out FILE.nc
    scidiff trajectory assimilate RUN --obs OBS.nc --length L --n N --out FILE.nc

One module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``; a new
subcommand is a new module listed in :data:`COMMANDS`.  Every subcommand explains itself with
``--help``.  A mistake in the input (a missing file, an unknown variable, fields on the wrong
grid, a folder that is not a run) ends with one line ``scidiff: error: ...`` and exit status 2;
``--debug`` shows the traceback instead.  See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from scidiff._version import __version__
from scidiff.cli._common import Formatter

__all__ = ["main", "build_parser", "COMMANDS"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS: tuple[str, ...] = ("demo", "data", "train", "sample", "loglik", "evaluate", "trajectory")
"""The subcommand modules of ``scidiff.cli``, in the order ``scidiff --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``scidiff`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="scidiff",
        description="Diffusion-model surrogates for gridded simulator output: train on fields, "
        "sample new ones, and evaluate exact log-likelihoods.\n\n"
        "Start with `scidiff demo`; each command below has its own --help.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"scidiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"scidiff.cli.{name}").add_parser(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError):
        text = f"missing entry {text}"
    if not text:
        text = type(err).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scidiff`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("scidiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # every failure ends in one line; --debug shows the traceback
        if debug:
            raise
        known = isinstance(err, (ValueError, TypeError, KeyError, OSError, ImportError))
        prefix = "scidiff: error: " if known else f"scidiff: error ({type(err).__name__}): "
        print(prefix + _one_line(err) + ("" if known else "  (run again with --debug for the traceback)"),
              file=sys.stderr)
        return EXIT_USAGE
