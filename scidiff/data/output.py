"""Generated fields and likelihoods back out as xarray Datasets shaped like the source; atomic writes."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff._atomic import write_file_atomically
from scidiff.data.template import FieldTemplate

__all__ = ["fields_to_dataset", "loglik_to_dataset", "write_netcdf", "write_csv", "provenance_attrs"]


def _netcdf_attr(value: Any) -> Any:
    """An attribute value netCDF can store: str, number, 1-D numeric array; anything else as JSON or text."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.ndim == 1 and arr.size and arr.dtype.kind in "iuf":
            return arr
        return json.dumps(arr.tolist(), default=str)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    return str(value)


def _attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _netcdf_attr(v) for k, v in attrs.items()}


def provenance_attrs(provenance: Mapping[str, Any], template: FieldTemplate | None = None) -> dict[str, Any]:
    """Global attributes recording how a file was made.

    ``provenance`` (e.g. ``model``, ``sampler``, ``seed``, ``nfe``) is stored key by
    key, plus ``scidiff_version``, ``created`` (UTC, ISO 8601) and ``source_file``.
    """
    from scidiff._version import __version__

    if not isinstance(provenance, Mapping):
        raise TypeError(
            f"provenance must be a mapping such as {{'model': ..., 'seed': 0}}, got {type(provenance).__name__}"
        )
    attrs: dict[str, Any] = {str(k): _netcdf_attr(v) for k, v in provenance.items()}
    attrs["scidiff_version"] = __version__
    attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if template is not None:
        attrs["source_file"] = template.source
    return attrs


def _history(template: FieldTemplate, what: str) -> str:
    from scidiff._version import __version__

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = f"{stamp}: {what} by scidiff {__version__}"
    old = template.attrs.get("history")
    return f"{old}\n{line}" if old else line


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu")
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _sample_coords(
    template: FieldTemplate, n: int, sample_dim: str, cond: Tensor | np.ndarray | None
) -> dict[str, Any]:
    coords: dict[str, Any] = {sample_dim: (sample_dim, np.arange(n))}
    if cond is not None:
        cond = _numpy(cond).reshape(n, -1)
        if cond.shape[1] != len(template.cond_names):
            raise ValueError(
                f"cond has {cond.shape[1]} columns but the template's parameters are {list(template.cond_names)}"
            )
        for j, name in enumerate(template.cond_names):
            coords[name] = (sample_dim, cond[:, j])
    return coords


