"""Low-level readers: xarray (netCDF-4 through h5netcdf, netCDF-3 through scipy) and plain h5py.

Both expose the same small interface: the names in a file, each variable's dims,
shape, dtype and attrs, and a lazy read of a slice along one dim.  Nothing here
reads a whole variable unless asked for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scidiff.data.errors import DataError

__all__ = ["VarInfo", "Backend", "open_backend", "clean_attrs"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_SIGNATURE = b"CDF"

# HDF5 / netCDF bookkeeping attributes that describe storage, not the data
_STORAGE_ATTRS = {
    "DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid",
    "_Netcdf4Coordinates", "_NCProperties", "_FillValue", "_nc3_strict",
}

# default dim names of plain HDF5 datasets (no dimension labels), by rank
_PLAIN_DIMS: dict[int, tuple[str, ...]] = {
    1: ("sample",),
    2: ("sample", "x"),
    3: ("sample", "y", "x"),
    4: ("sample", "channel", "y", "x"),
    5: ("sample", "channel", "z", "y", "x"),
}


@dataclass(frozen=True)
class VarInfo:
    """What a file says about one variable: ``dims`` and ``shape`` in file order."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    is_coord: bool = False


def clean_value(value: Any) -> Any:
    """An attribute value as plain Python (str, int, float, or a list of those)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return clean_value(value.item())
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return clean_value(value[()])
        return [clean_value(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [clean_value(v) for v in value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    return str(value)


def clean_attrs(attrs: Any) -> dict[str, Any]:
    """Attributes without HDF5/netCDF storage bookkeeping, as JSON-able Python values."""
    out: dict[str, Any] = {}
    for key, value in dict(attrs).items():
        if key in _STORAGE_ATTRS:
            continue
        try:
            out[str(key)] = clean_value(value)
        except Exception:  # an attribute h5py cannot decode (object references, ...)
            continue
    return out


class Backend(Protocol):
    """Interface shared by the xarray and h5py readers."""

    path: Path
    kind: str

    def names(self) -> tuple[list[str], list[str]]:
        """(data variable names, coordinate names) available in the file or group."""

    def info(self, name: str, *, dims: tuple[str, ...] | None = None) -> VarInfo:
        """Dims, shape, dtype and attrs of ``name`` (``dims`` renames a plain dataset's dims)."""

    def read(self, name: str, axis: int | None, start: int, stop: int) -> np.ndarray:
        """Values of ``name`` with ``[start:stop]`` taken along ``axis`` (whole array if None)."""

    def global_attrs(self) -> dict[str, Any]:
        """Attributes of the file (or group)."""

    def close(self) -> None:
        """Release the file handle."""


class XarrayBackend:
    """netCDF through ``xarray.open_dataset`` (lazy: no dask, values read per slice)."""

    kind = "netcdf"

    def __init__(self, path: Path, group: str | None, engine: str) -> None:
        import xarray as xr

        self.path = path
        extra = {"phony_dims": "sort"} if engine == "h5netcdf" else {}  # datasets without dimension scales
        self.ds = xr.open_dataset(path, engine=engine, group=group, cache=False, **extra)

    def names(self) -> tuple[list[str], list[str]]:
        return [str(n) for n in self.ds.data_vars], [str(n) for n in self.ds.coords]

    def info(self, name: str, *, dims: tuple[str, ...] | None = None) -> VarInfo:
        var = self.ds.variables[name]
        return VarInfo(
            name=name,
            dims=tuple(str(d) for d in var.dims),
            shape=tuple(int(s) for s in var.shape),
            dtype=np.dtype(var.dtype),
            attrs=clean_attrs(var.attrs),
            is_coord=name in self.ds.coords,
        )

    def read(self, name: str, axis: int | None, start: int, stop: int) -> np.ndarray:
        var = self.ds.variables[name]
        if axis is not None:
            var = var.isel({var.dims[axis]: slice(start, stop)})
        return np.asarray(var.values)

    def global_attrs(self) -> dict[str, Any]:
        return clean_attrs(self.ds.attrs)

    def close(self) -> None:
        self.ds.close()


class H5Backend:
    """Plain HDF5 datasets through h5py; dims come from dimension labels or ``_PLAIN_DIMS``."""

    kind = "hdf5"

    def __init__(self, path: Path, group: str | None) -> None:
        import h5py

        self.path = path
        self.file = h5py.File(path, "r")
        self.group = self.file[group] if group else self.file

    def _datasets(self) -> list[str]:
        import h5py

        found: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                found.append(name)

        self.group.visititems(visit)
        return found

    def names(self) -> tuple[list[str], list[str]]:
        return self._datasets(), []

    def info(self, name: str, *, dims: tuple[str, ...] | None = None) -> VarInfo:
        dset = self.group[name]
        shape = tuple(int(s) for s in dset.shape)
        if dims is not None:
            if len(dims) != len(shape):
                raise DataError(
                    f"{self.path.name}: dims={tuple(dims)} name {len(dims)} dims but dataset "
                    f"{name!r} has shape {shape}"
                )
            names = tuple(dims)
        else:
            labels = tuple(str(d.label) for d in dset.dims)
            if all(labels) and len(set(labels)) == len(labels):
                names = labels
            else:
                names = _PLAIN_DIMS.get(len(shape), tuple(f"dim_{i}" for i in range(len(shape))))
        return VarInfo(name, names, shape, np.dtype(dset.dtype), clean_attrs(dset.attrs))

    def read(self, name: str, axis: int | None, start: int, stop: int) -> np.ndarray:
        dset = self.group[name]
        if axis is None:
            return np.asarray(dset[()])
        key = [slice(None)] * dset.ndim
        key[axis] = slice(start, stop)
        return np.asarray(dset[tuple(key)])

    def global_attrs(self) -> dict[str, Any]:
        return clean_attrs(self.group.attrs)

    def close(self) -> None:
        self.file.close()


def _is_netcdf4(path: Path, group: str | None, variables: list[str]) -> tuple[bool, list[str]]:
    """Whether an HDF5 file carries netCDF-4 / xarray dimension metadata; also its group names."""
    import h5py

    with h5py.File(path, "r") as f:
        groups: list[str] = []
        f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) else None)
        if group and group not in f:
            raise DataError(
                f"{path.name}: group {group!r} not found; groups in the file: "
                + (", ".join(repr(g) for g in groups) or "none (the data sit at the root, group=None)")
            )
        g = f[group] if group else f
        if "_NCProperties" in f.attrs:
            return True, groups
        present = [v for v in variables if v in g and isinstance(g[v], h5py.Dataset)]
        return bool(present) and all("DIMENSION_LIST" in g[v].attrs for v in present), groups


