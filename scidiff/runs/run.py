"""A run folder: what one trained model is, where its files are, and how to load it.

A run folder, as written by :func:`scidiff.runs.train` (``scidiff train``, ``scidiff demo``)::

    config.toml      every option of the run: [data], [model] and [train] tables
                     (reusable as ``scidiff train --config RUN/config.toml``)
    run.json         what sampling and likelihoods need besides the weights: the data
                     template (variable names, dims, coords, units, attrs), the
                     conditioning columns and their standardisation
    checkpoints/     the Trainer's checkpoints step_XXXXXXXX/ (weights, EMA, normaliser, history)
    latest           names the newest complete checkpoint
    autoencoder/     a latent run only (:func:`scidiff.runs.train_latent`): the autoencoder's
                     checkpoint; the score model of checkpoints/ then lives on its latents
    latent.json      a latent run only: the autoencoder options and the latent shift and scale
    lock             present while a process trains or writes into the folder (its pid and host)
    .overwritten.old-XXXXXXXX/
                     during ``--overwrite``, the previous run, until the new one's first checkpoint

The checkpoints and ``latest`` are kept by a :class:`scidiff.checkpoint.CheckpointFolder`
(the Trainer writes them); :class:`Run` reads them through :attr:`Run.checkpoints`.

Conditioning follows :mod:`scidiff.guidance.cfg`: the network sees ``c = [theta_std, 1]``
with ``theta_std = (theta - mean) / std`` per parameter, the statistics taken over the
training split and kept in ``run.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import torch
from torch import Tensor

from scidiff._atomic import fsync_dir, write_text_atomically
from scidiff._version import __version__
from scidiff.checkpoint import Checkpoint, CheckpointFolder, CheckpointNotFoundError, load_checkpoint
from scidiff.training.checkpoint import CHECKPOINTS_DIR, LATEST_FILE
from scidiff.data import FieldTemplate, Normalizer
from scidiff.guidance.cfg import condition
from scidiff.models import ScoreModel
from scidiff.runs.options import CONFIG_FILE, DataOptions, ModelOptions, _from_table

__all__ = ["Run", "RunError", "LoadedModel", "load_run", "check_finite_weights", "RUN_FILE"]

RUN_FILE = "run.json"
LOCK_FILE = "lock"
RUN_FORMAT = "scidiff-run"
ASIDE = ".overwritten.old-"
"""Prefix of the hidden folder an ``--overwrite`` keeps the old run in until the new one's first checkpoint."""
LATENT_FILE = "latent.json"
AUTOENCODER_DIR = "autoencoder"
RUN_ENTRIES = (RUN_FILE, CONFIG_FILE, CHECKPOINTS_DIR, LATEST_FILE, AUTOENCODER_DIR, LATENT_FILE)
"""What of a run folder is the run (what ``--overwrite`` replaces)."""


class RunError(ValueError):
    """A path is not a usable run folder; the message names it and says how to make one."""


