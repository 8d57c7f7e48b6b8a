r"""Parameter-conditioned models: the convention c = [theta, 1], classifier-free guidance and its training.

The guided score and the convention are defined in :mod:`scidiff.guidance.cfg`, the training
pieces (condition dropout) in :mod:`scidiff.training.condition_dropout`; this module gathers
them under one import path, ``from scidiff.conditional import condition, conditional_score``.
"""

from scidiff.guidance.cfg import ClassifierFreeGuidance, condition, conditional_score, null_condition
from scidiff.training.condition_dropout import ConditionDropout, cfg_loss, drop_condition

__all__ = [
    "condition",
    "null_condition",
    "drop_condition",
    "cfg_loss",
    "ConditionDropout",
    "ClassifierFreeGuidance",
    "conditional_score",
]
