"""Training the autoencoder with the trainer's machinery, and its checkpoint.

The optimiser options are a :class:`~scidiff.training.TrainConfig` (steps, batch size, AdamW
learning rate with warm-up and decay, gradient clipping, EMA, seed, checkpoint interval); the
batches come from :class:`~scidiff.training.batches.BatchSource`, so the batch of step k
depends only on (seed, k) and a resumed training sees the batches an uninterrupted one would;
the draw z ~ q(z | x) of step k comes from a generator seeded from (seed, k) (from
(seed, rank, k) under torchrun).  After the last step the EMA weights are kept and the decoder
variance is fitted on held-out fields.

A checkpoint is a directory (written atomically)::

    autoencoder.json          format, step, constructor kwargs, TrainConfig, loss weights,
                              history, the optimiser state's structure, sha256 of each file
    model.safetensors         the trained weights (and the decoder variance buffer)
    ema.safetensors           the EMA weights
    state.safetensors         the optimiser's tensors
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from scidiff._atomic import atomic_directory, write_bytes
from scidiff._progress import progress_bar
from scidiff.latent.autoencoder import Autoencoder
from scidiff.latent.losses import AutoencoderLoss, autoencoder_loss
from scidiff.training.batches import BatchSource, Data
from scidiff.training.checkpoint import CheckpointError, _decode, _encode, _safetensors_bytes
from scidiff.training.config import TrainConfig
from scidiff.training.distributed import DistContext, setup
from scidiff.training.ema import EMA
from scidiff.training.trainer import TrainingDiverged, _fold, lr_at

__all__ = ["AutoencoderTrainer", "train_autoencoder", "save_autoencoder", "load_autoencoder"]

FORMAT = "scidiff-autoencoder"
META_FILE = "autoencoder.json"


class AutoencoderTrainer:
    """AdamW on :func:`~scidiff.latent.losses.autoencoder_loss`, with EMA, checkpoints and resume.

    Args:
        autoencoder: the :class:`Autoencoder` to train.
        config: optimiser options (``steps``, ``batch_size``, ``lr``, ``warmup_steps``,
            ``lr_decay``, ``grad_clip``, ``ema_decay``, ``seed``, ``log_every``,
            ``checkpoint_every``); the diffusion-loss options are not used.
        loss: the loss weights (KL, spectral).
        checkpoint: a directory to write the checkpoint to (replaced at every save); None for none.
        resume: continue from ``checkpoint`` if it exists.

    Under ``torchrun`` (RANK / WORLD_SIZE set) the process group is started (or reused) as for
    the diffusion :class:`~scidiff.training.Trainer`, with the autoencoder on the device it is
    already on (``cuda:LOCAL_RANK`` for NCCL): rank 0's weights and buffers (raw and EMA) are
    broadcast after construction (and after a resume), each rank draws ``batch_size /
    world_size`` fields of its shard per step and its own z ~ q(z | x) (seed folded with the
    rank), the gradients are averaged over ranks before clipping, so every rank takes the same
    optimiser step; the logged loss is the mean over all ranks (the same history everywhere);
    the decoder variance is rank 0's fit, broadcast; only rank 0 shows progress and writes the
    checkpoint, and every rank waits for its last write before :meth:`fit` returns.
    """

    def __init__(self, autoencoder: Autoencoder, config: TrainConfig | None = None, *,
                 loss: AutoencoderLoss | None = None, checkpoint: str | Path | None = None,
                 resume: bool = False) -> None:
        if not isinstance(autoencoder, Autoencoder):
            raise TypeError(f"autoencoder must be a scidiff.latent.Autoencoder, got {type(autoencoder).__name__}")
        self.model = autoencoder
        self.config = TrainConfig() if config is None else config
        self.dist: DistContext = setup()
        if self.config.batch_size % self.dist.world_size:
            raise ValueError(
                f"TrainConfig.batch_size={self.config.batch_size} must be divisible by the number of ranks "
                f"({self.dist.world_size})"
            )
        self.loss = AutoencoderLoss() if loss is None else loss
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.ema = EMA(self.model, decay=self.config.ema_decay, start=self.config.ema_start)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.generator = torch.Generator(device=next(self.model.parameters()).device)
        self.on_save: Callable[[Path], None] | None = None
        """Called with the checkpoint directory after each write (rank 0 only)."""
        if resume:
            if self.checkpoint is None:
                raise ValueError("resume=True needs a checkpoint directory")
            if (self.checkpoint / META_FILE).exists():
                self._load_state(self.checkpoint)
        self._broadcast_state()

    @property
    def ema_model(self) -> Autoencoder:
        """The autoencoder with the EMA weights."""
        return self.ema.module  # type: ignore[return-value]

    def train_step(self, x: Tensor) -> Tensor:
        """One optimiser step on fields x [b, C, *N]; returns the mean loss (0-d, detached)."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        # a single process keeps the seed stream of (seed, step); ranks fold their rank in
        seed = (_fold(cfg.seed, "autoencoder", self.dist.rank, self.step) if self.dist.distributed
                else _fold(cfg.seed, "autoencoder", self.step))
        self.generator.manual_seed(seed)
        loss = autoencoder_loss(self.model, x, self.loss, generator=self.generator).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._average_gradients()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return loss.detach()

    # ---- several processes ---------------------------------------------------------------
    @torch.no_grad()
    def _broadcast_state(self) -> None:
        """Copy rank 0's parameters and buffers, raw and EMA, onto every rank (no-op for one process)."""
        if not self.dist.distributed:
            return
        for module in (self.model, self.ema.module):
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    @torch.no_grad()
    def _average_gradients(self) -> None:
        """Replace every gradient by its mean over the ranks (no-op for one process).

        The loss calls ``encode`` and ``decode``, never ``forward``, so DistributedDataParallel's
        hooks would not fire: the gradients are packed into one flat buffer, all-reduced in a
        single call and unpacked.  Every rank runs the same graph, so the parameters holding a
        gradient are the same on every rank.
        """
        if not self.dist.distributed:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.dist.world_size
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def fit(self, data: Data, *, val_data: Tensor | None = None, until: int | None = None,
            progress: bool = True) -> list[dict[str, float]]:
        """Train to ``config.steps`` (or step ``until``) on fields [N, C, *N] or a Dataset of them.

        With ``val_data`` the EMA model's decoder variance is fitted on it at the end (else on
        the training tensor, if ``data`` is one).  History entries: {"step", "loss"} every
        ``log_every`` steps (mean over those steps and, under torchrun, over all ranks).
        """
        cfg = self.config
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        world = self.dist.world_size
        source = BatchSource(data, batch_size=cfg.batch_size // world, seed=cfg.seed, rank=self.dist.rank,
                             world_size=world, name="autoencoder training data")
        batches = source.batches(source.start_position(self.step))
        param = next(self.model.parameters())
        self.model.train()
        show = progress and self.dist.is_main and end > self.step
        bar = progress_bar(end, "train autoencoder", enabled=show, initial=self.step)
        running = torch.zeros((), dtype=torch.float64, device=param.device)
        count = 0
        try:
            while self.step < end:
                x, _ = next(batches)
                x = x.to(device=param.device, dtype=param.dtype)
                running += self.train_step(x).double()
                count += 1
                if self.step % cfg.log_every == 0 or self.step == end:
                    total = running.clone()
                    if self.dist.distributed:
                        dist.all_reduce(total)  # the same mean on every rank
                    mean = float(total) / (count * world)
                    if not math.isfinite(mean):
                        raise TrainingDiverged(
                            f"autoencoder loss is {mean} at step {self.step}; try a lower lr or longer warmup_steps",
                            step=self.step, checkpoint=self.checkpoint)
                    self.history.append({"step": self.step, "loss": mean})
                    bar.set_postfix({"loss": f"{mean:.4g}"})
                    running.zero_()
                    count = 0
                if self.checkpoint is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save(self.checkpoint)
                bar.update(1)
        finally:
            bar.close()
        held_out = val_data if val_data is not None else (data if isinstance(data, Tensor) else None)
        if held_out is not None:
            gen = torch.Generator(device=param.device).manual_seed(_fold(cfg.seed, "decoder variance"))
            var = self.ema_model.fit_decoder_variance(held_out.to(device=param.device, dtype=param.dtype),
                                                      generator=gen)
            if self.dist.distributed:
                # every rank fitted the same weights on the same fields with the same draws; rank 0's
                # value is sent anyway so that kernels that do not reproduce bitwise cannot split them
                dist.broadcast(var, src=0)
                self.ema_model.decoder_log_var.copy_(var.log())
            self.model.decoder_log_var.copy_(var.log())
        if self.checkpoint is not None:
            self.save(self.checkpoint)
        self.dist.barrier()  # no rank goes on to read the checkpoint before rank 0 has written it
        return self.history

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path | None:
        """Write the checkpoint directory ``path`` (weights, EMA, optimiser, history).

        Rank 0 only: the other ranks write nothing and return None.
        """
        if not self.dist.is_main:
            return None
        target = save_autoencoder(path, self.model, ema=self.ema_model, step=self.step, config=self.config,
                                  loss=self.loss, history=self.history, optimizer=self.optimizer)
        if self.on_save is not None:
            self.on_save(target)
        return target

    def _load_state(self, path: Path) -> None:
        meta, tensors = _read(path)
        self.model.load_state_dict(tensors["model"])
        self.ema.module.load_state_dict(tensors.get("ema", tensors["model"]))
        state = _decode(meta["state"], tensors.get("state", {}), source=str(path))
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(meta["step"])
        self.history = [dict(e) for e in meta.get("history", [])]


