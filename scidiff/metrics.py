"""Physics metrics for generated fields: spectra, one-point statistics and ensemble scores.

Conventions shared by every function here:

* **Fields.** A batch of fields is ``x`` of shape ``[B, *spatial]`` (``B`` samples of a
  field on a periodic grid with 1, 2 or 3 spatial axes) when ``channel`` is ``None``, or
  ``[B, C, *spatial]`` when ``channel=c`` picks one of the ``C`` channels.  With
  ``channel=None`` every non-batch axis is spatial, so a ``[B, 1, H, W]`` tensor is read
  as a 3-D field of depth 1; its spectrum has the same shells as the 2-D field, scaled by
  the box length of the singleton axis (pass ``channel=0`` to avoid that).
* **Inputs and outputs.** Anything ``numpy.asarray`` accepts, or a torch tensor on any
  device and dtype.  Everything is computed in float64 numpy; results are numpy arrays or
  Python floats in the units of the data.
* **Ensembles.** ``ensemble`` has shape ``[M, *S]`` (``M`` members) and ``truth`` has
  shape ``[*S]``; every entry of ``S`` is one scalar forecast/posterior verified against
  one true value.

The formulas, normalisations and references are collected in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

__all__ = [
    "power_spectrum",
    "mode_power",
    "mode_counts",
    "spectrum_error",
    "two_point_correlation",
    "histogram_w1",
    "moments",
    "Moments",
    "crps_ensemble",
    "spread_skill_ratio",
    "coverage",
    "coverage_min_members",
    "rank_histogram",
]

BoxLength = Union[float, Sequence[float]]
Bins = Union[None, int, Sequence[float], np.ndarray]

# Number of float64 grid values processed at once by the FFT loops (bounds memory).
_CHUNK_VALUES = 1 << 23


# ----------------------------------------------------------------------------- inputs


def _as_float64(x: Any, name: str) -> np.ndarray:
    """Return ``x`` (numpy, torch or sequence) as a finite float64 numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        if x.is_complex():
            raise TypeError(f"{name} must be real-valued, got a complex tensor of dtype {x.dtype}")
        arr = x.detach().cpu().double().numpy()
    else:
        if np.iscomplexobj(x):
            raise TypeError(f"{name} must be real-valued, got a complex array")
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a numeric array or tensor, got {type(x).__name__}") from err
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf) out of {arr.size}")
    return arr


def _fields(x: Any, channel: int | None, name: str) -> np.ndarray:
    """Return the batch of fields ``[B, *spatial]`` (1 to 3 spatial axes) as float64."""
    arr = _as_float64(x, name)
    if channel is None:
        if not 2 <= arr.ndim <= 4:
            raise ValueError(
                f"{name} must have shape [B, *spatial] with 1 to 3 spatial axes "
                f"(or [B, C, *spatial] with channel=...), got shape {tuple(arr.shape)}"
            )
        return arr
    if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool):
        raise TypeError(f"channel must be an int or None, got {channel!r}")
    if not 3 <= arr.ndim <= 5:
        raise ValueError(
            f"{name} must have shape [B, C, *spatial] with 1 to 3 spatial axes when "
            f"channel={channel} is given, got shape {tuple(arr.shape)}"
        )
    n_channels = arr.shape[1]
    if not -n_channels <= channel < n_channels:
        raise ValueError(f"channel={channel} is out of range for {name} with {n_channels} channels")
    return arr[:, channel]


def _lengths(box_length: BoxLength, ndim: int) -> tuple[float, ...]:
    """Return the physical box length of each of ``ndim`` spatial axes."""
    if isinstance(box_length, (int, float, np.integer, np.floating)) and not isinstance(box_length, bool):
        lengths = (float(box_length),) * ndim
    else:
        try:
            lengths = tuple(float(v) for v in box_length)  # type: ignore[union-attr]
        except TypeError as err:
            raise TypeError(f"box_length must be a float or a sequence of floats, got {box_length!r}") from err
        if len(lengths) != ndim:
            raise ValueError(f"box_length has {len(lengths)} entries but the fields have {ndim} spatial axes")
    if not all(math.isfinite(v) and v > 0 for v in lengths):
        raise ValueError(f"box_length must be positive and finite, got {box_length!r}")
    return lengths


# ----------------------------------------------------------------------------- shells


