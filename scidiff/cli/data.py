"""``scidiff data make | list | info``: built-in datasets as netCDF, and a readable description of a file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from scidiff.cli._common import finish, params, positive_int, say, show_progress, subcommand

__all__ = ["add_parser", "describe_file"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommand(sub, "data", help="make a built-in dataset, or describe a file",
                   description="Built-in datasets and file inspection.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    q = subcommand(
        dsub, "make", help="generate a built-in dataset as netCDF",
        description="Generate N fields of a built-in simulator (see `scidiff data list`) and write them "
        "as a netCDF file with coordinates, units and the parameters used.\n\n"
        "example: scidiff data make grf --n 512 --size 32 --param slope=2:4 --out grf.nc",
    )
    q.add_argument("name", help="the simulator, e.g. grf (see `scidiff data list`)")
    q.add_argument("--n", type=positive_int, default=256, help="number of fields")
    q.add_argument("--size", type=positive_int, default=32, help="grid points per side")
    q.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a simulator option (repeatable); NAME=LOW:HIGH draws it per field from that range")
    q.add_argument("--out", required=True, help="the netCDF file to write")
    finish(q, run_make, device=False)
    q = subcommand(dsub, "list", help="list the built-in datasets",
                   description="List the built-in simulators `scidiff data make` knows.")
    finish(q, run_list, seed=False, device=False)
    q = subcommand(
        dsub, "info", help="describe a netCDF / HDF5 file",
        description="Print the dims, coordinates, variables (shape, dtype, units) and attributes of a "
        "netCDF or HDF5 file, and a `scidiff train` command line for it.",
    )
    q.add_argument("file", help="a netCDF or HDF5 file")
    finish(q, run_info, seed=False, device=False)
    return p


def run_make(args: argparse.Namespace) -> int:
    from scidiff import simulators
    from scidiff.data import write_netcdf

    known = list(simulators.available())
    if args.name not in known:
        raise ValueError(f"unknown dataset {args.name!r}; built-in datasets are {', '.join(known)}")
    out = Path(args.out)
    ds = simulators.make(args.name, args.n, size=args.size, seed=args.seed, progress=show_progress(args),
                         **params(args.param))
    write_netcdf(ds, out)
    variables = ", ".join(f"{k} {tuple(v.dims)}" for k, v in ds.data_vars.items())
    say(f"wrote {args.n} {args.name} fields on a {args.size}-point grid to {out}: {variables}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from scidiff import simulators

    for name in simulators.available():
        opts = ", ".join(f"{k}={v!r}" for k, v in simulators.options(name).items())
        say(f"{name:<14} {opts}")
    say("cards: datasets/<name>.md; make one with `scidiff data make NAME --n N --size S --param K=V --out FILE.nc`")
    return 0


def run_info(args: argparse.Namespace) -> int:
    say(describe_file(args.file))
    return 0

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
    time_dim = _time_dim(ds, fields)
    if fields and time_dim is not None:
        hint = f"trajectories (time dim {time_dim!r}): train a window model with: scidiff trajectory train " \
               f"--data {path} --var {fields[0]}"
        if time_dim != "time":
            hint += f" --time-dim {time_dim}"
        lines.append(hint + " --window 5 --out RUN")
    elif fields:
        hint = f"train with: scidiff train --data {path} --var {fields[0]}"
        if params:
            hint += f" [--cond {','.join(params)}]"
        lines.append(hint + " --out RUN")
    return lines


def _time_dim(ds: Any, fields: list[str]) -> str | None:
    """The time dim of the first field variable with at least three dims (sample, time, space), if it has one:
    a dim named ``time`` or one whose coordinate says it is time (``axis: T``, ``standard_name: time``)."""
    for name in fields:
        dims = ds[name].dims
        if len(dims) < 3:
            continue
        for d in dims[1:]:
            attrs = ds[d].attrs if d in ds.variables else {}
            if d == "time" or str(attrs.get("axis", "")).upper() == "T" or attrs.get("standard_name") == "time":
                return str(d)
    return None


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
