"""Per-channel standardisation, optionally after a log transform, fitted in one streaming pass.

For channel ``c`` with ``g_c(x) = log x`` (log channels) or ``g_c(x) = x`` (others),

    z = (g_c(x) - m_c) / s_c,

with ``m_c`` and ``s_c`` the mean and (population) standard deviation of ``g_c(x)``
over every sample and grid point of the training split.  The map is elementwise,
so its Jacobian is diagonal and, per sample,

    log|det dz/dx| = sum over elements of  -log s_c - [c is a log channel] log x.

Hence the density of a field in the data's own units is
``log p_x(x) = log p_z(z) + log_abs_det_jacobian(x)``, with ``log p_z`` what the
diffusion model's likelihood reports for the normalised field.

The statistics are accumulated chunk by chunk with the pairwise update of Chan,
Golub & LeVeque (1979), in float64, so files larger than memory are fine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff.data.errors import DataError
from scidiff.data.source import FieldChunk, FieldSource
from scidiff._progress import progress as iterate

__all__ = ["Normalizer", "RunningMoments"]


class RunningMoments:
    """Per-channel count, mean and sum of squared deviations ``M2``, merged chunk by chunk (float64).

    For a chunk ``b`` merged into the running ``a``:
    ``delta = mean_b - mean_a``, ``n = n_a + n_b``, ``mean = mean_a + delta n_b / n``,
    ``M2 = M2_a + M2_b + delta^2 n_a n_b / n`` (Chan, Golub & LeVeque 1979).
    """

    def __init__(self, num_channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(num_channels, dtype=np.float64)
        self.m2 = np.zeros(num_channels, dtype=np.float64)

    def update(self, values: np.ndarray, *, log: np.ndarray | None = None) -> None:
        """Add ``values`` of shape ``[n, C, *spatial]``; channels where ``log`` is True enter as ``log(values)``.

        Works one channel at a time, so the temporary memory is one channel of the chunk.
        """
        n_b = values.shape[0] * math.prod(values.shape[2:])
        if n_b == 0:
            return
        mean_b = np.empty_like(self.mean)
        m2_b = np.empty_like(self.m2)
        for c in range(values.shape[1]):
            v = values[:, c]
            if log is not None and log[c]:
                v = np.log(v)
            mean_b[c] = v.mean(dtype=np.float64)
            d = np.subtract(v, mean_b[c], dtype=np.float64)
            m2_b[c] = np.square(d, out=d).sum()
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation ``sqrt(M2 / n)``, shape ``[C]``."""
        return np.sqrt(self.m2 / self.count)