def fields_to_dataset(
    x: Tensor | np.ndarray,
    template: FieldTemplate,
    *,
    provenance: Mapping[str, Any],
    sample_dim: str = "sample",
    cond: Tensor | np.ndarray | None = None,
) -> Any:
    """Fields ``x`` ``[n, C, *spatial]`` (in data units) as an ``xarray.Dataset`` like the source.

    Each source variable gets back its name, dims ``(sample_dim, [channel dim],
    *spatial_dims)``, units and attrs; spatial coordinates and global attributes
    are copied; ``provenance`` is added (see :func:`provenance_attrs`).  Pass the
    conditioning ``cond`` ``[n, P]`` to store it as coordinates along ``sample_dim``.
    Apply ``Normalizer.inverse`` first if ``x`` is normalised.
    """
    import xarray as xr

    values = _numpy(x)
    C, spatial = template.num_channels, tuple(template.spatial_shape)
    if values.ndim != 2 + len(spatial) or values.shape[1] != C or tuple(values.shape[2:]) != spatial:
        raise ValueError(
            f"x has shape {tuple(values.shape)}, but the template expects [n, {C}, "
            f"{', '.join(map(str, spatial))}] (channels {list(template.channels)}, dims {template.spatial_dims})"
        )
    used = {*template.spatial_dims, *(v.channel_dim for v in template.variables if v.channel_dim)}
    if sample_dim in used:
        raise ValueError(f"sample_dim {sample_dim!r} clashes with a spatial or channel dim of the template")
    n = values.shape[0]
    data_vars: dict[str, Any] = {}
    coords = _sample_coords(template, n, sample_dim, cond)
    c0 = 0
    for var in template.variables:
        block = values[:, c0 : c0 + var.num_channels]
        if var.channel_dim is None:
            data_vars[var.name] = ((sample_dim, *template.spatial_dims), block[:, 0], _attrs(var.attrs))
        else:
            data_vars[var.name] = ((sample_dim, var.channel_dim, *template.spatial_dims), block, _attrs(var.attrs))
            if var.channel_dim not in coords and not any(c.name == var.channel_dim for c in template.coords):
                coords[var.channel_dim] = (var.channel_dim, np.asarray(var.channel_labels))
        c0 += var.num_channels
    for c in template.coords:
        coords[c.name] = (c.dims, c.values, _attrs(c.attrs))
    attrs = _attrs(template.attrs)
    attrs.update(provenance_attrs(provenance, template))
    attrs["history"] = _history(template, "generated fields")
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def loglik_to_dataset(
    log_prob: Tensor | np.ndarray,
    bits_per_dim: Tensor | np.ndarray,
    template: FieldTemplate,
    *,
    provenance: Mapping[str, Any],
    sample_dim: str = "sample",
    index: Sequence[int] | np.ndarray | None = None,
    cond: Tensor | np.ndarray | None = None,
    log_prob_se: Tensor | np.ndarray | None = None,
    estimator: Sequence[str] | None = None,
) -> Any:
    """Per-sample log-likelihoods ``[n]`` as an ``xarray.Dataset``.

    ``log_prob`` is ``log p(x)`` in nats and ``bits_per_dim`` is
    ``-log p(x) / (D ln 2)`` with ``D = C * prod(spatial)``; report them in the data's
    own units by adding ``Normalizer.log_abs_det_jacobian(x)`` to the model's
    ``log p(z)``.  ``index`` (the evaluated samples' positions in the source) is
    stored as coordinate ``source_index``.  ``log_prob_se`` (nats, the divergence
    estimator's standard error per field) adds ``log_prob_se`` and ``bits_per_dim_se``;
    ``estimator`` (one name per field) the variable ``divergence``.
    """
    import xarray as xr

    lp = _numpy(log_prob).reshape(-1)
    bpd = _numpy(bits_per_dim).reshape(-1)
    if lp.shape != bpd.shape:
        raise ValueError(f"log_prob has shape {lp.shape} but bits_per_dim {bpd.shape}")
    n = lp.shape[0]
    coords = _sample_coords(template, n, sample_dim, cond)
    if index is not None:
        idx = np.asarray(index).reshape(-1)
        if idx.shape != (n,):
            raise ValueError(f"index has {idx.size} entries for {n} log-likelihoods")
        long_name = f"position along {template.sample_dim!r} in the source"
        coords["source_index"] = (sample_dim, idx, {"long_name": long_name})
    D = template.num_channels * int(np.prod(template.spatial_shape))
    data_vars = {
        "log_prob": (sample_dim, lp, {
            "units": "nat",
            "long_name": "log-density of each field in the units of the source variables",
        }),
        "bits_per_dim": (sample_dim, bpd, {
            "units": "bit",
            "long_name": f"negative log-density per dimension in bits, -log_prob / (D ln 2), D = {D}",
        }),
    }
    if log_prob_se is not None:
        se = _numpy(log_prob_se).reshape(-1)
        if se.shape != lp.shape:
            raise ValueError(f"log_prob has shape {lp.shape} but log_prob_se {se.shape}")
        data_vars["log_prob_se"] = (sample_dim, se, {
            "units": "nat",
            "long_name": "standard error of log_prob from the divergence estimator (0: exact trace)",
        })
        data_vars["bits_per_dim_se"] = (sample_dim, se / (D * np.log(2.0)), {
            "units": "bit",
            "long_name": "standard error of bits_per_dim from the divergence estimator (0: exact trace)",
        })
    if estimator is not None:
        names = np.asarray(list(estimator), dtype=str)
        if names.shape != lp.shape:
            raise ValueError(f"estimator has {names.size} entries for {n} log-likelihoods")
        data_vars["divergence"] = (sample_dim, names, {"long_name": "how tr(ds/dx) was computed for this field"})
    attrs = _attrs({k: v for k, v in template.attrs.items() if k in ("title", "institution", "source", "Conventions")})
    attrs.update(provenance_attrs(provenance, template))
    attrs["variables"] = ", ".join(template.channels)
    attrs["history"] = _history(template, "log-likelihoods")
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def write_netcdf(ds: Any, path: str | PathLike[str]) -> Path:
    """Write ``ds`` to ``path`` as netCDF-4 (h5netcdf) atomically: a crash never leaves a half file."""
    return write_file_atomically(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


def write_csv(ds: Any, path: str | PathLike[str]) -> Path:
    """Write the 1-D variables of ``ds`` (e.g. from :func:`loglik_to_dataset`) as CSV, atomically.

    One row per sample, one column per coordinate and variable along the sample
    dim; the header row comes first, then the global attributes as ``# key: value``
    comment lines, then the rows (read with
    ``numpy.genfromtxt(path, delimiter=",", names=True)`` or ``pandas.read_csv(path, comment="#")``).
    """
    dims = {d for v in ds.variables.values() for d in v.dims}
    if len(dims) != 1:
        raise ValueError(f"write_csv needs variables along a single dim, got dims {sorted(dims)}")
    (dim,) = dims
    along = [str(n) for n in ds.variables if ds.variables[n].dims == (dim,)]
    names = [dim] + [n for n in along if n in ds.coords and n != dim] + [n for n in along if n not in ds.coords]
    columns = [np.asarray(ds.variables[n].values) for n in names]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(names)
            for key, value in ds.attrs.items():
                text = str(value).replace("\n", " | ")
                fh.write(f"# {key}: {text}\n")
            for row in zip(*columns):
                out.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])

    return write_file_atomically(path, write)
