"""Torch datasets over a :class:`FieldSource`: a reproducible train/val split, random access and streaming."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from scidiff.data.normalize import Normalizer, _check_positive
from scidiff.data.source import FieldChunk, FieldSource, plan_chunks

__all__ = ["FieldDataset", "FieldStream", "FieldLoader", "make_loader", "split_indices"]

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


Item = Tensor | tuple[Tensor, Tensor]


class FieldDataset(Dataset):
    """Samples of one split of a source, optionally normalised: random access and streaming.

    An item is ``x`` ``[C, *spatial]`` (``dtype``; normalised if a normaliser is
    given), or ``(x, cond)`` with ``cond`` ``[P]`` when the source has conditioning.

    * Random access (a map-style Dataset): ``dataset[i]`` and batched
      ``__getitems__``, so any sampler works (e.g. a ``DistributedSampler``); a
      random batch costs a few small reads.
    * Streaming (:meth:`stream`, iterating the dataset, ``make_loader``): chunks of
      ``chunk_size`` consecutive samples are read in a shuffled order (seeded by
      ``seed`` and the epoch, see :meth:`set_epoch`) and samples are shuffled within
      a buffer of ``shuffle_chunks`` chunks; memory stays at about
      ``shuffle_chunks`` chunks and reads are sequential.  DataLoader workers (and
      ``rank`` out of ``world_size`` processes) each take a disjoint share of the
      chunks; with ``world_size > 1`` every share is cut to the smallest one, so
      all ranks take the same number of steps.

    Args:
        source: the opened file.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction, seed: the split, see :func:`split_indices`.
        normalizer: applied to each chunk (in float64) before casting to ``dtype``.
        shuffle: shuffle the stream (default: True for ``"train"``, else False).
        chunk_size: samples per streamed read (default: about 8 MiB of float64).
        shuffle_chunks: chunks mixed together when shuffling a stream.
        dtype: dtype of the returned tensors.
        rank, world_size: this process's share of a stream under distributed training.
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
        self._pid = os.getpid()
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
        """Choose the shuffle of the next streamed pass (``make_loader`` does this every epoch)."""
        self.epoch = int(epoch)

    @property
    def _source(self) -> FieldSource:
        """The source, with a file handle of this process's own (DataLoader workers are forked)."""
        if os.getpid() != self._pid:
            self.source, self._pid = self.source.detached(), os.getpid()
        return self.source

    def num_chunks(self, chunk_size: int | None = None) -> int:
        """Number of file reads one streamed pass over the split takes."""
        return len(plan_chunks(self.source.num_samples, self.indices, chunk_size or self.chunk_size))

    def iter_chunks(self, *, chunk_size: int | None = None) -> Iterator[FieldChunk]:
        """The split's raw samples (float64, not normalised) in file order, chunk by chunk."""
        return self._source.iter_chunks(self.indices, chunk_size=chunk_size or self.chunk_size)

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

    # -- random access -----------------------------------------------------------------
    def _positions(self, items: Sequence[int]) -> np.ndarray:
        pos = np.asarray(items, dtype=np.int64).reshape(-1)
        n = len(self)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"index out of range for a split of {n} samples: {pos.tolist()[:8]}")
        return self.indices[pos]

    def __getitem__(self, i: int) -> Item:
        """Sample ``i`` of the split."""
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> list[Item]:
        """Samples ``items`` of the split with few reads (used by DataLoader for a batch)."""
        x, cond = self._prepare(self._source.read_index(self._positions(items)))
        if cond is None:
            return list(x.unbind(0))
        return list(zip(x.unbind(0), cond.unbind(0)))

    # -- streaming ---------------------------------------------------------------------
    def stream(self) -> FieldStream:
        """This split as a streaming IterableDataset (chunked, shuffled reads)."""
        return FieldStream(self)

    def __iter__(self) -> Iterator[Item]:
        return self.stream_items()

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

    def stream_items(self, worker: int = 0, num_workers: int = 1) -> Iterator[Item]:
        """The items of this reader's share, ``worker`` out of ``num_workers`` in this process."""
        source = self._source
        shard = self.rank * num_workers + worker
        plan, shares, quota = self._shares(self.world_size * num_workers)
        local = np.random.default_rng([self.seed, self.epoch, shard])
        mine = shares[shard]
        left = quota
        for b in range(0, len(mine), self.shuffle_chunks):
            xs, conds = [], []
            for k in mine[b : b + self.shuffle_chunks]:
                start, stop, keep = plan[k]
                chunk = source.read(start, stop)
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


class FieldStream(IterableDataset):
    """A :class:`FieldDataset` streamed: chunked, shuffled, sequential reads (see ``FieldDataset``)."""

    def __init__(self, dataset: FieldDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        """Items in one pass (per rank under distributed training, up to one chunk less)."""
        return len(self.dataset) // self.dataset.world_size

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.dataset.stream_items(worker, num_workers)


class FieldLoader(DataLoader):
    """A DataLoader over a :class:`FieldDataset` (made by :func:`make_loader`).

    ``loader.normalizer`` is the dataset's normaliser (so training code can save it
    with the checkpoint); when streaming, every pass uses the next epoch's shuffle.
    """

    def __init__(self, dataset: FieldDataset, *, streaming: bool, **options: Any) -> None:
        self.field_dataset = dataset
        self.streaming = streaming
        super().__init__(dataset.stream() if streaming else dataset, **options)

    @property
    def normalizer(self) -> Normalizer | None:
        return self.field_dataset.normalizer

    def __iter__(self):  # type: ignore[override]
        if self.streaming:
            epoch = getattr(self, "_next_epoch", 0)
            self.field_dataset.set_epoch(epoch)
            self._next_epoch = epoch + 1
        return super().__iter__()


def make_loader(
    dataset: FieldDataset,
    batch_size: int,
    *,
    streaming: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> FieldLoader:
    """A DataLoader over ``dataset`` yielding ``x`` ``[B, C, *spatial]`` (or ``(x, cond)``).

    ``streaming=True`` (the default) reads chunks sequentially in a shuffled order
    (each pass a new shuffle: epoch 0, 1, ...), the way to go through files larger
    than memory.  ``streaming=False`` draws random batches (``dataset.shuffle``,
    seeded by ``dataset.seed``) with a few small reads per batch.  Workers open the
    file themselves; when streaming each reads a disjoint share of the chunks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    options: dict[str, Any] = {
        "batch_size": batch_size, "num_workers": num_workers, "drop_last": drop_last, "pin_memory": pin_memory,
    }
    if not streaming:
        options.update(shuffle=dataset.shuffle, generator=torch.Generator().manual_seed(dataset.seed))
    return FieldLoader(dataset, streaming=streaming, **options)
