"""Tests of scidiff.metrics against closed forms, brute-force references and scipy.

Statistical checks use fixed seeds and tolerances of about 5 standard errors derived from
the sample sizes used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from scidiff import metrics

# ----------------------------------------------------------------------------- helpers


def _k_grid(shape: tuple[int, ...], lengths: tuple[float, ...]) -> np.ndarray:
    """|k| of every full-FFT mode, independent of the library's own helpers."""
    axes = [2 * np.pi * np.fft.fftfreq(n, d=length / n) for n, length in zip(shape, lengths)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(sum(k**2 for k in mesh))


def _gaussian_random_field(
    rng: np.random.Generator, batch: int, shape: tuple[int, ...], length: float, spectrum
) -> tuple[np.ndarray, np.ndarray]:
    """White noise filtered by sqrt(P(|k|)): E|X_k|^2 = N^2 P(k) / V. Returns (fields, P_k)."""
    n_grid = int(np.prod(shape))
    volume = length ** len(shape)
    k = _k_grid(shape, (length,) * len(shape))
    p_k = np.zeros(shape)
    p_k[k > 0] = spectrum(k[k > 0])
    white = rng.normal(size=(batch, *shape))
    axes = tuple(range(1, len(shape) + 1))
    noise_k = np.fft.fftn(white, axes=axes)
    fields = np.fft.ifftn(noise_k * np.sqrt(n_grid * p_k / volume), axes=axes).real
    return fields, p_k


def _gaussian_crps(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2) at y (Gneiting & Raftery 2007, eq. 21)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


# ----------------------------------------------------------------------------- spectra


@pytest.mark.parametrize(
    "shape, box_length",
    [((32,), 3.0), ((33,), 1.0), ((12, 10), 2.0), ((9, 16), (1.0, 2.5)), ((6, 8, 7), 0.5)],
)
def test_parseval_normalisation(shape, box_length):
    rng = np.random.default_rng(1)
    x = 0.7 + rng.normal(size=(3, *shape)) * rng.uniform(0.5, 2.0, size=shape)  # inhomogeneous, nonzero mean
    lengths = (box_length,) * len(shape) if isinstance(box_length, float) else box_length
    volume = float(np.prod(lengths))

    k, p = metrics.power_spectrum(x, box_length=box_length, reduce=False)
    k_counts, counts = metrics.mode_counts(shape, box_length=box_length)
    variance = x.reshape(3, -1).var(axis=1)
    np.testing.assert_allclose(k, k_counts)
    assert counts.sum() == np.prod(shape) - 1  # every mode but k = 0
    np.testing.assert_allclose((counts * p).sum(axis=1) / volume, variance, rtol=1e-12)

    p_k = metrics.mode_power(x, box_length=box_length)
    mean_square = (x**2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(p_k.reshape(3, -1).sum(axis=1) / volume, mean_square, rtol=1e-12)
    # the batch mean is the mean of the per-sample spectra
    _, p_mean = metrics.power_spectrum(x, box_length=box_length)
    np.testing.assert_allclose(p_mean, p.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("shape, batch", [((256,), 64), ((48, 48), 12), ((16, 16, 16), 3)])
def test_gaussian_random_field_spectrum_matches_input(shape, batch):
    rng = np.random.default_rng(2)
    length = 2.0

    def spectrum(k):
        return 0.3 * (1.0 + (k / 6.0) ** 2) ** -1.5

    x, p_k = _gaussian_random_field(rng, batch, shape, length, spectrum)
    k_est, p_est = metrics.power_spectrum(torch.from_numpy(x), box_length=length)
    _, counts = metrics.mode_counts(shape, box_length=length)

    # expectation of each shell: the mean of the input P over the modes in the shell
    k_mode = _k_grid(shape, (length,) * len(shape))
    shell = np.floor(k_mode / (2 * np.pi / length) + 0.5).astype(int) - 1
    keep = shell >= 0
    expected = np.bincount(shell[keep], weights=p_k[keep]) / np.bincount(shell[keep])
    k_expected = np.bincount(shell[keep], weights=k_mode[keep]) / np.bincount(shell[keep])
    np.testing.assert_allclose(k_est, k_expected, rtol=1e-12)

    # each conjugate pair of modes is one complex Gaussian: relative sd 1/sqrt(pairs * batch)
    # (self-conjugate modes have sd sqrt(2); counting them as half a pair is conservative)
    rel_se = 1.0 / np.sqrt(batch * counts / 2.0)
    z = (p_est / expected - 1.0) / rel_se
    assert np.all(np.abs(z) < 5.0), np.abs(z).max()


def test_single_fourier_mode_puts_all_power_in_its_shell():
    n, length, amplitude = 32, 4.0, 1.7
    grid = np.arange(n) * length / n
    gx, gy = np.meshgrid(grid, grid, indexing="ij")
    k_f = 2 * np.pi / length
    x = amplitude * np.cos(k_f * (3 * gx + 4 * gy) + 0.4)[None]  # |k| = 5 k_f

    k, p = metrics.power_spectrum(x, box_length=length)
    _, counts = metrics.mode_counts((n, n), box_length=length)
    shell_five = 4  # shells start at n = 1
    assert abs(k[shell_five] / k_f - 5.0) < 0.5
    others = np.delete(p, shell_five)
    assert np.all(np.abs(others) < 1e-20 * p[shell_five])
    # all of the variance A^2 / 2 is in that shell
    np.testing.assert_allclose(counts[shell_five] * p[shell_five] / length**2, amplitude**2 / 2, rtol=1e-12)


def test_power_spectrum_channel_and_torch_inputs_agree():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 2, 16, 16))
    _, p_np = metrics.power_spectrum(x[:, 1])
    _, p_ch = metrics.power_spectrum(torch.from_numpy(x), channel=1)
    _, p_neg = metrics.power_spectrum(x, channel=-1)
    np.testing.assert_allclose(p_ch, p_np, rtol=1e-12)
    np.testing.assert_allclose(p_neg, p_np, rtol=1e-12)
    _, p32 = metrics.power_spectrum(torch.from_numpy(x[:, 1]).float())
    np.testing.assert_allclose(p32, p_np, rtol=1e-5)


def test_power_spectrum_custom_bins():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 32, 32))
    k_f = 2 * np.pi
    edges = np.array([0.5, 4.5, 10.5, 100.0]) * k_f  # the last bin also holds the corner modes
    k, p = metrics.power_spectrum(x, bins=edges, reduce=False)
    _, counts = metrics.mode_counts((32, 32), bins=edges)
    assert k.shape == (3,) and p.shape == (2, 3)
    assert counts.sum() == 32 * 32 - 1
    np.testing.assert_allclose((counts * p).sum(axis=1), x.reshape(2, -1).var(axis=1), rtol=1e-12)
    # an empty bin gives NaN and the edge midpoint as k
    k2, p2 = metrics.power_spectrum(x, bins=np.array([0.5, 1.5, 1.6, 2.5]) * k_f)
    assert np.isnan(p2[1]) and math.isclose(k2[1], 1.55 * k_f)
    k3, p3 = metrics.power_spectrum(x, bins=5)
    assert k3.shape == (5,) and np.all(np.isfinite(p3))


