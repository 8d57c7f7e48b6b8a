"""scidiff: diffusion-model surrogates for gridded scientific simulator output.

The public names are loaded lazily, so ``import scidiff`` is fast (the command
line starts quickly) and optional heavy pieces (plots, data I/O) are imported
only when used.  See ``docs/api.md`` for the reference of every public name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scidiff._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # mathematics
    "LinearSchedule": "scidiff.schedules",
    "CosineSchedule": "scidiff.schedules",
    "VPSDE": "scidiff.sde",
    "DDPM": "scidiff.ddpm",
    "ScoreModel": "scidiff.models",
    "sample": "scidiff.sampling",
    "SampleResult": "scidiff.sampling",
    "log_likelihood": "scidiff.likelihood",
    "LikelihoodResult": "scidiff.likelihood",
    "ClassifierGuidance": "scidiff.guidance",
    "DPSGuidance": "scidiff.guidance",
    "ClassifierFreeGuidance": "scidiff.guidance",
    # networks
    "UNet": "scidiff.nets",
    "NoisyEncoder": "scidiff.nets",
    # training and checkpoints
    "TrainConfig": "scidiff.training",
    "Trainer": "scidiff.training",
    "train": "scidiff.training",
    "load_model": "scidiff.checkpoint",
    "load_checkpoint": "scidiff.checkpoint",
    "save_checkpoint": "scidiff.checkpoint",
    "CheckpointError": "scidiff.checkpoint",
    # data
    "open_fields": "scidiff.data",
    "FieldDataset": "scidiff.data",
    "Normalizer": "scidiff.data",
    "DataError": "scidiff.data",
    "fields_to_dataset": "scidiff.data",
    "loglik_to_dataset": "scidiff.data",
    "write_netcdf": "scidiff.data",
    # closed-form references
    "GaussianMixture": "scidiff.analytic",
}

_SUBMODULES = {
    "schedules", "sde", "ddpm", "models", "sampling", "likelihood", "divergence", "guidance",
    "nets", "data", "simulators", "training", "metrics", "plots", "cli", "analytic", "checkpoint",
    "operators", "conditional", "inference", "parameterisation", "runs", "demo", "trajectories", "latent",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"scidiff.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'scidiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from scidiff.data import DataError, FieldDataset, Normalizer, fields_to_dataset, loglik_to_dataset, open_fields, write_netcdf
    from scidiff.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
    from scidiff.ddpm import DDPM
    from scidiff.guidance import ClassifierFreeGuidance, ClassifierGuidance, DPSGuidance
    from scidiff.likelihood import LikelihoodResult, log_likelihood
    from scidiff.models import ScoreModel
    from scidiff.analytic import GaussianMixture
    from scidiff.nets import NoisyEncoder, UNet
    from scidiff.sampling import SampleResult, sample
    from scidiff.schedules import CosineSchedule, LinearSchedule
    from scidiff.sde import VPSDE
    from scidiff.training import TrainConfig, Trainer, train
