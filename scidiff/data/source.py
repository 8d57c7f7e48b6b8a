"""A lazy view of a user's netCDF / HDF5 file as fields ``x`` of shape ``[N, C, *spatial]``.

``open_fields(path, ["T", "rho"], cond=["slope"])`` picks variables as channels, a
sample dim and the spatial dims, and the simulator parameters along the sample dim
as a conditioning vector.  Nothing is loaded at opening except the (small)
conditioning table and the spatial coordinates; :meth:`FieldSource.read` reads
one slice ``[start:stop]`` along the sample dim.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff.data._backends import Backend, VarInfo, open_backend
from scidiff.data.errors import DataError
from scidiff.data.template import CoordTemplate, FieldTemplate, VariableTemplate
from scidiff._validate import check_int

__all__ = ["FieldChunk", "FieldSource", "open_fields", "SPATIAL_DIM_NAMES", "CHANNEL_DIM_NAMES"]

#: dim names taken as spatial when ``spatial_dims`` is not given (case-insensitive)
SPATIAL_DIM_NAMES = frozenset({
    "x", "y", "z", "lat", "lon", "latitude", "longitude", "rlat", "rlon", "xc", "yc", "zc",
    "nx", "ny", "nz", "depth", "height", "altitude", "lev", "level", "plev",
})
#: dim names taken as a channel axis when ``channel_dim`` is not given (case-insensitive)
CHANNEL_DIM_NAMES = frozenset({"channel", "channels"})

_CHUNK_BYTES = 8 * 2**20  # default chunk: about 8 MiB of float64 fields


@dataclass(frozen=True, eq=False)
class FieldChunk:
    """A block of samples: ``x`` ``[n, C, *spatial]``, ``cond`` ``[n, P]`` or None, ``index`` ``[n]``.

    ``index`` holds the positions of the samples along the source's sample dim.
    """

    x: Tensor
    cond: Tensor | None
    index: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """How one variable's file axes map onto ``(sample, [channel], *spatial)``."""

    name: str
    sample_axis: int
    order: tuple[int, ...]
    num_channels: int
    has_channel: bool


