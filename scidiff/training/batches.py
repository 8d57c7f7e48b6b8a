"""Deterministic batches from tensors, a Dataset or a DataLoader, and the field-shape check.

The batch drawn at optimiser step k depends only on (seed, k, rank, world size): epoch
e = k // n_batches uses the permutation of ``torch.utils.data.DistributedSampler`` with
``set_epoch(e)`` (seed + e), each rank takes its strided share, and the batch is the
(k mod n_batches)-th slice.  A resumed run therefore sees exactly the batches the
uninterrupted run would have seen, without storing any data-loader state.

An iterable dataset or a DataLoader has its own order; the trainer records how far into
which epoch it is (``BatchSource.position``) and a resumed run skips to there.

A Dataset item is a field x [C, *spatial], a pair (x, cond) with cond [P], or a dict
with keys "x" and optionally "cond".
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

__all__ = ["BatchSource", "split_item", "check_fields", "describe_expected"]

Data = Tensor | Dataset | DataLoader


class _Sized:
    """A stand-in for a dataset of ``n`` items (DistributedSampler only needs its length)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def split_item(batch: Any, *, source: str = "the data") -> tuple[Tensor, Tensor | None]:
    """(x, cond) from a collated batch: a tensor, a (x,) / (x, cond) sequence or a dict."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ValueError(f"{source} yields dicts without an 'x' entry (keys {sorted(batch)}); expected 'x' and optionally 'cond'")
        return batch["x"], batch.get("cond")
    if isinstance(batch, (list, tuple)) and 1 <= len(batch) <= 2 and isinstance(batch[0], Tensor):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise TypeError(
        f"{source} yields {type(batch).__name__} items; expected a field tensor, a pair (x, cond) or a dict with 'x'"
    )


class BatchSource:
    """Per-rank batches (x [b, C, *spatial], cond [b, P] or None) for every optimiser step.

    Args:
        data: fields [N, C, *spatial] (a tensor); a map-style Dataset (batched here with the
            DistributedSampler permutation); an IterableDataset (e.g. ``scidiff.data.FieldStream``,
            which shards itself by its own ``rank`` / ``world_size``; ``set_epoch`` is called each
            epoch); or a DataLoader (used as it is: its own batch size and order).
        cond: conditioning [N, P] when ``data`` is a tensor.
        batch_size: the per-rank batch size b (not used for a DataLoader).
        seed, rank, world_size: see the module docstring.
        num_workers: DataLoader workers for a Dataset.

    ``position`` = (epoch, batches taken in that epoch) after the latest batch; passing it
    back to :meth:`batches` continues exactly there.
    """

    def __init__(
        self,
        data: Data,
        cond: Tensor | None = None,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        name: str = "training data",
    ) -> None:
        self.name = name
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.loader: DataLoader | None = None
        self.dataset: Dataset | None = None
        self.iterable = False
        self.x: Tensor | None = None
        self.cond: Tensor | None = None
        self.n_batches: int | None = None
        self.position: tuple[int, int] = (0, 0)
        if cond is not None and not isinstance(data, Tensor):
            raise ValueError(
                f"cond must be None when {name} is a {type(data).__name__} (let it yield (x, cond) pairs)"
            )
        if isinstance(data, DataLoader):
            self.loader = data
            if world_size > 1 and not isinstance(getattr(data, "sampler", None), DistributedSampler) and not (
                isinstance(data.dataset, IterableDataset) and getattr(data.dataset, "world_size", 1) == world_size
            ):
                warnings.warn(
                    f"{name} is a DataLoader that is not sharded across the {world_size} ranks: every rank "
                    "sees the same batches",
                    stacklevel=3,
                )
        elif isinstance(data, IterableDataset):
            shards = getattr(data, "world_size", getattr(getattr(data, "dataset", None), "world_size", None))
            if world_size > 1 and shards is None:
                warnings.warn(
                    f"{name} ({type(data).__name__}) does not say how it is sharded (no world_size): make sure "
                    "each rank iterates a different share",
                    stacklevel=3,
                )
            elif world_size > 1 and shards != world_size:
                raise ValueError(
                    f"{name} ({type(data).__name__}) is sharded for world_size={shards} but the run has "
                    f"{world_size} ranks; build it with rank={rank}, world_size={world_size}"
                )
            self.dataset, self.iterable = data, True
        else:
            n = self._set_data(data, cond)
            self.sampler = DistributedSampler(
                _Sized(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
            )
            self.n_batches = len(self.sampler) // batch_size
            if self.n_batches == 0:
                raise ValueError(
                    f"{name} has {n} fields, fewer than one batch per rank ({batch_size} per rank on "
                    f"{world_size} rank(s)); use more data or a smaller batch_size"
                )

    def start_position(self, step: int) -> tuple[int, int]:
        """(epoch, offset) of step ``step`` when no position was recorded (exact for tensors/Datasets)."""
        if self.n_batches is None:
            if step:
                warnings.warn(
                    f"{self.name} is an iterable or a DataLoader and no data position was recorded: restarting "
                    "its order at epoch 0",
                    stacklevel=3,
                )
            return (0, 0)
        return divmod(step, self.n_batches)
    def _set_data(self, data: Tensor | Dataset, cond: Tensor | None) -> int:
        if isinstance(data, Tensor):
            if data.ndim < 3:
                raise ValueError(
                    f"{self.name} must be fields shaped [N, C, *spatial] (at least 3 dimensions); got {list(data.shape)}"
                )
            if cond is not None:
                if not isinstance(cond, Tensor) or cond.ndim != 2 or cond.shape[0] != data.shape[0]:
                    shape = list(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
                    raise ValueError(
                        f"cond for {self.name} must be a tensor [N, P] with N = {data.shape[0]} (one row per field); got {shape}"
                    )
            self.x, self.cond = data, cond
            return int(data.shape[0])
        if cond is not None:
            raise ValueError(f"cond must be None when {self.name} is a Dataset (let it yield (x, cond) pairs)")
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise TypeError(
                f"{self.name} must be a tensor [N, C, *spatial], a map-style torch Dataset or a DataLoader; "
                f"got {type(data).__name__}"
            )
        self.dataset = data
        return len(data)  # type: ignore[arg-type]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        idx = list(iter(self.sampler))
        b = self.batch_size
        return [idx[i * b : (i + 1) * b] for i in range(self.n_batches)]

    def batches(self, position: tuple[int, int] = (0, 0)) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Batches from ``position`` = (epoch, offset) on, forever; updates ``self.position``."""
        epoch, offset = position
        while True:
            taken = offset
            for batch in self._epoch(epoch, offset):
                taken += 1
                self.position = (epoch, taken)
                yield batch
            if taken == 0:
                raise ValueError(f"{self.name} gave no batch in epoch {epoch} (is it empty?)")
            epoch, offset = epoch + 1, 0

    def _generator(self, epoch: int) -> torch.Generator:
        """The generator of an epoch's DataLoader, seeded from (seed, rank, epoch).

        A DataLoader draws its workers' base seed when an iterator starts, from torch's global
        generator unless given one; that draw would shift the dropout noise by where a run
        was resumed, so each epoch's loader gets a generator of its own.
        """
        return torch.Generator().manual_seed(((int(self.seed) * 1_000_003 + self.rank) * 1_000_003 + int(epoch)) & ((1 << 63) - 1))

    def _epoch(self, epoch: int, offset: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        if self.loader is not None or self.iterable:
            if self.loader is not None:
                loader = self.loader
                sampler = getattr(loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)  # type: ignore[union-attr]
            else:
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(epoch)  # type: ignore[union-attr]
                loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=True, num_workers=self.num_workers,
                                    generator=self._generator(epoch))
            for i, batch in enumerate(loader):
                if i >= offset:
                    yield split_item(batch, source=self.name)
            return
        plan = self._epoch_batches(epoch)[offset:]
        if self.x is not None:
            for idx in plan:
                index = torch.tensor(idx, dtype=torch.long)
                yield self.x[index], (None if self.cond is None else self.cond[index])
            return
        loader = DataLoader(self.dataset, batch_sampler=plan, num_workers=self.num_workers,  # type: ignore[arg-type]
                            generator=self._generator(epoch))
        for batch in loader:
            yield split_item(batch, source=self.name)