class Normalizer:
    """Per-channel map ``z = (g_c(x) - mean_c) / std_c`` with ``g_c = log`` on log channels.

    Args:
        mean: ``[C]`` mean of ``g_c(x)`` (stored in float64).
        std: ``[C]`` standard deviation of ``g_c(x)``, positive.
        log: ``[C]`` booleans, True where the channel is log-transformed.
        channels: ``C`` channel names (for messages and for saving).
        count: number of values per channel the statistics were fitted on.
    """

    def __init__(
        self,
        mean: Sequence[float] | Tensor | np.ndarray,
        std: Sequence[float] | Tensor | np.ndarray,
        *,
        log: Sequence[bool] | None = None,
        channels: Sequence[str] | None = None,
        count: int = 0,
    ) -> None:
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float64)).reshape(-1)
        self.std = torch.as_tensor(np.asarray(std, dtype=np.float64)).reshape(-1)
        num = self.mean.numel()
        if self.std.numel() != num:
            raise ValueError(f"mean has {num} channels but std has {self.std.numel()}")
        if not (torch.isfinite(self.mean).all() and torch.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError(
                f"mean must be finite and std positive and finite, got mean={self.mean.tolist()}, "
                f"std={self.std.tolist()}"
            )
        self.log = torch.zeros(num, dtype=torch.bool) if log is None else torch.as_tensor(list(log), dtype=torch.bool)
        if self.log.numel() != num:
            raise ValueError(f"log has {self.log.numel()} entries for {num} channels")
        default = tuple(f"channel {i}" for i in range(num))
        self.channels: tuple[str, ...] = default if channels is None else tuple(channels)
        if len(self.channels) != num:
            raise ValueError(f"channels {self.channels} do not match the {num} statistics")
        self.count = int(count)

    # -- fitting -----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data: Any,
        *,
        log: Sequence[str] = (),
        chunk_size: int | None = None,
        channels: Sequence[str] | None = None,
        progress: bool = True,
    ) -> Normalizer:
        """Fit mean and std per channel in one streaming pass over ``data``.

        Args:
            data: a :class:`~scidiff.data.FieldDataset` (its split: fit on ``"train"``),
                a :class:`~scidiff.data.FieldSource` (every sample), or an iterable of
                tensors ``[n, C, *spatial]``.
            log: variable or channel names to log-transform; every value must be > 0.
            chunk_size: samples read per chunk (default: about 8 MiB per chunk).
            channels: channel names, needed only when ``data`` is an iterable of tensors.
            progress: show a progress bar.

        Raises:
            DataError: a NaN / inf value, or a value <= 0 in a log channel (naming the
                file, variable and sample index).
        """
        log = (log,) if isinstance(log, str) else tuple(log)
        stream = _stream(data, chunk_size, channels)
        moments: RunningMoments | None = None
        names: tuple[str, ...] = ()
        log_mask = np.zeros(0, dtype=bool)
        for values, index in iterate(
            stream.chunks, total=stream.total, desc="fitting normaliser", enabled=progress, leave=False
        ):
            if moments is None:
                names = stream.channels or tuple(f"channel {i}" for i in range(values.shape[1]))
                log_mask = _log_mask(log, names, stream.variables or names)
                moments = RunningMoments(len(names))
            if values.shape[1] != len(names):
                raise ValueError(f"{stream.file}: a chunk has {values.shape[1]} channels, expected {len(names)}")
            if log_mask.any():
                _check_positive(values, index, stream.file, names, stream.variables or names, log_mask)
            moments.update(values, log=log_mask)
        if moments is None or moments.count == 0:
            raise DataError(f"{stream.file}: no samples to fit the normaliser on (empty split?)")
        std = moments.std
        if (std == 0).any():
            c = int(np.argmax(std == 0))
            raise DataError(
                f"{stream.file}: channel {names[c]!r} is constant ({moments.mean[c]}) over the training split, "
                "so it cannot be standardised; drop it from the variables"
            )
        return cls(moments.mean, std, log=log_mask.tolist(), channels=names, count=moments.count)

    # -- the map -----------------------------------------------------------------------
    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``mean`` and ``std`` shaped ``[1, C, 1, ...]`` like ``x``, and the log channels' indices."""
        if x.ndim < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(
                f"expected fields [B, {self.mean.numel()}, *spatial] (channels {list(self.channels)}), "
                f"got shape {tuple(x.shape)}"
            )
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = self.mean.to(device=x.device, dtype=x.dtype).reshape(shape)
        std = self.std.to(device=x.device, dtype=x.dtype).reshape(shape)
        idx = torch.nonzero(self.log).reshape(-1).to(x.device)
        return mean, std, idx

    def _log_x(self, x: Tensor, idx: Tensor) -> Tensor:
        """``log x`` on the log channels only, ``[B, C_log, *spatial]``; raises if a value is <= 0."""
        x_log = x.index_select(1, idx)
        bad = x_log <= 0
        if bad.any():
            pos = torch.nonzero(bad)[0].tolist()
            raise DataError(
                f"log-transformed channel {self.channels[int(idx[pos[1]])]!r} has value "
                f"{x_log[tuple(pos)].item()} <= 0 at batch position {pos[0]}, grid position {tuple(pos[2:])}"
            )
        return torch.log(x_log)

    def forward(self, x: Tensor) -> Tensor:
        """``z = (g_c(x) - mean_c) / std_c``; ``x`` ``[B, C, *spatial]`` in data units -> ``z`` same shape."""
        mean, std, idx = self._stats(x)
        g = x.index_copy(1, idx, self._log_x(x, idx)) if idx.numel() else x
        return (g - mean) / std

    __call__ = forward

    @torch.no_grad()
    def forward_(self, x: Tensor) -> Tensor:
        """:meth:`forward` in place on ``x`` (no autograd), to save memory when streaming data."""
        mean, std, idx = self._stats(x)
        if idx.numel():
            x[:, idx] = self._log_x(x, idx)
        return x.sub_(mean).div_(std)

    def inverse(self, z: Tensor) -> Tensor:
        """``x = g_c^{-1}(mean_c + std_c z)``; ``z`` ``[B, C, *spatial]`` -> fields in data units."""
        mean, std, idx = self._stats(z)
        u = mean + std * z
        return u.index_copy(1, idx, torch.exp(u.index_select(1, idx))) if idx.numel() else u

    def log_abs_det_jacobian(self, x: Tensor) -> Tensor:
        """``log|det dz/dx|`` per sample, ``[B]``, of the map ``x -> z`` at ``x`` ``[B, C, *spatial]``.

        Equals ``sum over elements of (-log std_c - [log channel] log x)``; add it to
        the model's ``log p(z)`` (nats) to get ``log p(x)`` in the data's units.
        """
        _, std, idx = self._stats(x)
        points = math.prod(x.shape[2:])
        out = (-torch.log(std).sum() * points) * x.new_ones(x.shape[0])
        if idx.numel():
            out = out - self._log_x(x, idx).flatten(1).sum(dim=1)
        return out

    # -- saving ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (float64 values kept exactly by Python floats)."""
        return {
            "kind": "scidiff.Normalizer",
            "version": 1,
            "channels": list(self.channels),
            "mean": [float(v) for v in self.mean.tolist()],
            "std": [float(v) for v in self.std.tolist()],
            "log": [bool(v) for v in self.log.tolist()],
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild a normaliser saved by :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("kind") != "scidiff.Normalizer":
            raise ValueError(f"not a saved Normalizer: {str(data)[:80]!r}")
        return cls(data["mean"], data["std"], log=data["log"], channels=data["channels"], count=data.get("count", 0))

    def __repr__(self) -> str:
        parts = [
            f"{c}: {'log, ' if lg else ''}mean={m:.4g}, std={s:.4g}"
            for c, m, s, lg in zip(self.channels, self.mean.tolist(), self.std.tolist(), self.log.tolist())
        ]
        return "Normalizer(" + "; ".join(parts) + ")"


@dataclass
class _Stream:
    """Chunks ``(values [n, C, *spatial] float64, sample index [n])`` and what names them."""

    chunks: Iterable[tuple[np.ndarray, np.ndarray]]
    total: int | None
    channels: tuple[str, ...] | None
    variables: tuple[str, ...] | None
    file: str


def _stream(data: Any, chunk_size: int | None, channels: Sequence[str] | None) -> _Stream:
    """Chunks of a FieldDataset's split, of a whole FieldSource, or of an iterable of tensors.

    A split is recognised by what it offers (a FieldSource ``.source``, ``iter_chunks`` and
    ``num_chunks``), so this module need not import the dataset module, which imports it."""
    if not isinstance(data, FieldSource) and isinstance(getattr(data, "source", None), FieldSource) and hasattr(
        data, "num_chunks"
    ):
        src: FieldSource = data.source
        chunks: Iterable[FieldChunk] = data.iter_chunks(chunk_size=chunk_size)
        total = data.num_chunks(chunk_size)
    elif isinstance(data, FieldSource):
        src = data
        chunks = data.iter_chunks(chunk_size=chunk_size)
        total = math.ceil(len(data) / (chunk_size or data.default_chunk_size))
    else:
        names = None if channels is None else tuple(channels)
        return _Stream(_tensor_chunks(data, names), None, names, None, "data")
    pairs = ((c.x.numpy(), c.index) for c in chunks)  # the source checked NaN / inf already
    return _Stream(pairs, total, src.channels, src.channel_variables, src.path.name)


def _tensor_chunks(data: Iterable[Tensor], channels: tuple[str, ...] | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    offset = 0
    for x in data:
        values = torch.as_tensor(x).detach().to("cpu", torch.float64).numpy()
        index = np.arange(offset, offset + values.shape[0])
        _check_finite(values, index, "data", channels)
        offset += values.shape[0]
        yield values, index


def _log_mask(log: Sequence[str], channels: Sequence[str], variables: Sequence[str]) -> np.ndarray:
    """Boolean ``[C]``: channels whose name or variable name is in ``log``."""
    unknown = [n for n in log if n not in channels and n not in variables]
    if unknown:
        raise ValueError(f"log={list(log)} names {unknown}, which are not among the channels {list(channels)}")
    return np.array([c in log or v in log for c, v in zip(channels, variables)], dtype=bool)


def _check_finite(values: np.ndarray, index: np.ndarray, file: str, channels: Sequence[str] | None) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        name = channels[pos[1]] if channels else f"channel {pos[1]}"
        raise DataError(f"{file}: {name!r} has {values[pos]} at sample {index[pos[0]]}, grid position {pos[2:]}")


def _check_positive(
    values: np.ndarray,
    index: np.ndarray,
    file: str,
    channels: Sequence[str],
    variables: Sequence[str],
    log: np.ndarray,
) -> None:
    """Raise if a log channel of ``values`` ``[n, C, *spatial]`` holds a value <= 0."""
    for c in np.flatnonzero(log):
        bad = values[:, c] <= 0
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            name = variables[c]
            chan = f" (channel {channels[c]!r})" if channels[c] != name else ""
            raise DataError(
                f"{file}: variable {name!r}{chan} has value {values[(pos[0], c, *pos[1:])]} <= 0 at sample "
                f"{index[pos[0]]}, grid position {pos[1:]}; the log transform needs positive values "
                "(remove it from log=[...])"
            )