@dataclass
class Run:
    """A run folder: its options, data template, conditioning statistics and checkpoints.

    Open one with :meth:`Run.open` (or :func:`load_run`); :func:`scidiff.runs.train` makes one.

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

    # ---- opening --------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "Run":
        """The run folder at ``path`` (or the run a checkpoint directory inside it belongs to).

        Raises:
            RunError: ``path`` does not exist or is not a run folder.
        """
        given = Path(path)
        if not given.exists():
            raise RunError(f"run folder {str(given)!r} does not exist")
        folder = given if given.is_dir() else given.parent
        candidates = [folder, folder.parent, folder.parent.parent]
        run_dir = next((c for c in candidates if (c / RUN_FILE).is_file()), None)
        if run_dir is None and any((aside / RUN_FILE).is_file() for aside in folder.glob(f"{ASIDE}*")):
            raise RunError(
                f"{str(given)!r}: an --overwrite of this run was interrupted before the new run's first checkpoint; "
                f"the previous run is kept in {folder.name}/{ASIDE}*: `scidiff train --out {given} --resume` puts it "
                "back and continues it"
            )
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
            return cls(
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

    # ---- the folder's files ------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        """``config.toml``: every option of the run."""
        return self.path / CONFIG_FILE

    @property
    def run_file(self) -> Path:
        """``run.json``: the data template and conditioning statistics."""
        return self.path / RUN_FILE

    @property
    def checkpoints(self) -> CheckpointFolder:
        """The run's checkpoints (``checkpoints/step_*`` and ``latest``)."""
        return CheckpointFolder(self.path)

    @property
    def latest(self) -> Path | None:
        """The newest complete checkpoint directory, or None before the first one is saved."""
        return self.checkpoints.latest()

    def prune(self, keep: int = 1) -> None:
        """Remove all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
        self.checkpoints.prune(keep, protect=self.latest)

    @property
    def field_shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of the fields the model takes."""
        return (self.template.num_channels, *self.template.spatial_shape)

    # ---- the model -----------------------------------------------------------------------
    def checkpoint(self, *, device: torch.device | str | None = None) -> Checkpoint:
        """The latest checkpoint (:class:`scidiff.checkpoint.Checkpoint`) of the run."""
        try:
            return load_checkpoint(self.path, device=device)
        except CheckpointNotFoundError:
            raise RunError(
                f"run folder {str(self.path)!r} holds no checkpoint yet: its training has not saved one "
                f"(run `scidiff train ... --out {self.path}` to completion, or --resume it)"
            ) from None

    def load(self, *, device: torch.device | str | None = None) -> "LoadedModel":
        """The latest checkpoint's EMA model and normaliser, ready for sampling and likelihoods."""
        dev = torch.device(device) if device is not None else torch.device("cpu")
        ckpt = self.checkpoint(device=dev)
        normalizer = ckpt.normalizer_object()
        if normalizer is None:
            raise RunError(
                f"checkpoint {str(ckpt.path)!r} holds no normalisation statistics; it was not made by scidiff train"
            )
        check_finite_weights(ckpt.model, f"checkpoint {str(ckpt.path)!r}")
        latent = self._load_latent(ckpt.model, dev) if (self.path / LATENT_FILE).is_file() else None
        return LoadedModel(run=self, model=ckpt.model, normalizer=normalizer, checkpoint=ckpt, device=dev,
                           latent=latent)

    def _load_latent(self, model: ScoreModel, device: torch.device) -> Any:
        """The :class:`~scidiff.latent.LatentDiffusion` of a latent run: its autoencoder and ``model``."""
        from scidiff.latent import LatentDiffusion, load_autoencoder

        info = json.loads((self.path / LATENT_FILE).read_text())
        ae = load_autoencoder(self.path / AUTOENCODER_DIR, device=device)
        check_finite_weights(ae, f"autoencoder {str(self.path / AUTOENCODER_DIR)!r}")
        return LatentDiffusion(ae, model, self.field_shape, latent_shift=torch.tensor(info["latent_shift"]),
                               latent_scale=torch.tensor(info["latent_scale"])).to(device)

    def condition(self, theta: Tensor) -> Tensor:
        """``c = [(theta - mean) / std, 1]`` for parameters ``theta`` ``[B, P]`` in data units."""
        mean = torch.tensor(self.cond_mean, dtype=theta.dtype, device=theta.device)
        std = torch.tensor(self.cond_std, dtype=theta.dtype, device=theta.device)
        return condition((theta - mean) / std)

    # ---- writing -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The contents of ``run.json``."""
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
        """Write ``run.json`` into the folder (atomically)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return write_text_atomically(self.run_file, json.dumps(self.to_dict(), indent=1))

    @staticmethod
    def check_target(path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> bool:
        """Whether ``path`` already holds a run, raising if it may not be trained into; changes nothing.

        Raises:
            RunError: a run is already there and neither ``resume`` nor ``overwrite`` is given,
                both are given, or ``path`` is a file.
        """
        run_dir = Path(path)
        if resume and overwrite:
            raise RunError("--resume and --overwrite exclude each other: continue the run, or replace it")
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"{str(run_dir)!r} is a file, not a folder for the run")
        has_run = (run_dir / RUN_FILE).is_file() or CheckpointFolder(run_dir).folder.is_dir()
        if has_run and not (resume or overwrite):
            raise RunError(
                f"{str(run_dir)!r} already holds a run; pass --resume to continue it or --overwrite to start afresh"
            )
        return has_run

    @staticmethod
    def set_aside(path: str | os.PathLike[str]) -> Path | None:
        """Move the run in ``path`` (run.json, config.toml, checkpoints/, latest) into a hidden folder.

        The folder, ``path/.overwritten.old-XXXXXXXX``, keeps the old run until the new one has
        a checkpoint (:meth:`drop_aside`) or puts it back if the new one fails first
        (:meth:`put_back`); a process killed in between leaves it for :meth:`recover`.
        Returns the folder, or None when there was nothing to move.
        """
        run_dir = Path(path)
        present = [name for name in RUN_ENTRIES if (run_dir / name).exists()]
        if not present:
            return None
        aside = run_dir / f"{ASIDE}{uuid.uuid4().hex[:8]}"
        aside.mkdir()
        for name in present:
            os.replace(run_dir / name, aside / name)
        fsync_dir(run_dir)
        return aside

    @staticmethod
    def put_back(path: str | os.PathLike[str], aside: Path) -> None:
        """Undo :meth:`set_aside`: remove the new run's files and move the old ones back."""
        run_dir = Path(path)
        for name in RUN_ENTRIES:
            _remove(run_dir / name)
        for entry in aside.iterdir():
            os.replace(entry, run_dir / entry.name)
        aside.rmdir()
        fsync_dir(run_dir)

    @staticmethod
    def drop_aside(aside: Path | None) -> None:
        """Remove a run set aside by :meth:`set_aside` (the new run has its first checkpoint)."""
        if aside is not None and aside.exists():
            shutil.rmtree(aside, ignore_errors=True)

    @staticmethod
    def recover(path: str | os.PathLike[str]) -> None:
        """Finish an overwrite cut short: a run set aside is dropped if the new run has a checkpoint,
        else put back."""
        run_dir = Path(path)
        for aside in sorted(run_dir.glob(f"{ASIDE}*")) if run_dir.is_dir() else []:
            if CheckpointFolder(run_dir).latest() is not None:
                Run.drop_aside(aside)
            else:
                Run.put_back(run_dir, aside)

    @staticmethod
    def resume_config(path: str | os.PathLike[str]) -> Path | None:
        """The ``config.toml`` a ``--resume`` of ``path`` continues with, or None if there is none.

        That of the run in the folder; after an overwrite cut short before its first checkpoint,
        that of the previous run set aside (which :meth:`recover` puts back).
        """
        run_dir = Path(path)
        if CheckpointFolder(run_dir).latest() is None:
            for aside in sorted(run_dir.glob(f"{ASIDE}*")) if run_dir.is_dir() else []:
                if (aside / CONFIG_FILE).is_file():
                    return aside / CONFIG_FILE
        own = run_dir / CONFIG_FILE
        return own if own.is_file() else None

    @staticmethod
    def prepare(path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> Path:
        """Make ``path`` ready for a run: create it, or (``overwrite``) clear a run in it.

        Raises:
            RunError: a run is already there and neither ``resume`` nor ``overwrite`` is given,
                or ``path`` is a file.
        """
        run_dir = Path(path)
        has_run = Run.check_target(run_dir, resume=resume, overwrite=overwrite)
        checkpoints = CheckpointFolder(run_dir)
        if overwrite and has_run:
            checkpoints.clear()
            for name in (RUN_FILE, CONFIG_FILE):
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    @staticmethod
    @contextmanager
    def lock(path: str | os.PathLike[str], *, name: str = LOCK_FILE) -> Iterator[Path]:
        """Hold ``path/lock`` while training (or writing) into the folder, so that a second process cannot.

        The lock file holds the owner's pid and host, and its owner holds an OS lock on it
        (``flock``) for as long as the command runs, so that the operating system itself says
        when the owner has gone, however it ended (kill -9 included): a file whose OS lock is
        free is taken over, one whose lock is held raises a RunError naming the pid and host.
        Where ``fcntl`` is missing (Windows) a file left by a process that no longer runs on
        this host is taken over instead.  Under torchrun only rank 0 takes the lock (and creates the
        folder).  ``name`` is the lock file's name (``scidiff demo`` holds its own, ``demo.lock``,
        around the run).
        """
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise RunError(f"{str(folder)!r} is a file, not a folder for the run")
        file = folder / name
        if int(os.environ.get("RANK", "0")) != 0:
            yield file  # the folder is rank 0's to create
            return
        folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(3):
            try:
                fd = _create_lock(file, f"{os.getpid()} {host}\n")
                break
            except FileExistsError:
                if _take_over_if_stale(file, host):
                    continue  # its owner has gone and the file is removed: try again
                pid, owner_host = _lock_owner(file)
                raise RunError(
                    f"run folder {str(folder)!r} is locked by process {pid} on {owner_host!r} (its file "
                    f"{name!r}); wait for it to finish"
                ) from None
        else:  # pragma: no cover - lost a race three times
            raise RunError(f"run folder {str(folder)!r}: could not take its lock")
        try:
            yield file
        finally:
            file.unlink(missing_ok=True)
            os.close(fd)

    @staticmethod
    def lock_holder(path: str | os.PathLike[str], *, name: str = LOCK_FILE) -> tuple[int | None, str | None] | None:
        """(pid, host) of the live process holding ``path/name``, or None when no process holds it.

        A lock file its owner has left (the process ended) is removed, as :meth:`lock` would.
        """
        file = Path(path) / name
        if not file.exists() or _take_over_if_stale(file, socket.gethostname()):
            return None
        return _lock_owner(file)

    @staticmethod
    def is_run(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a folder holding a run (its ``run.json``)."""
        return (Path(path) / RUN_FILE).is_file()


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Raise a RunError naming the first parameter or buffer of ``model`` holding NaN or inf.

    A model trained into divergence draws only NaN fields and NaN likelihoods; refusing it
    here turns that into one line before any sampling or solving.
    """
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise RunError(
                f"{source} holds non-finite weights ({bad} of {value.numel()} values of {name} are NaN or inf): "
                "its training diverged; train again with a lower --lr or a longer --warmup-steps"
            )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _os_lock(fd: int) -> bool:
    """Take the OS lock (``flock``, exclusive, not waiting) on ``fd``; False if another process holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _create_lock(file: Path, text: str) -> int:
    """Create ``file`` holding ``text``, OS-locked, in one step; returns its open descriptor.

    The text is written to a private file, which is OS-locked and then hard-linked into place,
    so that no process ever sees the lock file without its owner's pid or its OS lock; where the
    file system has no hard links, an exclusive create, the lock and the write.

    Raises:
        FileExistsError: ``file`` exists.
    """
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        os.write(fd, text.encode())
        _os_lock(fd)
        os.link(tmp, file)
        return fd
    except FileExistsError:
        os.close(fd)
        raise
    except OSError:  # no hard links here
        os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    _os_lock(fd)
    os.write(fd, text.encode())
    return fd


def _take_over_if_stale(file: Path, host: str) -> bool:
    """Remove the lock ``file`` if its owner has gone; returns whether it did (or the file vanished).

    With ``fcntl``: the owner has gone when its OS lock can be taken; the file is then removed
    only if the path still names the file whose lock was taken.  Without: when its pid no longer
    runs on this host.
    """
    if fcntl is None:  # pragma: no cover - Windows
        pid, owner_host = _lock_owner(file)
        if pid is None or owner_host != host or _alive(pid):
            return False
        file.unlink(missing_ok=True)
        return True
    try:
        fd = os.open(file, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        if not _os_lock(fd):
            return False
        try:
            if os.stat(file).st_ino == os.fstat(fd).st_ino:
                file.unlink()
        except FileNotFoundError:
            pass
        return True
    finally:
        os.close(fd)


def _lock_owner(file: Path) -> tuple[int | None, str | None]:
    try:
        pid, host = file.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_run(path: str | os.PathLike[str]) -> Run:
    """The run folder at ``path``; see :meth:`Run.open`."""
    return Run.open(path)


@dataclass
class LoadedModel:
    """A run's EMA model, normaliser and checkpoint, ready for sampling and likelihoods (:meth:`Run.load`).

    Attributes:
        run: the run.
        model: the EMA :class:`~scidiff.models.ScoreModel`, in eval mode on ``device``.
        normalizer: the per-channel :class:`~scidiff.data.Normalizer` of the training data.
        checkpoint: the loaded :class:`~scidiff.checkpoint.Checkpoint`.
        device: where the model is.
        latent: for a latent run, the :class:`~scidiff.latent.LatentDiffusion` (autoencoder and
            ``model``, which then acts on its latents); None otherwise.
    """

    run: Run
    model: ScoreModel
    normalizer: Normalizer
    checkpoint: Checkpoint
    device: torch.device
    latent: Any = None

    def score(self, theta: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """The score callable, conditioned on ``theta`` ``[B, P]`` (data units) if the run is conditional."""
        if not self.run.cond_names:
            return self.model.score
        if theta is None:
            raise ValueError(f"the model of {str(self.run.path)!r} is conditioned on {list(self.run.cond_names)}; pass theta")
        cond = self.run.condition(theta.to(device=self.device, dtype=torch.float32))
        return functools.partial(_score_with_cond, self.model, cond)

    def provenance(self) -> dict[str, Any]:
        """The model, checkpoint and step, for the attributes of written files."""
        return {
            "model": str(self.run.path),
            "checkpoint": str(self.checkpoint.path),
            "checkpoint_step": int(self.checkpoint.step),
        }


def _score_with_cond(model: ScoreModel, cond: Tensor, x: Tensor, t: Tensor) -> Tensor:
    return model.score(x, t, cond.to(x.dtype))
