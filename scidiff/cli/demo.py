"""``scidiff demo``: the whole path on a built-in dataset (:func:`scidiff.demo.run_demo`)."""

from __future__ import annotations

import argparse

from scidiff.cli._common import finish, positive_int, show_progress, subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(
        sub, "demo", help="generate a Gaussian random field dataset, train, sample, evaluate likelihoods, write a report",
        description="The whole path on a CPU in a few minutes: a built-in Gaussian random field "
        "dataset (whose exact density is known), a small UNet trained with EMA, samples by the "
        "probability-flow ODE, log-likelihoods of held-out fields against the exact ones, and a "
        "run folder with the checkpoint, samples (netCDF), report.md and figures.",
    )
    p.add_argument("--out", default="scidiff-demo", help="the run folder to write (replaced if it is a demo folder)")
    p.add_argument("--fast", action="store_true", help="tiny data and a few training steps (about a minute): a smoke test")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default 1500; 60 with --fast)")
    return finish(p, run)


def run(args: argparse.Namespace) -> int:
    from scidiff.demo import run_demo

    run_demo(args.out, fast=args.fast, steps=args.steps, seed=args.seed, device=args.device, progress=show_progress(args))
    return 0