def _as_names(value: str | Sequence[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    names = tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"{what} must be a name or a sequence of names, got {value!r}")
    return names


def _resolve_dims(
    info: VarInfo,
    file: str,
    sample_dim: str | None,
    spatial_dims: tuple[str, ...] | None,
    channel_dim: str | None,
) -> tuple[str, tuple[str, ...], str | None]:
    """Pick (sample dim, spatial dims, channel dim) from the first variable's dims."""
    dims = info.dims
    where = f"{file}: variable {info.name!r} with dims {dims}"
    for given, what in ((sample_dim, "sample_dim"), (channel_dim, "channel_dim")):
        if given is not None and given not in dims:
            raise DataError(f"{where} has no dim {given!r} ({what}); its dims are {dims}")
    if spatial_dims is not None:
        missing = [d for d in spatial_dims if d not in dims]
        if missing:
            raise DataError(f"{where} has no dim(s) {missing} (spatial_dims); its dims are {dims}")
    else:
        taken = {sample_dim, channel_dim}
        named = tuple(d for d in dims if d.lower() in SPATIAL_DIM_NAMES and d not in taken)
        if named:
            spatial_dims = named
        else:
            rest = [d for d in dims if d not in taken]
            spatial_dims = tuple(rest[1:] if sample_dim is None else rest)
            if channel_dim is None:
                spatial_dims = tuple(d for d in spatial_dims if d.lower() not in CHANNEL_DIM_NAMES)
    if not 1 <= len(spatial_dims) <= 3:
        raise DataError(
            f"{where}: found {len(spatial_dims)} spatial dims {spatial_dims}, need 1 to 3; "
            "name them with spatial_dims=(...)"
        )
    if channel_dim is None:
        channel_dim = next(
            (d for d in dims if d.lower() in CHANNEL_DIM_NAMES and d not in spatial_dims and d != sample_dim), None
        )
    if sample_dim is None:
        rest = [d for d in dims if d not in spatial_dims and d != channel_dim]
        if not rest:
            raise DataError(
                f"{where} has no sample dim besides the spatial dims {spatial_dims}; "
                "a training set needs many fields stacked along one dim (name it with sample_dim=...)"
            )
        sample_dim = rest[0]
    if sample_dim in spatial_dims or sample_dim == channel_dim:
        raise DataError(f"{where}: sample_dim {sample_dim!r} is also a spatial or channel dim")
    leftover = [d for d in dims if d not in (sample_dim, channel_dim, *spatial_dims)]
    if leftover:
        raise DataError(
            f"{where}: dim(s) {leftover} are neither the sample dim {sample_dim!r}, the spatial dims "
            f"{spatial_dims} nor a channel dim; pass spatial_dims=, channel_dim= or sample_dim="
        )
    return sample_dim, tuple(spatial_dims), channel_dim


def _describe(info: VarInfo) -> str:
    return f"{info.name!r} dims {info.dims} shape {info.shape}"


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry of ``mask``."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


class FieldSource:
    """Fields in one file, read lazily as float tensors ``[n, C, *spatial]``.

    Attributes:
        path: the file.
        variables: the variable names used as channels (in channel order).
        channels: the channel names (``C`` of them): a variable's name, or
            ``name[label]`` for each entry of its channel dim.
        sample_dim, spatial_dims, channel_dim: the dim names used.
        spatial_shape: the grid size, e.g. ``(H, W)``.
        num_samples: ``N``, the length of the sample dim.
        cond_names: the conditioning columns (``P`` of them).
        cond: the conditioning table ``[N, P]`` (float64), or None.
        template: a :class:`FieldTemplate` to write fields back like the source.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        variables: str | Sequence[str],
        *,
        sample_dim: str | None = None,
        spatial_dims: str | Sequence[str] | None = None,
        channel_dim: str | None = None,
        cond: str | Sequence[str] = (),
        group: str | None = None,
        dims: Sequence[str] | None = None,
        engine: str = "auto",
    ) -> None:
        self.path = Path(path)
        self.group = group
        self.engine = engine
        names = _as_names(variables, "variables")
        if not names:
            raise ValueError(f"{self.path.name}: choose at least one variable, got variables={variables!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.path.name}: variables {names} name a variable twice")
        self.variables: tuple[str, ...] = names
        self._backend: Backend | None = open_backend(self.path, group, list(names), engine)
        try:
            self._setup(
                sample_dim=sample_dim,
                spatial_dims=_as_names(spatial_dims, "spatial_dims"),
                channel_dim=channel_dim,
                cond=_as_names(cond, "cond") or (),
                dims=None if dims is None else tuple(dims),
            )
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------
    def _setup(
        self,
        *,
        sample_dim: str | None,
        spatial_dims: tuple[str, ...] | None,
        channel_dim: str | None,
        cond: tuple[str, ...],
        dims: tuple[str, ...] | None,
    ) -> None:
        backend = self.backend
        file = self.path.name
        if dims is not None and backend.kind != "hdf5":
            raise ValueError(
                f"{file}: dims= names the axes of plain HDF5 datasets, but this file names its own dims; "
                "use sample_dim=, spatial_dims= and channel_dim= instead"
            )
        data_names, coord_names = backend.names()
        available = set(data_names) | set(coord_names)
        if not data_names and not coord_names:
            raise DataError(f"{self.path}: the file holds no variables (datasets); it is empty")
        for name in (*self.variables, *cond):
            if name not in available:
                listed = ", ".join(repr(n) for n in data_names[:50]) or "none"
                extra = f"; coordinates: {', '.join(repr(c) for c in coord_names)}" if coord_names else ""
                grp = f" in group {self.group!r}" if self.group else ""
                raise DataError(f"{file}: variable {name!r} not found{grp}; available variables: {listed}{extra}")
        infos = [backend.info(v, dims=dims) for v in self.variables]
        for info in infos:
            if info.dtype.kind not in "fiu":
                raise DataError(
                    f"{file}: variable {info.name!r} has non-numeric dtype {info.dtype}; "
                    "fields must be integer or floating point"
                )
        first = infos[0]
        self.sample_dim, self.spatial_dims, self.channel_dim = _resolve_dims(
            first, file, sample_dim, spatial_dims, channel_dim
        )
        size = dict(zip(first.dims, first.shape))
        self.spatial_shape: tuple[int, ...] = tuple(size[d] for d in self.spatial_dims)
        self.num_samples: int = size[self.sample_dim]
        if self.num_samples == 0:
            raise DataError(f"{file}: variable {first.name!r} has no samples (dim {self.sample_dim!r} has length 0)")
        self._layouts = tuple(self._layout(info, first) for info in infos)
        self._var_templates = tuple(self._variable_template(info, lay) for info, lay in zip(infos, self._layouts))
        self.cond_names, self.cond = self._read_cond(cond)
        self.template = FieldTemplate(
            source=str(self.path),
            sample_dim=self.sample_dim,
            spatial_dims=self.spatial_dims,
            spatial_shape=self.spatial_shape,
            variables=self._var_templates,
            coords=self._coords(coord_names),
            attrs=backend.global_attrs(),
            cond_names=self.cond_names,
        )

    def _layout(self, info: VarInfo, first: VarInfo) -> _Layout:
        file = self.path.name
        wanted = {self.sample_dim, *self.spatial_dims}
        has_channel = self.channel_dim is not None and self.channel_dim in info.dims
        if has_channel:
            wanted.add(self.channel_dim)
        size = dict(zip(info.dims, info.shape))
        first_size = dict(zip(first.dims, first.shape))
        same = set(info.dims) == wanted and len(info.dims) == len(wanted) and all(
            size[d] == first_size[d] for d in (self.sample_dim, *self.spatial_dims)
        )
        if not same:
            raise DataError(
                f"{file}: variables disagree on their dims: {_describe(first)} but {_describe(info)}; "
                f"all channels need the sample dim {self.sample_dim!r} and spatial dims {self.spatial_dims} "
                "with the same sizes"
            )
        axes = [info.dims.index(self.sample_dim)]
        if has_channel:
            axes.append(info.dims.index(self.channel_dim))
        axes += [info.dims.index(d) for d in self.spatial_dims]
        k = size[self.channel_dim] if has_channel else 1
        if k == 0:
            raise DataError(f"{file}: variable {info.name!r} has an empty channel dim {self.channel_dim!r}")
        return _Layout(info.name, axes[0], tuple(axes), k, has_channel)

    def _variable_template(self, info: VarInfo, lay: _Layout) -> VariableTemplate:
        labels: tuple[Any, ...] | None = None
        if lay.has_channel:
            labels = tuple(range(lay.num_channels))
            _, coord_names = self.backend.names()
            if self.channel_dim in coord_names:
                values = self.backend.read(self.channel_dim, None, 0, 0)
                if values.shape == (lay.num_channels,):
                    labels = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
        return VariableTemplate(info.name, info.attrs, self.channel_dim if lay.has_channel else None, labels)

    def _read_cond(self, cond: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray | None]:
        file = self.path.name
        columns: list[np.ndarray] = []
        names: list[str] = []
        for name in cond:
            info = self.backend.info(name)
            if info.dtype.kind not in "fiub":
                raise DataError(f"{file}: conditioning variable {name!r} has non-numeric dtype {info.dtype}")
            if self.backend.kind == "hdf5":
                ok = len(info.shape) in (1, 2) and info.shape[0] == self.num_samples
                axis = 0
            else:
                ok = self.sample_dim in info.dims and len(info.dims) in (1, 2)
                axis = info.dims.index(self.sample_dim) if ok else 0
            if not ok:
                raise DataError(
                    f"{file}: conditioning variable {_describe(info)} does not run along the sample dim "
                    f"{self.sample_dim!r} of length {self.num_samples}; it needs shape [N] or [N, P]"
                )
            values = np.moveaxis(self.backend.read(name, None, 0, 0), axis, 0).astype(np.float64)
            values = values.reshape(self.num_samples, -1)
            bad = ~np.isfinite(values)
            if bad.any():
                i, j = _first_bad(bad)
                raise DataError(
                    f"{file}: conditioning variable {name!r} is {values[i, j]} at sample {i} "
                    f"(along {self.sample_dim!r}); parameters must be finite"
                )
            columns.append(values)
            names += [name] if values.shape[1] == 1 and len(info.shape) == 1 else [
                f"{name}[{j}]" for j in range(values.shape[1])
            ]
        if not columns:
            return (), None
        return tuple(names), np.concatenate(columns, axis=1)

    def _coords(self, coord_names: list[str]) -> tuple[CoordTemplate, ...]:
        keep = {*self.spatial_dims, *(v.channel_dim for v in self._var_templates if v.channel_dim)}
        coords = []
        for name in coord_names:
            info = self.backend.info(name)
            if info.dims and set(info.dims) <= keep:
                values = self.backend.read(name, None, 0, 0)
                coords.append(CoordTemplate(name, info.dims, np.asarray(values), info.attrs))
        return tuple(coords)

    # -- properties --------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The open reader (reopened after pickling, e.g. in DataLoader workers)."""
        if self._backend is None:
            self._backend = open_backend(self.path, self.group, list(self.variables), self.engine)
        return self._backend

    @property
    def channels(self) -> tuple[str, ...]:
        return self.template.channels

    @property
    def num_channels(self) -> int:
        return self.template.num_channels

    @property
    def channel_variables(self) -> tuple[str, ...]:
        """For each channel, the variable it comes from."""
        return self.template.channel_variables

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, C, *spatial)``."""
        return (self.num_samples, self.num_channels, *self.spatial_shape)

    @property
    def units(self) -> dict[str, str | None]:
        """Units attribute of each variable (None where the file gives none)."""
        return {v.name: v.units for v in self.template.variables}

    @property
    def coords(self) -> dict[str, CoordTemplate]:
        """The spatial (and channel) coordinates: name -> dims, values, attrs."""
        return {c.name: c for c in self.template.coords}

    @property
    def attrs(self) -> dict[str, Any]:
        """The file's (or group's) global attributes."""
        return self.template.attrs

    @property
    def default_chunk_size(self) -> int:
        """Samples per chunk so that a chunk holds about 8 MiB of float64 values."""
        per_sample = 8 * self.num_channels * math.prod(self.spatial_shape)
        return max(1, _CHUNK_BYTES // per_sample)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        grid = ", ".join(f"{d}: {n}" for d, n in zip(self.spatial_dims, self.spatial_shape))
        cond = f", cond={list(self.cond_names)}" if self.cond_names else ""
        return (
            f"FieldSource({self.path.name!r}, channels={list(self.channels)}, "
            f"{self.sample_dim}: {self.num_samples}, grid=({grid}){cond})"
        )

    # -- reading -----------------------------------------------------------------------
    def read(self, start: int, stop: int, *, dtype: torch.dtype = torch.float64) -> FieldChunk:
        """Samples ``start <= i < stop``: ``x`` ``[n, C, *spatial]`` and ``cond`` ``[n, P]``.

        Raises:
            DataError: a value is NaN or infinite (naming variable, sample index and
                grid position), or the file cannot be read there.
        """
        if not 0 <= start < stop <= self.num_samples:
            raise IndexError(f"{self.path.name}: samples {start}:{stop} out of range 0:{self.num_samples}")
        x = torch.from_numpy(self._read_array(start, stop)).to(dtype)
        cond = None if self.cond is None else torch.from_numpy(self.cond[start:stop]).to(dtype)
        return FieldChunk(x, cond, np.arange(start, stop))

    def read_index(
        self, index: Sequence[int] | np.ndarray, *, dtype: torch.dtype = torch.float64, max_gap: int = 8
    ) -> FieldChunk:
        """The samples at positions ``index`` (any order, repeats allowed), e.g. a random batch.

        Sorted positions closer than ``max_gap`` are read with one slice, so a batch
        costs a few reads rather than one per sample.
        """
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self.path.name}: read_index needs at least one position")
        if idx.min() < 0 or idx.max() >= self.num_samples:
            raise IndexError(f"{self.path.name}: sample positions must lie in 0..{self.num_samples - 1}")
        wanted, inverse = np.unique(idx, return_inverse=True)
        breaks = np.flatnonzero(np.diff(wanted) > max_gap) + 1
        parts = []
        for run in np.split(wanted, breaks):
            block = self._read_array(int(run[0]), int(run[-1]) + 1)
            parts.append(block if len(run) == block.shape[0] else block[run - run[0]])
        x = torch.from_numpy(np.concatenate(parts)[inverse]).to(dtype)
        cond = None if self.cond is None else torch.from_numpy(self.cond[idx]).to(dtype)
        return FieldChunk(x, cond, idx)

    def _read_array(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.num_channels, *self.spatial_shape), dtype=np.float64)
        c0 = 0
        for lay in self._layouts:
            try:
                values = self.backend.read(lay.name, lay.sample_axis, start, stop)
            except Exception as err:
                msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DataError(
                    f"{self.path}: reading variable {lay.name!r}, samples {start}:{stop} failed "
                    f"(truncated or corrupt file?): {msg}"
                ) from err
            values = np.transpose(values, lay.order)
            block = out[:, c0 : c0 + lay.num_channels]
            block[...] = values if lay.has_channel else values[:, None]
            if values.dtype.kind == "f":
                self._check_finite(block, lay, start)
            c0 += lay.num_channels
        return out

    def _check_finite(self, block: np.ndarray, lay: _Layout, start: int) -> None:
        if np.isfinite(block).all():
            return
        pos = _first_bad(~np.isfinite(block))
        value = block[pos]
        kind = "NaN (a missing or fill value)" if np.isnan(value) else f"{value}"
        channel = f", {self.channel_dim}={pos[1]}" if lay.has_channel else ""
        grid = ", ".join(f"{d}={i}" for d, i in zip(self.spatial_dims, pos[2:]))
        raise DataError(
            f"{self.path.name}: variable {lay.name!r} has {kind} at sample {start + pos[0]} "
            f"(index along {self.sample_dim!r}){channel}, grid position ({grid}); "
            "remove or fill such samples before training"
        )

    def iter_chunks(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        chunk_size: int | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Iterator[FieldChunk]:
        """Stream the samples ``indices`` (default: all) in increasing order, chunk by chunk.

        Each chunk reads one contiguous slice of at most ``chunk_size`` samples of the
        file and keeps the requested ones, so memory stays at one chunk.
        """
        for start, stop, keep in plan_chunks(self.num_samples, indices, chunk_size or self.default_chunk_size):
            chunk = self.read(start, stop, dtype=dtype)
            if len(keep) == stop - start:
                yield chunk
            else:
                sel = torch.from_numpy(keep)
                cond = None if chunk.cond is None else chunk.cond[sel]
                yield FieldChunk(chunk.x[sel], cond, chunk.index[keep])

    def close(self) -> None:
        """Close the file (it is reopened on the next read)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> FieldSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detached(self) -> FieldSource:
        """A copy that opens its own file handle on first read (for a forked DataLoader worker)."""
        clone = copy.copy(self)
        clone._backend = None
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backend"] = None  # file handles do not travel to DataLoader workers
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def plan_chunks(
    num_samples: int, indices: Sequence[int] | np.ndarray | None, chunk_size: int
) -> list[tuple[int, int, np.ndarray]]:
    """Split sorted sample ``indices`` into file blocks ``[k*chunk_size, (k+1)*chunk_size)``.

    Returns ``(start, stop, keep)`` per non-empty block: read ``[start, stop)`` (the
    span of the wanted samples in the block) and keep the positions ``keep`` in it.
    """
    check_int("chunk_size", chunk_size)
    idx = np.arange(num_samples) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    if idx.size and (idx[0] < 0 or idx[-1] >= num_samples):
        raise IndexError(f"sample indices must lie in 0..{num_samples - 1}")
    plan = []
    block = idx // chunk_size
    for b in np.unique(block):
        members = idx[block == b]
        start, stop = int(members[0]), int(members[-1]) + 1
        plan.append((start, stop, members - start))
    return plan


