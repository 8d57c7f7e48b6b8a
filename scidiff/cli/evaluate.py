"""``scidiff evaluate``: sample-quality metrics and figures against data (:func:`scidiff.runs.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scidiff.cli._common import (
    add_run_argument, add_sampler_options, finish, lock_if_inside, open_run, positive_int, sampler_kwargs, say,
    show_progress, subcommand,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(
        sub, "evaluate", help="sample-quality metrics and figures against data",
        description="Compare a run's samples with data fields: power-spectrum error, Wasserstein-1 "
        "distance of the value histograms and moments per channel; writes metrics.json and PNG figures "
        "(samples beside data, spectra, histograms).\n\n"
        "example: scidiff evaluate runs/grf --data test.nc",
    )
    add_run_argument(p)
    p.add_argument("--data", required=True, help="netCDF / HDF5 file of reference fields")
    p.add_argument("--samples", help="samples written by `scidiff sample` (default: draw --n new ones)")
    p.add_argument("--n", type=positive_int, default=64, help="fields to draw when --samples is not given")
    p.add_argument("--batch-size", type=positive_int, default=64, help="fields per sampler call")
    p.add_argument("--out", help="folder for metrics.json and figures (default RUN/evaluation)")
    add_sampler_options(p)
    return finish(p, run)


def run(args: argparse.Namespace) -> int:
    from scidiff import runs

    loaded = open_run(args)
    out_dir = Path(args.out) if args.out else loaded.run.path / "evaluation"
    with lock_if_inside(loaded.run.path, out_dir):  # writing into the run folder: hold its lock
        result = runs.evaluate(
            loaded, args.data, out_dir=out_dir, n=args.n, samples=args.samples, seed=args.seed, method=args.method,
            batch_size=args.batch_size, progress=show_progress(args), **sampler_kwargs(args),
        )
    say(runs.format_metrics(result))
    say(f"metrics: {result['metrics_file']}")
    say(f"figures: {', '.join(result['figures'])}")
    return 0
