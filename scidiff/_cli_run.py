"""Run folders of the command line: options, ``config.toml``, ``run.json`` and training.

A run folder, as written by ``scidiff train`` (and ``scidiff demo``), holds::

    config.toml      every option of the run: [data], [model] and [train] tables
                     (reusable as ``scidiff train --config RUN/config.toml``)
    run.json         what sampling and likelihoods need besides the weights: the data
                     template (variable names, dims, coords, units, attrs), the
                     conditioning columns and their standardisation
    checkpoints/     the Trainer's checkpoints (weights, EMA, normaliser, history)
    latest           the newest complete checkpoint

Conditioning follows :mod:`scidiff.conditional`: the network sees
``c = [theta_std, 1]`` with ``theta_std = (theta - mean) / std`` per parameter, the
statistics taken over the training split and kept in ``run.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DataOptions",
    "ModelOptions",
    "RunError",
    "Run",
    "load_run",
    "read_config",
    "write_config",
    "train_run",
    "RUN_FILE",
    "CONFIG_FILE",
]

RUN_FILE = "run.json"
CONFIG_FILE = "config.toml"
RUN_FORMAT = "scidiff-run"


class RunError(ValueError):
    """A path is not a usable run folder; the message names it and says how to make one."""


# ---- options ---------------------------------------------------------------------------------
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

    def build(self, channels: int, dims: int, num_params: int) -> Any:
        """The ScoreModel: a UNet on ``channels`` fields in ``dims`` D and the VP-SDE."""
        import scidiff as sd

        net = sd.UNet(
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
        sde = sd.VPSDE.cosine() if self.schedule == "cosine" else sd.VPSDE(self.beta_min, self.beta_max)
        return sd.ScoreModel(net, sde, prediction=self.prediction)  # type: ignore[arg-type]


def _from_table(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table of options, got {type(table).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where} has unknown option(s) {unknown}; known options are {sorted(known)}")
    return cls(**table)


def read_config(path: str | os.PathLike[str]) -> tuple[DataOptions, ModelOptions, Any]:
    """(data, model, train) options from a TOML file with [data], [model] and [train] tables.

    Missing tables and options take their defaults.  A file with only training options at
    the top level is read as the [train] table.
    """
    from scidiff.training import TrainConfig

    from scidiff._toml import read_toml

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


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def config_text(data: DataOptions, model: ModelOptions, train: Any) -> str:
    """The TOML text of a run's options (read back by :func:`read_config`)."""
    lines = ["# scidiff run configuration: every option of the run, reusable with --config", ""]
    for name, options in (("data", dataclasses.asdict(data)), ("model", dataclasses.asdict(model))):
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in options.items()]
        lines.append("")
    lines.append(train.to_toml(table="train"))
    return "\n".join(lines)


def write_config(path: str | os.PathLike[str], data: DataOptions, model: ModelOptions, train: Any) -> Path:
    """Write :func:`config_text` to ``path``."""
    from scidiff._atomic import write_text_atomically

    target = Path(path)
    write_text_atomically(target, config_text(data, model, train))
    return target


