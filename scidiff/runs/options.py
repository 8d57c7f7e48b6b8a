"""The options of a run and its ``config.toml``: which data, which model, which training.

``config.toml`` holds three tables, every option written out::

    [data]    file, variables, cond, sample_dim, spatial_dims, log, val_fraction, split_seed
    [model]   base_channels, channel_mults, ..., prediction, schedule, beta_min, beta_max
    [train]   every field of :class:`scidiff.training.TrainConfig`

and is read back by :func:`read_config` (so ``scidiff train --config RUN/config.toml`` repeats
a run).  Missing tables and options take their defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from scidiff._atomic import write_text_atomically
from scidiff._toml import read_toml, toml_table
from scidiff._validate import check_options
from scidiff.models import ScoreModel
from scidiff.nets import UNet
from scidiff.sde import VPSDE
from scidiff.training import TrainConfig

__all__ = ["DataOptions", "ModelOptions", "read_config", "config_text", "write_config", "CONFIG_FILE"]

CONFIG_FILE = "config.toml"


@dataclass
class DataOptions:
    """Which fields of which file a run trains on.

    Attributes:
        file: the netCDF / HDF5 file.
        variables: variable names, one channel each (or one per entry of a channel dim).
        cond: parameter variables along the sample dim the model is conditioned on.
        sample_dim: the dim that indexes fields ("" = guess).
        spatial_dims: the grid dims (empty = guess).
        log: variables standardised after a log transform (every value must be > 0).
        val_fraction: share of the fields held out for the validation loss.
        split_seed: seed of the train / validation split.
    """

    file: str = ""
    variables: list[str] = field(default_factory=list)
    cond: list[str] = field(default_factory=list)
    sample_dim: str = ""
    spatial_dims: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("variables", "cond", "spatial_dims", "log"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"data option {name} must be a list of names, got {value!r}")
            setattr(self, name, list(value))
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ValueError(f"data option val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        self.val_fraction = float(self.val_fraction)


@dataclass
class ModelOptions:
    """The network and the diffusion process of a run.

    Attributes:
        base_channels: width of the UNet's first level.
        channel_mults: width multiplier of each level (its length is the number of levels).
        num_res_blocks: residual blocks per level.
        attention: self-attention at the coarsest level.
        dropout: dropout probability in the residual blocks.
        periodic: circular padding (fields on a periodic domain); else zero padding.
        prediction: what the network predicts, "eps", "x0" or "v".  The default "v" trains to
            usable samples in far fewer steps than "eps" (docs/cli.md: a 16 x 16 field after 400
            steps had sample std 0.96 with "v", 8.6 with "eps", data 0.95).
        schedule: "linear" (beta_min, beta_max) or "cosine".
        beta_min, beta_max: the linear schedule's beta(0) and beta(1).
    """

    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attention: bool = True
    dropout: float = 0.0
    periodic: bool = False
    prediction: str = "v"
    schedule: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if isinstance(self.channel_mults, str):
            self.channel_mults = [int(v) for v in self.channel_mults.split(",") if v]
        self.channel_mults = [int(v) for v in self.channel_mults]
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"model option channel_mults must be positive integers, got {self.channel_mults!r}")
        if self.prediction not in ("eps", "x0", "v"):
            raise ValueError(f"model option prediction must be 'eps', 'x0' or 'v', got {self.prediction!r}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"model option schedule must be 'linear' or 'cosine', got {self.schedule!r}")

    @property
    def multiple(self) -> int:
        """Every spatial size of a periodic network must be a multiple of this, 2**(levels - 1)."""
        return 2 ** (len(self.channel_mults) - 1)

    def build(self, channels: int, dims: int, num_params: int, *, seed: int | None = None) -> ScoreModel:
        """The ScoreModel: a UNet on ``channels`` fields in ``dims`` D and the VP-SDE.

        With ``seed`` the initial weights are drawn from a CPU generator seeded with it (in a
        forked RNG, so torch's global generator is left as it was): one seed, one network.
        """
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                return self.build(channels, dims, num_params)
        net = UNet(
            channels=channels,
            dims=dims,
            periodic=self.periodic,
            cond_dim=num_params + 1 if num_params else 0,
            base_channels=self.base_channels,
            channel_mults=tuple(self.channel_mults),
            num_res_blocks=self.num_res_blocks,
            attention_levels=None if self.attention else (),
            dropout=self.dropout,
        )
        sde = VPSDE.cosine() if self.schedule == "cosine" else VPSDE(self.beta_min, self.beta_max)
        return ScoreModel(net, sde, prediction=self.prediction)  # type: ignore[arg-type]


def _from_table(cls: type, table: Any, where: str) -> Any:
    try:
        check_options(where, table, [f.name for f in fields(cls)])
    except TypeError as err:
        raise ValueError(str(err)) from None
    return cls(**table)


def read_config(path: str | os.PathLike[str]) -> tuple[DataOptions, ModelOptions, TrainConfig]:
    """(data, model, train) options from a TOML file with [data], [model] and [train] tables.

    Missing tables and options take their defaults.  A file with only training options at
    the top level is read as the [train] table.
    """
    path = Path(path)
    doc = read_toml(path)
    tables = {"data", "model", "train"}
    if not tables & set(doc):
        doc = {"train": doc}
    unknown = sorted(set(doc) - tables)
    if unknown:
        raise ValueError(f"configuration file {str(path)!r} has unknown table(s) {unknown}; use [data], [model], [train]")
    data = _from_table(DataOptions, doc.get("data", {}), f"[data] of {path}")
    model = _from_table(ModelOptions, doc.get("model", {}), f"[model] of {path}")
    train = TrainConfig.from_dict(doc.get("train", {}), source=f"[train] of {path}")
    return data, model, train


def config_text(data: DataOptions, model: ModelOptions, train: TrainConfig) -> str:
    """The TOML text of a run's options (read back by :func:`read_config`)."""
    parts = [
        "# scidiff run configuration: every option of the run, reusable with --config\n",
        toml_table("data", dataclasses.asdict(data)),
        toml_table("model", dataclasses.asdict(model)),
        train.to_toml(table="train"),
    ]
    return "\n".join(parts)


def write_config(path: str | os.PathLike[str], data: DataOptions, model: ModelOptions, train: TrainConfig) -> Path:
    """Write :func:`config_text` to ``path``."""
    target = Path(path)
    write_text_atomically(target, config_text(data, model, train))
    return target
