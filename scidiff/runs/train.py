"""Training a run: fit the normaliser, build the network for the file's fields, train into the folder.

:func:`train` turns a data file and options into a run folder (see :mod:`scidiff.runs.run`):
the per-channel normaliser is fitted on the training split, the UNet of the model options is
built for the file's channels, grid and parameters, ``config.toml`` and ``run.json`` are
written, and the :class:`scidiff.training.Trainer` (EMA, checkpoints, resume) runs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from scidiff.data import FieldDataset, FieldSource, Normalizer, check_spatial_size, open_fields
from scidiff.nets import count_parameters
from scidiff.runs.options import CONFIG_FILE, DataOptions, ModelOptions, write_config
from scidiff.runs.run import RUN_ENTRIES, Run, RunError, _remove
from scidiff.checkpoint import CheckpointFolder
from scidiff.training import TrainConfig, Trainer
from scidiff.training.distributed import DistContext, device_for_rank, setup

__all__ = ["train", "TrainSummary", "open_training_data"]


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


def open_training_data(data: DataOptions) -> FieldSource:
    """The :class:`scidiff.data.FieldSource` of a run's data options."""
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
    """What :func:`train` did: the run, the final step, losses and wall time."""

    run: Run
    step: int
    history: list[dict[str, float]]
    seconds: float
    num_train: int
    num_val: int
    parameters: int


def train(
    run_dir: str | os.PathLike[str],
    data: DataOptions,
    model: ModelOptions,
    train: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train a model on ``data`` into the run folder ``run_dir`` (see the module docstring).

    Fits the per-channel normaliser on the training split, builds the UNet of ``model`` for
    the file's channels, grid and parameters (its initial weights drawn from ``train.seed``),
    saves ``config.toml`` and ``run.json`` and runs the :class:`scidiff.training.Trainer`
    (EMA, checkpoints, resume) for ``train.steps``, holding the folder's lock throughout.

    Nothing in ``run_dir`` changes until everything is checked: the folder (a run there needs
    ``resume`` or ``overwrite``), the device, the data (through the normaliser's fit), the
    network and, with ``resume``, that the data and model options equal the run's and its
    checkpoint loads into the network.  With ``overwrite`` the old run is set aside
    (:meth:`Run.set_aside`) and removed once the new run's first checkpoint is written, or put
    back if training fails before that.  A first training that fails before any checkpoint
    leaves no folder.

    Under torchrun the process group is started here, once every rank has made the checks that
    need no lock, and closed at the end.  Rank 0 alone holds the lock and changes the folder (it
    recovers an overwrite cut short, sets the old run aside, writes ``run.json``, ``config.toml``
    and the checkpoints, drops or puts back the old run, removes a failed first run); the other
    ranks wait for it at barriers, and every rank returns once the run is complete on disk.

    Raises:
        RunError: the folder cannot be trained into, or a resume differs from the run.
        ValueError: bad data, an unusable device, or a divergence
            (:class:`scidiff.training.TrainingDiverged`).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    Run.check_target(run_dir, resume=resume, overwrite=overwrite)
    data.file = str(Path(data.file).expanduser().resolve()) if data.file else data.file
    source = open_training_data(data)
    spatial = source.spatial_shape
    if model.periodic:
        check_spatial_size(spatial, model.multiple, dims=source.spatial_dims, source=source.path.name)
    device = usable_device(device)
    created = not run_dir.exists()
    ctx = setup()  # under torchrun a rendezvous: every rank has passed the checks above, before any write
    try:
        with Run.lock(run_dir):  # rank 0's alone
            try:
                trainer, run, train_ds, val_ds, train = _prepare_and_train(
                    run_dir, source, data, model, train, ctx, resume=resume, overwrite=overwrite, device=device,
                    progress=progress,
                )
            except BaseException:
                if ctx.is_main and created and CheckpointFolder(run_dir).latest() is None:
                    for name in RUN_ENTRIES:  # a first training that saved nothing leaves nothing
                        _remove(run_dir / name)
                raise
    except BaseException:
        if ctx.is_main and created and run_dir.is_dir():
            try:
                run_dir.rmdir()  # only if empty
            except OSError:
                pass
        raise
    finally:
        ctx.close()
    return TrainSummary(
        run=run, step=trainer.step, history=trainer.history, seconds=time.perf_counter() - start,
        num_train=len(train_ds), num_val=0 if val_ds is None else len(val_ds),  # type: ignore[arg-type]
        parameters=count_parameters(trainer.model.net),
    )


def usable_device(device: torch.device | str | None) -> torch.device | None:
    """``device`` as a torch.device after allocating one value on it, so that an unavailable one fails first.

    Under torchrun a bare ``cuda`` is this process's GPU, ``cuda:LOCAL_RANK``
    (:func:`scidiff.training.distributed.device_for_rank`).

    Raises:
        ValueError: the device is malformed or not available here (one line, naming it).
    """
    if device is None:
        return None
    env = DistContext.from_env()
    named = repr(str(device))
    try:
        dev = device_for_rank(device, env.local_rank if env.distributed else None)
        if str(dev) != str(device):
            named = f"{str(dev)!r} (--device {str(device)!r} on local rank {env.local_rank})"
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"device {named} is not usable here ({reason}); try --device cpu") from None
    return dev


def check_resumable(run: Run, data: DataOptions, model: ModelOptions, source: FieldSource) -> None:
    """Raise a RunError naming every data or model option in which a resume differs from the run.

    A resumed run continues the same model on the same data: only training options (steps, lr,
    ...) may change.
    """
    diffs = [
        f"{kind} option {name} = {new!r} (the run has {old!r})"
        for kind, given, saved in (("data", data, run.data), ("model", model, run.model))
        for name, new, old in ((f.name, getattr(given, f.name), getattr(saved, f.name)) for f in dataclasses.fields(given))
        if new != old
    ]
    if tuple(source.channels) != tuple(run.template.channels):
        diffs.append(f"channels {list(source.channels)} (the run has {list(run.template.channels)})")
    if tuple(source.spatial_shape) != tuple(run.template.spatial_shape):
        diffs.append(f"grid {list(source.spatial_shape)} (the run has {list(run.template.spatial_shape)})")
    if diffs:
        raise RunError(
            f"--resume: {str(run.path)!r} was trained otherwise: {'; '.join(diffs)}; resume with the run's own "
            "data and model options (leave them out: they are read from its config.toml), or start afresh with --overwrite"
        )


def check_model_size(model: ModelOptions, source: FieldSource, device: torch.device | None) -> int:
    """The network's parameter count, checked against the memory of ``device`` before any allocation.

    The network is first built on the meta device (no memory).  Training holds about five
    float32 copies of the parameters (weights, gradients, AdamW's two moments, EMA); if that
    alone exceeds the device's memory the options are refused in one line.

    Raises:
        ValueError: the network cannot fit (naming its size and the options to lower).
    """
    with torch.device("meta"):
        probe = model.build(source.num_channels, len(source.spatial_shape), len(source.cond_names))
    n = count_parameters(probe.net)
    need = 5 * 4 * n
    have = _device_memory(device)
    if have is not None and need > have:
        raise ValueError(
            f"model options base_channels = {model.base_channels}, channel_mults = {model.channel_mults} give a UNet "
            f"of {n:.3g} parameters, whose training state alone (~{need / 2**30:.3g} GiB: weights, gradients, AdamW "
            f"moments, EMA) exceeds the {have / 2**30:.3g} GiB of "
            f"{'this machine' if device is None or device.type == 'cpu' else str(device)}; "
            "lower --base-channels or --channel-mults"
        )
    return n


def _device_memory(device: torch.device | None) -> int | None:
    """Total memory of ``device`` in bytes (physical memory for the CPU), or None if unknown."""
    try:
        if device is not None and device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device is None or device.type == "cpu":
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError, RuntimeError, AssertionError):
        return None
    return None


