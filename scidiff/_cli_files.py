"""``scidiff data info``: a readable description of a netCDF or HDF5 file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["describe_file"]

_MAX_ATTR = 100


def _attr_text(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_ATTR else text[: _MAX_ATTR - 3] + "..."


def _describe_xarray(ds: Any, path: Path) -> list[str]:
    lines = [f"{path}  (netCDF)", "dims: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items())]
    if ds.coords:
        lines.append("coordinates:")
        for name, c in ds.coords.items():
            units = c.attrs.get("units")
            lines.append(f"  {name:<14} ({', '.join(c.dims)})  {c.dtype}" + (f"  [{units}]" if units else ""))
    lines.append("variables:")
    for name, v in ds.data_vars.items():
        units = v.attrs.get("units")
        long = v.attrs.get("long_name")
        shape = "x".join(str(s) for s in v.shape)
        lines.append(
            f"  {name:<14} ({', '.join(v.dims)})  {shape}  {v.dtype}"
            + (f"  [{units}]" if units else "") + (f"  {long}" if long else "")
        )
    if ds.attrs:
        lines.append("attributes:")
        lines += [f"  {k}: {_attr_text(v)}" for k, v in ds.attrs.items()]
    fields = [n for n, v in ds.data_vars.items() if v.ndim >= 2]
    params = [n for n, v in ds.data_vars.items() if v.ndim == 1] + [
        n for n, c in ds.coords.items() if c.ndim == 1 and fields and c.dims[0] == ds[fields[0]].dims[0] and n not in ds.dims
    ]
    if fields:
        hint = f"train with: scidiff train --data {path} --var {fields[0]}"
        if params:
            hint += f" [--cond {','.join(params)}]"
        lines.append(hint + " --out RUN")
    return lines


def _describe_hdf5(path: Path) -> list[str]:
    import h5py

    lines = [f"{path}  (HDF5)"]
    with h5py.File(path, "r") as fh:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                shape = "x".join(str(s) for s in obj.shape) or "scalar"
                units = obj.attrs.get("units")
                if isinstance(units, bytes):
                    units = units.decode(errors="replace")
                lines.append(f"  {name:<24} {shape}  {obj.dtype}" + (f"  [{units}]" if units is not None else ""))

        lines.append("datasets:")
        fh.visititems(visit)
        if fh.attrs:
            lines.append("attributes:")
            lines += [f"  {k}: {_attr_text(v)}" for k, v in fh.attrs.items()]
    return lines


def describe_file(path: str | os.PathLike[str]) -> str:
    """Dims, coordinates, variables (dims, shape, dtype, units) and attributes of a file, as text.

    Raises:
        FileNotFoundError: no such file.
        DataError: the file is neither netCDF nor HDF5.
    """
    from scidiff.data import DataError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder, not a netCDF or HDF5 file")
    import xarray as xr

    try:
        with xr.open_dataset(path) as ds:
            if ds.data_vars or ds.coords:
                return "\n".join(_describe_xarray(ds, path))
            raise ValueError("no netCDF variables")  # plain HDF5 datasets are invisible to netCDF readers
    except Exception as err_xr:  # not netCDF: try plain HDF5
        try:
            return "\n".join(_describe_hdf5(path))
        except Exception:
            msg = " ".join(str(err_xr).split())[:200]
            raise DataError(f"{str(path)!r} is neither a readable netCDF nor an HDF5 file ({msg})") from None