# ---- run folders -----------------------------------------------------------------------------
@dataclass
class Run:
    """A run folder: its options, data template and conditioning statistics.

    Attributes:
        path: the folder.
        data, model: the options it was trained with.
        template: a :class:`scidiff.data.FieldTemplate` of the training data.
        cond_names: the conditioning columns (``P`` of them; empty for an unconditional model).
        cond_mean, cond_std: standardisation of the conditioning, ``[P]`` each.
    """

    path: Path
    data: DataOptions
    model: ModelOptions
    template: Any
    cond_names: tuple[str, ...] = ()
    cond_mean: list[float] = field(default_factory=list)
    cond_std: list[float] = field(default_factory=list)

    @property
    def field_shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of the fields the model takes."""
        return (self.template.num_channels, *self.template.spatial_shape)

    def checkpoint(self, *, device: torch.device | str | None = None) -> Any:
        """The latest checkpoint (:class:`scidiff.checkpoint.Checkpoint`) of the run."""
        from scidiff.checkpoint import CheckpointNotFoundError, load_checkpoint

        try:
            return load_checkpoint(self.path, device=device)
        except CheckpointNotFoundError:
            raise RunError(
                f"run folder {str(self.path)!r} holds no checkpoint yet: its training has not saved one "
                f"(run `scidiff train ... --out {self.path}` to completion, or --resume it)"
            ) from None

    def condition(self, theta: Tensor) -> Tensor:
        """``c = [(theta - mean) / std, 1]`` for parameters ``theta`` ``[B, P]`` in data units."""
        from scidiff.conditional import condition

        mean = torch.tensor(self.cond_mean, dtype=theta.dtype, device=theta.device)
        std = torch.tensor(self.cond_std, dtype=theta.dtype, device=theta.device)
        return condition((theta - mean) / std)

    def to_dict(self) -> dict[str, Any]:
        from scidiff._version import __version__

        return {
            "format": RUN_FORMAT,
            "version": 1,
            "scidiff_version": __version__,
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "template": self.template.to_dict(),
            "cond_names": list(self.cond_names),
            "cond_mean": list(self.cond_mean),
            "cond_std": list(self.cond_std),
        }

    def save(self) -> Path:
        """Write ``run.json`` into the folder."""
        from scidiff._atomic import write_text_atomically

        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / RUN_FILE
        write_text_atomically(target, json.dumps(self.to_dict(), indent=1))
        return target


def load_run(path: str | os.PathLike[str]) -> Run:
    """The run folder at ``path`` (or the run a checkpoint directory inside it belongs to).

    Raises:
        RunError: ``path`` does not exist or is not a run folder made by ``scidiff train``.
    """
    from scidiff.data import FieldTemplate

    given = Path(path)
    if not given.exists():
        raise RunError(f"run folder {str(given)!r} does not exist")
    folder = given if given.is_dir() else given.parent
    candidates = [folder, folder.parent, folder.parent.parent]
    run_dir = next((c for c in candidates if (c / RUN_FILE).is_file()), None)
    if run_dir is None:
        raise RunError(
            f"{str(given)!r} is not a scidiff run folder (it has no {RUN_FILE}); make one with "
            "`scidiff train --data FILE --var NAME --out RUN` or `scidiff demo`"
        )
    file = run_dir / RUN_FILE
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{str(file)!r} is corrupt: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise RunError(f"{str(file)!r} is not a scidiff run description (no \"format\": \"{RUN_FORMAT}\")")
    try:
        return Run(
            path=run_dir,
            data=_from_table(DataOptions, meta["data"], f"data of {file}"),
            model=_from_table(ModelOptions, meta["model"], f"model of {file}"),
            template=FieldTemplate.from_dict(meta["template"]),
            cond_names=tuple(meta.get("cond_names", ())),
            cond_mean=[float(v) for v in meta.get("cond_mean", [])],
            cond_std=[float(v) for v in meta.get("cond_std", [])],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{str(file)!r} is incomplete or damaged ({err})") from None


# ---- training --------------------------------------------------------------------------------
class _Conditioned(Dataset):
    """Items (x, theta) of a FieldDataset as (x, [(theta - mean) / std, 1])."""

    def __init__(self, dataset: Dataset, run: Run) -> None:
        self.dataset = dataset
        self.run = run
        self.normalizer = getattr(dataset, "normalizer", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _one(self, item: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, theta = item
        return x, self.run.condition(theta[None])[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self._one(self.dataset[i])

    def __getitems__(self, items: list[int]) -> list[tuple[Tensor, Tensor]]:
        return [self._one(it) for it in self.dataset.__getitems__(items)]  # type: ignore[attr-defined]


def open_training_data(data: DataOptions) -> Any:
    """The :class:`scidiff.data.FieldSource` of a run's data options."""
    from scidiff.data import open_fields

    if not data.file:
        raise ValueError("no data file given (--data FILE, or file = ... under [data] in the configuration)")
    if not data.variables:
        raise ValueError("no variable given (--var NAME[,NAME], or variables = [...] under [data])")
    return open_fields(
        data.file,
        data.variables,
        sample_dim=data.sample_dim or None,
        spatial_dims=data.spatial_dims or None,
        cond=data.cond,
    )