def _prepare_and_train(
    run_dir: Path, source: FieldSource, data: DataOptions, model: ModelOptions, train: TrainConfig,
    ctx: DistContext, *, resume: bool, overwrite: bool, device: torch.device | None, progress: bool,
) -> tuple[Trainer, Run, Dataset, Dataset | None, TrainConfig]:
    """Check everything (folder, data, checkpoint) without writing; then write the run and train.

    Under torchrun rank 0 alone recovers, sets aside, puts back and writes; the other ranks wait
    for it at the barriers below and read the folder only as rank 0 leaves it.
    """
    if ctx.is_main:
        Run.recover(run_dir)
    ctx.barrier()  # every rank checks the folder as recovered by rank 0
    has_run = Run.check_target(run_dir, resume=resume, overwrite=overwrite)
    if resume and Run.is_run(run_dir):
        check_resumable(Run.open(run_dir), data, model, source)
    split = dict(val_fraction=data.val_fraction, seed=data.split_seed)
    train_plain = FieldDataset(source, split="train", **split)
    normalizer = Normalizer.fit(train_plain, log=data.log, progress=progress and ctx.is_main)
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
    check_model_size(model, source, device)
    score_model = model.build(source.num_channels, len(source.spatial_shape), len(source.cond_names), seed=train.seed)
    # resuming loads the checkpoint into the network here: a mismatch fails before any write
    trainer = Trainer(score_model, train, run_dir=run_dir, resume=resume, normalizer=normalizer, device=device)
    ctx.barrier()  # every rank has read the folder (and its checkpoint) before rank 0 changes it
    # everything is checked: from here on the folder changes
    aside = Run.set_aside(run_dir) if ctx.is_main and overwrite and has_run else None
    try:
        if ctx.is_main:
            run.save()
            write_config(run_dir / CONFIG_FILE, data, model, train)
        ctx.barrier()  # no rank trains before the old run is aside and the new one written
        trainer.on_save = lambda _: Run.drop_aside(aside)  # checkpoints are rank 0's: so is the drop
        trainer.fit(train_ds, val_data=val_ds, progress=progress)
        if trainer.step == 0 or run.latest is None:
            trainer.save()
        Run.drop_aside(aside)
        ctx.barrier()  # every rank returns once the run is complete on disk
    except BaseException:
        if aside is not None and aside.exists():
            Run.put_back(run_dir, aside)
        raise
    finally:
        trainer.dist.close()
    return trainer, run, train_ds, val_ds, train
