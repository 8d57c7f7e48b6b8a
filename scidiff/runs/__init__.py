"""Runs: a folder holding one trained model, and training, sampling, likelihoods and evaluation on it.

    from scidiff import runs

    summary = runs.train("runs/grf", runs.DataOptions(file="grf.nc", variables=["field"]),
                         runs.ModelOptions(periodic=True), TrainConfig(steps=2000))
    run = runs.Run.open("runs/grf")
    loaded = run.load()                                 # the EMA model and normaliser, once
    ds, x = runs.sample(loaded, 16)                     # fields in the data's units and layout
    table = runs.loglik(loaded, "test.nc")              # log p(x) per field, nats and bits/dim
    result = runs.evaluate(loaded, "test.nc", out_dir="runs/grf/evaluation")

Pieces: the options and ``config.toml`` (``options``), the folder itself (``run``: :class:`Run`,
:class:`LoadedModel`), training into it (``train``; ``latent``: an autoencoder, then a score
model on its latents, in one folder), sampling and likelihoods (``infer``), and
sample-quality metrics with figures (``evaluate``).  The command line (:mod:`scidiff.cli`) is
argument parsing and printing over these functions.
"""

from scidiff.runs.evaluate import box_lengths, evaluate, evaluate_fields, format_metrics
from scidiff.runs.infer import SAMPLER_OPTIONS, as_loaded, loglik, open_like_run, read_fields, sample, write_table
from scidiff.runs.options import CONFIG_FILE, DataOptions, ModelOptions, config_text, read_config, write_config
from scidiff.runs.run import RUN_FILE, LoadedModel, Run, RunError, load_run
from scidiff.runs.train import TrainSummary, open_training_data, train
from scidiff.runs.latent import LatentOptions, parse_latent, train_latent

__all__ = [
    "Run",
    "RunError",
    "LoadedModel",
    "load_run",
    "DataOptions",
    "ModelOptions",
    "read_config",
    "write_config",
    "config_text",
    "train",
    "train_latent",
    "LatentOptions",
    "parse_latent",
    "TrainSummary",
    "open_training_data",
    "sample",
    "loglik",
    "evaluate",
    "evaluate_fields",
    "format_metrics",
    "box_lengths",
    "as_loaded",
    "open_like_run",
    "read_fields",
    "write_table",
    "SAMPLER_OPTIONS",
]
