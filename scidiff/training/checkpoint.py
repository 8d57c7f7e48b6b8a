"""Checkpoints: safetensors weights plus one JSON file, written atomically, loaded without pickle.

A checkpoint is a directory::

    checkpoint.json       format, step, TrainConfig, network class + constructor kwargs, SDE,
                          prediction type, field shape, normalisation statistics, history,
                          the structure of the optimiser/RNG state, sha256 of every file below
    model.safetensors     the network's weights (keys of ``net.state_dict()``)
    ema.safetensors       the EMA weights (same keys), if any
    state.safetensors     the tensors of the optimiser and RNG states (and DDPM betas), if any

A folder of checkpoints (:class:`CheckpointFolder`, the ``checkpoints/`` of a run) holds
``step_XXXXXXXX/`` checkpoints and a file ``latest`` naming the newest complete one.

Atomicity (:mod:`scidiff._atomic`): every checkpoint is first written into a temporary
directory beside its target and then renamed into place, and ``latest`` is replaced the same
way only after that; a run killed at any moment leaves the previous checkpoint intact and
``latest`` pointing at it.  Loading never unpickles: tensors come from safetensors, the rest
from JSON, and every file is checked against its recorded sha256 first.

Rebuilding the network: the JSON records the network's class and constructor kwargs
(:mod:`scidiff.nets.registry`); alternatively pass ``net=`` an instance of the right
architecture.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from scidiff._atomic import atomic_directory, is_temporary, previous_copies, write_bytes, write_text_atomically
from scidiff.models import ScoreModel
from scidiff.nets.registry import NetSpecError, build_net, net_spec
from scidiff.sde import VPSDE
from scidiff.training.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from scidiff.ddpm import DDPM

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
]

FORMAT = "scidiff-checkpoint"
VERSION = 1
META_FILE = "checkpoint.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.safetensors"
LATEST_FILE = "latest"
CHECKPOINTS_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit: the message names the file and what is wrong."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for."""


# ---- a JSON + tensors encoding of nested state (optimiser, RNG) ------------------------------
def _encode(obj: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        name = key
        while name in tensors:
            name += "'"
        tensors[name] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{key}.key{i}", tensors), _encode(v, f"{key}.{k}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store {type(obj).__name__} at {key} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, Tensor], *, source: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, source=source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        name = obj["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"{source}: {STATE_FILE} lacks tensor {name!r} named in {META_FILE}")
        return tensors[name]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj.get("dtype"))
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, source=source) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors, source=source): _decode(v, tensors, source=source) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors, source=source) for k, v in obj.items()}


def _safetensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()})


