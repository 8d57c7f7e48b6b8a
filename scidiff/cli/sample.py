"""``scidiff sample``: draw fields from a run (:func:`scidiff.runs.sample`) and write them as netCDF."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scidiff.cli._common import (
    NETCDF_SUFFIXES, add_run_argument, add_sampler_options, assignments, check_output, finish, lock_if_inside, open_run,
    positive_int, sampler_kwargs, say, show_progress, subcommand,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(
        sub, "sample", help="draw new fields from a trained run",
        description="Draw fields from a run's model (EMA weights) and write them as netCDF with the "
        "training data's variable names, dims, coordinates, units and attributes, plus provenance "
        "(model, method, seed, NFE).\n\n"
        "example: scidiff sample runs/grf --n 16 --out samples.nc",
    )
    add_run_argument(p)
    p.add_argument("--n", type=positive_int, default=16, help="number of fields")
    p.add_argument("--cond", action="append", metavar="NAME=VALUE",
                   help="parameter values for a conditional model: theta=0.5 (repeatable, or a,b comma list)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="fields per sampler call")
    p.add_argument("--out", required=True, help="the netCDF file to write")
    add_sampler_options(p)
    return finish(p, run)


def run(args: argparse.Namespace) -> int:
    from scidiff import runs
    from scidiff.data import write_netcdf

    out = Path(args.out)
    check_output(out, suffixes=NETCDF_SUFFIXES)
    with lock_if_inside(args.run, out):
        loaded = open_run(args)
        start = time.perf_counter()
        ds, _ = runs.sample(
            loaded, args.n, method=args.method, cond=assignments(args.cond), seed=args.seed,
            batch_size=args.batch_size, progress=show_progress(args), **sampler_kwargs(args),
        )
        write_netcdf(ds, out)
    say(
        f"drew {args.n} fields with method {args.method} (NFE {ds.attrs['nfe']}) in "
        f"{time.perf_counter() - start:.1f} s; wrote {out}"
    )
    return 0
