"""``scidiff train``: options from defaults, --config and the command line, then :func:`scidiff.runs.train`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scidiff.cli._common import finish, ints, names, positive_int, say, show_progress, subcommand

__all__ = ["add_parser", "run", "options_from"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(
        sub, "train", help="train a model on fields in a netCDF / HDF5 file",
        description="Train a diffusion model (a UNet on the VP-SDE, predicting v by default) on the fields "
        "of one or more variables of a file.  Options come from their defaults, then --config FILE.toml "
        "([data], [model], [train] tables), then the command line.  The run folder receives "
        "config.toml (every option), run.json and checkpoints/.\n\n"
        "example: scidiff train --data grf.nc --var field --out runs/grf --steps 2000 --periodic",
    )
    p.add_argument("--data", help="the netCDF / HDF5 file with the training fields")
    p.add_argument("--var", type=names, help="variable(s) to model, one channel each: NAME[,NAME]")
    p.add_argument("--cond", type=names, help="parameters along the sample dim to condition on: P[,P]")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--config", help="a TOML file of options (e.g. a previous RUN/config.toml)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, with its own options (RUN/config.toml) "
                   "unless --config is given; only training options (--steps, --lr, ...) may change")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--latent", metavar="NAME=VALUE[,...]", default=None,
                   help="latent diffusion: train an autoencoder first (factor=4,channels=4 by default; also "
                   "base_channels, kl_weight, spectral_weight, steps, lr), then the model on its latents, in one run "
                   "folder (docs/latent.md); sample, loglik (which then reports a lower bound) and evaluate use it as any run")
    g = p.add_argument_group("data")
    g.add_argument("--sample-dim", help="the dim indexing fields (default: guessed)")
    g.add_argument("--spatial-dims", type=names, help="the grid dims (default: guessed)")
    g.add_argument("--log", type=names, help="variables to standardise after a log transform")
    g.add_argument("--val-fraction", type=float, help="share of fields held out for validation (default 0.1)")
    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=positive_int, help="UNet width (default 32)")
    g.add_argument("--channel-mults", type=ints, help="width multiplier per level (default 1,2,2)")
    g.add_argument("--periodic", action=argparse.BooleanOptionalAction, default=None,
                   help="circular padding for fields on a periodic domain (default: off)")
    g.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                   help="self-attention at the coarsest level (default: on)")
    g.add_argument("--prediction", choices=["eps", "x0", "v"], help="network target (default v)")
    g.add_argument("--schedule", choices=["linear", "cosine"], help="noise schedule (default linear)")
    g = p.add_argument_group("training (any other option: --config)")
    g.add_argument("--steps", type=positive_int, help="optimiser steps (default 10000)")
    g.add_argument("--batch-size", type=positive_int, help="fields per step (default 64)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 2e-4)")
    g.add_argument("--ema-decay", type=float, help="EMA decay (default 0.999)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 500)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 1000)")
    g.add_argument("--val-every", type=int, help="steps between validation losses (default 1000)")
    return finish(p, run, seed_default=None)


_DATA = {"data": "file", "var": "variables", "cond": "cond", "sample_dim": "sample_dim",
         "spatial_dims": "spatial_dims", "log": "log", "val_fraction": "val_fraction"}
_MODEL = ("base_channels", "channel_mults", "periodic", "attention", "prediction", "schedule")
_TRAIN = ("steps", "batch_size", "lr", "ema_decay", "warmup_steps", "checkpoint_every", "val_every")


def options_from(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(data, model, train) options: defaults, then ``--config``, then the command line."""
    import dataclasses

    from scidiff.runs import DataOptions, ModelOptions, Run, read_config
    from scidiff.training import TrainConfig

    saved = Run.resume_config(args.out) if args.resume else None
    if args.config:
        data, model, train = read_config(args.config)
    elif saved is not None:  # a resumed run starts from its own options
        data, model, train = read_config(saved)
    else:
        data, model, train = DataOptions(), ModelOptions(), TrainConfig()
    data = dataclasses.replace(data, **{f: getattr(args, a) for a, f in _DATA.items() if getattr(args, a) is not None})
    model = dataclasses.replace(model, **{k: getattr(args, k) for k in _MODEL if getattr(args, k) is not None})
    changes = {k: getattr(args, k) for k in _TRAIN if getattr(args, k) is not None}
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        train = train.replace(**changes)
    return data, model, train


def run(args: argparse.Namespace) -> int:
    from scidiff import runs

    data, model, train = options_from(args)
    latent_file = Path(args.out) / "latent.json"
    if args.latent is None and args.resume and latent_file.is_file():  # a latent run resumes as one
        import json

        args.latent = ",".join(f"{k}={v}" for k, v in json.loads(latent_file.read_text())["options"].items())
    if args.latent is not None:
        summary = runs.train_latent(
            args.out, data, model, train, runs.parse_latent(args.latent), resume=args.resume,
            overwrite=args.overwrite, device=args.device, progress=show_progress(args),
        )
    else:
        summary = runs.train(
            args.out, data, model, train, resume=args.resume, overwrite=args.overwrite, device=args.device,
            progress=show_progress(args),
        )
    from scidiff.training.distributed import DistContext

    if not DistContext.from_env().is_main:
        return 0  # under torchrun rank 0 speaks for all
    last = next((h for h in reversed(summary.history) if "loss" in h), {})
    val = next((h["val_loss"] for h in reversed(summary.history) if "val_loss" in h), None)
    say(
        f"trained {summary.parameters:,} parameters for {summary.step} steps on {summary.num_train} fields "
        f"in {summary.seconds:.0f} s; final loss {last.get('loss', float('nan')):.4g}"
        + (f", validation loss {val:.4g}" if val is not None else "")
    )
    say(f"run folder: {summary.run.path}  (options in {summary.run.config_file})")
    return 0
