"""Training of score models: losses, options, the loop with EMA and checkpoints, torchrun / DDP.

    from scidiff.training import TrainConfig, train
    result = train(model, fields, TrainConfig(steps=20_000, batch_size=64), run_dir="runs/a")
    result.model          # the EMA ScoreModel, for sampling and likelihoods

Pieces: ``dsm_loss`` / ``ddpm_loss`` (``losses``), ``TrainConfig`` (``config``), ``EMA``
(``ema``), ``Trainer`` / ``train`` (``trainer``), deterministic batching (``batches``) and the
process-group setup for torchrun (``distributed``), and the checkpoint format with the folder of a
run's checkpoints (``checkpoint``; its public names are gathered in ``scidiff.checkpoint``).
See ``docs/training.md``.
"""

from scidiff.training.batches import BatchSource, check_fields
from scidiff.training.condition_dropout import ConditionDropout, cfg_loss, drop_condition
from scidiff.training.config import TrainConfig
from scidiff.training.distributed import DistContext
from scidiff.training.ema import EMA
from scidiff.training.losses import ddpm_loss, dsm_loss, sample_time
from scidiff.training.trainer import Trainer, TrainingDiverged, TrainResult, ddpm_for, lr_at, train

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "dsm_loss",
    "ddpm_loss",
    "sample_time",
    "EMA",
    "lr_at",
    "ddpm_for",
    "check_fields",
    "BatchSource",
    "DistContext",
    "drop_condition",
    "cfg_loss",
    "ConditionDropout",
]
