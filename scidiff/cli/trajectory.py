"""``scidiff trajectory train | sample | assimilate``: window score models of fields in time.

Parsing and printing over :mod:`scidiff.trajectories.workflow`; see ``docs/trajectories.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scidiff.cli._common import (
    NETCDF_SUFFIXES, add_sampler_options, check_output, finish, ints, lock_if_inside, names, positive_int,
    sampler_kwargs, say, show_progress, subcommand,
)

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(sub, "trajectory", help="train, sample and assimilate with window models of trajectories",
                   description="Fields in time: a score model over windows of W consecutive states, composed "
                   "into the score of a whole trajectory of any length (Markov blanket of order (W-1)/2).")
    tsub = p.add_subparsers(dest="trajectory_command", metavar="ACTION")
    tsub.required = True

    q = subcommand(
        tsub, "train", help="train a window model on trajectories in a netCDF / HDF5 file",
        description="Train a UNet on all windows of W consecutive states (stacked as channels) of the "
        "trajectories of one or more variables with dims (sample, time, *space).  The run folder receives "
        "the checkpoints and trajectory.json (window, variables, standardisation, time axis).\n\n"
        "example: scidiff trajectory train --data ar1.nc --var field --window 5 --steps 2000 --out runs/ar1",
    )
    q.add_argument("--data", required=True, help="the file with the training trajectories")
    q.add_argument("--var", type=names, required=True, help="variable(s), one channel each: NAME[,NAME]")
    q.add_argument("--out", required=True, help="the run folder")
    q.add_argument("--window", type=positive_int, default=5, help="W, odd: states per window")
    q.add_argument("--time-dim", default="time", help="the file's time dim")
    q.add_argument("--sample-dim", default=None, help="the file's sample dim (default: 'sample' if present)")
    q.add_argument("--steps", type=positive_int, default=2000, help="optimiser steps")
    q.add_argument("--batch-size", type=positive_int, default=64, help="windows per step")
    q.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    q.add_argument("--base-channels", type=positive_int, default=32, help="UNet width")
    q.add_argument("--channel-mults", type=ints, default=[1, 2], help="width multiplier per level")
    q.add_argument("--prediction", choices=["eps", "x0", "v"], default="v",
                   help="network target (default v: an accurate x0-hat at high noise, which the guidance needs)")
    q.add_argument("--periodic", action=argparse.BooleanOptionalAction, default=True,
                   help="circular padding (periodic space)")
    finish(q, run_train)

    q = subcommand(
        tsub, "sample", help="sample trajectories of a given length from a window run",
        description="Draw trajectories of --length states jointly from the composed window score and write "
        "them as netCDF with the training file's variables, time coordinate and units.\n\n"
        "example: scidiff trajectory sample runs/ar1 --n 8 --length 64 --out traj.nc",
    )
    _run_and_output(q)
    add_sampler_options(q)
    finish(q, run_sample)

    q = subcommand(
        tsub, "assimilate", help="posterior trajectories given observations sparse in space and time",
        description="Sample trajectories of --length states from the posterior given the observations in "
        "--obs, a netCDF file with dim obs and variables value, time, one position per spatial dim "
        "(e.g. x, y, in coordinate units, on grid points) and noise_std (a variable or an attribute); "
        "a variable 'variable' names the channel when the run has several.  States after the last "
        "observation are forecasts.\n\n"
        "example: scidiff trajectory assimilate runs/ar1 --obs obs.nc --length 32 --n 16 --out posterior.nc",
    )
    _run_and_output(q)
    q.add_argument("--obs", required=True, help="the observation file")
    q.add_argument("--guidance", choices=["mmps", "dps"], default="mmps",
                   help="mmps: moment-matching (exact for Gaussian priors); dps: diffusion posterior sampling")
    q.add_argument("--inflation", type=float, default=None, help="DPS variance inflation gamma (default: none)")
    q.add_argument("--cg-steps", type=positive_int, default=3, help="MMPS conjugate-gradient iterations")
    add_sampler_options(q)
    finish(q, run_assimilate)
    return p


def _run_and_output(q: argparse.ArgumentParser) -> None:
    q.add_argument("run", help="the window run folder written by `scidiff trajectory train`")
    q.add_argument("--n", type=positive_int, default=8, help="number of trajectories")
    q.add_argument("--length", type=positive_int, required=True, help="states per trajectory (L >= W)")
    q.add_argument("--start", type=float, default=0.0, help="time of the first state (the run's time units)")
    q.add_argument("--batch-size", type=positive_int, default=16, help="trajectories per sampler call")
    q.add_argument("--out", required=True, help="the netCDF file to write")


def run_train(args: argparse.Namespace) -> int:
    from scidiff.runs import Run, RunError
    from scidiff.trajectories.workflow import TRAJECTORY_FILE, train_window_model

    target = Path(args.out)
    if target.exists() and not target.is_dir():
        raise RunError(f"--out {str(target)!r} is a file, not a folder for the run")
    if (target / TRAJECTORY_FILE).exists() or (target / "checkpoints").is_dir():
        raise RunError(f"--out {str(target)!r} already holds a window run; choose another folder or remove it")
    t0 = time.perf_counter()
    with Run.lock(target):  # the folder's lock, as `scidiff train` holds it
        out = train_window_model(
            args.data, args.var, target, window=args.window, time_dim=args.time_dim, sample_dim=args.sample_dim,
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, base_channels=args.base_channels,
            channel_mults=tuple(args.channel_mults), periodic=args.periodic, prediction=args.prediction, seed=args.seed,
            device=args.device,
            progress=show_progress(args))
    say(f"trained a W = {args.window} window model for {args.steps} steps in {time.perf_counter() - t0:.1f} s; "
        f"run in {out}")
    return 0


def _sampling(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sampler_kwargs(args).items() if v is not None}


def run_sample(args: argparse.Namespace) -> int:
    from scidiff.data import write_netcdf
    from scidiff.trajectories.workflow import load_window_run, sample_window_run

    out = Path(args.out)
    check_output(out, suffixes=NETCDF_SUFFIXES)
    with lock_if_inside(args.run, out):  # writing into the run folder: hold its lock
        run = load_window_run(args.run, device=args.device)
        ds = sample_window_run(run, args.n, args.length, method=args.method, seed=args.seed,
                               batch_size=args.batch_size, start=args.start, progress=show_progress(args),
                               device=args.device, **_sampling(args))
        write_netcdf(ds, out)
    say(f"drew {args.n} trajectories of {args.length} states with method {args.method} (NFE {ds.attrs['nfe']}, "
        f"{ds.attrs['window_evaluations_per_trajectory']} window evaluations each) in {ds.attrs['seconds']:.1f} s; "
        f"wrote {out}")
    return 0


def run_assimilate(args: argparse.Namespace) -> int:
    from scidiff.data import write_netcdf
    from scidiff.trajectories.workflow import assimilate_window_run, load_window_run

    out = Path(args.out)
    check_output(out, suffixes=NETCDF_SUFFIXES, inputs=(args.obs,))
    with lock_if_inside(args.run, out):  # writing into the run folder: hold its lock
        run = load_window_run(args.run, device=args.device)
        ds = assimilate_window_run(
            run, args.obs, args.length, args.n, guidance=args.guidance, inflation=args.inflation,
            cg_steps=args.cg_steps, method=args.method, seed=args.seed, batch_size=args.batch_size, start=args.start,
            progress=show_progress(args), device=args.device, **_sampling(args))
        write_netcdf(ds, out)
    say(f"drew {args.n} posterior trajectories of {args.length} states given {ds.attrs['num_observations']} "
        f"observations ({args.guidance}, method {args.method}, NFE {ds.attrs['nfe']}) in {ds.attrs['seconds']:.1f} s; "
        f"wrote {out}")
    return 0
