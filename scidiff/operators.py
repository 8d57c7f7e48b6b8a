"""Observation operators A for inverse problems y = A(x) + N(0, sigma_y^2 I).

They are defined in :mod:`scidiff.guidance.operators`, beside the guidance that
differentiates through them; this module keeps the short import path
``from scidiff.operators import SparseSensors``.
"""

from scidiff.guidance import operators as _operators
from scidiff.guidance.operators import *  # noqa: F403 - the names of _operators.__all__

__all__ = list(_operators.__all__)
