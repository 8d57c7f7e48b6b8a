"""The training loop: AdamW with warm-up, gradient clipping, EMA, bf16 autocast, DDP, checkpoints.

Determinism: the batch of step k is fixed by (seed, k, rank, world size) (see ``batches.py``);
the noise of step k (times, eps) comes from a generator re-seeded with a hash of
(seed, rank, k); torch's global RNG (dropout) is seeded from (seed, rank) at step 0 and
saved in every checkpoint, every rank's under DDP (gathered onto rank 0, which writes it).  Training N steps straight, or N/2 steps, a checkpoint and N/2
more after :meth:`Trainer.resume`, therefore gives the same weights bit for bit on a CPU.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from scidiff.training.checkpoint import (
    Checkpoint,
    CheckpointFolder,
    CheckpointNotFoundError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from scidiff.ddpm import DDPM
from scidiff.models import ScoreModel
from scidiff.sde import VPSDE
from scidiff.training.batches import BatchSource, Data, check_fields, eval_batches
from scidiff.training.config import TrainConfig
from scidiff.training.distributed import DistContext, setup
from scidiff.training.ema import EMA
from scidiff.training.losses import ddpm_loss, dsm_loss
from scidiff._progress import progress_bar

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "train", "lr_at", "ddpm_for"]


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became non-finite: training stopped before saving the bad weights.

    Attributes:
        step: the first optimiser step (1-based, as in the history) with a non-finite loss.
        checkpoint: the newest checkpoint kept (all finite), or None if none was saved.
    """

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based: the step that produces weights step + 1).

    Warm-up: lr min(1, (step + 1) / warmup_steps); after it "constant" keeps lr and "cosine"
    decays as lr (1 + cos(pi (step - W) / (steps - W))) / 2, W = warmup_steps.
    """
    lr = config.lr
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine" and config.steps > config.warmup_steps:
        frac = min(1.0, (step - config.warmup_steps) / (config.steps - config.warmup_steps))
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


def ddpm_for(sde: VPSDE, steps: int) -> DDPM:
    """The N-step DDPM whose marginals equal the SDE's at t = n / N (:meth:`DDPM.from_sde`)."""
    return DDPM.from_sde(sde, steps)