def eval_batches(
    data: Data, cond: Tensor | None = None, *, batch_size: int, num_workers: int = 0, name: str = "validation data"
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Every item of ``data`` once, in order, in batches of ``batch_size`` (the last may be smaller)."""
    if isinstance(data, DataLoader):
        for batch in data:
            yield split_item(batch, source=name)
        return
    if isinstance(data, IterableDataset):
        for batch in DataLoader(data, batch_size=batch_size, num_workers=num_workers):
            yield split_item(batch, source=name)
        return
    if isinstance(data, Tensor):
        if data.ndim < 3:
            raise ValueError(f"{name} must be fields shaped [N, C, *spatial]; got {list(data.shape)}")
        if cond is not None and (cond.ndim != 2 or cond.shape[0] != data.shape[0]):
            raise ValueError(f"cond for {name} must be [N, P] with N = {data.shape[0]}; got {list(cond.shape)}")
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size], (None if cond is None else cond[i : i + batch_size])
        return
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        yield split_item(batch, source=name)


# ---- the shape check ---------------------------------------------------------------------
def _net_of(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def describe_expected(model: nn.Module, field_shape: Sequence[int] | None = None) -> str:
    """E.g. "[B, 1, 32, 32]" or "[B, 1, *2 spatial dims]" from the network and a recorded shape."""
    net = _net_of(model)
    channels = getattr(net, "channels", None)
    dims = getattr(net, "dims", None)
    if field_shape is not None:
        return "[B, " + ", ".join(str(int(s)) for s in field_shape) + "]"
    c = "C" if channels is None else str(channels)
    if isinstance(dims, int):
        axes = {1: "L", 2: "H, W", 3: "D, H, W"}.get(dims, f"*{dims} spatial dims")
        return f"[B, {c}, {axes}]"
    return f"[B, {c}, *spatial]"


def check_fields(
    model: nn.Module,
    x: Tensor,
    cond: Tensor | None = None,
    *,
    field_shape: Sequence[int] | None = None,
    source: str = "data",
) -> None:
    """Raise a ValueError if a batch x [B, C, *spatial] (and cond [B, P]) does not fit the model.

    The expected shape comes from ``field_shape`` ([C, *spatial], e.g. recorded in a
    checkpoint) when given, else from the network's ``channels`` / ``dims`` / ``cond_dim``
    attributes when it has them.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{source} must give tensors; got {type(x).__name__}")
    net = _net_of(model)
    got = "[B, " + ", ".join(str(s) for s in x.shape[1:]) + "]"
    expected = describe_expected(model, field_shape)
    if field_shape is not None:
        if tuple(x.shape[1:]) != tuple(int(s) for s in field_shape):
            raise ValueError(f"model expects fields {expected}, {source} has {got}")
    else:
        channels = getattr(net, "channels", None)
        dims = getattr(net, "dims", None)
        if (isinstance(dims, int) and x.ndim != dims + 2) or (isinstance(channels, int) and (x.ndim < 2 or x.shape[1] != channels)):
            raise ValueError(f"model expects fields {expected}, {source} has {got}")
    if not x.is_floating_point():
        raise TypeError(f"{source} fields must be floating point; got dtype {x.dtype}")
    cond_dim = getattr(net, "cond_dim", None)
    if isinstance(cond_dim, int):
        if cond_dim == 0 and cond is not None:
            raise ValueError(f"model takes no conditioning (cond_dim=0) but {source} has cond {list(cond.shape)}")
        if cond_dim > 0 and cond is None:
            raise ValueError(f"model expects cond [B, {cond_dim}] but {source} has no cond")
        if cond_dim > 0 and cond is not None and (cond.ndim != 2 or cond.shape[1] != cond_dim):
            raise ValueError(f"model expects cond [B, {cond_dim}], {source} has {list(cond.shape)}")
    if cond is not None and cond.shape[0] != x.shape[0]:
        raise ValueError(f"{source} has {x.shape[0]} fields but {cond.shape[0]} cond rows")