def test_spectrum_error():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 32, 32))
    assert metrics.spectrum_error(x, x) == 0.0
    # scaling a field by c multiplies P by c^2: |ln c^2| in every bin
    assert math.isclose(metrics.spectrum_error(1.5 * x, x), 2 * math.log(1.5), rel_tol=1e-12)
    with pytest.raises(ValueError, match="spatial grid"):
        metrics.spectrum_error(x, x[:, :16])


def test_two_point_correlation_brute_force_2d():
    rng = np.random.default_rng(6)
    shape, length = (8, 10), 5.0
    x = rng.normal(size=(2, *shape)) + 3.0
    r, xi = metrics.two_point_correlation(x, box_length=length, reduce=False)

    # direct real-space sum over every periodic lag, then the same integer shells
    spacing = length / np.array(shape)
    d = x - x.mean(axis=(1, 2), keepdims=True)
    sums = {}
    for a in range(shape[0]):
        for b in range(shape[1]):
            value = (d * np.roll(d, shift=(-a, -b), axis=(1, 2))).mean(axis=(1, 2))
            lag = np.array([min(a, shape[0] - a), min(b, shape[1] - b)])  # minimum image
            radius = float(np.sqrt(np.sum((lag * spacing) ** 2)))
            shell = int(np.floor(radius / spacing.min() + 0.5))
            entry = sums.setdefault(shell, [np.zeros(2), 0, 0.0])
            entry[0] += value
            entry[1] += 1
            entry[2] += radius
    shells = sorted(sums)
    expected = np.stack([sums[s][0] / sums[s][1] for s in shells], axis=1)
    r_expected = np.array([sums[s][2] / sums[s][1] for s in shells])
    np.testing.assert_allclose(r, r_expected, rtol=1e-12)
    np.testing.assert_allclose(xi, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xi[:, 0], x.reshape(2, -1).var(axis=1), rtol=1e-12)  # lag 0 = variance
    assert r[0] == 0.0