def _fold(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of integers/strings (blake2b; stable across runs and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class TrainResult:
    """What :func:`train` returns: the EMA model (for sampling), the raw model and the history."""

    model: ScoreModel
    raw_model: ScoreModel
    history: list[dict[str, float]]
    step: int
    run_dir: Path | None = None
    trainer: "Trainer | None" = field(default=None, repr=False)


class Trainer:
    """Trains a :class:`~scidiff.models.ScoreModel` by denoising score matching or L_simple.

    Args:
        model: the ScoreModel to train (moved to ``device``).
        config: a TrainConfig (defaults if None).
        ddpm: the discrete chain for ``loss="ddpm"`` (default: :func:`ddpm_for` the model's SDE
            with ``config.ddpm_steps`` steps).
        run_dir: where checkpoints go (``run_dir/checkpoints/step_*``, ``run_dir/latest``);
            None for no checkpoints.
        resume: continue from the latest checkpoint in ``run_dir`` if there is one.
        normalizer: normalisation statistics saved with every checkpoint (a dict or an object
            with ``to_dict()``; taken from ``data.normalizer`` when None).
        net_config: the network's constructor kwargs, if it has no ``config`` attribute.
        device: default: ``cuda:LOCAL_RANK`` under torchrun with CUDA, else the model's device.

    Under ``torchrun`` (RANK / WORLD_SIZE set) the model is wrapped in DistributedDataParallel,
    each rank draws ``batch_size / world_size`` fields per step, and only rank 0 logs, shows
    progress and writes checkpoints.
    """

    def __init__(
        self,
        model: ScoreModel,
        config: TrainConfig | None = None,
        *,
        ddpm: DDPM | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        normalizer: Any = None,
        net_config: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a scidiff.ScoreModel, got {type(model).__name__}")
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.dist: DistContext = setup()
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"TrainConfig.batch_size={config.batch_size} must be divisible by the number of ranks "
                f"({self.dist.world_size})"
            )
        if device is None:
            device = self.dist.default_device() if self.dist.distributed else _model_device(model)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_module: nn.Module = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DistributedDataParallel(self.model, device_ids=ids)
        if config.loss == "ddpm" and ddpm is None:
            ddpm = ddpm_for(model.sde, config.ddpm_steps)
        self.ddpm = ddpm
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.ema = EMA(self.model, decay=config.ema_decay, start=config.ema_start)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.field_shape: tuple[int, ...] | None = None
        self.normalizer = normalizer
        self.net_config = net_config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.noise_generator = torch.Generator(device=self.device)
        self._rng_ready = False
        self._pending = torch.zeros(3, dtype=torch.float64)
        self.data_position: tuple[int, int] | None = None
        self._rank_rng: tuple[int, list[dict[str, Any]]] | None = None
        self.on_save: Callable[[Path], None] | None = None
        """Called with each checkpoint directory :meth:`save` has committed into ``run_dir``."""
        if config.precision == "bf16" and self.device.type != "cuda":
            warnings.warn(f"precision='bf16' autocasts on CUDA only; training in fp32 on {self.device}", stacklevel=2)
        if resume:
            if self.run_dir is None:
                raise ValueError("resume=True needs a run_dir to resume from")
            try:
                self.load_state(self.run_dir)
            except CheckpointNotFoundError:
                pass  # nothing to resume: start from step 0

    # ---- public properties ---------------------------------------------------------------
    @property
    def ema_model(self) -> ScoreModel:
        """The ScoreModel with the EMA weights (what sampling and likelihoods should use)."""
        return self.ema.module  # type: ignore[return-value]

    def lr(self, step: int | None = None) -> float:
        """The learning rate of step ``step`` (default: the next one)."""
        return lr_at(self.config, self.step if step is None else step)

    # ---- one step --------------------------------------------------------------------------
    def _autocast(self):
        if self.config.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _per_sample_loss(self, module: nn.Module, x: Tensor, cond: Tensor | None, gen: torch.Generator) -> Tensor:
        cfg = self.config
        with self._autocast():
            if cfg.loss == "ddpm":
                assert self.ddpm is not None
                return ddpm_loss(module, self.ddpm, x, cond=cond, generator=gen)
            return dsm_loss(
                module, x, cond=cond, t_min=cfg.t_min, time_sampling=cfg.time_sampling,
                weighting=cfg.weighting, generator=gen,
            )

    def train_step(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One optimiser step on a batch x [b, C, *spatial]; returns (loss, grad norm) as 0-d tensors."""
        cfg = self.config
        lr = lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.noise_generator.manual_seed(_fold(cfg.seed, self.dist.rank, self.step))
        loss = self._per_sample_loss(self.train_module, x, cond, self.noise_generator).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, math.inf)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        return loss.detach(), grad_norm.detach()

    # ---- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, data: Data, cond: Tensor | None = None, *, model: ScoreModel | None = None) -> float:
        """Mean per-sample loss of ``model`` (default: the EMA model) over ``data``.

        The times and noise come from a generator seeded identically at every call, so
        successive validation losses differ only through the weights.
        """
        model = self.ema_model if model is None else model
        was_training = model.training
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(_fold(self.config.seed, "validation"))
        dtype = next(model.parameters()).dtype
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        bs = self.config.val_batch_size or self.config.batch_size
        for x, c in eval_batches(data, cond, batch_size=bs, num_workers=self.config.num_workers):
            x, c = self._to_device(x, c, dtype)
            check_fields(model, x, c, field_shape=self.field_shape, source="validation data")
            total += self._per_sample_loss(model, x, c, gen).double().sum()
            count += x.shape[0]
        model.train(was_training)
        if count == 0:
            raise ValueError("validation data is empty")
        return float(total) / count

    def _to_device(self, x: Tensor, c: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        x = x.to(device=self.device, dtype=dtype, non_blocking=True)
        if c is not None:
            c = c.to(device=self.device, dtype=dtype, non_blocking=True)
        return x, c

    # ---- the loop -------------------------------------------------------------------------------
    def _seed_global_rng(self) -> None:
        if not self._rng_ready:
            torch.manual_seed(_fold(self.config.seed, self.dist.rank, "global", self.step))
            self._rng_ready = True

    def fit(
        self,
        data: Data,
        cond: Tensor | None = None,
        *,
        val_data: Data | None = None,
        val_cond: Tensor | None = None,
        until: int | None = None,
        progress: bool = True,
        callback: Callable[["Trainer", dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train from the current step to ``config.steps`` (or to step ``until``); returns the history.

        Args:
            data: fields [N, C, *spatial], a Dataset of x or (x, cond), or a DataLoader.
            cond: conditioning [N, P] when ``data`` is a tensor.
            val_data, val_cond: held-out data for the validation loss every ``val_every`` steps.
            until: stop after this step (a checkpoint is written there if run_dir is set).
            progress: show a tqdm bar with the loss (rank 0 only).
            callback: called as callback(trainer, entry) after each history entry (rank 0 only).

        History entries: {"step", "loss" (mean over the last log_every steps and all ranks),
        "lr", "grad_norm"} every ``log_every`` steps and at the end, with "val_loss" added at
        validation steps (validation runs on rank 0 with the EMA model).
        """
        cfg = self.config
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        if self.normalizer is None:
            self.normalizer = getattr(data, "normalizer", None) or getattr(getattr(data, "dataset", None), "normalizer", None)
        source = BatchSource(
            data, cond, batch_size=cfg.batch_size // self.dist.world_size, seed=cfg.seed,
            rank=self.dist.rank, world_size=self.dist.world_size, num_workers=cfg.num_workers,
        )
        self._seed_global_rng()
        self.model.train()
        dtype = next(self.model.parameters()).dtype
        show = progress and self.dist.is_main
        bar = progress_bar(end, "train", enabled=show and end > self.step, initial=self.step)
        # running [loss sum, grad-norm sum, count] since the last history entry (kept in checkpoints)
        stats = self._pending.to(self.device).clone()
        # the first step whose loss or gradient norm was non-finite (-1: none), kept on the
        # device and read only where the loop synchronises anyway (history entries, checkpoints)
        first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        position = self.data_position if self.data_position is not None else source.start_position(self.step)
        batches = source.batches(position)
        try:
            while self.step < end:
                x, c = next(batches)
                x, c = self._to_device(x, c, dtype)
                check_fields(self.model, x, c, field_shape=self.field_shape, source="training data")
                if self.field_shape is None:
                    self.field_shape = tuple(int(s) for s in x.shape[1:])
                loss, grad_norm = self.train_step(x, c)
                finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
                first_bad = torch.where(finite | (first_bad >= 0), first_bad, torch.full_like(first_bad, self.step))
                self.data_position = source.position
                stats += torch.stack([loss.double(), grad_norm.double(), stats.new_ones(())])
                entry: dict[str, float] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    entry.update(self._log_entry(stats))
                    stats.zero_()
                if val_data is not None and cfg.val_every and self.step % cfg.val_every == 0 and self.dist.is_main:
                    entry["val_loss"] = self.validate(val_data, val_cond)
                due = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                if entry or due or self.step == end:
                    self._check_finite(first_bad)
                if entry:
                    entry = {"step": self.step, **entry}
                    self.history.append(entry)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k in ("loss", "val_loss")})
                    if callback is not None and self.dist.is_main:
                        callback(self, entry)
                if self.run_dir is not None and (due or self.step == end):
                    self._pending = self._gather_pending(stats)
                    self._rank_rng = (self.step, self._gather_rng())
                    self.save()
                bar.update(1)
        finally:
            bar.close()
        self._pending = stats.detach().clone()
        self.dist.barrier()
        return self.history

    def _check_finite(self, first_bad: Tensor) -> None:
        """Raise :class:`TrainingDiverged` if a step since the last check had a non-finite loss."""
        step = int(first_bad)
        if step < 0:
            return
        kept = None if self.run_dir is None else CheckpointFolder(self.run_dir).latest()
        where = (f"the latest checkpoint stays {str(kept)!r}" if kept is not None
                 else "no checkpoint was saved")
        raise TrainingDiverged(
            f"training diverged: the loss became non-finite at step {step} (learning rate {lr_at(self.config, step - 1):g}); "
            f"nothing after it was saved and {where}; try a lower --lr (lr), a longer --warmup-steps "
            f"(warmup_steps) or a smaller grad_clip (now {self.config.grad_clip:g}), then --resume",
            step=step, checkpoint=kept,
        )

    def _gather_rng(self) -> list[dict[str, Any]]:
        """The RNG states of ranks 1..K-1, on rank 0 (empty elsewhere, and without DDP), for its checkpoint.

        Every rank's dropout draws from its own global generator; saving them all makes a
        resume under DDP bit-exact like a single-process one.
        """
        if not self.dist.distributed:
            return []
        states: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(states, self._rng_state())
        return states[1:] if self.dist.is_main else []

    def _gather_pending(self, stats: Tensor) -> Tensor:
        """Sum the running log statistics onto rank 0 (zero elsewhere) so a checkpoint holds them all."""
        if self.dist.distributed:
            dist.all_reduce(stats)
            if not self.dist.is_main:
                stats.zero_()
        return stats.detach().clone()

    def _log_entry(self, stats: Tensor) -> dict[str, float]:
        total = stats.clone()
        if self.dist.distributed:
            dist.all_reduce(total)
        loss_sum, norm_sum, count = total.tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "lr": lr_at(self.config, self.step - 1), "grad_norm": norm_sum / count}

    # ---- checkpoints ----------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch_cpu": torch.get_rng_state(),
            "noise": self.noise_generator.get_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and torch.cuda.is_available():
            states = list(rng["torch_cuda"])
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write a checkpoint (rank 0 only; others return None).

        Without ``path`` it goes to ``run_dir/checkpoints/step_XXXXXXXX``, ``run_dir/latest`` is
        pointed at it, and all but the newest ``keep_checkpoints`` are removed.
        """
        if not self.dist.is_main:
            return None
        if path is None and self.run_dir is None:
            raise ValueError("Trainer.save needs a path or a run_dir")
        params = [p.detach() for p in self.model.parameters()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise TrainingDiverged(
                f"refusing to save the weights of step {self.step}: they hold NaN or inf (the training diverged); "
                "try a lower --lr (lr) or a longer --warmup-steps (warmup_steps)",
                step=self.step, checkpoint=None if self.run_dir is None else CheckpointFolder(self.run_dir).latest(),
            )
        folder = None if path is not None else CheckpointFolder(self.run_dir)  # type: ignore[arg-type]
        target = Path(path) if folder is None else folder.path_for(self.step)
        rng = self._rng_state()
        if self._rank_rng is not None and self._rank_rng[0] == self.step and self._rank_rng[1]:
            rng["ranks"] = self._rank_rng[1]  # ranks 1..K-1, gathered by fit at this step
        save_checkpoint(
            target, self.model, ema_model=self.ema_model, config=self.config, step=self.step,
            optimizer=self.optimizer, rng=rng, normalizer=self.normalizer,
            net_config=self.net_config, field_shape=self.field_shape,
            ddpm=self.ddpm if self.config.loss == "ddpm" else None, history=self.history,
            extra={"pending_log": self._pending.tolist(),
                   "data_position": None if self.data_position is None else list(self.data_position)},
        )
        if folder is not None:
            folder.commit(target, keep=self.config.keep_checkpoints)
            if self.on_save is not None:
                self.on_save(target)
        return target

    def load_state(self, source: str | Path | Checkpoint) -> Checkpoint:
        """Restore weights, EMA, optimiser, step, history and RNG from a checkpoint or run directory."""
        ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(
            source, device=self.device, net=copy.deepcopy(self.model.net)
        )
        name = f"checkpoint {str(ckpt.path)!r}"
        load_weights(self.model.net, ckpt.raw_model.net.state_dict(), source=name)
        if ckpt.ema_model is not None:
            load_weights(self.ema.module.net, ckpt.ema_model.net.state_dict(), source=name)  # type: ignore[union-attr]
        else:
            self.ema.module.load_state_dict(self.model.state_dict())
        if "optimizer" in ckpt.state:
            try:
                self.optimizer.load_state_dict(ckpt.state["optimizer"])
            except (ValueError, KeyError) as err:
                raise ValueError(f"{name}: the optimiser state does not fit this model ({err})") from None
        self.step = ckpt.step
        self.history = [dict(e) for e in ckpt.history]
        self.field_shape = ckpt.field_shape
        if self.normalizer is None:
            self.normalizer = ckpt.normalizer
        if self.config.loss == "ddpm" and ckpt.ddpm is not None:
            self.ddpm = ckpt.ddpm
        rng = ckpt.state.get("rng")
        others = [] if rng is None else list(rng.get("ranks", []))
        if rng is not None and self.dist.rank == 0:
            self._restore_rng(rng)
            self._rng_ready = True
        elif rng is not None and len(others) == self.dist.world_size - 1:
            self._restore_rng(others[self.dist.rank - 1])  # saved by rank 0 for this rank
            self._rng_ready = True
        else:  # another world size, or an older checkpoint: reseed from (seed, rank, step)
            self._rng_ready = False
        position = ckpt.meta.get("extra", {}).get("data_position")
        self.data_position = None if position is None else (int(position[0]), int(position[1]))
        pending = ckpt.meta.get("extra", {}).get("pending_log")
        if pending is not None and self.dist.is_main and len(pending) == 3:
            self._pending = torch.tensor([float(v) for v in pending], dtype=torch.float64)
        else:
            self._pending = torch.zeros(3, dtype=torch.float64)
        return ckpt

    @classmethod
    def resume(
        cls,
        path: str | Path,
        *,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        net: nn.Module | None = None,
    ) -> "Trainer":
        """A Trainer rebuilt from a checkpoint or run directory, ready to ``fit`` onwards.

        The model is rebuilt from the checkpoint (or ``net``); ``config`` defaults to the saved
        one (pass one to change e.g. ``steps``); ``run_dir`` defaults to the checkpoint's run.
        """
        ckpt = load_checkpoint(path, device=device, net=net)
        if config is None:
            if ckpt.config is None:
                raise ValueError(f"checkpoint {str(ckpt.path)!r} holds no TrainConfig; pass config=")
            config = ckpt.config
        if run_dir is None:
            owner = CheckpointFolder.of(ckpt.path)
            run_dir = None if owner is None else owner.root
        model = copy.deepcopy(ckpt.raw_model)
        trainer = cls(model, config, run_dir=run_dir, device=device, normalizer=ckpt.normalizer)
        trainer.load_state(ckpt)
        return trainer


def train(
    model: ScoreModel,
    data: Data,
    config: TrainConfig | None = None,
    *,
    cond: Tensor | None = None,
    val_data: Data | None = None,
    val_cond: Tensor | None = None,
    ddpm: DDPM | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    normalizer: Any = None,
    net_config: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data`` (see :class:`Trainer` and :meth:`Trainer.fit`).

    Returns a TrainResult whose ``.model`` is the EMA ScoreModel.  Under torchrun, a process
    group started here is closed at the end.
    """
    trainer = Trainer(
        model, config, ddpm=ddpm, run_dir=run_dir, resume=resume, normalizer=normalizer,
        net_config=net_config, device=device,
    )
    try:
        history = trainer.fit(data, cond, val_data=val_data, val_cond=val_cond, progress=progress)
    finally:
        trainer.dist.close()
    return TrainResult(
        model=trainer.ema_model, raw_model=trainer.model, history=history, step=trainer.step,
        run_dir=trainer.run_dir, trainer=trainer,
    )