def train_autoencoder(autoencoder: Autoencoder, data: Data, config: TrainConfig | None = None, *,
                      loss: AutoencoderLoss | None = None, val_data: Tensor | None = None,
                      checkpoint: str | Path | None = None, resume: bool = False,
                      progress: bool = True) -> Autoencoder:
    """Train ``autoencoder`` on ``data`` and return the EMA autoencoder (decoder variance fitted).

    Under torchrun, a process group started here is closed at the end.
    """
    trainer = AutoencoderTrainer(autoencoder, config, loss=loss, checkpoint=checkpoint, resume=resume)
    try:
        trainer.fit(data, val_data=val_data, progress=progress)
    finally:
        trainer.dist.close()
    return trainer.ema_model


def save_autoencoder(path: str | Path, autoencoder: Autoencoder, *, ema: Autoencoder | None = None, step: int = 0,
                     config: TrainConfig | None = None, loss: AutoencoderLoss | None = None,
                     history: list[dict[str, float]] | None = None,
                     optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write an autoencoder checkpoint directory at ``path`` atomically; returns ``path``."""
    params = list(autoencoder.parameters())
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise TrainingDiverged(f"refusing to save autoencoder weights of step {step}: they hold NaN or inf",
                               step=step, checkpoint=None)
    files = {"model.safetensors": _safetensors_bytes(autoencoder.state_dict())}
    if ema is not None:
        files["ema.safetensors"] = _safetensors_bytes(ema.state_dict())
    state_tensors: dict[str, Tensor] = {}
    state = {} if optimizer is None else {"optimizer": _encode(optimizer.state_dict(), "optimizer", state_tensors)}
    if state_tensors:
        files["state.safetensors"] = _safetensors_bytes(state_tensors)
    meta = {
        "format": FORMAT, "version": 1, "step": int(step), "autoencoder": autoencoder.config,
        "train_config": None if config is None else config.to_dict(),
        "loss": None if loss is None else asdict(loss), "history": history or [], "state": state,
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
    }
    with atomic_directory(path) as tmp:
        for name, data in files.items():
            write_bytes(tmp / name, data)
        write_bytes(tmp / META_FILE, json.dumps(meta, indent=1).encode())
    return Path(path)


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load

    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{str(path)!r} is not an autoencoder checkpoint: it has no {META_FILE}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(meta_file)!r}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    tensors: dict[str, Any] = {}
    for name, digest in meta["files"].items():
        data = (path / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{str(path / name)!r} does not match the sha256 recorded in {META_FILE}")
        tensors[name.split(".")[0]] = load(data)
    return meta, tensors


def load_autoencoder(path: str | Path, *, ema: bool = True, device: torch.device | str | None = None) -> Autoencoder:
    """The autoencoder of a checkpoint directory (its EMA weights unless ``ema=False``), in eval mode."""
    meta, tensors = _read(path)
    kwargs = copy.deepcopy(meta["autoencoder"])
    channels, dims = kwargs.pop("channels"), kwargs.pop("dims")
    model = Autoencoder(channels, dims, **kwargs)
    weights = tensors["ema"] if ema and "ema" in tensors else tensors["model"]
    model.load_state_dict(weights)
    model.decoder_log_var.copy_(tensors["model"]["decoder_log_var"])
    return model.to(device).eval() if device is not None else model.eval()