def test_two_point_correlation_is_inverse_transform_of_spectrum():
    rng = np.random.default_rng(7)
    n, length = 64, 3.0
    x, _ = _gaussian_random_field(rng, 5, (n,), length, lambda k: np.exp(-k / 10.0))
    r, xi = metrics.two_point_correlation(x, box_length=length)
    k, p = metrics.power_spectrum(x, box_length=length)
    _, counts = metrics.mode_counts((n,), box_length=length)
    # 1-D shells are exactly {+k, -k}: xi(r) = (1/L) sum_shells counts P(k) cos(k r)
    xi_from_p = (counts[None, :] * p[None, :] * np.cos(r[:, None] * k[None, :])).sum(axis=1) / length
    np.testing.assert_allclose(xi, xi_from_p, rtol=1e-10, atol=1e-14)
    assert math.isclose(xi[0], x.var(axis=1).mean(), rel_tol=1e-12)

    # in 2-D: the full per-mode spectrum transforms back to the correlation at every lag
    y = rng.normal(size=(3, 12, 12))
    p_k = metrics.mode_power(y, box_length=length)
    p_k[:, 0, 0] = 0.0
    xi_grid = np.fft.ifftn(p_k, axes=(1, 2)).real * 144 / length**2  # (1/V) sum_k P_k e^{ikr}
    _, xi_2d = metrics.two_point_correlation(y, box_length=length, reduce=False)
    np.testing.assert_allclose(xi_2d[:, 0], xi_grid[:, 0, 0], rtol=1e-12)
    # every shell is the mean of the transformed spectrum over its lags (round(|r| / dx) = n)
    m = np.minimum(np.arange(12), 12 - np.arange(12))
    shell = np.floor(np.sqrt(m[:, None] ** 2 + m[None, :] ** 2) + 0.5).astype(int)
    for n in range(shell.max() + 1):
        np.testing.assert_allclose(xi_2d[:, n], xi_grid[:, shell == n].mean(axis=1), rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------------------- one-point


def test_w1_between_shifted_normals():
    rng = np.random.default_rng(8)
    n = 20_000
    for m in (0.3, -1.2):
        a = rng.normal(size=n)
        b = rng.normal(loc=m, size=n)
        w1 = metrics.histogram_w1(torch.from_numpy(a), b)
        # W1 >= |mean(a) - mean(b)|, whose sampling sd is sqrt(2/n); the quantile noise adds
        # a bias of the same order, so allow 5 such standard errors.
        assert abs(w1 - abs(m)) < 5 * math.sqrt(2 / n), (m, w1)
    c = rng.normal(size=500)
    assert math.isclose(metrics.histogram_w1(c, c + 0.25), 0.25, rel_tol=1e-12)


@pytest.mark.parametrize("sizes", [(50, 50), (37, 80), (1, 9)])
def test_w1_equals_scipy(sizes):
    rng = np.random.default_rng(9)
    a = rng.gamma(2.0, size=sizes[0])
    b = np.round(rng.normal(size=sizes[1]), 1)  # with ties
    assert math.isclose(metrics.histogram_w1(a, b), stats.wasserstein_distance(a, b), rel_tol=1e-12)
    assert math.isclose(metrics.histogram_w1(a.reshape(-1, 1), b), metrics.histogram_w1(b, a), rel_tol=1e-12)


def test_moments_match_scipy():
    rng = np.random.default_rng(10)
    x = rng.gamma(3.0, size=(10, 2, 16, 16))
    got = metrics.moments(x, channel=1)
    v = x[:, 1].reshape(-1)
    assert math.isclose(got.mean, v.mean(), rel_tol=1e-12)
    assert math.isclose(got.std, v.std(), rel_tol=1e-12)
    assert math.isclose(got.skewness, stats.skew(v), rel_tol=1e-10)
    assert math.isclose(got.kurtosis, stats.kurtosis(v), rel_tol=1e-10)
    # Gaussian values: skewness and excess kurtosis 0 with sd sqrt(6/n) and sqrt(24/n)
    n = 200_000
    g = metrics.moments(torch.from_numpy(2.0 + 3.0 * rng.normal(size=n)))
    assert abs(g.mean - 2.0) < 5 * 3.0 / math.sqrt(n) and abs(g.std - 3.0) < 5 * 3.0 / math.sqrt(2 * n)
    assert abs(g.skewness) < 5 * math.sqrt(6 / n) and abs(g.kurtosis) < 5 * math.sqrt(24 / n)
    constant = metrics.moments(np.full((3, 4), 2.0))
    assert constant.std == 0.0 and math.isnan(constant.skewness)


# ----------------------------------------------------------------------------- ensembles


def test_crps_fair_equals_brute_force():
    rng = np.random.default_rng(11)
    ens = rng.normal(size=(7, 3, 5))
    y = rng.normal(size=(3, 5))
    m = ens.shape[0]
    skill = np.abs(ens - y).mean(axis=0)
    pair = np.abs(ens[:, None] - ens[None, :]).sum(axis=(0, 1)) / (2 * m * (m - 1))
    brute = skill - pair
    got = metrics.crps_ensemble(ens, y, reduce=False)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, brute, rtol=1e-12, atol=1e-14)
    assert math.isclose(metrics.crps_ensemble(torch.from_numpy(ens), torch.from_numpy(y)), brute.mean(), rel_tol=1e-12)