def open_backend(path: Path, group: str | None, variables: list[str], engine: str) -> Backend:
    """Open ``path`` with the reader that fits it; corrupt or empty files raise one clear line."""
    if engine not in ("auto", "xarray", "h5py"):
        raise ValueError(f"engine must be 'auto', 'xarray' or 'h5py', got {engine!r}")
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a netCDF or HDF5 file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); it holds no fields")
    with open(path, "rb") as fh:
        head = fh.read(8)
    try:
        if head.startswith(NETCDF3_SIGNATURE):
            if group:
                raise DataError(f"{path.name}: netCDF-3 files have no groups, got group={group!r}")
            if engine == "h5py":
                raise DataError(f"{path.name}: is a netCDF-3 file, which h5py cannot read; use engine='auto'")
            return XarrayBackend(path, None, "scipy")
        netcdf4, _ = _is_netcdf4(path, group, variables)
        use_xarray = engine == "xarray" or (engine == "auto" and netcdf4)
        if use_xarray:
            return XarrayBackend(path, group, "h5netcdf")
        return H5Backend(path, group)
    except (DataError, FileNotFoundError):
        raise
    except Exception as err:  # h5py OSError, h5netcdf/xarray ValueError, scipy TypeError ...
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{path}: cannot be read as a netCDF or HDF5 file ({size} bytes; truncated or corrupt?): {msg}"
        ) from err
