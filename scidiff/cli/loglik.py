"""``scidiff loglik``: log p(x) of every field of a file under a run (:func:`scidiff.runs.loglik`)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from scidiff.cli._common import (
    add_run_argument, check_out_folder, check_output, finish, lock_if_inside, open_run, positive_float, positive_int,
    say, show_progress, subcommand,
)
from scidiff.divergence import ESTIMATORS

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(
        sub, "loglik", help="log-likelihood of each field of a file",
        description="log p(x) of every field of a file through the probability-flow ODE, in nats and "
        "bits/dim, in the units of the file's variables (the normalisation's Jacobian is included).\n\n"
        "example: scidiff loglik runs/grf --data test.nc --out loglik.csv\n\n"
        "Under torchrun (torchrun --nproc-per-node N -m scidiff.cli loglik ...) the fields are split between the "
        "processes, whole batches each, and rank 0 writes one table in the file's order.",
    )
    add_run_argument(p)
    p.add_argument("--data", required=True, help="netCDF / HDF5 file with the run's variables on its grid")
    p.add_argument("--divergence", choices=sorted(ESTIMATORS), default="lattice",
                   help="how tr(ds/dx) is computed: lattice (default; Rademacher probes on a lattice of --spacing, "
                   "C spacing^dims products per step, per-field error bars), exact (full Jacobian trace, D products "
                   "per step) or hutchinson (--probes products per step)")
    p.add_argument("--probes", type=positive_int, default=1,
                   help="Hutchinson probes, or lattice replicates, per field (default 1)")
    p.add_argument("--spacing", type=positive_int, default=4,
                   help="lattice spacing along every spatial axis (default 4; a divisor of the grid size)")
    p.add_argument("--target-se", type=positive_float, default=None, metavar="BITS",
                   help="add probes per field (or take the exact trace where cheaper) until the standard error "
                   "of bits/dim is at most BITS")
    p.add_argument("--n", type=positive_int, default=None, help="only the first N fields")
    p.add_argument("--batch-size", type=positive_int, default=32, help="fields per ODE solve")
    p.add_argument("--rtol", type=positive_float, default=1e-4,
                   help="ODE relative tolerance (default 1e-4; at 1e-3 the demo models' log p moved by up to 0.007 "
                   "bits/dim, docs/likelihood.md; with --nodes use 1e-6)")
    p.add_argument("--atol", type=positive_float, default=1e-4, help="ODE absolute tolerance (default 1e-4)")
    p.add_argument("--nodes", type=_intervals("--nodes"), default=0, metavar="N",
                   help="solve x alone and integrate the divergence by the trapezoid rule on N + 1 nodes in log-SNR: "
                   "N + 1 trace evaluations whatever the solver's steps (an even N, e.g. 16 with --rtol 1e-6 and "
                   "--atol 1e-6; default 0: the divergence integrated with x at every step; docs/likelihood.md)")
    p.add_argument("--max-nodes", type=_intervals("--max-nodes"), default=None, metavar="M",
                   help="refine the rule on the midpoints up to M intervals (N times a power of 2; default 4 N) while a "
                   "field's estimated quadrature error exceeds --quadrature-tol")
    p.add_argument("--quadrature-tol", type=positive_float, default=1e-3, metavar="BITS",
                   help="quadrature error per field, in bits/dim, below which the rule is not refined (default 1e-3)")
    p.add_argument("--t-min", type=float, default=1e-5, help="where the flow starts (log p_t_min ~ log p_0)")
    p.add_argument("--time-variable", choices=["logsnr", "t", "sigma"], default=None,
                   help="ODE integration variable (default: that of scidiff.log_likelihood; see docs/samplers.md)")
    p.add_argument("--bound-samples", type=positive_int, default=4,
                   help="latent runs only: draws of z ~ q(z | x) per field for the lower bound (default 4)")
    p.add_argument("--out", required=True, help="output table: FILE.nc or FILE.csv")
    return finish(p, run)


def run(args: argparse.Namespace) -> int:
    from scidiff import runs

    out = Path(args.out)
    check_out_folder(out)
    if out.suffix.lower() not in (".nc", ".csv", ".nc4"):
        raise ValueError(f"--out {str(out)!r}: give a .nc or .csv file name")
    check_output(out, inputs=(args.data,))
    from scidiff.training.distributed import setup

    held = contextlib.ExitStack()
    held.enter_context(lock_if_inside(args.run, out))  # writing into the run folder: hold its lock
    context = setup()  # under torchrun: one process per rank, the fields split between them
    try:
        loaded = open_run(args)
        ds = runs.loglik(
            loaded, args.data, divergence=args.divergence, n=args.n, batch_size=args.batch_size, probes=args.probes,
            spacing=args.spacing, target_se=args.target_se, nodes=args.nodes or None,
            max_nodes=args.max_nodes if args.nodes else None, quadrature_tol=args.quadrature_tol,
            rtol=args.rtol, atol=args.atol, t_min=args.t_min, time_variable=args.time_variable, seed=args.seed,
            progress=show_progress(args), bound_samples=args.bound_samples,
        )
        if not context.is_main:
            return 0
        runs.write_table(ds, out)
    finally:
        context.close()
        held.close()
    lp = ds["log_prob"].values
    bpd = ds["bits_per_dim"].values
    se = ds["bits_per_dim_se"].values
    if ds.attrs.get("log_prob_is_lower_bound"):
        say(
            f"latent run: log_prob is a LOWER BOUND on log p(x) (the evidence lower bound "
            f"E_q[log p(x|z) + log p(z) - log q(z|x)], {ds.attrs.get('bound_samples')} draws of z per field), "
            "not the log-likelihood itself"
        )
    say(
        f"log p(x) of {lp.size} fields: mean {lp.mean():.6g} nats, {bpd.mean():.4f} bits/dim "
        f"(min {bpd.min():.4f}, max {bpd.max():.4f}); per-field standard error {_se_text(se)}"
        + (f"; divergence on {ds.attrs['nodes']}+ log-SNR nodes, estimated quadrature error at most "
           f"{ds.attrs['max_quadrature_error_bits_per_dim']:.2g} bits/dim" if ds.attrs.get("nodes") else "")
        + f"; wrote {out}"
    )
    return 0


def _intervals(option: str):
    """An argparse type for a count of trapezoid intervals: 0 or an even number."""

    def parse(text: str) -> int:
        value = int(text) if text.strip().lstrip("-").isdigit() else -1
        if value < 0 or value % 2:
            raise argparse.ArgumentTypeError(f"{option} must be 0 or an even number of intervals, got {text!r}")
        return value

    return parse


def _se_text(se) -> str:
    import numpy as np

    if np.isnan(se).all():
        return "not estimated (one probe; use --probes 2 or more, or --divergence lattice)"
    return f"median {np.nanmedian(se):.2g}, max {np.nanmax(se):.2g} bits/dim"