def test_crps_gaussian_ensemble_matches_closed_form():
    rng = np.random.default_rng(12)
    points, m = 20_000, 8
    mu = rng.normal(size=points)
    sigma = rng.uniform(0.5, 2.0, size=points)
    y = rng.normal(loc=0.5, scale=1.5, size=points)  # truth from another distribution
    ens = mu + sigma * rng.normal(size=(m, points))
    diff = metrics.crps_ensemble(ens, y, reduce=False) - _gaussian_crps(mu, sigma, y)
    # the fair estimator is unbiased for the CRPS of the member distribution
    assert abs(diff.mean()) < 5 * diff.std() / math.sqrt(points)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_coverage_min_members_is_the_boundary_of_coverage(level):
    m = metrics.coverage_min_members(level)
    assert m == math.ceil(2.0 / (1.0 - level) - 1.0 - 1e-9)
    rng = np.random.default_rng(0)
    truth = rng.normal(size=50)
    metrics.coverage(rng.normal(size=(m, 50)), truth, [level])  # enough members: no error
    with pytest.raises(ValueError, match=f"needs at least {m} ensemble members"):
        metrics.coverage(rng.normal(size=(m - 1, 50)), truth, [level])


def test_coverage_of_calibrated_ensemble_is_nominal():
    rng = np.random.default_rng(13)
    points, m = 20_000, 39
    mu = rng.normal(size=points)
    ens = mu + rng.normal(size=(m, points))
    y = mu + rng.normal(size=points)
    levels = np.array([0.5, 0.8, 0.9])
    got = metrics.coverage(ens, y, levels=levels)
    assert got.shape == (3,)
    assert np.all(np.abs(got - levels) < 5 * np.sqrt(levels * (1 - levels) / points)), got
    # a non-integer rank position (M = 24) is still close to nominal
    got24 = metrics.coverage(ens[:24], y, levels=(0.5,))
    assert abs(got24[0] - 0.5) < 5 * math.sqrt(0.25 / points)
    # an over-confident ensemble under-covers
    narrow = mu + 0.5 * rng.normal(size=(m, points))
    assert metrics.coverage(narrow, y, levels=(0.9,))[0] < 0.7
    with pytest.raises(ValueError, match="at least 19"):
        metrics.coverage(ens[:10], y, levels=(0.9,))


