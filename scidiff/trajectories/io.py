r"""Trajectory files: ``[N, L, C, *spatial]`` tensors to and from netCDF / HDF5, time axis kept.

A trajectory file holds one variable per channel with dims ``(sample, time, *spatial)`` (in
any order; the names are the file's own), a time coordinate with its ``units``, and the
spatial coordinates.  :func:`open_trajectories` reads chosen variables as channels and
returns :class:`Trajectories`: ``x`` [N, L, C, *spatial] (float64), the time values and
units, the spatial coordinates and attributes; :func:`trajectories_to_dataset` and
:func:`write_trajectories` go the other way, atomically, with provenance attributes.

Plain HDF5 files without dimension labels have no names for their axes: pass ``dims``
(the names in file order) so that the time dim can be found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff.data import DataError
from scidiff.data._backends import open_backend

__all__ = ["Trajectories", "open_trajectories", "trajectories_to_dataset", "trajectories_layout", "write_trajectories"]


@dataclass
class Trajectories:
    """Trajectories read from a file.

    Attributes:
        x: the fields, [N, L, C, *spatial], float64.
        time: the time coordinate [L] (float64; state index when the file has none).
        time_units: its ``units`` attribute ("1" when absent).
        variables: the channel names, in order.
        units: each variable's ``units`` ("1" when absent).
        spatial: spatial dim name -> coordinate values (index when absent), in axis order.
        time_dim, sample_dim: the file's names of those dims.
        attrs: the file's global attributes.
    """

    x: Tensor
    time: np.ndarray
    time_units: str
    variables: list[str]
    units: list[str]
    spatial: dict[str, np.ndarray]
    time_dim: str = "time"
    sample_dim: str = "sample"
    attrs: dict[str, Any] = field(default_factory=dict)
    spatial_units: dict[str, str] = field(default_factory=dict)

    @property
    def interval(self) -> float:
        """The output interval (time units), from the first two times (NaN for one state)."""
        return float(self.time[1] - self.time[0]) if len(self.time) > 1 else float("nan")


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def open_trajectories(
    path: str | PathLike[str],
    variables: str | Sequence[str],
    *,
    time_dim: str = "time",
    sample_dim: str | None = None,
    dims: Sequence[str] | None = None,
    group: str | None = None,
    engine: str = "auto",
) -> Trajectories:
    """Read ``variables`` of ``path`` as channels of trajectories ``[N, L, C, *spatial]``.

    Args:
        path: a netCDF-4 / netCDF-3 / HDF5 file.
        variables: the data variables (one channel each); all must have the same dims.
        time_dim: the name of the time dim in the file.
        sample_dim: the sample dim (default ``"sample"`` when the variable has it; otherwise the
            variable is one trajectory, N = 1, and every dim but time is spatial).
        dims: dim names in file order, for plain HDF5 datasets without labels.
        group, engine: as for :func:`scidiff.open_fields`.

    Raises:
        DataError: one line naming the problem (missing variable, no such time dim, dims differ).
    """
    path = Path(path)
    names = _as_list(variables)
    if not names:
        raise ValueError("variables must name at least one data variable")
    backend = open_backend(path, group, names, engine)
    try:
        data_vars, coords = backend.names()
        missing = [n for n in names if n not in data_vars and n not in coords]
        if missing:
            raise DataError(f"{path.name}: variable(s) {missing} not found; data variables: {sorted(data_vars)}")
        infos = [backend.info(n, dims=tuple(dims) if dims is not None else None) for n in names]
        file_dims = infos[0].dims
        for info in infos[1:]:
            if info.dims != file_dims or info.shape != infos[0].shape:
                raise DataError(f"{path.name}: variables {names[0]!r} {dict(zip(file_dims, infos[0].shape))} and "
                                f"{info.name!r} {dict(zip(info.dims, info.shape))} have different dims")
        if time_dim not in file_dims:
            raise DataError(f"{path.name}: variable {names[0]!r} has no dim named {time_dim!r} (its dims are "
                            f"{list(file_dims)}); pass time_dim= one of them")
        rest = [d for d in file_dims if d != time_dim]
        if sample_dim is None:
            sample_dim = "sample" if "sample" in rest else None
        elif sample_dim not in rest:
            raise DataError(f"{path.name}: variable {names[0]!r} has no dim named {sample_dim!r} (its dims are "
                            f"{list(file_dims)})")
        spatial_dims = [d for d in rest if d != sample_dim]
        order = ([file_dims.index(sample_dim)] if sample_dim else []) + [file_dims.index(time_dim)] + \
            [file_dims.index(d) for d in spatial_dims]
        arrays = []
        for n in names:
            a = np.asarray(backend.read(n, None, 0, 0), dtype=np.float64).transpose(order)
            arrays.append(a if sample_dim else a[None])
        x = torch.from_numpy(np.stack(arrays, axis=2))                # [N, L, C, *spatial]

        def coord(name: str, size: int) -> tuple[np.ndarray, str]:
            if name in coords or name in data_vars:
                try:
                    info = backend.info(name)
                except Exception:  # noqa: BLE001 - a coordinate the backend cannot describe
                    info = None
                if info is not None and info.dims == (name,):
                    return np.asarray(backend.read(name, None, 0, 0)), str(info.attrs.get("units", "1"))
            return np.arange(size, dtype=np.float64), "1"

        shape = dict(zip(file_dims, infos[0].shape))
        time, time_units = coord(time_dim, shape[time_dim])
        spatial, spatial_units = {}, {}
        for d in spatial_dims:
            spatial[d], spatial_units[d] = coord(d, shape[d])
        return Trajectories(
            x=x, time=np.asarray(time, dtype=np.float64), time_units=time_units, variables=names,
            units=[str(i.attrs.get("units", "1")) for i in infos], spatial=spatial,
            time_dim=time_dim, sample_dim=sample_dim or "sample", attrs=dict(backend.global_attrs()),
            spatial_units=spatial_units,
        )
    finally:
        backend.close()


def trajectories_to_dataset(
    x: Tensor,
    *,
    time: Sequence[float] | np.ndarray | None = None,
    time_units: str = "1",
    variables: Sequence[str] = ("field",),
    units: Sequence[str] | None = None,
    spatial: Mapping[str, np.ndarray] | None = None,
    spatial_units: Mapping[str, str] | None = None,
    time_dim: str = "time",
    sample_dim: str = "sample",
    attrs: Mapping[str, Any] | None = None,
):
    """An :class:`xarray.Dataset` of trajectories ``x`` [N, L, C, *spatial] (one variable per channel).

    ``time`` [L] (default: the state index) gets ``units = time_units``; ``spatial`` maps each
    spatial dim name (in axis order) to its coordinate (default ``z``/``y``/``x`` indices).
    To copy the layout of trajectories ``tr`` read earlier, pass ``**trajectories_layout(tr)``.
    """
    import xarray as xr

    if not isinstance(x, Tensor) or x.ndim < 3:
        raise ValueError(f"x must be a tensor [N, L, C, *spatial], got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    n, length, channels = x.shape[:3]
    variables = list(variables)
    if len(variables) != channels:
        raise ValueError(f"{len(variables)} variable names for {channels} channels")
    units = ["1"] * channels if units is None else list(units)
    nd = x.ndim - 3
    if spatial is None:
        spatial = {name: np.arange(s, dtype=np.float64) for name, s in zip(("z", "y", "x")[3 - nd:], x.shape[3:])}
    if len(spatial) != nd:
        raise ValueError(f"spatial names {list(spatial)} for {nd} spatial axes")
    time = np.arange(length, dtype=np.float64) if time is None else np.asarray(time, dtype=np.float64)
    if time.shape != (length,):
        raise ValueError(f"time has {time.size} values for {length} states")
    spatial_units = dict(spatial_units or {})
    coords = {
        sample_dim: xr.Variable((sample_dim,), np.arange(n), {"long_name": "sample index"}),
        time_dim: xr.Variable((time_dim,), time, {"units": time_units, "long_name": "time"}),
        **{d: xr.Variable((d,), np.asarray(v), {"units": spatial_units.get(d, "1")}) for d, v in spatial.items()},
    }
    values = x.detach().cpu().numpy()
    data = {name: xr.Variable((sample_dim, time_dim, *spatial), values[:, :, c], {"units": u})
            for c, (name, u) in enumerate(zip(variables, units))}
    return xr.Dataset(data, coords=coords, attrs=dict(attrs or {}))


def trajectories_layout(tr: Trajectories) -> dict[str, Any]:
    """Keyword arguments of :func:`trajectories_to_dataset` that copy the layout of ``tr``."""
    return dict(time=tr.time, time_units=tr.time_units, variables=tr.variables, units=tr.units,
                spatial=tr.spatial, spatial_units=tr.spatial_units, time_dim=tr.time_dim,
                sample_dim=tr.sample_dim)


def write_trajectories(path: str | PathLike[str], x: Tensor, **layout: Any) -> Path:
    """Write trajectories ``x`` [N, L, C, *spatial] as netCDF-4 atomically (``layout``: as for
    :func:`trajectories_to_dataset`); returns the path."""
    from scidiff.data import write_netcdf

    return write_netcdf(trajectories_to_dataset(x, **layout), path)
