"""Figures of an autoencoder: data / reconstruction / sample panels, reconstruction error by wavenumber.

The relative reconstruction error per wavenumber shell is

    e(k) = P_{x_hat - x}(k) / P_x(k),

the batch-averaged power spectrum (:func:`scidiff.metrics.power_spectrum`) of the residual over
that of the data: 0 for a perfect reconstruction, 1 where the reconstruction carries no more
of the field than zero would.  Spectra of decoded samples against data are drawn by
:func:`scidiff.plots.spectra`.  Figures follow :mod:`scidiff.plots` (Agg canvas, PNG at 120 dpi
when ``path`` is given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scidiff.metrics import BoxLength, power_spectrum
from scidiff.plots import _colour_scale, _display_fields, _figure, _finish, _image, _label

__all__ = ["reconstruction_error_spectrum", "reconstruction_panels", "reconstruction_error_plot"]


def reconstruction_error_spectrum(x: Any, x_hat: Any, *, box_length: BoxLength = 1.0,
                                  channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(k [K], e(k) [K]): the relative reconstruction error per shell (module docstring).

    ``x``, ``x_hat``: fields [B, *spatial] (or [B, C, *spatial] with ``channel``) on one grid.
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have one shape, got {x.shape} and {x_hat.shape}")
    k, p_res = power_spectrum(x_hat - x, box_length=box_length, channel=channel)
    _, p_x = power_spectrum(x, box_length=box_length, channel=channel)
    with np.errstate(divide="ignore", invalid="ignore"):
        return k, np.where(p_x > 0, p_res / p_x, np.nan)


def reconstruction_panels(data: Any, reconstruction: Any, samples: Any = None, *, n: int = 6,
                          channel: int | None = None, units: str | None = None,
                          path: str | Path | None = None) -> "Any":
    """Rows of data, their reconstructions D(mu(x)) and (optionally) decoded samples, one colour scale.

    2-D fields (mid-slices of 3-D ones) as images; 1-D fields as lines.
    """
    rows = [_display_fields(data, channel, "data")[:n], _display_fields(reconstruction, channel, "reconstruction")[:n]]
    titles = ["data", "reconstruction"]
    if samples is not None:
        rows.append(_display_fields(samples, channel, "samples")[:n])
        titles.append("decoded sample")
    if len({r.shape[1:] for r in rows}) != 1:
        raise ValueError(f"the rows must share one grid, got {[tuple(r.shape[1:]) for r in rows]}")
    n_cols = max(r.shape[0] for r in rows)
    fig = _figure(1.7 * n_cols + 1.0, 1.7 * len(rows) + 0.3)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    values = np.concatenate([r.reshape(-1) for r in rows])
    if rows[0].ndim == 2:
        for i, row in enumerate(rows):
            for j in range(n_cols):
                if j < row.shape[0]:
                    axes[i, j].plot(row[j], lw=1.0, color=f"C{i}")
                else:
                    axes[i, j].set_axis_off()
            axes[i, 0].set_ylabel(_label(titles[i], units))
        return _finish(fig, path)
    cmap, vmin, vmax = _colour_scale(values, None)
    image = None
    for i, row in enumerate(rows):
        for j in range(n_cols):
            if j < row.shape[0]:
                image = _image(axes[i, j], row[j], cmap, vmin, vmax)
            else:
                axes[i, j].set_axis_off()
        axes[i, 0].set_ylabel(titles[i])
    fig.colorbar(image, ax=axes.ravel().tolist(), label=_label("value", units), shrink=0.9)
    return _finish(fig, path)


def reconstruction_error_plot(x: Any, x_hat: Any, *, box_length: BoxLength = 1.0, channel: int | None = None,
                              path: str | Path | None = None) -> "Any":
    """e(k) against k on log-log axes (see :func:`reconstruction_error_spectrum`)."""
    k, e = reconstruction_error_spectrum(x, x_hat, box_length=box_length, channel=channel)
    fig = _figure(5.0, 3.6)
    ax = fig.subplots()
    ok = (k > 0) & np.isfinite(e) & (e > 0)
    ax.plot(k[ok], e[ok], marker="o", ms=3, lw=1.2)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("P(x_hat - x) / P(x)")
    return _finish(fig, path)
