"""Checkpoints: safetensors weights plus one JSON file, written atomically, loaded without pickle.

The format and the folder of a run's checkpoints are defined in
:mod:`scidiff.training.checkpoint`, the network registry in :mod:`scidiff.nets.registry`
and atomic writing in ``scidiff._atomic``; this module gathers the public names.
"""

from scidiff.nets.registry import NetSpecError, build_net, net_spec
from scidiff.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointFolder,
    CheckpointNotFoundError,
    load_checkpoint,
    load_model,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointFolder",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "resolve_checkpoint",
    "net_spec",
    "build_net",
    "NetSpecError",
]