@dataclass(frozen=True)
class _Shells:
    """Assignment of grid points to radial bins.

    ``index``: int array over the grid, the bin of each point (-1: not binned);
    ``weight``: multiplicity of each grid point (2 for a half-spectrum mode standing for
    itself and its complex conjugate); ``centres`` [K]: mean radius of the points in each
    bin (edge midpoint for an empty bin); ``counts`` [K]: summed weights per bin.
    """

    index: np.ndarray
    weight: np.ndarray
    centres: np.ndarray
    counts: np.ndarray

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """Weighted mean of ``values`` [b, *grid] in each bin -> [b, K] (NaN for empty bins)."""
        n_bins = self.centres.size
        b = values.shape[0]
        flat_index = self.index.reshape(-1)
        keep = flat_index >= 0
        idx = flat_index[keep]
        w = self.weight.reshape(-1)[keep]
        vals = values.reshape(b, -1)[:, keep] * w
        offsets = (np.arange(b) * n_bins)[:, None]
        sums = np.bincount((idx[None, :] + offsets).reshape(-1), weights=vals.reshape(-1), minlength=b * n_bins)
        sums = sums.reshape(b, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, sums / self.counts, np.nan)


def _shells(radius: np.ndarray, weight: np.ndarray, unit: float, bins: Bins, *, include_zero: bool) -> _Shells:
    """Bin grid points by ``radius`` (same shape as ``weight``).

    ``bins=None``: integer shells, bin ``n`` holds ``(n - 1/2) unit <= radius < (n + 1/2) unit``;
    ``bins=int``: that many equal-width bins from ``unit/2`` (or 0 with ``include_zero``) to the
    largest radius; ``bins=array``: explicit increasing edges, half-open ``[e_i, e_{i+1})`` with
    the last edge included.  The point at radius 0 is dropped unless ``include_zero``.
    """
    r = radius.reshape(-1)
    if bins is None:
        index = np.floor(r / unit + 0.5).astype(np.int64)
        if not include_zero:
            index = index - 1  # shell 0 (only the k = 0 mode) becomes -1, dropped
        n_bins = int(index.max()) + 1
        first = 0 if include_zero else 1
        midpoints = unit * np.arange(first, first + n_bins, dtype=np.float64)
    else:
        if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
            if bins < 1:
                raise ValueError(f"bins must be a positive integer, None or an array of edges, got {bins}")
            low = 0.0 if include_zero else 0.5 * unit
            edges = np.linspace(low, max(float(r.max()), low + unit), int(bins) + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0) or not np.all(np.isfinite(edges)):
                raise ValueError(
                    "bins given as edges must be a 1-D, finite, strictly increasing array of at least "
                    f"2 values, got {np.array2string(edges, threshold=8)}"
                )
        n_bins = edges.size - 1
        index = np.searchsorted(edges, r, side="right") - 1
        index[r == edges[-1]] = n_bins - 1
        index[(index < 0) | (index >= n_bins)] = -1
        if not include_zero:
            index[r == 0] = -1
        midpoints = 0.5 * (edges[:-1] + edges[1:])
    w = weight.reshape(-1)
    keep = index >= 0
    counts = np.bincount(index[keep], weights=w[keep], minlength=n_bins)
    radius_sums = np.bincount(index[keep], weights=(w * r)[keep], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.where(counts > 0, radius_sums / counts, midpoints)
    return _Shells(index.reshape(radius.shape), weight, centres, counts)


def _wavenumbers(shape: tuple[int, ...], lengths: tuple[float, ...], *, half: bool) -> list[np.ndarray]:
    """Angular wavenumbers ``k_i = 2 pi n_i / L_i`` per axis, broadcastable over the (r)FFT grid."""
    ks = []
    for axis, (n, length) in enumerate(zip(shape, lengths)):
        spacing = length / n
        if half and axis == len(shape) - 1:
            k = 2.0 * np.pi * np.fft.rfftfreq(n, d=spacing)
        else:
            k = 2.0 * np.pi * np.fft.fftfreq(n, d=spacing)
        view = [1] * len(shape)
        view[axis] = k.size
        ks.append(k.reshape(view))
    return ks


def _half_weight(shape: tuple[int, ...]) -> np.ndarray:
    """Multiplicity of each rFFT mode: 2 for last-axis index 0 < m < n/2, else 1."""
    n = shape[-1]
    m = np.arange(n // 2 + 1)
    w = np.where((m > 0) & (2 * m < n), 2.0, 1.0)
    full = [*shape[:-1], n // 2 + 1]
    return np.broadcast_to(w.reshape([1] * (len(shape) - 1) + [-1]), full).astype(np.float64)


def _spectral_shells(shape: tuple[int, ...], lengths: tuple[float, ...], bins: Bins) -> _Shells:
    ks = _wavenumbers(shape, lengths, half=True)
    k_mag = np.sqrt(sum(k**2 for k in ks))
    k_mag = np.broadcast_to(k_mag, [*shape[:-1], shape[-1] // 2 + 1])
    k_fundamental = 2.0 * np.pi / max(lengths)
    return _shells(k_mag, _half_weight(shape), k_fundamental, bins, include_zero=False)


def _chunks(n_samples: int, n_grid: int) -> range:
    step = max(1, _CHUNK_VALUES // max(n_grid, 1))
    return range(0, n_samples, step)


# ----------------------------------------------------------------------------- spectra


def mode_power(x: Any, *, box_length: BoxLength = 1.0, channel: int | None = None) -> np.ndarray:
    """Power of every Fourier mode, ``P_k = (V / N^2) |X_k|^2``.

    ``X_k = sum_x x(x) exp(-i k . x)`` is the unnormalised discrete Fourier transform over
    the ``N`` grid points of a periodic box of volume ``V = prod_i L_i``, with
    ``k_i = 2 pi n_i / L_i``.  With this normalisation ``P_k`` estimates the continuum power
    spectrum and Parseval reads ``(1/V) sum_{k != 0} P_k = var(x)`` (the spatial variance,
    ddof = 0) and ``(1/V) sum_k P_k = mean(x^2)``.

    Args:
        x: fields ``[B, *spatial]`` (or ``[B, C, *spatial]`` with ``channel``).
        box_length: physical side length ``L`` of the box, one float or one per axis.
        channel: channel to analyse when ``x`` has a channel axis.

    Returns:
        ``P_k`` of shape ``[B, *spatial]`` in numpy FFT order, units ``[x]^2 [L]^d``.
    """
    fields = _fields(x, channel, "x")
    shape = fields.shape[1:]
    lengths = _lengths(box_length, len(shape))
    n_grid = int(np.prod(shape))
    scale = float(np.prod(lengths)) / n_grid**2
    axes = tuple(range(1, fields.ndim))
    out = np.empty(fields.shape, dtype=np.float64)
    chunks = _chunks(fields.shape[0], n_grid)
    for start in chunks:
        X = np.fft.fftn(fields[start : start + chunks.step], axes=axes)
        out[start : start + X.shape[0]] = scale * (X.real**2 + X.imag**2)
    return out


def mode_counts(shape: Sequence[int], *, box_length: BoxLength = 1.0, bins: Bins = None) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumber ``k`` and number of Fourier modes of each bin used by :func:`power_spectrum`.

    Args:
        shape: spatial grid shape ``(N_1, ..., N_d)``.
        box_length, bins: as in :func:`power_spectrum`.

    Returns:
        ``(k [K], counts [K])``; ``counts`` counts each of ``k`` and ``-k`` once, so
        ``sum(counts) = N - 1`` for the default bins.
    """
    grid = tuple(int(n) for n in shape)
    if not 1 <= len(grid) <= 3 or any(n < 1 for n in grid):
        raise ValueError(f"shape must list 1 to 3 positive grid sizes, got {tuple(shape)}")
    shells = _spectral_shells(grid, _lengths(box_length, len(grid)), bins)
    return shells.centres.copy(), shells.counts.copy()


def power_spectrum(
    x: Any,
    *,
    box_length: BoxLength = 1.0,
    bins: Bins = None,
    channel: int | None = None,
    reduce: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum ``P(k)`` of periodic 1-, 2- or 3-D fields.

    ``P(k)`` is the mean of the per-mode power ``P_k = (V / N^2) |X_k|^2`` (see
    :func:`mode_power`) over the modes whose ``|k|`` falls in a bin, so
    ``var(x) = (1/V) sum_bins counts(k) P(k)`` for the default bins (Parseval; ``counts``
    from :func:`mode_counts`), i.e. ``sum_k P_k = V var(x)``.  For a statistically
    homogeneous field ``E[P_k]`` is the continuum spectrum with
    ``var = integral d^dk / (2 pi)^d P(k)``.  The ``k = 0`` mode (the mean) is excluded.

    The same estimator serves model samples and data, so spectra from both are directly
    comparable when the grids and ``box_length`` agree.

    Args:
        x: fields ``[B, *spatial]`` (or ``[B, C, *spatial]`` with ``channel``).
        box_length: side length ``L`` of the periodic box (float, or one per axis);
            wavenumbers are angular, ``k = 2 pi n / L``.
        bins: ``None`` for integer shells of width ``k_f = 2 pi / max(L)`` (shell ``n``:
            ``(n - 1/2) k_f <= |k| < (n + 1/2) k_f``, including the partially filled
            shells beyond the Nyquist frequency in the corners of 2-D/3-D grids); an int for
            that many equal-width bins from ``k_f / 2`` to the largest ``|k|``; or an array
            of increasing bin edges in units of ``1/L``.
        channel: channel to analyse when ``x`` has a channel axis.
        reduce: average the spectra over the batch (``True``) or return one per sample.

    Returns:
        ``(k, P)``: ``k`` [K] the mean ``|k|`` of the modes in each bin (the edge midpoint
        for an empty bin), ``P`` [K] (or [B, K] with ``reduce=False``) in units
        ``[x]^2 [L]^d``; empty bins hold NaN.
    """
    fields = _fields(x, channel, "x")
    shape = fields.shape[1:]
    lengths = _lengths(box_length, len(shape))
    shells = _spectral_shells(shape, lengths, bins)
    n_grid = int(np.prod(shape))
    scale = float(np.prod(lengths)) / n_grid**2
    axes = tuple(range(1, fields.ndim))
    spectra = np.empty((fields.shape[0], shells.centres.size), dtype=np.float64)
    chunks = _chunks(fields.shape[0], n_grid)
    for start in chunks:
        X = np.fft.rfftn(fields[start : start + chunks.step], axes=axes)
        spectra[start : start + X.shape[0]] = shells.reduce(scale * (X.real**2 + X.imag**2))
    return shells.centres.copy(), (spectra.mean(axis=0) if reduce else spectra)


def spectrum_error(
    x_model: Any,
    x_data: Any,
    *,
    box_length: BoxLength = 1.0,
    bins: Bins = None,
    channel: int | None = None,
) -> float:
    """Mean absolute log-ratio of two batch-averaged power spectra over ``k`` bins.

    ``E = (1/K) sum_bins |ln P_model(k) - ln P_data(k)|``, which is the mean relative error
    ``|P_model / P_data - 1|`` to first order; 0 for identical spectra.  Bins where either
    spectrum is empty or not positive are skipped.

    Args:
        x_model: model samples ``[B_m, *spatial]`` (or with a channel axis).
        x_data: data fields ``[B_d, *spatial]`` on the same grid.
        box_length, bins, channel: as in :func:`power_spectrum`.

    Returns:
        ``E``, dimensionless.
    """
    model = _fields(x_model, channel, "x_model")
    data = _fields(x_data, channel, "x_data")
    if model.shape[1:] != data.shape[1:]:
        raise ValueError(
            f"x_model and x_data must share their spatial grid, got {tuple(model.shape[1:])} "
            f"and {tuple(data.shape[1:])}"
        )
    _, p_model = power_spectrum(model, box_length=box_length, bins=bins)
    _, p_data = power_spectrum(data, box_length=box_length, bins=bins)
    valid = np.isfinite(p_model) & np.isfinite(p_data) & (p_model > 0) & (p_data > 0)
    if not np.any(valid):
        raise ValueError("no k bin has positive power in both spectra; spectrum_error is undefined")
    return float(np.mean(np.abs(np.log(p_model[valid]) - np.log(p_data[valid]))))


def two_point_correlation(
    x: Any,
    *,
    box_length: BoxLength = 1.0,
    bins: Bins = None,
    channel: int | None = None,
    reduce: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged two-point correlation function ``xi(r)`` of periodic fields.

    ``xi(r) = (1/N) sum_x d(x) d(x + r)`` with ``d = x - mean(x)`` (per sample, periodic
    lags), computed through the FFT as ``xi(r) = (1/V) sum_{k != 0} P_k exp(i k . r)``, the
    inverse transform of the per-mode spectrum of :func:`mode_power`.  Hence ``xi(0)`` is the
    spatial variance (ddof = 0).  Lags are minimum-image vectors; their lengths are binned
    like :func:`power_spectrum` bins wavenumbers.

    Args:
        x: fields ``[B, *spatial]`` (or ``[B, C, *spatial]`` with ``channel``).
        box_length: side length ``L`` of the box (float or one per axis); grid spacing
            ``L_i / N_i``.
        bins: ``None`` for integer shells of width ``dr = min_i L_i / N_i`` (shell 0 is the
            zero lag alone); an int for that many equal-width bins from 0 to the largest
            lag; or an array of increasing edges in units of ``L``.
        channel: channel to analyse when ``x`` has a channel axis.
        reduce: average over the batch (``True``) or return one curve per sample.

    Returns:
        ``(r, xi)``: ``r`` [K] the mean lag length in each bin (units of ``L``), ``xi`` [K]
        (or [B, K]) in units ``[x]^2``; empty bins hold NaN.
    """
    fields = _fields(x, channel, "x")
    shape = fields.shape[1:]
    lengths = _lengths(box_length, len(shape))
    spacing = [length / n for length, n in zip(lengths, shape)]
    lags = []
    for axis, (n, dx) in enumerate(zip(shape, spacing)):
        m = np.arange(n)
        m = np.where(m <= n // 2, m, m - n)  # minimum-image lag index
        view = [1] * len(shape)
        view[axis] = n
        lags.append((m * dx).reshape(view))
    r_mag = np.broadcast_to(np.sqrt(sum(lag**2 for lag in lags)), shape)
    shells = _shells(r_mag, np.ones(shape), min(spacing), bins, include_zero=True)
    n_grid = int(np.prod(shape))
    axes = tuple(range(1, fields.ndim))
    xi = np.empty((fields.shape[0], shells.centres.size), dtype=np.float64)
    chunks = _chunks(fields.shape[0], n_grid)
    for start in chunks:
        X = np.fft.rfftn(fields[start : start + chunks.step], axes=axes)
        X[(slice(None),) + (0,) * len(shape)] = 0.0  # remove the mean
        power = X.real**2 + X.imag**2
        corr = np.fft.irfftn(power, s=shape, axes=axes) / n_grid
        xi[start : start + X.shape[0]] = shells.reduce(corr)
    return shells.centres.copy(), (xi.mean(axis=0) if reduce else xi)


# ----------------------------------------------------------------------------- one-point


def histogram_w1(a: Any, b: Any) -> float:
    """Wasserstein-1 distance between the empirical distributions of the values of ``a`` and ``b``.

    ``W1 = integral |F_a(v) - F_b(v)| dv`` with ``F`` the empirical CDFs of all entries of
    each array (any shapes; sizes may differ).  For equal sizes this is the mean absolute
    difference of the sorted values, ``(1/n) sum_i |a_(i) - b_(i)|``.  Exact, ``O(n log n)``.

    Returns:
        ``W1`` in the units of the data.
    """
    va = np.sort(_as_float64(a, "a").reshape(-1))
    vb = np.sort(_as_float64(b, "b").reshape(-1))
    if va.size == 0 or vb.size == 0:
        raise ValueError(f"histogram_w1 needs non-empty inputs, got sizes {va.size} and {vb.size}")
    if va.size == vb.size:
        return float(np.mean(np.abs(va - vb)))
    support = np.sort(np.concatenate([va, vb]))
    widths = np.diff(support)
    cdf_a = np.searchsorted(va, support[:-1], side="right") / va.size
    cdf_b = np.searchsorted(vb, support[:-1], side="right") / vb.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


@dataclass(frozen=True)
class Moments:
    """Plug-in (ddof = 0) moments of a set of values.

    ``mean``, ``std = sqrt(m2)`` in data units; ``skewness = m3 / m2^(3/2)`` and excess
    ``kurtosis = m4 / m2^2 - 3`` (0 for a Gaussian), with ``m_p`` the central moments.
    """

    mean: float
    std: float
    skewness: float
    kurtosis: float


def moments(x: Any, *, channel: int | None = None) -> Moments:
    """Mean, standard deviation, skewness and excess kurtosis of all values of ``x``.

    Args:
        x: values of any shape; with ``channel`` the layout is ``[B, C, ...]`` and only
            channel ``channel`` is used.

    Returns:
        :class:`Moments` (skewness and kurtosis are NaN for constant input).
    """
    arr = _as_float64(x, "x")
    if channel is not None:
        if arr.ndim < 2:
            raise ValueError(f"channel={channel} needs x of shape [B, C, ...], got shape {tuple(arr.shape)}")
        if not -arr.shape[1] <= channel < arr.shape[1]:
            raise ValueError(f"channel={channel} is out of range for x with {arr.shape[1]} channels")
        arr = arr[:, channel]
    v = arr.reshape(-1)
    if v.size == 0:
        raise ValueError("moments needs at least one value, got an empty array")
    mean = float(v.mean())
    d = v - mean
    m2 = float(np.mean(d**2))
    if m2 == 0.0:
        return Moments(mean, 0.0, math.nan, math.nan)
    m3 = float(np.mean(d**3))
    m4 = float(np.mean(d**4))
    return Moments(mean, math.sqrt(m2), m3 / m2**1.5, m4 / m2**2 - 3.0)


# ----------------------------------------------------------------------------- ensembles


def _ensemble(ensemble: Any, truth: Any, *, min_members: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Validate and flatten to ``ens [M, P]``, ``y [P]``; also return the shape of ``truth``."""
    ens = _as_float64(ensemble, "ensemble")
    y = _as_float64(truth, "truth")
    if ens.ndim < 1 or ens.shape[1:] != y.shape:
        raise ValueError(
            f"ensemble must have shape [M, *S] with truth of shape [*S], got ensemble "
            f"{tuple(ens.shape)} and truth {tuple(y.shape)}"
        )
    if ens.shape[0] < min_members:
        raise ValueError(f"this score needs at least {min_members} ensemble members, got M = {ens.shape[0]}")
    if y.size == 0:
        raise ValueError("truth is empty; nothing to verify")
    return ens.reshape(ens.shape[0], -1), y.reshape(-1), y.shape


def crps_ensemble(ensemble: Any, truth: Any, *, reduce: bool = True) -> float | np.ndarray:
    """Fair (unbiased) ensemble CRPS.

    ``CRPS_fair = (1/M) sum_i |X_i - y| - 1/(2 M (M-1)) sum_{i,j} |X_i - X_j|`` (Ferro 2014;
    Zamo & Naveau 2018), an unbiased estimate of the CRPS of the distribution the ``M``
    members are drawn from.  The double sum is ``2 sum_i (2i - M - 1) X_(i)`` over the
    sorted members (``i = 1..M``), so the cost is ``O(M log M)`` per point.

    Args:
        ensemble: members ``[M, *S]``, ``M >= 2``.
        truth: verifying values ``[*S]``.
        reduce: mean over all points (``True``) or the score of every point.

    Returns:
        A float, or an array ``[*S]``, in the units of the data (lower is better).
    """
    ens, y, shape = _ensemble(ensemble, truth, min_members=2)
    m = ens.shape[0]
    skill = np.mean(np.abs(ens - y[None, :]), axis=0)
    ordered = np.sort(ens, axis=0)
    coeff = 2.0 * np.arange(1, m + 1, dtype=np.float64) - m - 1.0
    spread = (coeff[:, None] * ordered).sum(axis=0) / (m * (m - 1))
    score = skill - spread
    return float(score.mean()) if reduce else score.reshape(shape)


def spread_skill_ratio(ensemble: Any, truth: Any) -> float:
    """Spread-skill ratio ``sqrt((M+1)/M) * spread / RMSE``, about 1 for a calibrated ensemble.

    ``spread = sqrt(mean_points var_ddof1(X))`` and ``RMSE = sqrt(mean_points (mean(X) - y)^2)``.
    For exchangeable members and truth ``E[(mean(X) - y)^2] = (1 + 1/M) E[var]``, hence the
    factor (Fortin et al. 2014, "Why should ensemble spread match the RMSE of the ensemble
    mean?").  Below 1: under-dispersed (over-confident); above 1: over-dispersed.

    Args:
        ensemble: members ``[M, *S]``, ``M >= 2``.
        truth: verifying values ``[*S]``.
    """
    ens, y, _ = _ensemble(ensemble, truth, min_members=2)
    m = ens.shape[0]
    spread = math.sqrt(float(np.mean(np.var(ens, axis=0, ddof=1))))
    rmse = math.sqrt(float(np.mean((ens.mean(axis=0) - y) ** 2)))
    if rmse == 0.0:
        raise ValueError("the ensemble mean equals truth everywhere; the spread-skill ratio is undefined")
    return math.sqrt((m + 1) / m) * spread / rmse


def coverage_min_members(level: float) -> int:
    """Smallest ensemble size M for which :func:`coverage` has an interval at ``level``:
    ``M >= 2/(1 - level) - 1`` (19 for 0.9, 3 for 0.5)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    return math.ceil(2.0 / (1.0 - level) - 1.0 - 1e-9)


def coverage(ensemble: Any, truth: Any, levels: Sequence[float] = (0.5, 0.9)) -> np.ndarray:
    """Fraction of points whose truth lies in the ensemble's central interval at each level.

    The interval at level ``l`` runs between the ensemble quantiles at ``p = (1 - l)/2`` and
    ``1 - p``, taken at rank ``p (M + 1)`` of the sorted members (interpolating linearly between
    neighbouring members).  With these positions the interval between members of ranks
    ``a < b`` covers an exchangeable truth with probability ``(b - a)/(M + 1)``, so a
    calibrated ensemble gives coverage ``l`` for every ``M``.  This needs
    ``M >= 2/(1 - l) - 1`` members (19 for ``l = 0.9``).

    Args:
        ensemble: members ``[M, *S]``.
        truth: verifying values ``[*S]``.
        levels: nominal levels in (0, 1).

    Returns:
        Observed coverage ``[len(levels)]``, dimensionless.
    """
    ens, y, _ = _ensemble(ensemble, truth, min_members=2)
    m = ens.shape[0]
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or not np.all((lv > 0) & (lv < 1)):
        raise ValueError(f"levels must be numbers strictly between 0 and 1, got {tuple(levels)}")
    ordered = np.sort(ens, axis=0)
    out = np.empty(lv.size)
    for i, level in enumerate(lv):
        rank_low = 0.5 * (1.0 - level) * (m + 1)
        rank_high = (m + 1) - rank_low
        if rank_low < 1.0 - 1e-12:
            need = coverage_min_members(float(level))
            raise ValueError(f"coverage at level {level} needs at least {need} ensemble members, got M = {m}")
        low = _order_statistic(ordered, rank_low)
        high = _order_statistic(ordered, rank_high)
        out[i] = float(np.mean((y >= low) & (y <= high)))
    return out


def _order_statistic(ordered: np.ndarray, rank: float) -> np.ndarray:
    """Linear interpolation of sorted members ``ordered [M, P]`` at 1-based fractional ``rank``."""
    m = ordered.shape[0]
    rank = min(max(rank, 1.0), float(m))
    below = int(math.floor(rank))
    frac = rank - below
    if below >= m or frac < 1e-12:
        return ordered[below - 1]
    return (1.0 - frac) * ordered[below - 1] + frac * ordered[below]


def rank_histogram(ensemble: Any, truth: Any, *, seed: int | None = 0) -> np.ndarray:
    """Talagrand rank histogram: how often the truth has each rank among the members.

    The rank of ``y`` is the number of members below it (ties with members are broken
    uniformly at random), in ``0..M``.  A calibrated ensemble gives a flat histogram, an
    under-dispersed one a U shape, an over-dispersed one a dome, a biased one a slope
    (Hamill 2001).

    Args:
        ensemble: members ``[M, *S]``.
        truth: verifying values ``[*S]``.
        seed: seed of the generator that breaks ties (``None``: fresh entropy).

    Returns:
        Integer counts ``[M + 1]`` summing to the number of points.
    """
    ens, y, _ = _ensemble(ensemble, truth, min_members=1)
    m = ens.shape[0]
    below = np.sum(ens < y[None, :], axis=0)
    ties = np.sum(ens == y[None, :], axis=0)
    rank = below
    if np.any(ties):
        rng = np.random.default_rng(seed)
        rank = below + rng.integers(0, ties + 1)
    return np.bincount(rank, minlength=m + 1).astype(np.int64)