@dataclass
class TrainSummary:
    """What :func:`train_run` did: the run, the final step, losses and wall time."""

    run: Run
    step: int
    history: list[dict[str, float]]
    seconds: float
    num_train: int
    num_val: int
    parameters: int


def _prepare_folder(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    has_run = (run_dir / RUN_FILE).is_file() or (run_dir / "checkpoints").is_dir()
    if has_run and not (resume or overwrite):
        raise RunError(
            f"{str(run_dir)!r} already holds a run; pass --resume to continue it or --overwrite to start afresh"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{str(run_dir)!r} is a file, not a folder for the run")
    if overwrite and has_run:
        for name in ("checkpoints", "latest", RUN_FILE, CONFIG_FILE):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train_run(
    run_dir: str | os.PathLike[str],
    data: DataOptions,
    model: ModelOptions,
    train: Any,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train a model on ``data`` into the run folder ``run_dir`` (see the module docstring).

    Fits the per-channel normaliser on the training split, builds the UNet of ``model`` for
    the file's channels, grid and parameters, saves ``config.toml`` and ``run.json`` and
    runs the :class:`scidiff.training.Trainer` (EMA, checkpoints, resume) for ``train.steps``.
    """
    import time

    from scidiff.data import FieldDataset, Normalizer, check_spatial_size
    from scidiff.nets import count_parameters
    from scidiff.training import Trainer

    start = time.perf_counter()
    run_dir = Path(run_dir)
    data.file = str(Path(data.file).expanduser().resolve()) if data.file else data.file
    source = open_training_data(data)
    spatial = source.spatial_shape
    if model.periodic:
        check_spatial_size(spatial, model.multiple, dims=source.spatial_dims, source=source.path.name)
    _prepare_folder(run_dir, resume=resume, overwrite=overwrite)
    split = dict(val_fraction=data.val_fraction, seed=data.split_seed)
    train_plain = FieldDataset(source, split="train", **split)
    normalizer = Normalizer.fit(train_plain, log=data.log, progress=progress)
    train_ds: Dataset = FieldDataset(source, split="train", normalizer=normalizer, **split)
    val_ds: Dataset | None = (
        FieldDataset(source, split="val", normalizer=normalizer, **split) if data.val_fraction > 0 else None
    )
    cond_mean: list[float] = []
    cond_std: list[float] = []
    if source.cond is not None:
        theta = np.asarray(source.cond)[train_plain.indices]
        cond_mean = theta.mean(axis=0).tolist()
        std = theta.std(axis=0)
        cond_std = np.where(std > 0, std, 1.0).tolist()
    run = Run(
        path=run_dir, data=data, model=model, template=source.template, cond_names=tuple(source.cond_names),
        cond_mean=cond_mean, cond_std=cond_std,
    )
    if source.cond is not None:
        train_ds = _Conditioned(train_ds, run)
        val_ds = None if val_ds is None else _Conditioned(val_ds, run)
    if len(train_ds) < train.batch_size:  # type: ignore[arg-type]
        train = train.replace(batch_size=len(train_ds))  # type: ignore[arg-type]
    if val_ds is None:
        train = train.replace(val_every=0)
    score_model = model.build(source.num_channels, len(spatial), len(source.cond_names))
    run.save()
    write_config(run_dir / CONFIG_FILE, data, model, train)
    trainer = Trainer(score_model, train, run_dir=run_dir, resume=resume, normalizer=normalizer, device=device)
    try:
        history = trainer.fit(train_ds, val_data=val_ds, progress=progress)
    finally:
        trainer.dist.close()
    if trainer.step == 0 or not (run_dir / "latest").exists():
        trainer.save()
    return TrainSummary(
        run=run, step=trainer.step, history=history, seconds=time.perf_counter() - start,
        num_train=len(train_ds), num_val=0 if val_ds is None else len(val_ds),  # type: ignore[arg-type]
        parameters=count_parameters(score_model.net),
    )
