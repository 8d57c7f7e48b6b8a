"""Training a latent run: the autoencoder first, then a score model on its scaled latents.

A latent run is a run folder (:mod:`scidiff.runs.run`) whose ``checkpoints/`` hold a score
model of the latents u = (mu(x) - m) / s of the normalised fields, beside ``autoencoder/``
(the autoencoder's checkpoint, :mod:`scidiff.latent.train`) and ``latent.json`` (its options
and the shift m and scale s per latent channel).  :meth:`Run.load` gives it a
:class:`~scidiff.latent.LatentDiffusion`, through which ``sample`` and ``evaluate`` decode to
fields in the data's units and ``loglik`` reports the evidence lower bound.

Both trainings see the same normalised training split; the autoencoder's decoder variance is
fitted on the validation split (else on the training split).  The training fields are held in
memory once, as a tensor, and their latents too.

Under torchrun both trainings run on every rank (:class:`~scidiff.latent.AutoencoderTrainer`
and :class:`~scidiff.training.Trainer` synchronise them), every rank encodes the training
fields itself (the same latents from the same weights), and only rank 0 holds the lock and
writes the run's files: ``run.json``, ``config.toml``, ``latent.json`` and the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from scidiff._atomic import write_text_atomically
from scidiff._progress import progress as progress_iter
from scidiff.checkpoint import CheckpointFolder
from scidiff.data import FieldDataset, Normalizer, check_spatial_size
from scidiff.latent import Autoencoder, AutoencoderLoss, AutoencoderTrainer, latent_statistics
from scidiff.nets import count_parameters
from scidiff.runs.options import CONFIG_FILE, DataOptions, ModelOptions, write_config
from scidiff.runs.run import AUTOENCODER_DIR, LATENT_FILE, RUN_ENTRIES, Run, _remove
from scidiff.runs.train import TrainSummary, check_resumable, open_training_data, usable_device
from scidiff.training import TrainConfig, Trainer
from scidiff.training.distributed import DistContext, setup

__all__ = ["LatentOptions", "parse_latent", "train_latent"]


@dataclass
class LatentOptions:
    """The autoencoder of a latent run.

    Attributes:
        factor: downsampling per spatial axis (1, 2, 4 or 8).
        channels: latent channels C_z.
        base_channels: the autoencoder's width.
        kl_weight: weight of KL(q || N(0, I)) per data value in the loss.
        spectral_weight: weight of the spectral term of the loss.
        steps: the autoencoder's optimiser steps (0: those of the score model's training).
        lr: the autoencoder's learning rate (0: that of the score model's training).
    """

    factor: int = 4
    channels: int = 4
    base_channels: int = 32
    kl_weight: float = 1e-6
    spectral_weight: float = 0.0
    steps: int = 0
    lr: float = 0.0

    def __post_init__(self) -> None:
        if self.factor not in (1, 2, 4, 8):
            raise ValueError(f"latent option factor must be 1, 2, 4 or 8; got {self.factor!r}")
        for name in ("channels", "base_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"latent option {name} must be a positive integer; got {getattr(self, name)!r}")
        AutoencoderLoss(self.kl_weight, self.spectral_weight)  # validates the weights


_TYPES = {f.name: f.type for f in dataclasses.fields(LatentOptions)}


def parse_latent(spec: str) -> LatentOptions:
    """LatentOptions from ``"factor=4,channels=4,kl_weight=1e-6,..."`` (the CLI's ``--latent``)."""
    values: dict[str, Any] = {}
    for part in [p for p in spec.split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _TYPES:
            raise ValueError(f"--latent {spec!r}: {part!r} is not NAME=VALUE with NAME one of {sorted(_TYPES)}")
        try:
            values[key] = float(value) if _TYPES[key] in ("float", float) else int(value)
        except ValueError:
            raise ValueError(f"--latent {spec!r}: {key} = {value!r} is not a number") from None
    return LatentOptions(**values)


def _stack(dataset: Dataset) -> tuple[Tensor, Tensor | None]:
    items = dataset.__getitems__(list(range(len(dataset))))  # type: ignore[attr-defined]
    if isinstance(items[0], Tensor):
        return torch.stack(items), None
    xs, cs = zip(*items)
    return torch.stack(xs), torch.stack(cs)


def train_latent(
    run_dir: str | os.PathLike[str],
    data: DataOptions,
    model: ModelOptions,
    train: TrainConfig,
    latent: LatentOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train the autoencoder of ``latent``, then the score model of ``model`` on its latents, into ``run_dir``.

    The run folder, its lock, ``--resume`` (both trainings continue from their checkpoints)
    and ``--overwrite`` behave as for :func:`scidiff.runs.train`.  The spatial sizes must be
    multiples of ``latent.factor`` (and, for a periodic UNet, the latent sizes multiples of the
    UNet's ``multiple``).  Under torchrun the process group is started here (after every rank
    has checked the folder, so before rank 0 writes into it) and closed at the end; without
    ``device`` each rank trains on ``cuda:LOCAL_RANK`` with CUDA, else on the CPU, and a bare
    ``device="cuda"`` also means ``cuda:LOCAL_RANK`` (:func:`~scidiff.runs.train.usable_device`).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    Run.check_target(run_dir, resume=resume, overwrite=overwrite)
    data.file = str(Path(data.file).expanduser().resolve()) if data.file else data.file
    source = open_training_data(data)
    spatial = tuple(source.spatial_shape)
    dims = len(spatial)
    ae = Autoencoder(source.num_channels, dims, factor=latent.factor, latent_channels=latent.channels,
                     base_channels=latent.base_channels, periodic=model.periodic, groups=8)
    ae.check_grid(spatial, source=source.path.name)
    latent_spatial = tuple(n // latent.factor for n in spatial)
    if model.periodic:
        check_spatial_size(latent_spatial, model.multiple, source=f"the latent grid of {source.path.name}")
    dev = usable_device(device)
    if resume and Run.is_run(run_dir):
        check_resumable(Run.open(run_dir), data, model, source)
    created = not run_dir.exists()
    ctx = setup()  # under torchrun a rendezvous: every rank has passed the checks above
    try:
        if dev is None:
            dev = ctx.default_device() if ctx.distributed else torch.device("cpu")
        with Run.lock(run_dir):  # rank 0's alone
            if ctx.is_main:
                Run.recover(run_dir)  # an overwrite cut short: its old run dropped or put back first
            ctx.barrier()
            aside = Run.set_aside(run_dir) if overwrite and ctx.is_main else None
            try:
                trainer, run, n_train = _train_both(run_dir, source, data, model, train, latent, ae, dev, ctx,
                                                    resume=resume, progress=progress and ctx.is_main)
            except BaseException:
                if aside is not None and aside.exists():
                    Run.put_back(run_dir, aside)
                elif ctx.is_main and created and CheckpointFolder(run_dir).latest() is None:
                    for name in RUN_ENTRIES:
                        _remove(run_dir / name)
                raise
            Run.drop_aside(aside)
    finally:
        ctx.close()
    return TrainSummary(run=run, step=trainer.step, history=trainer.history, seconds=time.perf_counter() - start,
                        num_train=n_train, num_val=0, parameters=count_parameters(trainer.model.net))


def _train_both(run_dir: Path, source: Any, data: DataOptions, model: ModelOptions, train: TrainConfig,
                latent: LatentOptions, ae: Autoencoder, device: torch.device, ctx: DistContext, *,
                resume: bool, progress: bool) -> tuple[Trainer, Run, int]:
    split = dict(val_fraction=data.val_fraction, seed=data.split_seed)
    train_plain = FieldDataset(source, split="train", **split)
    normalizer = Normalizer.fit(train_plain, log=data.log, progress=progress)
    x_train, theta = _stack(FieldDataset(source, split="train", normalizer=normalizer, **split))
    x_val = None
    if data.val_fraction > 0:
        val_ds = FieldDataset(source, split="val", normalizer=normalizer, **split)
        x_val = _stack(val_ds)[0] if len(val_ds) else None
    cond_mean: list[float] = []
    cond_std: list[float] = []
    if theta is not None:
        cond_mean = theta.double().mean(0).tolist()
        std = theta.double().std(0, unbiased=False)
        cond_std = torch.where(std > 0, std, torch.ones_like(std)).tolist()
    run = Run(path=run_dir, data=data, model=model, template=source.template, cond_names=tuple(source.cond_names),
              cond_mean=cond_mean, cond_std=cond_std)
    batch = min(train.batch_size, x_train.shape[0])
    train = train.replace(batch_size=batch, val_every=0)

    # 1. the autoencoder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        ae = Autoencoder(**ae.config).to(device)
    ae_cfg = train.replace(steps=latent.steps or train.steps, lr=latent.lr or train.lr)
    ae_trainer = AutoencoderTrainer(ae, ae_cfg, loss=AutoencoderLoss(latent.kl_weight, latent.spectral_weight),
                                    checkpoint=run_dir / AUTOENCODER_DIR, resume=resume)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.save()
        write_config(run_dir / CONFIG_FILE, data, model, train)
    ae_trainer.fit(x_train.to(device), val_data=None if x_val is None else x_val.to(device), progress=progress)
    encoder = ae_trainer.ema_model

    # 2. the latents, scaled to unit variance per channel
    xs = x_train.to(device)
    shift, scale = latent_statistics(encoder, xs)
    with torch.no_grad():
        means = [encoder.encode(xs[i:i + 64]).mean
                 for i in progress_iter(range(0, xs.shape[0], 64), desc="encode", enabled=progress)]
    view = (1, -1, *([1] * len(source.spatial_shape)))
    u = (torch.cat(means) - shift.reshape(view)) / scale.reshape(view)
    info = {"format": "scidiff-latent", "version": 1, "options": dataclasses.asdict(latent),
            "latent_shift": shift.tolist(), "latent_scale": scale.tolist(), "latent_shape": list(u.shape[1:])}
    if ctx.is_main:
        write_text_atomically(run_dir / LATENT_FILE, json.dumps(info, indent=1))

    # 3. the score model on u
    score_model = model.build(latent.channels, len(source.spatial_shape), len(source.cond_names), seed=train.seed)
    trainer = Trainer(score_model, train, run_dir=run_dir, resume=resume, normalizer=normalizer, device=device)
    cond = None if theta is None else run.condition(theta)
    try:
        trainer.fit(u.cpu(), cond, progress=progress)
        if trainer.step == 0 or run.latest is None:
            trainer.save()
    finally:
        trainer.dist.close()
    return trainer, run, int(x_train.shape[0])
