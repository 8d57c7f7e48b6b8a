"""Sample quality of a run against data: power spectra, value histograms, moments, figures.

Per channel c, with model samples x_m and data fields x_d on the same grid:

* spectrum error  E = mean over k bins of |ln P_m(k) - ln P_d(k)|   (``metrics.spectrum_error``)
* histogram W1    Wasserstein-1 distance of all values              (``metrics.histogram_w1``), data units
* moments         mean, std, skewness, excess kurtosis of both      (``metrics.moments``)

and the figures ``samples*.png`` (model row above data row), ``spectra*.png`` (the data's
5-95 % band shaded) and ``histograms*.png``, made by :mod:`scidiff.plots`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff import metrics, plots
from scidiff._atomic import write_text_atomically
from scidiff.runs.infer import as_loaded, open_like_run, read_fields, sample
from scidiff.runs.run import LoadedModel, Run

__all__ = ["box_lengths", "evaluate_fields", "evaluate", "format_metrics"]


def box_lengths(template: Any) -> tuple[float, ...]:
    """Side lengths of the periodic box from the spatial coordinates (n * spacing), else 1 per axis."""
    coords = {c.name: c for c in template.coords}
    lengths = []
    for dim, size in zip(template.spatial_dims, template.spatial_shape):
        c = coords.get(dim)
        length = 1.0
        if c is not None and tuple(c.dims) == (dim,) and np.asarray(c.values).dtype.kind in "iuf" and size > 1:
            values = np.asarray(c.values, dtype=np.float64)
            step = float(values[1] - values[0])
            if np.isfinite(step) and step != 0:
                length = abs(step) * size
        lengths.append(length)
    return tuple(lengths)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "channel"


def evaluate_fields(
    x_model: Tensor | np.ndarray,
    x_data: Tensor | np.ndarray,
    template: Any,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Metrics (and figures in ``out_dir``) of model fields against data fields, per channel.

    Args:
        x_model: model fields ``[B_m, C, *spatial]`` in data units.
        x_data: data fields ``[B_d, C, *spatial]`` on the same grid.
        template: the run's :class:`scidiff.data.FieldTemplate` (channel names, units, coords).
        out_dir: where the PNG figures go (and nothing else).
        figures: draw the figures.

    Returns:
        ``{"channels": {name: {...}}, "figures": [paths], "num_model": B_m, "num_data": B_d}``.
    """
    xm = np.asarray(x_model.detach().cpu().double() if isinstance(x_model, Tensor) else x_model, dtype=np.float64)
    xd = np.asarray(x_data.detach().cpu().double() if isinstance(x_data, Tensor) else x_data, dtype=np.float64)
    if xm.shape[1:] != xd.shape[1:]:
        raise ValueError(f"model fields {xm.shape[1:]} and data fields {xd.shape[1:]} differ in shape")
    lengths = box_lengths(template)
    units = {v.name: v.units for v in template.variables}
    channel_vars = template.channel_variables
    out: dict[str, Any] = {"channels": {}, "figures": [], "num_model": int(xm.shape[0]), "num_data": int(xd.shape[0])}
    folder = None if out_dir is None else Path(out_dir)
    many = len(template.channels) > 1
    for c, name in enumerate(template.channels):
        unit = units.get(channel_vars[c])
        k, p_model = metrics.power_spectrum(xm, box_length=lengths, channel=c, reduce=False)
        _, p_data = metrics.power_spectrum(xd, box_length=lengths, channel=c, reduce=False)
        entry = {
            "units": unit,
            "spectrum_error": metrics.spectrum_error(xm, xd, box_length=lengths, channel=c),
            "histogram_w1": metrics.histogram_w1(xm[:, c], xd[:, c]),
            "moments_model": dataclasses.asdict(metrics.moments(xm, channel=c)),
            "moments_data": dataclasses.asdict(metrics.moments(xd, channel=c)),
        }
        out["channels"][name] = entry
        if figures and folder is not None:
            suffix = f"_{_slug(name)}" if many else ""
            paths = [folder / f"samples{suffix}.png", folder / f"spectra{suffix}.png", folder / f"histograms{suffix}.png"]
            plots.sample_grid(xm, xd, n=8, channel=c, units=unit, titles=("model", "data"), path=paths[0])
            plots.spectra(
                k, p_model, np.nanmean(p_data, axis=0), data_spectra=p_data, units=None, k_units=None, path=paths[1]
            )
            plots.histograms(xm[:, c], xd[:, c], units=unit, path=paths[2])
            out["figures"] += [str(p) for p in paths]
    return out


def format_metrics(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_fields`'s metrics."""
    lines = [
        f"{'channel':<16} {'spectrum err':>12} {'W1':>10} {'mean m/d':>21} {'std m/d':>21}",
    ]
    for name, e in result["channels"].items():
        mm, md = e["moments_model"], e["moments_data"]
        lines.append(
            f"{name:<16} {e['spectrum_error']:>12.4f} {e['histogram_w1']:>10.4g} "
            f"{mm['mean']:>10.4g}/{md['mean']:<10.4g} {mm['std']:>10.4g}/{md['std']:<10.4g}"
        )
    return "\n".join(lines)


def evaluate(
    run: Run | LoadedModel | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    n: int = 64,
    samples: str | os.PathLike[str] | None = None,
    max_data: int = 1024,
    seed: int = 0,
    method: str = "ode",
    batch_size: int = 64,
    progress: bool = True,
    device: torch.device | str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Compare a run's samples with the fields of ``data``; write metrics.json and figures to ``out_dir``.

    Samples are read from ``samples`` (a file written by ``scidiff sample``) or drawn here
    (:func:`scidiff.runs.sample` with ``method`` and ``options``): ``n`` fields, at the
    parameters of the first ``n`` data fields for a conditional model.  ``run`` is a
    :class:`Run`, its folder, or a :class:`LoadedModel`.
    """
    loaded = as_loaded(run, device=device)
    run = loaded.run
    source = open_like_run(run, data)
    try:
        chunks = list(read_fields(source, max(max_data, n)))
    finally:
        source.close()
    x_data = torch.cat([ch.x for ch in chunks])
    theta = torch.cat([ch.cond for ch in chunks]) if chunks[0].cond is not None else None
    if samples is not None:
        sample_source = open_like_run(run, samples, cond=False)
        try:
            x_model = torch.cat([ch.x for ch in read_fields(sample_source)])
        finally:
            sample_source.close()
    else:
        if theta is not None:
            if theta.shape[0] < n:
                raise ValueError(f"{Path(data).name} has {theta.shape[0]} fields; a conditional model needs n <= that")
            cond: Any = theta[:n]
        else:
            cond = None
        _, x_model = sample(
            loaded, n, method=method, cond=cond, seed=seed, batch_size=batch_size, progress=progress, **options
        )
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    result = evaluate_fields(x_model, x_data, run.template, out_dir=folder)
    result["data"] = str(Path(data).resolve())
    result["samples"] = None if samples is None else str(Path(samples).resolve())
    result["model"] = str(run.path)
    metrics_file = folder / "metrics.json"
    write_text_atomically(metrics_file, json.dumps(result, indent=1, default=float))
    result["metrics_file"] = str(metrics_file)
    return result
