"""Process-group setup for ``torchrun`` (DistributedDataParallel), detected from the environment.

``torchrun --nproc_per_node=K script.py`` sets RANK, WORLD_SIZE and LOCAL_RANK in every
process.  :func:`setup` reads them and, when WORLD_SIZE > 1, starts the default process
group: NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, gloo on
CPUs otherwise.  Without those variables everything runs as a single process, rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "device_for_rank", "setup"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        """True when gradients must be synchronised across processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def default_device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` for a distributed run with CUDA, else the CPU."""
        if self.distributed and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @classmethod
    def from_env(cls) -> "DistContext":
        """Where torchrun's RANK / WORLD_SIZE / LOCAL_RANK place this process, without starting anything.

        Without those variables: rank 0 of 1.

        Raises:
            ValueError: a variable is not an integer, or RANK lies outside [0, WORLD_SIZE).
        """
        world = _env_int("WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        rank = _env_int("RANK", 0)
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
        return cls(rank, world, _env_int("LOCAL_RANK", rank))

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`setup` created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def device_for_rank(device: torch.device | str, local_rank: int | None) -> torch.device:
    """The device a process of local rank ``local_rank`` (None: not under torchrun) trains on for ``device``.

    A bare ``cuda`` (no index) means ``cuda:LOCAL_RANK`` under torchrun, one GPU per process;
    an indexed device (``cuda:1``) and any other type are taken as given.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return dev


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def setup() -> DistContext:
    """Read RANK / WORLD_SIZE / LOCAL_RANK and start the process group if needed.

    An already-initialised default group is reused (and left open).
    """
    if dist.is_available() and dist.is_initialized():
        local = _env_int("LOCAL_RANK", dist.get_rank())
        return DistContext(dist.get_rank(), dist.get_world_size(), local, initialized_here=False)
    env = DistContext.from_env()
    if not env.distributed:
        return env
    rank, world, local = env.rank, env.world_size, env.local_rank
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} asks for distributed training but torch.distributed is unavailable")
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return DistContext(rank, world, local, initialized_here=True)
