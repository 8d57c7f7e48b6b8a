"""The ``scidiff`` command line: a thin shell over the library.

    scidiff demo                                   the whole path on a built-in dataset, on a CPU
    scidiff data make NAME --n N --size S --out FILE.nc
    scidiff data list | scidiff data info FILE
    scidiff train --data FILE --var NAME[,NAME] [--cond P,...] --out RUN [--config FILE.toml]
    scidiff sample RUN --n N [--method ode|ancestral|euler_maruyama|pc] [--cond theta=...] --out FILE.nc
    scidiff loglik RUN --data FILE [--divergence exact|hutchinson] --out FILE.nc|csv
    scidiff evaluate RUN --data FILE [--samples FILE.nc] [--out DIR]

Every subcommand explains itself with ``--help``.  A mistake in the input (a missing file,
an unknown variable, fields on the wrong grid, a folder that is not a run) ends with one
line ``scidiff: error: ...`` and exit status 2; ``--debug`` shows the traceback instead.
See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# ---- small parsers ----------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME,NAME,..., got {text!r}")
    return names


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 1,2,2, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _param_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _params(items: list[str] | None) -> dict[str, Any]:
    """``["slope=3", "reynolds=500:2000"]`` -> ``{"slope": 3, "reynolds": (500, 2000)}`` (LOW:HIGH is a range)."""
    out: dict[str, Any] = {}
    for item in items or []:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--param expects NAME=VALUE or NAME=LOW:HIGH, got {part!r}")
            if ":" in value:
                low, _, high = value.partition(":")
                out[name.strip()] = (_param_value(low.strip()), _param_value(high.strip()))
            else:
                out[name.strip()] = _param_value(value.strip())
    return out


# ---- the parser -------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "default" in text:
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: {default})"
        return text


def _common(p: argparse.ArgumentParser, *, seed: bool = True, device: bool = True, seed_default: int | None = 0) -> None:
    g = p.add_argument_group("general")
    if seed:
        g.add_argument("--seed", type=int, default=seed_default,
                       help="random seed (same seed, same result)" + ("" if seed_default is not None else
                                                                     "; default: the configuration's, else 0"))
    if device:
        g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    g.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _sampler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler (see docs/samplers.md)")
    g.add_argument(
        "--method", default="ode", choices=["ode", "ancestral", "euler_maruyama", "pc"],
        help="ode: probability-flow ODE (adaptive, deterministic); ancestral: DDPM steps; "
        "euler_maruyama: reverse SDE; pc: predictor-corrector",
    )
    g.add_argument("--steps", type=_positive_int, default=None,
                   help="steps of ancestral / euler_maruyama / pc (defaults 1000 / 1000 / 500)")
    g.add_argument("--rtol", type=float, default=None, help="ODE relative tolerance (default 1e-5)")
    g.add_argument("--atol", type=float, default=None, help="ODE absolute tolerance (default 1e-5)")
    g.add_argument("--t-min", type=float, default=None, help="smallest diffusion time (default 1e-3)")
    g.add_argument("--time-variable", choices=["logsnr", "t", "sigma"], default=None,
                   help="ODE integration variable (default logsnr)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``scidiff`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="scidiff",
        description="Diffusion-model surrogates for gridded simulator output: train on fields, "
        "sample new ones, and evaluate exact log-likelihoods.\n\n"
        "Start with `scidiff demo`; each command below has its own --help.",
        formatter_class=_Formatter,
    )
    from scidiff._version import __version__

    parser.add_argument("--version", action="version", version=f"scidiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # demo
    p = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="generate a Gaussian random field dataset, train, sample, evaluate likelihoods, write a report",
        description="The whole path on a CPU in a few minutes: a built-in Gaussian random field "
        "dataset (whose exact density is known), a small UNet trained with EMA, samples by the "
        "probability-flow ODE, log-likelihoods of held-out fields against the exact ones, and a "
        "run folder with the checkpoint, samples (netCDF), report.md and figures.",
    )
    p.add_argument("--out", default="scidiff-demo", help="the run folder to write (replaced if it is a demo folder)")
    p.add_argument("--fast", action="store_true", help="tiny data and a few training steps (about a minute): a smoke test")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps (default 1500; 60 with --fast)")
    _common(p)
    p.set_defaults(func=_cmd_demo)

    # data
    p = sub.add_parser("data", formatter_class=_Formatter, help="make a built-in dataset, or describe a file",
                       description="Built-in datasets and file inspection.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    q = dsub.add_parser(
        "make", formatter_class=_Formatter, help="generate a built-in dataset as netCDF",
        description="Generate N fields of a built-in simulator (see `scidiff data list`) and write them "
        "as a netCDF file with coordinates, units and the parameters used.\n\n"
        "example: scidiff data make grf --n 512 --size 32 --param slope=2:4 --out grf.nc",
    )
    q.add_argument("name", help="the simulator, e.g. grf (see `scidiff data list`)")
    q.add_argument("--n", type=_positive_int, default=256, help="number of fields")
    q.add_argument("--size", type=_positive_int, default=32, help="grid points per side")
    q.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a simulator option (repeatable); NAME=LOW:HIGH draws it per field from that range")
    q.add_argument("--out", required=True, help="the netCDF file to write")
    _common(q, device=False)
    q.set_defaults(func=_cmd_data_make)
    q = dsub.add_parser("list", formatter_class=_Formatter, help="list the built-in datasets",
                        description="List the built-in simulators `scidiff data make` knows.")
    _common(q, seed=False, device=False)
    q.set_defaults(func=_cmd_data_list)
    q = dsub.add_parser(
        "info", formatter_class=_Formatter, help="describe a netCDF / HDF5 file",
        description="Print the dims, coordinates, variables (shape, dtype, units) and attributes of a "
        "netCDF or HDF5 file, and a `scidiff train` command line for it.",
    )
    q.add_argument("file", help="a netCDF or HDF5 file")
    _common(q, seed=False, device=False)
    q.set_defaults(func=_cmd_data_info)

    # train
    p = sub.add_parser(
        "train", formatter_class=_Formatter, help="train a model on fields in a netCDF / HDF5 file",
        description="Train a diffusion model (a UNet on the VP-SDE, predicting v by default) on the fields "
        "of one or more variables of a file.  Options come from their defaults, then --config FILE.toml "
        "([data], [model], [train] tables), then the command line.  The run folder receives "
        "config.toml (every option), run.json and checkpoints/.\n\n"
        "example: scidiff train --data grf.nc --var field --out runs/grf --steps 2000 --periodic",
    )
    p.add_argument("--data", help="the netCDF / HDF5 file with the training fields")
    p.add_argument("--var", type=_names, help="variable(s) to model, one channel each: NAME[,NAME]")
    p.add_argument("--cond", type=_names, help="parameters along the sample dim to condition on: P[,P]")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--config", help="a TOML file of options (e.g. a previous RUN/config.toml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g = p.add_argument_group("data")
    g.add_argument("--sample-dim", help="the dim indexing fields (default: guessed)")
    g.add_argument("--spatial-dims", type=_names, help="the grid dims (default: guessed)")
    g.add_argument("--log", type=_names, help="variables to standardise after a log transform")
    g.add_argument("--val-fraction", type=float, help="share of fields held out for validation (default 0.1)")
    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=_positive_int, help="UNet width (default 32)")
    g.add_argument("--channel-mults", type=_ints, help="width multiplier per level (default 1,2,2)")
    g.add_argument("--periodic", action=argparse.BooleanOptionalAction, default=None,
                   help="circular padding for fields on a periodic domain (default: off)")
    g.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                   help="self-attention at the coarsest level (default: on)")
    g.add_argument("--prediction", choices=["eps", "x0", "v"], help="network target (default v)")
    g.add_argument("--schedule", choices=["linear", "cosine"], help="noise schedule (default linear)")
    g = p.add_argument_group("training (any other option: --config)")
    g.add_argument("--steps", type=_positive_int, help="optimiser steps (default 10000)")
    g.add_argument("--batch-size", type=_positive_int, help="fields per step (default 64)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 2e-4)")
    g.add_argument("--ema-decay", type=float, help="EMA decay (default 0.999)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 500)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 1000)")
    g.add_argument("--val-every", type=int, help="steps between validation losses (default 1000)")
    _common(p, seed_default=None)
    p.set_defaults(func=_cmd_train)

    # sample
    p = sub.add_parser(
        "sample", formatter_class=_Formatter, help="draw new fields from a trained run",
        description="Draw fields from a run's model (EMA weights) and write them as netCDF with the "
        "training data's variable names, dims, coordinates, units and attributes, plus provenance "
        "(model, method, seed, NFE).\n\n"
        "example: scidiff sample runs/grf --n 16 --out samples.nc",
    )
    p.add_argument("run", help="the run folder written by `scidiff train`")
    p.add_argument("--n", type=_positive_int, default=16, help="number of fields")
    p.add_argument("--cond", action="append", metavar="NAME=VALUE",
                   help="parameter values for a conditional model: theta=0.5 (repeatable, or a,b comma list)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="fields per sampler call")
    p.add_argument("--out", required=True, help="the netCDF file to write")
    _sampler_options(p)
    _common(p)
    p.set_defaults(func=_cmd_sample)

    # loglik
    p = sub.add_parser(
        "loglik", formatter_class=_Formatter, help="log-likelihood of each field of a file",
        description="log p(x) of every field of a file through the probability-flow ODE, in nats and "
        "bits/dim, in the units of the file's variables (the normalisation's Jacobian is included).\n\n"
        "example: scidiff loglik runs/grf --data test.nc --out loglik.csv",
    )
    p.add_argument("run", help="the run folder written by `scidiff train`")
    p.add_argument("--data", required=True, help="netCDF / HDF5 file with the run's variables on its grid")
    p.add_argument("--divergence", choices=["exact", "hutchinson"], default="hutchinson",
                   help="exact: full Jacobian trace (D backward passes per step); hutchinson: unbiased estimate")
    p.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes per field")
    p.add_argument("--n", type=_positive_int, default=None, help="only the first N fields")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="fields per ODE solve")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance")
    p.add_argument("--t-min", type=float, default=1e-5, help="where the flow starts (log p_t_min ~ log p_0)")
    p.add_argument("--time-variable", choices=["logsnr", "t", "sigma"], default=None,
                   help="ODE integration variable (default: that of scidiff.log_likelihood; see docs/samplers.md)")
    p.add_argument("--out", required=True, help="output table: FILE.nc or FILE.csv")
    _common(p)
    p.set_defaults(func=_cmd_loglik)

    # evaluate
    p = sub.add_parser(
        "evaluate", formatter_class=_Formatter, help="sample-quality metrics and figures against data",
        description="Compare a run's samples with data fields: power-spectrum error, Wasserstein-1 "
        "distance of the value histograms and moments per channel; writes metrics.json and PNG figures "
        "(samples beside data, spectra, histograms).\n\n"
        "example: scidiff evaluate runs/grf --data test.nc",
    )
    p.add_argument("run", help="the run folder written by `scidiff train`")
    p.add_argument("--data", required=True, help="netCDF / HDF5 file of reference fields")
    p.add_argument("--samples", help="samples written by `scidiff sample` (default: draw --n new ones)")
    p.add_argument("--n", type=_positive_int, default=64, help="fields to draw when --samples is not given")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="fields per sampler call")
    p.add_argument("--out", help="folder for metrics.json and figures (default RUN/evaluation)")
    _sampler_options(p)
    _common(p)
    p.set_defaults(func=_cmd_evaluate)
    return parser


# ---- commands ---------------------------------------------------------------------------------
def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    from scidiff.demo import run_demo

    run_demo(args.out, fast=args.fast, steps=args.steps, seed=args.seed, device=args.device, progress=_progress(args))
    return 0


def _cmd_data_make(args: argparse.Namespace) -> int:
    from scidiff import simulators
    from scidiff.data import write_netcdf

    names = list(simulators.available())
    if args.name not in names:
        raise ValueError(f"unknown dataset {args.name!r}; built-in datasets are {', '.join(names)}")
    out = Path(args.out)
    ds = simulators.make(args.name, args.n, size=args.size, seed=args.seed, progress=_progress(args),
                         **_params(args.param))
    write_netcdf(ds, out)
    variables = ", ".join(f"{k} {tuple(v.dims)}" for k, v in ds.data_vars.items())
    _say(f"wrote {args.n} {args.name} fields on a {args.size}-point grid to {out}: {variables}")
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from scidiff import simulators

    for name in simulators.available():
        opts = ", ".join(f"{k}={v!r}" for k, v in simulators.options(name).items())
        _say(f"{name:<14} {opts}")
    _say("cards: datasets/<name>.md; make one with `scidiff data make NAME --n N --size S --param K=V --out FILE.nc`")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from scidiff._cli_files import describe_file

    _say(describe_file(args.file))
    return 0


def _train_options(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from scidiff._cli_run import DataOptions, ModelOptions, read_config
    from scidiff.training import TrainConfig

    if args.config:
        data, model, train = read_config(args.config)
    else:
        data, model, train = DataOptions(), ModelOptions(), TrainConfig()
    overrides = {
        "file": args.data, "variables": args.var, "cond": args.cond, "sample_dim": args.sample_dim,
        "spatial_dims": args.spatial_dims, "log": args.log, "val_fraction": args.val_fraction,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(data, key, value)
    data = DataOptions(**{k: getattr(data, k) for k in data.__dataclass_fields__})
    for key in ("base_channels", "channel_mults", "periodic", "attention", "prediction", "schedule"):
        value = getattr(args, key)
        if value is not None:
            setattr(model, key, value)
    model = ModelOptions(**{k: getattr(model, k) for k in model.__dataclass_fields__})
    changes = {
        key: getattr(args, key)
        for key in ("steps", "batch_size", "lr", "ema_decay", "warmup_steps", "checkpoint_every", "val_every")
        if getattr(args, key) is not None
    }
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        train = train.replace(**changes)
    return data, model, train


def _cmd_train(args: argparse.Namespace) -> int:
    from scidiff._cli_run import train_run

    data, model, train = _train_options(args)
    summary = train_run(
        args.out, data, model, train, resume=args.resume, overwrite=args.overwrite, device=args.device,
        progress=_progress(args),
    )
    last = next((h for h in reversed(summary.history) if "loss" in h), {})
    val = next((h["val_loss"] for h in reversed(summary.history) if "val_loss" in h), None)
    _say(
        f"trained {summary.parameters:,} parameters for {summary.step} steps on {summary.num_train} fields "
        f"in {summary.seconds:.0f} s; final loss {last.get('loss', float('nan')):.4g}"
        + (f", validation loss {val:.4g}" if val is not None else "")
    )
    _say(f"run folder: {summary.run.path}  (options in {summary.run.path / 'config.toml'})")
    return 0


def _sampler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "steps": args.steps, "rtol": args.rtol, "atol": args.atol, "t_min": args.t_min,
        "time_variable": args.time_variable,
    }


def _cmd_sample(args: argparse.Namespace) -> int:
    from scidiff._cli_infer import load_for_inference, parse_assignments, sample_run
    from scidiff._cli_run import load_run
    from scidiff.data import write_netcdf

    run = load_run(args.run)
    out = Path(args.out)
    _check_out_folder(out)
    loaded = load_for_inference(run, device=args.device)
    start = time.perf_counter()
    ds, _ = sample_run(
        loaded, args.n, method=args.method, cond=parse_assignments(args.cond), seed=args.seed,
        batch_size=args.batch_size, progress=_progress(args), **_sampler_kwargs(args),
    )
    write_netcdf(ds, out)
    _say(
        f"drew {args.n} fields with method {args.method} (NFE {ds.attrs['nfe']}) in "
        f"{time.perf_counter() - start:.1f} s; wrote {out}"
    )
    return 0


def _check_out_folder(out: Path) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {out}: folder {folder} does not exist")


def _cmd_loglik(args: argparse.Namespace) -> int:
    from scidiff._cli_infer import load_for_inference, loglik_run, write_table
    from scidiff._cli_run import load_run

    run = load_run(args.run)
    out = Path(args.out)
    _check_out_folder(out)
    if out.suffix.lower() not in (".nc", ".csv", ".nc4"):
        raise ValueError(f"--out {str(out)!r}: give a .nc or .csv file name")
    loaded = load_for_inference(run, device=args.device)
    ds = loglik_run(
        loaded, args.data, divergence=args.divergence, n=args.n, batch_size=args.batch_size, probes=args.probes,
        rtol=args.rtol, atol=args.atol, t_min=args.t_min, time_variable=args.time_variable, seed=args.seed,
        progress=_progress(args),
    )
    write_table(ds, out)
    lp = ds["log_prob"].values
    bpd = ds["bits_per_dim"].values
    _say(
        f"log p(x) of {lp.size} fields: mean {lp.mean():.6g} nats, {bpd.mean():.4f} bits/dim "
        f"(min {bpd.min():.4f}, max {bpd.max():.4f}); wrote {out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from scidiff._cli_eval import evaluate_run, format_metrics
    from scidiff._cli_infer import load_for_inference
    from scidiff._cli_run import load_run

    run = load_run(args.run)
    loaded = load_for_inference(run, device=args.device)
    out_dir = Path(args.out) if args.out else run.path / "evaluation"
    result = evaluate_run(
        loaded, args.data, out_dir=out_dir, n=args.n, samples=args.samples, seed=args.seed, method=args.method,
        batch_size=args.batch_size, progress=_progress(args), **_sampler_kwargs(args),
    )
    _say(format_metrics(result))
    _say(f"metrics: {result['metrics_file']}")
    _say(f"figures: {', '.join(result['figures'])}")
    return 0


# ---- entry point ------------------------------------------------------------------------------
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
