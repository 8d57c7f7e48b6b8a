"""``scidiff loglik``: log p(x) of every field of a file under a run (:func:`scidiff.runs.loglik`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scidiff.cli._common import (
    add_run_argument, check_out_folder, finish, open_run, positive_int, say, show_progress, subcommand,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(
        sub, "loglik", help="log-likelihood of each field of a file",
        description="log p(x) of every field of a file through the probability-flow ODE, in nats and "
        "bits/dim, in the units of the file's variables (the normalisation's Jacobian is included).\n\n"
        "example: scidiff loglik runs/grf --data test.nc --out loglik.csv",
    )
    add_run_argument(p)
    p.add_argument("--data", required=True, help="netCDF / HDF5 file with the run's variables on its grid")
    p.add_argument("--divergence", choices=["exact", "hutchinson"], default="hutchinson",
                   help="exact: full Jacobian trace (D backward passes per step); hutchinson: unbiased estimate")
    p.add_argument("--probes", type=positive_int, default=1, help="Hutchinson probes per field")
    p.add_argument("--n", type=positive_int, default=None, help="only the first N fields")
    p.add_argument("--batch-size", type=positive_int, default=32, help="fields per ODE solve")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance")
    p.add_argument("--t-min", type=float, default=1e-5, help="where the flow starts (log p_t_min ~ log p_0)")
    p.add_argument("--time-variable", choices=["logsnr", "t", "sigma"], default=None,
                   help="ODE integration variable (default: that of scidiff.log_likelihood; see docs/samplers.md)")
    p.add_argument("--out", required=True, help="output table: FILE.nc or FILE.csv")
    return finish(p, run)


def run(args: argparse.Namespace) -> int:
    from scidiff import runs

    out = Path(args.out)
    check_out_folder(out)
    if out.suffix.lower() not in (".nc", ".csv", ".nc4"):
        raise ValueError(f"--out {str(out)!r}: give a .nc or .csv file name")
    loaded = open_run(args)
    ds = runs.loglik(
        loaded, args.data, divergence=args.divergence, n=args.n, batch_size=args.batch_size, probes=args.probes,
        rtol=args.rtol, atol=args.atol, t_min=args.t_min, time_variable=args.time_variable, seed=args.seed,
        progress=show_progress(args),
    )
    runs.write_table(ds, out)
    lp = ds["log_prob"].values
    bpd = ds["bits_per_dim"].values
    say(
        f"log p(x) of {lp.size} fields: mean {lp.mean():.6g} nats, {bpd.mean():.4f} bits/dim "
        f"(min {bpd.min():.4f}, max {bpd.max():.4f}); wrote {out}"
    )
    return 0
