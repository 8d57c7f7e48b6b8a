"""Tests of scidiff.plots: every figure renders to a valid PNG and shows the data it was given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scidiff import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, fig) -> None:
    """The file is a PNG whose pixel size is the figure size at 120 dpi."""
    import matplotlib.image

    raw = path.read_bytes()
    assert len(raw) > 1000 and raw[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * 120
    assert pixels.shape[:2] == (round(height), round(width))
    assert pixels[..., :3].std() > 0  # something was drawn


def _images(fig):
    return [im for ax in fig.axes for im in ax.images]


def test_import_does_not_load_matplotlib():
    code = "import sys, scidiff, scidiff.plots, scidiff.metrics; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sample_grid_2d_shares_one_colour_scale(tmp_path):
    rng = np.random.default_rng(0)
    samples = torch.from_numpy(rng.normal(size=(5, 2, 16, 16)))
    data = 3.0 * rng.normal(size=(10, 2, 16, 16))
    path = tmp_path / "grid" / "samples.png"
    fig = plots.sample_grid(samples, data, n=4, channel=1, units="K", path=path)
    _check_png(path, fig)
    images = _images(fig)
    assert len(images) == 8
    clims = {im.get_clim() for im in images}
    assert len(clims) == 1  # one shared colour scale
    bound = max(np.abs(samples[:4, 1].numpy()).max(), np.abs(data[:4, 1]).max())
    np.testing.assert_allclose(clims.pop(), (-bound, bound))  # signed data: symmetric about 0
    assert {im.get_cmap().name for im in images} == {"RdBu_r"}
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 1 and "[K]" in colour_bars[0].get_ylabel()
    np.testing.assert_array_equal(images[4].get_array(), data[0, 1])  # data drawn in the second row


def test_sample_grid_positive_1d_and_3d(tmp_path):
    rng = np.random.default_rng(1)
    positive = np.exp(rng.normal(size=(3, 12, 12)))
    fig = plots.sample_grid(positive, path=tmp_path / "pos.png")
    _check_png(tmp_path / "pos.png", fig)
    images = _images(fig)
    assert {im.get_cmap().name for im in images} == {"viridis"}
    assert images[0].get_clim() == (positive.min(), positive.max())

    lines = rng.normal(size=(4, 1, 64))  # [B, 1, N]: singleton axis dropped, drawn as 1-D lines
    fig = plots.sample_grid(lines, lines[::-1] * 2, n=3, path=tmp_path / "lines.png")
    _check_png(tmp_path / "lines.png", fig)
    drawn = [ax for ax in fig.axes if ax.lines]
    assert len(drawn) == 6 and not _images(fig)
    assert len({ax.get_ylim() for ax in drawn}) == 1
    np.testing.assert_array_equal(drawn[0].lines[0].get_ydata(), lines[0, 0])

    cube = rng.normal(size=(2, 6, 8, 8))
    fig = plots.sample_grid(cube, path=tmp_path / "cube.png")
    _check_png(tmp_path / "cube.png", fig)
    np.testing.assert_array_equal(_images(fig)[1].get_array(), cube[1, 3])  # middle slice

    with pytest.raises(ValueError, match="same grid"):
        plots.sample_grid(positive, positive[:, :6])


def test_spectra_band_from_per_sample_data(tmp_path):
    rng = np.random.default_rng(2)
    x_data = rng.normal(size=(20, 32, 32))
    x_model = 1.1 * rng.normal(size=(6, 32, 32))
    k, p_per_sample = metrics.power_spectrum(x_data, reduce=False)
    _, p_model = metrics.power_spectrum(x_model, reduce=False)
    path = tmp_path / "spectra.png"
    fig = plots.spectra(k, p_model, p_per_sample.mean(axis=0), data_spectra=p_per_sample, units="K^2", path=path)
    _check_png(path, fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # the shaded data band spans the 5th to 95th percentile of the per-sample spectra
    low, high = np.percentile(p_per_sample, [5, 95], axis=0)
    band = ax.collections[0].get_paths()[0].vertices
    for kk, lo, hi in zip(k, low, high):
        ys = band[np.isclose(band[:, 0], kk), 1]
        assert np.isclose(ys.min(), lo) and np.isclose(ys.max(), hi)
    model_line = [line for line in ax.lines if line.get_linestyle() == "--"][0]
    np.testing.assert_allclose(model_line.get_ydata(), p_model.mean(axis=0))

    fig = plots.spectra(k, p_model.mean(axis=0), band=(low, high), path=tmp_path / "band.png")
    _check_png(tmp_path / "band.png", fig)
    with pytest.raises(ValueError, match="not both"):
        plots.spectra(k, p_model, band=(low, high), data_spectra=p_per_sample)
    with pytest.raises(ValueError, match="one per k"):
        plots.spectra(k, p_model[:, :-1])


def test_histograms_share_bins(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 8, 8))
    b = rng.normal(loc=1.0, scale=2.0, size=4000)
    path = tmp_path / "hist.png"
    fig = plots.histograms(a, b, bins=30, log=True, path=path)
    _check_png(path, fig)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    outlines = [patch.get_path().vertices for patch in ax.patches]
    assert len(outlines) == 2
    edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), 31)
    for outline in outlines:
        np.testing.assert_allclose(np.unique(outline[:, 0]), edges)  # identical bin edges
    # densities: step heights integrate to 1
    heights, _ = np.histogram(b, bins=edges, density=True)
    assert np.isclose(np.sum(heights * np.diff(edges)), 1.0)


def test_calibration_and_rank_histogram(tmp_path):
    levels = np.array([0.9, 0.5, 0.7])
    observed = np.array([0.85, 0.52, 0.66])
    fig = plots.calibration(levels, observed, n_points=1000, path=tmp_path / "cal.png")
    _check_png(tmp_path / "cal.png", fig)
    ax = fig.axes[0]
    diagonal, curve = ax.lines
    np.testing.assert_array_equal(diagonal.get_xdata(), diagonal.get_ydata())
    np.testing.assert_array_equal(curve.get_xdata(), [0.5, 0.7, 0.9])
    np.testing.assert_array_equal(curve.get_ydata(), [0.52, 0.66, 0.85])
    with pytest.raises(ValueError, match="same length"):
        plots.calibration(levels, observed[:2])

    counts = np.array([30, 10, 10, 10, 40])
    fig = plots.rank_histogram_plot(counts, path=tmp_path / "rank.png")
    _check_png(tmp_path / "rank.png", fig)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    np.testing.assert_allclose(heights, counts / counts.sum())
    assert fig.axes[0].lines[0].get_ydata()[0] == pytest.approx(0.2)


def test_likelihood_figures(tmp_path):
    rng = np.random.default_rng(4)
    exact = rng.normal(-100.0, 5.0, size=200)
    model = exact + rng.normal(0.3, 0.1, size=200)
    fig = plots.likelihood_histogram(torch.from_numpy(model), exact, path=tmp_path / "ll.png")
    _check_png(tmp_path / "ll.png", fig)
    hist_ax, scatter_ax = fig.axes
    assert "nats" in hist_ax.get_xlabel()
    outlines = [p.get_path().vertices[:, 0] for p in hist_ax.patches]
    assert outlines[0].min() == outlines[1].min() and outlines[0].max() == outlines[1].max()
    np.testing.assert_allclose(scatter_ax.collections[0].get_offsets(), np.stack([exact, model], axis=1))
    assert f"{np.mean(model - exact):.3g}" in scatter_ax.get_title()

    fig = plots.likelihood_histogram(model / 100, units="bits/dim", path=tmp_path / "bpd.png")
    _check_png(tmp_path / "bpd.png", fig)
    assert fig.axes[0].get_xlabel() == "bits/dim"
    with pytest.raises(ValueError, match="units"):
        plots.likelihood_histogram(model, units="bits")

    theta = np.linspace(0.5, 2.0, 16)
    exact_curve = -((theta - 1.2) ** 2)
    fig = plots.likelihood_curve(theta, exact_curve + 0.01, exact_curve, theta_true=1.2, path=tmp_path / "curve.png")
    _check_png(tmp_path / "curve.png", fig)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), exact_curve)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), exact_curve + 0.01)
    assert ax.lines[2].get_xdata()[0] == 1.2


def test_posterior_panel_2d_and_1d(tmp_path):
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(16, 16))
    mean = 0.8 * truth
    std = np.abs(rng.normal(size=(16, 16))) * 0.3
    mask = rng.random((16, 16)) < 0.1
    fig = plots.posterior_panel(truth, mask, mean, std, units="m/s", path=tmp_path / "post.png")
    _check_png(tmp_path / "post.png", fig)
    images = _images(fig)
    assert len(images) == 3  # truth, mean, std; observations are points
    assert images[0].get_clim() == images[1].get_clim()
    assert images[2].get_clim() == (0.0, std.max())
    obs = fig.axes[1].collections[0]
    assert len(obs.get_offsets()) == mask.sum()
    np.testing.assert_allclose(np.sort(obs.get_array()), np.sort(truth[mask]))
    assert obs.get_clim() == images[0].get_clim()

    points = np.array([[1, 2], [5, 7], [15, 0]])
    y = np.array([0.1, -0.2, 0.3])
    fig = plots.posterior_panel(truth, points, mean, std, observed_values=y, path=tmp_path / "points.png")
    _check_png(tmp_path / "points.png", fig)
    np.testing.assert_allclose(fig.axes[1].collections[0].get_offsets(), points[:, ::-1])

    values_map = np.full((16, 16), np.nan)
    values_map[3, 4] = 2.0
    fig = plots.posterior_panel(truth, values_map, mean, std)
    np.testing.assert_allclose(fig.axes[1].collections[0].get_array(), [2.0])

    line = np.sin(np.linspace(0, 6, 64))
    fig = plots.posterior_panel(line, np.array([3, 20, 40]), line, 0.1 + 0 * line, path=tmp_path / "line.png")
    _check_png(tmp_path / "line.png", fig)
    np.testing.assert_allclose(fig.axes[0].collections[-1].get_offsets(), [[3, line[3]], [20, line[20]], [40, line[40]]])

    with pytest.raises(ValueError, match="outside the grid"):
        plots.posterior_panel(truth, np.array([[16, 0]]), mean, std)
    with pytest.raises(ValueError, match="non-negative"):
        plots.posterior_panel(truth, mask, mean, -std - 1)
