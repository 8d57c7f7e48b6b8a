"""Observation operators A for inverse problems y = A(x) + N(0, sigma_y^2 I).

They are defined in :mod:`scidiff.guidance.operators`, beside the guidance that
differentiates through them; this module keeps the short import path
``from scidiff.operators import SparseSensors``.
"""

from scidiff.guidance.operators import (
    CoarseGrain,
    Lambda,
    Mask,
    MatrixOperator,
    Operator,
    SparseSensors,
    Subsample,
    random_sensors,
)

__all__ = ["Operator", "SparseSensors", "Mask", "Subsample", "CoarseGrain", "MatrixOperator", "Lambda", "random_sensors"]