@pytest.mark.parametrize("sigma_ens", [1.0, 0.5])
def test_spread_skill_ratio(sigma_ens):
    rng = np.random.default_rng(14)
    points, m = 20_000, 5
    mu = rng.normal(size=points)
    ens = mu + sigma_ens * rng.normal(size=(m, points))
    y = mu + rng.normal(size=points)
    got = metrics.spread_skill_ratio(ens, y)
    expected = math.sqrt((m + 1) / m) * sigma_ens / math.sqrt(sigma_ens**2 / m + 1.0)
    # delta method: var(log ratio) = (2/((M-1) n) + 2/n) / 4
    se_log = 0.5 * math.sqrt(2 / ((m - 1) * points) + 2 / points)
    assert abs(math.log(got / expected)) < 5 * se_log, (got, expected)


def test_rank_histogram_calibrated_and_under_dispersed():
    rng = np.random.default_rng(15)
    points, m = 20_000, 9
    mu = rng.normal(size=points)
    y = mu + rng.normal(size=points)
    counts = metrics.rank_histogram(mu + rng.normal(size=(m, points)), y)
    assert counts.shape == (m + 1,) and counts.sum() == points
    expected = points / (m + 1)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df=m)

    under = metrics.rank_histogram(mu + 0.4 * rng.normal(size=(m, points)), y)
    # the truth falls outside a too-narrow ensemble far more often than 1/(M+1)
    assert under[0] > 2.5 * expected and under[-1] > 2.5 * expected
    assert under[m // 2] < 0.6 * expected

    # ties with members are split at random, keeping a flat histogram for discrete data
    ens_int = rng.integers(0, 3, size=(4, 30_000)).astype(float)
    y_int = rng.integers(0, 3, size=30_000).astype(float)
    tied = metrics.rank_histogram(ens_int, y_int)
    expected_tied = 30_000 / 5
    assert float(np.sum((tied - expected_tied) ** 2 / expected_tied)) < stats.chi2.ppf(1 - 1e-4, df=4)


# ----------------------------------------------------------------------------- validation


def test_clear_errors():
    x = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.power_spectrum(np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match=r"\[B, \*spatial\]"):
        metrics.power_spectrum(np.zeros(8))
    with pytest.raises(ValueError, match="channel=3"):
        metrics.power_spectrum(np.zeros((2, 2, 8)), channel=3)
    with pytest.raises(ValueError, match="box_length has 3 entries"):
        metrics.power_spectrum(x, box_length=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        metrics.power_spectrum(x, box_length=-1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        metrics.power_spectrum(x, bins=[3.0, 1.0])
    with pytest.raises(TypeError, match="real-valued"):
        metrics.power_spectrum(np.zeros((2, 8), dtype=complex))
    with pytest.raises(ValueError, match="truth of shape"):
        metrics.crps_ensemble(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        metrics.crps_ensemble(np.zeros((1, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        metrics.spread_skill_ratio(np.zeros((1, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="between 0 and 1"):
        metrics.coverage(np.zeros((50, 3)), np.zeros(3), levels=(1.5,))
    with pytest.raises(ValueError, match="non-empty"):
        metrics.histogram_w1(np.zeros(0), np.zeros(3))