# ---- saving ----------------------------------------------------------------------------------
def _normalizer_dict(normalizer: Any) -> dict[str, Any] | None:
    if normalizer is None:
        return None
    if isinstance(normalizer, dict):
        d = normalizer
    elif callable(getattr(normalizer, "to_dict", None)):
        d = normalizer.to_dict()
    else:
        raise TypeError(f"normalizer must be a dict or have a to_dict() method; got {type(normalizer).__name__}")
    try:
        json.dumps(d, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the normaliser's to_dict() is not JSON data: {err}") from None
    return d


def save_checkpoint(
    path: str | os.PathLike[str],
    model: ScoreModel,
    *,
    ema_model: nn.Module | None = None,
    config: TrainConfig | dict[str, Any] | None = None,
    step: int = 0,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    normalizer: Any = None,
    net_config: dict[str, Any] | None = None,
    field_shape: tuple[int, ...] | list[int] | None = None,
    ddpm: "DDPM | None" = None,
    history: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically; returns ``path``.

    Args:
        path: the checkpoint directory to create (its parent is created if needed).
        model: the ScoreModel (its ``net`` weights go to model.safetensors).
        ema_model: the EMA copy (a ScoreModel or its net), saved to ema.safetensors.
        config: the TrainConfig (or its dict).
        step: optimiser steps taken.
        optimizer: an optimiser or its ``state_dict()``.
        rng: RNG states (tensors, numpy arrays and tuples are kept exactly).
        normalizer: normalisation statistics: a dict or an object with ``to_dict()``.
        net_config: the network's constructor kwargs if it has no ``config`` attribute.
        field_shape: [C, *spatial] of the training fields (checked when data is fed later).
        ddpm: the discrete chain of a ``loss="ddpm"`` run (its betas are stored).
        history: the training history (list of dicts of numbers).
        extra: more JSON data to keep (under "extra").
        overwrite: replace an existing checkpoint at ``path`` (else raise FileExistsError).
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a scidiff.ScoreModel, got {type(model).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {str(path)!r} exists (pass overwrite=True to replace it)")
    if config is not None and not isinstance(config, dict):
        config = config.to_dict()
    state_tensors: dict[str, Tensor] = {}
    state: dict[str, Any] = {}
    if optimizer is not None:
        opt_state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        state["optimizer"] = _encode(opt_state, "optimizer", state_tensors)
    if rng is not None:
        state["rng"] = _encode(rng, "rng", state_tensors)
    if ddpm is not None:
        state["ddpm_betas"] = _encode(ddpm.betas, "ddpm_betas", state_tensors)

    try:
        spec = net_spec(model.net, net_config)
    except NetSpecError as err:
        raise CheckpointError(str(err)) from None
    files: dict[str, bytes] = {MODEL_FILE: _safetensors_bytes(model.net.state_dict())}
    if ema_model is not None:
        ema_net = ema_model.net if isinstance(ema_model, ScoreModel) else ema_model
        files[EMA_FILE] = _safetensors_bytes(ema_net.state_dict())
    if state_tensors:
        files[STATE_FILE] = _safetensors_bytes(state_tensors)

    from scidiff._version import __version__

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "scidiff_version": __version__,
        "step": int(step),
        "net": spec,
        "sde": model.sde.to_dict(),
        "prediction": model.prediction,
        "field_shape": None if field_shape is None else [int(s) for s in field_shape],
        "train_config": config,
        "normalizer": _normalizer_dict(normalizer),
        "history": history or [],
        "state": state,
        "extra": extra or {},
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()},
    }
    meta_text = json.dumps(meta, indent=1, allow_nan=True)

    with atomic_directory(path) as tmp:
        for name, data in files.items():
            write_bytes(tmp / name, data)
        write_bytes(tmp / META_FILE, meta_text.encode())
    return path


# ---- a folder of checkpoints ----------------------------------------------------------------------
class CheckpointFolder:
    """The checkpoints of one training run under ``root``: ``root/checkpoints/step_XXXXXXXX/``
    (zero-padded, so names sort by step) and ``root/latest``, a one-line file naming the newest
    complete one relative to ``root``.

    The Trainer writes here; :class:`scidiff.runs.Run` reads through it.  ``latest`` is moved
    only after a checkpoint is whole (:meth:`commit`), so it never names a partial one.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def folder(self) -> Path:
        """``root/checkpoints``."""
        return self.root / CHECKPOINTS_DIR

    @property
    def latest_file(self) -> Path:
        """``root/latest``."""
        return self.root / LATEST_FILE

    @classmethod
    def of(cls, checkpoint: str | os.PathLike[str]) -> "CheckpointFolder | None":
        """The folder a checkpoint directory belongs to, or None if it stands alone."""
        path = Path(checkpoint)
        return cls(path.parent.parent) if path.parent.name == CHECKPOINTS_DIR else None

    def path_for(self, step: int) -> Path:
        """Where the checkpoint of optimiser step ``step`` goes."""
        return self.folder / f"step_{int(step):08d}"

    def steps(self) -> list[Path]:
        """The complete checkpoints (those with their checkpoint.json), oldest first."""
        if not self.folder.is_dir():
            return []
        found = [
            p for p in self.folder.iterdir()
            if p.is_dir() and p.name.startswith("step_") and (p / META_FILE).is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names, else the newest complete one, else None.

        Raises:
            CheckpointError: ``latest`` names a path outside the run folder (``../other``, an
                absolute path, a link out): it is refused rather than followed.
        """
        if self.latest_file.is_file():
            name = self.latest_file.read_text().strip()
            target = (self.root / name).resolve() if name else self.root
            if name and not target.is_relative_to(self.root.resolve()):
                raise CheckpointError(
                    f"{str(self.latest_file)!r} names {name!r}, which lies outside the run folder; point it at one "
                    f"of the run's own {CHECKPOINTS_DIR}/step_* (or delete it to use the newest)"
                )
            if name and (target / META_FILE).is_file():
                return target
        steps = self.steps()
        return steps[-1] if steps else None

    def exists(self) -> bool:
        """Whether anything of a checkpoint folder is there (``latest`` or ``checkpoints/``)."""
        return self.latest_file.exists() or self.folder.is_dir()

    def commit(self, checkpoint: Path, *, keep: int) -> None:
        """Point ``latest`` at the (complete) ``checkpoint``, then :meth:`prune` to ``keep``."""
        rel = Path(checkpoint).resolve().relative_to(self.root.resolve())
        write_text_atomically(self.latest_file, f"{rel.as_posix()}\n")
        self.prune(keep, protect=Path(checkpoint))

    def prune(self, keep: int, *, protect: Path | None = None) -> None:
        """Remove all but the newest ``keep`` checkpoints (never ``protect``) and any leftover
        temporaries of interrupted writes."""
        if not self.folder.is_dir():
            return
        steps = sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for old in steps[: max(0, len(steps) - int(keep))]:
            if protect is None or old.resolve() != Path(protect).resolve():
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.folder.iterdir():
            if is_temporary(stale):
                shutil.rmtree(stale, ignore_errors=True)

    def clear(self) -> None:
        """Remove every checkpoint and ``latest``."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
        if self.latest_file.exists():
            self.latest_file.unlink()

    def __repr__(self) -> str:
        return f"CheckpointFolder({str(self.root)!r})"


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory meant by ``path``.

    ``path`` may be a checkpoint directory (with checkpoint.json), a file inside one, or a
    run directory (its ``latest`` checkpoint, else its newest complete ``checkpoints/step_*``).
    """
    path = Path(path)
    if not path.exists():
        # an overwrite interrupted between its two renames leaves the previous copy beside it
        olds = [p for p in previous_copies(path) if (p / META_FILE).is_file()]
        if olds:
            warnings.warn(f"checkpoint {str(path)!r} is missing; loading the previous copy {str(olds[-1])!r}", stacklevel=3)
            return olds[-1]
        raise CheckpointNotFoundError(f"no checkpoint at {str(path)!r}: the path does not exist")
    if path.is_file():
        if path.name in (META_FILE, MODEL_FILE, EMA_FILE, STATE_FILE):
            return path.parent
        raise CheckpointNotFoundError(
            f"{str(path)!r} is a file, not a checkpoint directory (one holding {META_FILE}) or a run directory"
        )
    if (path / META_FILE).is_file():
        return path
    found = CheckpointFolder(path).latest()
    if found is not None:
        return found
    raise CheckpointNotFoundError(
        f"no checkpoint in {str(path)!r}: it has neither {META_FILE} (a checkpoint directory) nor "
        f"{LATEST_FILE} / {CHECKPOINTS_DIR}/step_* (a run directory)"
    )


# ---- loading -------------------------------------------------------------------------------------
def _read_verified(ckpt: Path, name: str, meta: dict[str, Any]) -> bytes:
    file = ckpt / name
    if not file.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt)!r} is incomplete: {name} is missing")
    data = file.read_bytes()
    record = meta.get("files", {}).get(name)
    expected = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(expected, str):
        raise CheckpointError(
            f"{str(ckpt / META_FILE)!r} records no sha256 for {name}, so the file cannot be verified; "
            "a checkpoint written by scidiff always has one: restore the checkpoint or use another"
        )
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{str(file)!r} is corrupt or truncated ({len(data)} bytes, expected {record.get('bytes')}; sha256 mismatch)"
        )
    return data


