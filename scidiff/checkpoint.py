"""Checkpoints: safetensors weights plus one JSON file, written atomically, loaded without pickle.

The format and the folder of a run's checkpoints are defined in
:mod:`scidiff.training.checkpoint`, the network registry in :mod:`scidiff.nets.registry`
and atomic writing in ``scidiff._atomic``; this module gathers the public names.
"""

from scidiff.nets.registry import NetSpecError
from scidiff.training import checkpoint as _format
from scidiff.training.checkpoint import *  # noqa: F403 - the names of _format.__all__

__all__ = [*_format.__all__, "NetSpecError"]
