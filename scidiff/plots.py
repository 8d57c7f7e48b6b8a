"""Figures comparing model samples with data: fields, spectra, histograms, calibration, likelihoods.

Every function builds a fresh :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot
state, no display needed), returns it, and writes it as a PNG at 120 dpi when ``path`` is
given.  matplotlib is imported inside the functions, so ``import scidiff`` does not load it.

Field inputs follow :mod:`scidiff.metrics`: ``[B, *spatial]``, or ``[B, C, *spatial]`` with
``channel=c``; numpy arrays or torch tensors.  Spatial axes of size 1 are dropped for display,
so ``[B, 1, N]`` with ``channel=None`` is drawn as 1-D fields.  3-D fields are shown by their
middle slice along the first spatial axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from scidiff.metrics import _as_float64, _fields
from scidiff._validate import check_int

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "sample_grid",
    "spectra",
    "histograms",
    "calibration",
    "rank_histogram_plot",
    "likelihood_histogram",
    "likelihood_curve",
    "posterior_panel",
]

DPI = 120
_MODEL_COLOUR = "C0"
_DATA_COLOUR = "C1"
_EXACT_COLOUR = "k"


# ----------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> "Figure":
    """A new figure drawn by the Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: "Figure", path: str | Path | None) -> "Figure":
    """Save ``fig`` as PNG (dpi 120) when ``path`` is given, creating parent folders; return it."""
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=DPI, format="png")
    return fig


def _display_fields(x: Any, channel: int | None, name: str) -> np.ndarray:
    """Fields ready to draw: ``[B, N]`` (1-D) or ``[B, H, W]`` (2-D, or the mid-slice of 3-D)."""
    fields = _fields(x, channel, name)
    spatial = [n for n in fields.shape[1:] if n != 1]
    fields = fields.reshape(fields.shape[0], *spatial) if spatial else fields.reshape(fields.shape[0], 1)
    if fields.ndim == 4:
        fields = fields[:, fields.shape[1] // 2]
    return fields


def _vector(x: Any, name: str) -> np.ndarray:
    arr = _as_float64(x, name)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(arr.shape)}")
    return arr


def _colour_scale(values: np.ndarray, cmap: str | None) -> tuple[str, float, float]:
    """Colour map and limits: symmetric ``RdBu_r`` for signed data, ``viridis`` otherwise."""
    low, high = float(values.min()), float(values.max())
    signed = low < 0.0 < high
    if signed:
        bound = max(-low, high)
        low, high = -bound, bound
    if low == high:
        low, high = low - 0.5, high + 0.5
    return (cmap or ("RdBu_r" if signed else "viridis")), low, high


def _label(name: str, units: str | None) -> str:
    return f"{name} [{units}]" if units else name