def _read_tensors(ckpt: Path, name: str, meta: dict[str, Any]) -> dict[str, Tensor]:
    from safetensors.torch import load

    data = _read_verified(ckpt, name, meta)
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{str(ckpt / name)!r} is not a readable safetensors file ({err})") from None


def _read_meta(ckpt: Path) -> dict[str, Any]:
    file = ckpt / META_FILE
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"checkpoint {str(ckpt)!r} has no {META_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(file)!r} is corrupt or truncated: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(file)!r} is not a scidiff checkpoint (no \"format\": \"{FORMAT}\")")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{str(file)!r} has checkpoint format version {version!r}; this scidiff reads versions up to {VERSION}"
        )
    return meta


def _fmt_list(items: list[str], limit: int = 8) -> str:
    head = ", ".join(items[:limit])
    return head + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def load_weights(net: nn.Module, tensors: dict[str, Tensor], *, source: str, check_only: bool = False) -> None:
    """Copy ``tensors`` into ``net``, raising a CheckpointError that lists every mismatch.

    With ``check_only`` only the names and shapes are compared (``net`` may live on the meta
    device, holding no memory).
    """
    own = net.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [
        f"{k} {list(tensors[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs network): {_fmt_list(shapes)}")
        if missing:
            parts.append(f"missing from the checkpoint: {_fmt_list(missing)}")
        if unexpected:
            parts.append(f"not in the network: {_fmt_list(unexpected)}")
        raise CheckpointError(f"{source} does not fit the network {type(net).__name__}: " + "; ".join(parts))
    if not check_only:
        net.load_state_dict(tensors)


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the checkpoint directory.
        step: optimiser steps taken when it was written.
        model: the ScoreModel to use (EMA weights when present and ``ema=True``, in eval mode).
        raw_model: the ScoreModel with the trained (non-averaged) weights.
        ema_model: the ScoreModel with the EMA weights, or None if none were saved.
        config: the TrainConfig, or None.
        normalizer: the normalisation statistics dict (``Normalizer.to_dict()``), or None.
        sde, prediction: as in the ScoreModel.
        field_shape: [C, *spatial] of the training fields, or None.
        net_spec: {"class": ..., "kwargs": ...} of the network.
        history: the training history (list of dicts).
        state: decoded optimiser / RNG state and DDPM betas ({"optimizer": ..., "rng": ..., ...}).
        meta: the raw checkpoint.json contents.
    """

    path: Path
    step: int
    model: ScoreModel
    raw_model: ScoreModel
    ema_model: ScoreModel | None
    config: TrainConfig | None
    normalizer: dict[str, Any] | None
    sde: VPSDE
    prediction: str
    field_shape: tuple[int, ...] | None
    net_spec: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def normalizer_object(self) -> Any:
        """The normaliser rebuilt with ``scidiff.data.Normalizer.from_dict`` (None if none was saved)."""
        if self.normalizer is None:
            return None
        from scidiff.data import Normalizer  # imported only when asked for

        return Normalizer.from_dict(self.normalizer)

    @property
    def ddpm(self) -> "DDPM | None":
        """The discrete chain of a ``loss="ddpm"`` run, or None."""
        betas = self.state.get("ddpm_betas")
        if betas is None:
            return None
        from scidiff.ddpm import DDPM

        return DDPM(betas.to(torch.float64), sde=self.sde)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    net: nn.Module | None = None,
    ema: bool = True,
) -> Checkpoint:
    """Load a checkpoint directory or the latest checkpoint of a run directory.

    Args:
        path: see :func:`resolve_checkpoint`.
        device: where to put the models (default: the CPU).
        net: a network instance of the saved architecture, used instead of rebuilding it
            from the recorded class and kwargs (its weights are overwritten).
        ema: make ``.model`` the EMA model when one was saved.

    Raises:
        CheckpointNotFoundError: nothing at ``path``.
        CheckpointError: a corrupt/truncated file (named), or weights that do not fit the network
            (every mismatching parameter listed).
    """
    ckpt = resolve_checkpoint(path)
    meta = _read_meta(ckpt)
    source = f"checkpoint {str(ckpt)!r}"
    try:
        sde = VPSDE.from_dict(meta["sde"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(ckpt / META_FILE)!r} has an unreadable SDE entry ({err})") from None
    prediction = meta.get("prediction", "eps")
    spec = meta.get("net") or {}
    weights = _read_tensors(ckpt, MODEL_FILE, meta)
    if net is None:
        # the recorded architecture is first built on the meta device (no memory) and checked
        # against the weights file's shapes, so that a description asking for terabytes fails
        # in one line instead of allocating them
        try:
            with torch.device("meta"):
                probe: nn.Module | None = build_net(spec, source=source)
        except NetSpecError as err:
            raise CheckpointError(str(err)) from None
        except (RuntimeError, NotImplementedError):  # a constructor that needs real values
            probe = None
        if probe is not None:
            load_weights(probe, weights, source=f"{str(ckpt / MODEL_FILE)!r}", check_only=True)
            del probe
        try:
            net = build_net(spec, source=source)
        except NetSpecError as err:
            raise CheckpointError(str(err)) from None
    elif not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    load_weights(net, weights, source=f"{str(ckpt / MODEL_FILE)!r}")
    raw = ScoreModel(net, sde, prediction=prediction)
    ema_model: ScoreModel | None = None
    if EMA_FILE in meta.get("files", {}):
        ema_model = copy.deepcopy(raw)
        load_weights(ema_model.net, _read_tensors(ckpt, EMA_FILE, meta), source=f"{str(ckpt / EMA_FILE)!r}")
    state_tensors = _read_tensors(ckpt, STATE_FILE, meta) if STATE_FILE in meta.get("files", {}) else {}
    state = _decode(meta.get("state", {}), state_tensors, source=source)
    config = None
    if meta.get("train_config") is not None:
        config = TrainConfig.from_dict(meta["train_config"], source=f"{str(ckpt / META_FILE)!r}")
    if device is not None:
        raw.to(device)
        if ema_model is not None:
            ema_model.to(device)
    for m in (raw, ema_model):
        if m is not None:
            m.eval()
    shape = meta.get("field_shape")
    return Checkpoint(
        path=ckpt,
        step=int(meta.get("step", 0)),
        model=ema_model if (ema and ema_model is not None) else raw,
        raw_model=raw,
        ema_model=ema_model,
        config=config,
        normalizer=meta.get("normalizer"),
        sde=sde,
        prediction=prediction,
        field_shape=None if shape is None else tuple(int(s) for s in shape),
        net_spec=spec,
        history=list(meta.get("history") or []),
        state=state,
        meta=meta,
    )


def load_model(
    path: str | os.PathLike[str],
    *,
    ema: bool = True,
    device: torch.device | str | None = None,
    net: nn.Module | None = None,
) -> ScoreModel:
    """The ScoreModel of a checkpoint or run directory (EMA weights by default), in eval mode."""
    ckpt = load_checkpoint(path, device=device, net=net, ema=ema)
    return ckpt.model
