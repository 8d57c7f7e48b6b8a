"""Typed, validated training options (:class:`TrainConfig`), readable from TOML.

Every option is a plain scalar, so a configuration round-trips exactly through
``to_dict`` / ``from_dict`` (JSON, stored in each checkpoint) and through TOML
(``TrainConfig.from_toml(path)``, the command line's ``--config FILE.toml``).
Options that can be switched off use 0 for "off" (TOML has no null).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from scidiff._validate import check_int, check_number, check_options

__all__ = ["TrainConfig"]

LossKind = Literal["dsm", "ddpm"]
TimeSampling = Literal["uniform", "importance"]
Weighting = Literal["simple", "likelihood"]
Precision = Literal["fp32", "bf16"]
LrDecay = Literal["constant", "cosine"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "loss": ("dsm", "ddpm"),
    "time_sampling": ("uniform", "importance"),
    "weighting": ("simple", "likelihood"),
    "precision": ("fp32", "bf16"),
    "lr_decay": ("constant", "cosine"),
}


@dataclass
class TrainConfig:
    """Options of a training run.

    Optimisation:
        steps: total number of optimiser steps of the run (a resumed run continues to it).
        batch_size: global batch size (fields per optimiser step, summed over all ranks;
            under torchrun each of K ranks draws ``batch_size / K``).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: the learning rate rises linearly, lr (k + 1) / warmup_steps at step k,
            reaching ``lr`` after ``warmup_steps`` steps; 0 for none.
        lr_decay: ``"constant"`` after warm-up, or ``"cosine"`` decay to 0 at ``steps``.
        grad_clip: clip the global gradient 2-norm to this value; 0 for no clipping.
        ema_decay: d of the EMA weights, ema <- d ema + (1 - d) theta, in [0, 1).
        ema_start: the EMA copies the weights for the first ``ema_start`` steps.

    Loss (see ``docs/training.md``):
        loss: ``"dsm"`` (continuous VP-SDE) or ``"ddpm"`` (discrete L_simple).
        time_sampling: ``"uniform"`` t ~ U[t_min, 1] or ``"importance"`` t ~ beta / sigma^2 (dsm).
        weighting: ``"simple"`` (mean squared error of the network output) or
            ``"likelihood"`` (beta(t) on the score error: a bound on -log p in nats) (dsm).
        t_min: smallest diffusion time of the dsm loss, in (0, 1).
        ddpm_steps: N of the discrete chain when ``loss = "ddpm"`` and no DDPM is given.

    Run:
        precision: ``"fp32"``, or ``"bf16"`` (autocast of the network on CUDA; fp32 on a CPU).
        seed: seeds the data order, the noise and the dropout.
        log_every: steps between history entries (mean training loss, lr, grad norm).
        val_every: steps between validation losses (needs validation data); 0 for never.
        val_batch_size: batch size of the validation pass; 0 means ``batch_size``.
        checkpoint_every: steps between checkpoints (needs a run directory); 0 for only
            the final one.
        keep_checkpoints: how many of the most recent checkpoints to keep (>= 1).
        num_workers: DataLoader worker processes for a Dataset (tensors need none).
    """

    steps: int = 10_000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    lr_decay: LrDecay = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_start: int = 0
    loss: LossKind = "dsm"
    time_sampling: TimeSampling = "uniform"
    weighting: Weighting = "simple"
    t_min: float = 1e-5
    ddpm_steps: int = 1000
    precision: Precision = "fp32"
    seed: int = 0
    log_every: int = 100
    val_every: int = 1000
    val_batch_size: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    num_workers: int = 0

    def __post_init__(self) -> None:
        _int(self, "steps", minimum=1)
        _int(self, "batch_size", minimum=1)
        _int(self, "warmup_steps", minimum=0)
        _int(self, "ema_start", minimum=0)
        _int(self, "ddpm_steps", minimum=1)
        _int(self, "seed", minimum=0)
        _int(self, "log_every", minimum=1)
        _int(self, "val_every", minimum=0)
        _int(self, "val_batch_size", minimum=0)
        _int(self, "checkpoint_every", minimum=0)
        _int(self, "keep_checkpoints", minimum=1)
        _int(self, "num_workers", minimum=0)
        _float(self, "lr", low=0.0, low_open=True)
        _float(self, "weight_decay", low=0.0)
        _float(self, "grad_clip", low=0.0)
        _float(self, "ema_decay", low=0.0, high=1.0)
        _float(self, "t_min", low=0.0, high=1.0, low_open=True)
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"TrainConfig.{name} must be one of {list(choices)}; got {value!r}")
        if self.loss == "ddpm" and (self.time_sampling != "uniform" or self.weighting != "simple"):
            raise ValueError(
                "TrainConfig: loss='ddpm' is L_simple with n ~ U{1..N}; it takes time_sampling='uniform' and "
                f"weighting='simple', got time_sampling={self.time_sampling!r}, weighting={self.weighting!r}"
            )

    # ---- (de)serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON/TOML-serialisable dict (every value a scalar)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "the configuration") -> "TrainConfig":
        """Build from a dict; unknown keys raise a ValueError naming them and ``source``."""
        check_options(source, d, [f.name for f in fields(cls)], what="training option")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """Read the options from a TOML file: its ``[train]`` table if it has one, else the top level."""
        from scidiff._toml import read_toml

        path = Path(path)
        doc = read_toml(path, what="training configuration file")
        table = doc.get("train", doc)
        return cls.from_dict(table, source=f"training configuration file {str(path)!r}")

    def to_toml(self, *, table: str | None = "train") -> str:
        """The options as TOML text (under ``[table]``, or at the top level if ``table`` is None)."""
        from scidiff._toml import toml_table

        return toml_table(table, self.to_dict())


def _int(cfg: TrainConfig, name: str, *, minimum: int) -> None:
    check_int(f"TrainConfig.{name}", getattr(cfg, name), minimum=minimum)


def _float(
    cfg: TrainConfig, name: str, *, low: float, high: float = math.inf, low_open: bool = False
) -> None:
    setattr(cfg, name, check_number(f"TrainConfig.{name}", getattr(cfg, name), low=low, high=high, low_open=low_open))