def _image(ax: "Axes", field: np.ndarray, cmap: str, vmin: float, vmax: float):
    """Draw a 2-D field ``[H, W]`` with its first axis vertical and the origin at the bottom."""
    im = ax.imshow(field, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


# ----------------------------------------------------------------------------- fields


def sample_grid(
    samples: Any,
    data: Any = None,
    *,
    n: int = 8,
    channel: int | None = None,
    titles: Sequence[str] = ("model", "data"),
    cmap: str | None = None,
    units: str | None = None,
    path: str | Path | None = None,
) -> "Figure":
    """Model samples (top row) beside data fields (bottom row) on one shared colour scale.

    2-D fields (and mid-slices of 3-D ones) are images sharing one colour map and limits,
    with one colour bar for the whole figure; 1-D fields are line plots sharing the y-axis.
    Signed fields default to ``RdBu_r`` with limits symmetric about 0, others to ``viridis``.

    Args:
        samples: model fields ``[B, *spatial]`` (or ``[B, C, *spatial]`` with ``channel``).
        data: optional data fields on the same grid.
        n: at most this many fields per row.
        channel: channel to draw when the fields have a channel axis.
        titles: row labels for model and data.
        cmap: colour map name overriding the default.
        units: units of the field values, shown on the colour bar (or y-axis).
        path: where to save the PNG.
    """
    check_int("n", n)
    rows = [_display_fields(samples, channel, "samples")[:n]]
    if data is not None:
        rows.append(_display_fields(data, channel, "data")[:n])
        if rows[0].shape[1:] != rows[1].shape[1:]:
            raise ValueError(
                f"samples and data must be drawn on the same grid, got {tuple(rows[0].shape[1:])} "
                f"and {tuple(rows[1].shape[1:])}"
            )
    if len(titles) < len(rows):
        raise ValueError(f"titles needs {len(rows)} labels, got {tuple(titles)}")
    n_cols = max(r.shape[0] for r in rows)
    fig = _figure(1.7 * n_cols + 1.0, 1.7 * len(rows) + 0.3)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    values = np.concatenate([r.reshape(-1) for r in rows])
    if rows[0].ndim == 2:  # 1-D fields
        low, high = float(values.min()), float(values.max())
        pad = 0.05 * (high - low) or 0.5
        for i, row in enumerate(rows):
            colour = _MODEL_COLOUR if i == 0 else _DATA_COLOUR
            for j in range(n_cols):
                ax = axes[i, j]
                if j >= row.shape[0]:
                    ax.set_axis_off()
                    continue
                ax.plot(np.arange(row.shape[1]), row[j], color=colour, lw=1.0)
                ax.set_ylim(low - pad, high + pad)
                if j > 0:
                    ax.tick_params(labelleft=False)
            axes[i, 0].set_ylabel(_label(titles[i], units))
        return _finish(fig, path)
    cmap_name, vmin, vmax = _colour_scale(values, cmap)
    image = None
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= row.shape[0]:
                ax.set_axis_off()
                continue
            image = _image(ax, row[j], cmap_name, vmin, vmax)
        axes[i, 0].set_ylabel(titles[i])
    fig.colorbar(image, ax=axes.ravel().tolist(), label=_label("value", units), shrink=0.9)
    return _finish(fig, path)


def posterior_panel(
    truth: Any,
    observations: Any,
    posterior_mean: Any,
    posterior_std: Any,
    *,
    observed_values: Any = None,
    cmap: str | None = None,
    units: str | None = None,
    path: str | Path | None = None,
) -> "Figure":
    """Truth, observations, posterior mean and posterior standard deviation of one field.

    For 2-D fields four images: truth, observations and posterior mean share one colour scale
    and colour bar; the standard deviation has its own (``viridis``, from 0).  For 1-D fields
    one plot: truth, posterior mean with a +-2 std band, and the observations as points.

    Args:
        truth: true field ``[*spatial]`` (1-D or 2-D; axes of size 1 are dropped).
        observations: one of
            a boolean mask shaped like ``truth`` (observed where True, values from ``truth``
            unless ``observed_values`` is given);
            a float array shaped like ``truth`` holding the observed values and NaN elsewhere;
            or integer grid indices of the observed points ``[P, d]`` (``[P]`` in 1-D).
        posterior_mean: posterior mean ``[*spatial]``.
        posterior_std: posterior standard deviation ``[*spatial]`` (non-negative).
        observed_values: values at the observed points (``[P]`` for indices, or shaped like
            ``truth`` for a mask), e.g. the noisy observations ``y``.
        cmap: colour map for the field panels.
        units: units of the field values.
        path: where to save the PNG.
    """
    true = _squeeze(_as_float64(truth, "truth"), "truth")
    mean = _squeeze(_as_float64(posterior_mean, "posterior_mean"), "posterior_mean")
    std = _squeeze(_as_float64(posterior_std, "posterior_std"), "posterior_std")
    for name, arr in (("posterior_mean", mean), ("posterior_std", std)):
        if arr.shape != true.shape:
            raise ValueError(f"{name} must have the shape of truth {true.shape}, got {arr.shape}")
    if np.any(std < 0):
        raise ValueError("posterior_std must be non-negative")
    points, obs_values = _observed_points(observations, observed_values, true)

    if true.ndim == 1:
        fig = _figure(7.0, 3.2)
        ax = fig.subplots()
        grid = np.arange(true.size)
        ax.fill_between(grid, mean - 2 * std, mean + 2 * std, color=_MODEL_COLOUR, alpha=0.25, label="mean +- 2 std")
        ax.plot(grid, true, color=_EXACT_COLOUR, lw=1.2, label="truth")
        ax.plot(grid, mean, color=_MODEL_COLOUR, lw=1.2, label="posterior mean")
        ax.scatter(points[:, 0], obs_values, color=_DATA_COLOUR, s=14, zorder=3, label="observations")
        ax.set_xlabel("grid index")
        ax.set_ylabel(_label("value", units))
        ax.legend(fontsize="small")
        return _finish(fig, path)

    fig = _figure(12.0, 3.4)
    axes = fig.subplots(1, 4)
    cmap_name, vmin, vmax = _colour_scale(np.concatenate([true.ravel(), mean.ravel(), obs_values]), cmap)
    image = _image(axes[0], true, cmap_name, vmin, vmax)
    axes[0].set_title("truth")
    axes[1].set_facecolor("0.85")
    axes[1].scatter(
        points[:, 1], points[:, 0], c=obs_values, cmap=cmap_name, vmin=vmin, vmax=vmax, s=12, marker="s", edgecolors="none"
    )
    axes[1].set_xlim(-0.5, true.shape[1] - 0.5)
    axes[1].set_ylim(-0.5, true.shape[0] - 0.5)
    axes[1].set_aspect("equal")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title(f"observations ({points.shape[0]})")
    _image(axes[2], mean, cmap_name, vmin, vmax)
    axes[2].set_title("posterior mean")
    fig.colorbar(image, ax=axes[:3].tolist(), label=_label("value", units), shrink=0.85)
    std_image = _image(axes[3], std, "viridis", 0.0, float(std.max()) or 1.0)
    axes[3].set_title("posterior std")
    fig.colorbar(std_image, ax=axes[3], label=_label("std", units), shrink=0.85)
    return _finish(fig, path)


def _squeeze(arr: np.ndarray, name: str) -> np.ndarray:
    shape = [n for n in arr.shape if n != 1] or [1]
    out = arr.reshape(shape)
    if out.ndim > 2:
        raise ValueError(f"{name} must be a 1-D or 2-D field, got shape {tuple(arr.shape)}")
    return out


def _observed_points(observations: Any, observed_values: Any, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices ``[P, d]`` and values ``[P]`` of the observations (see :func:`posterior_panel`)."""
    obs = observations.detach().cpu().numpy() if hasattr(observations, "detach") else np.asarray(observations)
    squeezed_shape = tuple(n for n in obs.shape if n != 1) or (1,)
    if squeezed_shape == truth.shape:  # a mask or a map of values
        obs = obs.reshape(truth.shape)
        if obs.dtype == bool:
            mask = obs
            if observed_values is None:
                values_map = truth
            else:
                values_map = _squeeze(_as_float64(observed_values, "observed_values"), "observed_values")
                if values_map.shape != truth.shape:
                    raise ValueError(
                        f"observed_values must have the shape of truth {truth.shape} with a mask, got {values_map.shape}"
                    )
        else:
            values_map = obs.astype(np.float64)
            mask = np.isfinite(values_map)
        points = np.argwhere(mask)
        return points, values_map[mask]
    points = obs.reshape(-1, 1) if obs.ndim == 1 else obs
    if points.ndim != 2 or points.shape[1] != truth.ndim or not np.issubdtype(points.dtype, np.integer):
        raise ValueError(
            f"observations must be a mask or value map shaped like truth {truth.shape} or integer "
            f"indices [P, {truth.ndim}], got {obs.dtype} array of shape {tuple(obs.shape)}"
        )
    if np.any(points < 0) or np.any(points >= np.array(truth.shape)):
        raise ValueError(f"observation indices fall outside the grid {truth.shape}")
    if observed_values is None:
        values = truth[tuple(points.T)]
    else:
        values = _as_float64(observed_values, "observed_values").reshape(-1)
        if values.size != points.shape[0]:
            raise ValueError(f"observed_values has {values.size} entries for {points.shape[0]} observed points")
    return points, values


# ----------------------------------------------------------------------------- statistics


def spectra(
    k: Any,
    P_model: Any,
    P_data: Any = None,
    *,
    band: tuple[Any, Any] | None = None,
    data_spectra: Any = None,
    percentiles: tuple[float, float] = (5.0, 95.0),
    labels: Sequence[str] = ("model", "data"),
    units: str | None = None,
    k_units: str | None = None,
    path: str | Path | None = None,
) -> "Figure":
    """Power spectra on log-log axes, the data's spread shaded.

    Args:
        k: wavenumbers ``[K]`` (non-positive ones are not drawn).
        P_model: model spectrum ``[K]``, or per-sample spectra ``[B, K]`` (their mean is
            drawn with its own percentile band).
        P_data: data spectrum ``[K]``, drawn as a line.
        band: ``(low [K], high [K])``, an explicit band to shade around the data.
        data_spectra: per-sample data spectra ``[S, K]`` (e.g. ``power_spectrum(...,
            reduce=False)``); their ``percentiles`` are shaded (5-95 % by default).
        percentiles: lower and upper percentiles of the bands.
        labels: legend labels of model and data.
        units, k_units: units of ``P`` and of ``k`` for the axis labels.
        path: where to save the PNG.
    """
    if band is not None and data_spectra is not None:
        raise ValueError("give either band=(low, high) or data_spectra, not both")
    low_pct, high_pct = percentiles
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    kk = _vector(k, "k")
    shown = kk > 0
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()

    def curve(name: str, values: Any) -> np.ndarray:
        arr = np.asarray(_as_float64_nan(values, name))
        if arr.shape[-1] != kk.size:
            raise ValueError(f"{name} must have {kk.size} values along its last axis (one per k), got shape {arr.shape}")
        return arr

    def shade(low: np.ndarray, high: np.ndarray, colour: str, label: str) -> None:
        ok = shown & np.isfinite(low) & np.isfinite(high) & (low > 0)
        ax.fill_between(kk[ok], low[ok], high[ok], color=colour, alpha=0.25, lw=0, label=label)

    band_label = f"{low_pct:g}-{high_pct:g}%"
    if data_spectra is not None:
        per_sample = curve("data_spectra", data_spectra)
        if per_sample.ndim != 2:
            raise ValueError(f"data_spectra must be per-sample spectra [S, K], got shape {per_sample.shape}")
        low, high = np.nanpercentile(per_sample, [low_pct, high_pct], axis=0)
        shade(low, high, _DATA_COLOUR, f"{labels[1]} {band_label}")
    elif band is not None:
        if len(band) != 2:
            raise ValueError("band must be a pair (low, high) of arrays [K]")
        shade(curve("band low", band[0]), curve("band high", band[1]), _DATA_COLOUR, f"{labels[1]} band")
    if P_data is not None:
        p_data = curve("P_data", P_data)
        if p_data.ndim != 1:
            raise ValueError(f"P_data must be a spectrum [K], got shape {p_data.shape}")
        ok = shown & np.isfinite(p_data) & (p_data > 0)
        ax.plot(kk[ok], p_data[ok], color=_DATA_COLOUR, lw=1.5, label=labels[1])
    p_model = curve("P_model", P_model)
    if p_model.ndim == 2:
        low, high = np.nanpercentile(p_model, [low_pct, high_pct], axis=0)
        shade(low, high, _MODEL_COLOUR, f"{labels[0]} {band_label}")
        p_model = np.nanmean(p_model, axis=0)
    elif p_model.ndim != 1:
        raise ValueError(f"P_model must be [K] or [B, K], got shape {p_model.shape}")
    ok = shown & np.isfinite(p_model) & (p_model > 0)
    ax.plot(kk[ok], p_model[ok], color=_MODEL_COLOUR, lw=1.5, ls="--", label=labels[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_label("k", k_units))
    ax.set_ylabel(_label("P(k)", units))
    ax.legend(fontsize="small")
    return _finish(fig, path)


def _as_float64_nan(x: Any, name: str) -> np.ndarray:
    """Like ``_as_float64`` but NaN (empty spectral bins) is allowed."""
    arr = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if np.any(np.isinf(arr)):
        raise ValueError(f"{name} contains infinite values")
    return arr


def histograms(
    samples: Any,
    data: Any = None,
    *,
    bins: int = 60,
    log: bool = False,
    labels: Sequence[str] = ("model", "data"),
    units: str | None = None,
    path: str | Path | None = None,
) -> "Figure":
    """Step histograms (densities) of all values of ``samples`` and ``data`` on shared bins.

    Args:
        samples: model values, any shape (every entry counts).
        data: data values, any shape.
        bins: number of equal-width bins spanning both sets.
        log: logarithmic density axis, to see the tails.
        labels: legend labels.
        units: units of the values.
        path: where to save the PNG.
    """
    check_int("bins", bins)
    sets = [_as_float64(samples, "samples").reshape(-1)]
    if data is not None:
        sets.append(_as_float64(data, "data").reshape(-1))
    if any(s.size == 0 for s in sets):
        raise ValueError("histograms needs non-empty samples and data")
    low = min(float(s.min()) for s in sets)
    high = max(float(s.max()) for s in sets)
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    for values, colour, label in zip(sets, (_MODEL_COLOUR, _DATA_COLOUR), labels):
        ax.hist(values, bins=edges, density=True, histtype="step", color=colour, lw=1.5, label=label, log=log)
    ax.set_xlabel(_label("value", units))
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return _finish(fig, path)


def calibration(
    levels: Any,
    observed_coverage: Any,
    *,
    n_points: int | None = None,
    label: str = "model",
    path: str | Path | None = None,
) -> "Figure":
    """Calibration curve: observed against nominal coverage of central intervals, with the diagonal.

    Args:
        levels: nominal levels ``[L]`` in (0, 1), e.g. the ``levels`` of
            :func:`scidiff.metrics.coverage`.
        observed_coverage: observed coverage ``[L]``.
        n_points: number of verified points; when given, the +-2 binomial standard errors
            ``2 sqrt(l (1 - l) / n)`` of a calibrated model are shaded about the diagonal.
        label: legend label.
        path: where to save the PNG.
    """
    lv = _vector(levels, "levels")
    cov = _vector(observed_coverage, "observed_coverage")
    if lv.shape != cov.shape:
        raise ValueError(f"levels and observed_coverage must have the same length, got {lv.size} and {cov.size}")
    fig = _figure(4.2, 4.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", lw=1.0, ls=":", label="calibrated")
    if n_points is not None:
        if n_points < 1:
            raise ValueError(f"n_points must be positive, got {n_points}")
        grid = np.linspace(0.0, 1.0, 101)
        half = 2.0 * np.sqrt(grid * (1 - grid) / n_points)
        ax.fill_between(grid, grid - half, grid + half, color="0.5", alpha=0.2, lw=0, label="+-2 s.e.")
    order = np.argsort(lv)
    ax.plot(lv[order], cov[order], "o-", color=_MODEL_COLOUR, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize="small", loc="upper left")
    return _finish(fig, path)


def rank_histogram_plot(counts: Any, *, path: str | Path | None = None) -> "Figure":
    """Rank histogram as relative frequencies, with the flat ``1/(M+1)`` of a calibrated ensemble.

    Args:
        counts: counts ``[M + 1]`` from :func:`scidiff.metrics.rank_histogram`.
        path: where to save the PNG.
    """
    c = _vector(counts, "counts")
    if c.size < 2 or np.any(c < 0) or c.sum() == 0:
        raise ValueError("counts must hold at least 2 non-negative bins with a positive total")
    freq = c / c.sum()
    fig = _figure(5.0, 3.5)
    ax = fig.subplots()
    ax.bar(np.arange(c.size), freq, width=1.0, color=_MODEL_COLOUR, alpha=0.7, edgecolor="white")
    ax.axhline(1.0 / c.size, color="k", ls="--", lw=1.0, label="uniform")
    ax.set_xlabel("rank of truth among members")
    ax.set_ylabel("frequency")
    ax.legend(fontsize="small")
    return _finish(fig, path)


# ----------------------------------------------------------------------------- likelihoods

_LIKELIHOOD_UNITS = ("nats", "bits/dim")


def _likelihood_label(units: str) -> str:
    if units not in _LIKELIHOOD_UNITS:
        raise ValueError(f"units must be one of {_LIKELIHOOD_UNITS}, got {units!r}")
    return "log p(x) [nats]" if units == "nats" else "bits/dim"


def likelihood_histogram(
    log_prob_model: Any,
    log_prob_exact: Any = None,
    *,
    units: str = "nats",
    bins: int = 40,
    model_se: Any = None,
    path: str | Path | None = None,
) -> "Figure":
    """Histogram of per-sample log-likelihoods from the model, against exact values when known.

    Left: step histograms on shared bins.  Right (when both are given per sample, same
    length): model against exact value per sample, with the diagonal, and +-2 standard
    errors of the model's estimate as error bars when ``model_se`` is given.  The values are
    drawn as given; ``units`` ("nats" for ``log p``, or "bits/dim") only labels the axes.

    Args:
        log_prob_model: model values ``[B]``.
        log_prob_exact: exact values ``[B']`` (e.g. a Gaussian random field's density).
        units: "nats" or "bits/dim".
        bins: number of shared bins.
        model_se: standard errors of the model values ``[B]`` (same units), e.g.
            ``LikelihoodResult.bits_per_dim_se``.
        path: where to save the PNG.
    """
    xlabel = _likelihood_label(units)
    model = _vector(log_prob_model, "log_prob_model")
    exact = None if log_prob_exact is None else _vector(log_prob_exact, "log_prob_exact")
    paired = exact is not None and exact.size == model.size
    fig = _figure(9.0 if paired else 5.0, 3.8)
    axes = fig.subplots(1, 2 if paired else 1, squeeze=False)[0]
    values = model if exact is None else np.concatenate([model, exact])
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    axes[0].hist(model, bins=edges, histtype="step", color=_MODEL_COLOUR, lw=1.5, label="model")
    if exact is not None:
        axes[0].hist(exact, bins=edges, histtype="step", color=_EXACT_COLOUR, lw=1.5, label="exact")
    axes[0].set_xlabel(xlabel)
    axes[0].set_ylabel("count")
    axes[0].legend(fontsize="small")
    if paired:
        ax = axes[1]
        ax.plot([low, high], [low, high], color="0.5", ls=":", lw=1.0)
        se = None if model_se is None else _vector(model_se, "model_se")
        if se is not None and se.size == model.size and np.isfinite(se).any():
            ax.errorbar(exact, model, yerr=2.0 * np.nan_to_num(se), fmt="o", ms=2.5, lw=0.8,
                        color=_MODEL_COLOUR, ecolor=_MODEL_COLOUR, elinewidth=0.8, capsize=0)
        else:
            ax.scatter(exact, model, s=8, color=_MODEL_COLOUR)
        gap = float(np.mean(model - exact))
        rms = float(np.sqrt(np.mean((model - exact) ** 2)))
        ax.set_title(f"mean(model - exact) = {gap:.3g}, RMS {rms:.3g} {units}", fontsize="small")
        ax.set_xlabel(f"exact {xlabel}")
        ax.set_ylabel(f"model {xlabel}")
    return _finish(fig, path)


def likelihood_curve(
    theta: Any,
    log_lik_model: Any,
    log_lik_exact: Any = None,
    *,
    theta_true: float | None = None,
    xlabel: str = "theta",
    units: str = "nats",
    path: str | Path | None = None,
) -> "Figure":
    """Log-likelihood of data over a parameter grid: model against the exact curve.

    Args:
        theta: parameter grid ``[G]``.
        log_lik_model: model log-likelihood at each grid value ``[G]``.
        log_lik_exact: exact log-likelihood ``[G]``, when known.
        theta_true: the parameter that generated the data, marked by a vertical line.
        xlabel: name of the parameter.
        units: "nats" or "bits/dim".
        path: where to save the PNG.
    """
    ylabel = _likelihood_label(units)
    grid = _vector(theta, "theta")
    model = _vector(log_lik_model, "log_lik_model")
    if model.size != grid.size:
        raise ValueError(f"log_lik_model has {model.size} values for a grid of {grid.size}")
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    order = np.argsort(grid)
    if log_lik_exact is not None:
        exact = _vector(log_lik_exact, "log_lik_exact")
        if exact.size != grid.size:
            raise ValueError(f"log_lik_exact has {exact.size} values for a grid of {grid.size}")
        ax.plot(grid[order], exact[order], color=_EXACT_COLOUR, lw=1.5, label="exact")
    ax.plot(grid[order], model[order], "o--", color=_MODEL_COLOUR, lw=1.2, ms=3, label="model")
    if theta_true is not None:
        ax.axvline(float(theta_true), color="0.4", ls=":", lw=1.0, label="true value")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return _finish(fig, path)
