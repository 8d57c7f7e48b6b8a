"""Streaming torch datasets over a :class:`FieldSource`, with a reproducible train/val split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scidiff.data.normalize import Normalizer, _check_positive
from scidiff.data.source import FieldChunk, FieldSource, plan_chunks

__all__ = ["FieldDataset", "make_loader", "split_indices"]

Split = Literal["train", "val", "all"]


def split_indices(num_samples: int, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train / validation split of ``range(num_samples)``, each returned sorted.

    ``round(val_fraction * N)`` samples (at least one when ``0 < val_fraction`` and
    ``N >= 2``) go to validation, chosen by ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    n_val = int(round(val_fraction * num_samples))
    if val_fraction > 0 and num_samples >= 2:
        n_val = min(max(n_val, 1), num_samples - 1)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class FieldDataset(IterableDataset):
    """Samples of one split of a source, streamed chunk by chunk, optionally normalised.

    Iterating yields ``x`` ``[C, *spatial]`` (``dtype``; normalised if a normaliser
    is given), or ``(x, cond)`` with ``cond`` ``[P]`` when the source has
    conditioning.  Chunks of ``chunk_size`` consecutive samples are read in a
    shuffled order (seeded by ``seed`` and the epoch, see :meth:`set_epoch`), and
    samples are shuffled within a buffer of ``shuffle_chunks`` chunks; memory stays
    at about ``shuffle_chunks`` chunks.  DataLoader workers (and ``rank`` out of
    ``world_size`` processes) each take a disjoint share of the chunks; with
    ``world_size > 1`` every share is cut to the smallest one, so that all ranks
    take the same number of steps (a few samples per epoch are skipped, different
    ones each epoch).

    Args:
        source: the opened file.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction, seed: the split, see :func:`split_indices`.
        normalizer: applied to each chunk (in float64) before casting to ``dtype``.
        shuffle: shuffle the order (default: True for ``"train"``, else False).
        chunk_size: samples per read (default: about 8 MiB of float64 per chunk).
        shuffle_chunks: chunks mixed together when shuffling.
        dtype: dtype of the yielded tensors.
        rank, world_size: this process's share under distributed training.
    """

    def __init__(
        self,
        source: FieldSource,
        *,
        split: Split = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
        normalizer: Normalizer | None = None,
        shuffle: bool | None = None,
        chunk_size: int | None = None,
        shuffle_chunks: int = 4,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if shuffle_chunks < 1:
            raise ValueError(f"shuffle_chunks must be >= 1, got {shuffle_chunks}")
        if normalizer is not None and normalizer.mean.numel() != source.num_channels:
            raise ValueError(
                f"normaliser has {normalizer.mean.numel()} channels {list(normalizer.channels)}, "
                f"the source {source.num_channels} {list(source.channels)}"
            )
        self.source = source
        self.split = split
        self.seed = seed
        self.normalizer = normalizer
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.chunk_size = chunk_size or source.default_chunk_size
        self.shuffle_chunks = shuffle_chunks
        self.dtype = dtype
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._own_handle = False
        train, val = split_indices(source.num_samples, val_fraction=val_fraction, seed=seed)
        self.indices: np.ndarray = {"train": train, "val": val, "all": np.arange(source.num_samples)}[split]
        if self.indices.size == 0:
            raise ValueError(
                f"{source.path.name}: the {split!r} split is empty ({source.num_samples} samples, "
                f"val_fraction={val_fraction})"
            )

    def __len__(self) -> int:
        return int(self.indices.size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next pass (``make_loader`` does this every epoch)."""
        self.epoch = int(epoch)

    def num_chunks(self, chunk_size: int | None = None) -> int:
        """Number of file reads one pass over the split takes."""
        return len(plan_chunks(self.source.num_samples, self.indices, chunk_size or self.chunk_size))

    def iter_chunks(self, *, chunk_size: int | None = None) -> Iterator[FieldChunk]:
        """The split's raw samples (float64, not normalised) in file order, chunk by chunk."""
        return self.source.iter_chunks(self.indices, chunk_size=chunk_size or self.chunk_size)

    def _prepare(self, chunk: FieldChunk) -> tuple[Tensor, Tensor | None]:
        x = chunk.x
        norm = self.normalizer
        if norm is not None:
            if norm.log.any():
                _check_positive(
                    x.numpy(), chunk.index, self.source.path.name, self.source.channels,
                    self.source.channel_variables, norm.log.numpy(),
                )
            x = norm.forward_(x)  # the chunk is ours: transform it in place
        cond = None if chunk.cond is None else chunk.cond.to(self.dtype)
        return x.to(self.dtype), cond

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, Tensor]:
        """Sample ``i`` of the split (one small read; iterate for speed)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a split of {len(self)} samples")
        j = int(self.indices[i])
        x, cond = self._prepare(self.source.read(j, j + 1))
        return x[0] if cond is None else (x[0], cond[0])

    def _shares(self, num_shards: int) -> tuple[list[tuple[int, int, np.ndarray]], list[np.ndarray], int | None]:
        """The chunk plan, each shard's chunks for this epoch, and the per-shard sample quota.

        Chunks are dealt greedily so that shares differ by at most one chunk.  Under
        distributed training (``world_size > 1``) every shard stops after the smallest
        shard's number of samples, so all ranks run the same number of steps.
        """
        plan = plan_chunks(self.source.num_samples, self.indices, self.chunk_size)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(plan)) if self.shuffle else np.arange(len(plan))
        # deal the chunks, in shuffled order, each to the share with the fewest samples so far
        shares_list: list[list[int]] = [[] for _ in range(num_shards)]
        counts = np.zeros(num_shards, dtype=np.int64)
        for k in order:
            s = int(np.argmin(counts))
            shares_list[s].append(int(k))
            counts[s] += len(plan[k][2])
        shares = [np.asarray(share, dtype=np.int64) for share in shares_list]
        if self.world_size == 1:
            return plan, shares, None
        if len(plan) < num_shards:
            raise ValueError(
                f"{self.source.path.name}: the {self.split!r} split has {len(plan)} chunks for {num_shards} "
                f"readers (world_size x num_workers); lower chunk_size (now {self.chunk_size})"
            )
        return plan, shares, int(counts.min())

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if worker is not None and not self._own_handle:
            # a forked worker must not share the parent's HDF5 handle: open its own
            self.source, self._own_handle = self.source.detached(), True
        shard = self.rank * nw + wid
        plan, shares, quota = self._shares(self.world_size * nw)
        local = np.random.default_rng([self.seed, self.epoch, shard])
        mine = shares[shard]
        left = quota
        for b in range(0, len(mine), self.shuffle_chunks):
            xs, conds = [], []
            for k in mine[b : b + self.shuffle_chunks]:
                start, stop, keep = plan[k]
                chunk = self.source.read(start, stop)
                if len(keep) != stop - start:
                    sel = torch.from_numpy(keep)
                    chunk = FieldChunk(chunk.x[sel], None if chunk.cond is None else chunk.cond[sel], chunk.index[keep])
                x, cond = self._prepare(chunk)
                xs.append(x)
                conds.append(cond)
            # (chunk, row) of every buffered sample, shuffled without concatenating the chunks
            rows = [(k, i) for k, x in enumerate(xs) for i in range(x.shape[0])]
            order = local.permutation(len(rows)) if self.shuffle else range(len(rows))
            for j in order:
                if left is not None:
                    if left == 0:
                        return
                    left -= 1
                k, i = rows[j]
                yield xs[k][i] if conds[k] is None else (xs[k][i], conds[k][i])


class _EpochLoader(DataLoader):
    """A DataLoader that moves its FieldDataset to the next epoch's shuffle on every pass."""

    def __iter__(self):  # type: ignore[override]
        epoch = getattr(self, "_next_epoch", 0)
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self._next_epoch = epoch + 1
        return super().__iter__()


def make_loader(
    dataset: FieldDataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``x`` ``[B, C, *spatial]`` (or ``(x, cond)``).

    Each pass uses a new shuffle (epoch 0, 1, ...).  Workers open the file
    themselves; each reads a disjoint share of the chunks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return _EpochLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory
    )