def open_fields(
    path: str | PathLike[str],
    variables: str | Sequence[str],
    *,
    sample_dim: str | None = None,
    spatial_dims: str | Sequence[str] | None = None,
    channel_dim: str | None = None,
    cond: str | Sequence[str] = (),
    group: str | None = None,
    dims: Sequence[str] | None = None,
    engine: str = "auto",
) -> FieldSource:
    """Open fields in a netCDF or HDF5 file lazily.

    Args:
        path: a netCDF-4 file (read by xarray through h5netcdf), a netCDF-3 file
            (xarray through scipy), or an HDF5 file with plain datasets (h5py).
        variables: one name or several; each becomes one channel, or several if it
            has a channel dim.  In plain HDF5 a name may be a path inside ``group``.
        sample_dim: the dim that indexes samples; default: the first dim that is
            neither spatial nor a channel dim.
        spatial_dims: the grid dims (1 to 3); default: the dims named x, y, z, lat,
            lon, ... if there are any, else the dims after the first.
        channel_dim: a dim whose entries become separate channels; default: a dim
            named ``channel`` (plain HDF5 datasets of rank 4 and 5 get one).
        cond: variables or coordinates along the sample dim (shape ``[N]`` or
            ``[N, P]``) stacked into a conditioning vector ``[N, P]``.
        group: an HDF5 / netCDF-4 group, e.g. ``"runs/high_res"``.
        dims: names for the axes of plain HDF5 datasets (which carry none); the
            defaults are ``(sample, x)``, ``(sample, y, x)``,
            ``(sample, channel, y, x)`` and ``(sample, channel, z, y, x)``.
        engine: ``"auto"`` (netCDF metadata present -> xarray, else h5py),
            ``"xarray"`` or ``"h5py"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: the file is empty or corrupt, a variable is missing, variables
            disagree on their dims, a dtype is not numeric, ...
    """
    return FieldSource(
        path, variables, sample_dim=sample_dim, spatial_dims=spatial_dims, channel_dim=channel_dim,
        cond=cond, group=group, dims=dims, engine=engine,
    )
