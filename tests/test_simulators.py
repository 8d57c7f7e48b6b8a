"""Tests of scidiff.simulators against closed forms and dense references (float64)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.integrate import solve_ivp
from scipy.stats import multivariate_normal

import scidiff.simulators as sims
from scidiff._version import __version__
from scidiff.simulators import (
    GaussianRandomField,
    GrayScott,
    HeatEquation,
    LognormalField,
    NavierStokes2D,
)
from scidiff.simulators._fourier import half_weights, rfft, wavenumber_norm

GRIDS = [(8, 1), (7, 1), (4, 2), (5, 2), (6, 2), (2, 3), (3, 3)]


def _scipy_log_prob(x: torch.Tensor, cov: torch.Tensor) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1).numpy()
    return np.atleast_1d(multivariate_normal(mean=None, cov=cov.numpy()).logpdf(flat))


# ---------------------------------------------------------------------- GRF densities
@pytest.mark.parametrize("size,dims", GRIDS)
@pytest.mark.parametrize("p0", [None, 0.3])
def test_grf_log_prob_matches_dense_gaussian(size: int, dims: int, p0: float | None) -> None:
    grf = GaussianRandomField(size, dims, slope=2.5, amplitude=0.7, p0=p0)
    x = grf.sample(5, seed=1)
    ref = _scipy_log_prob(x, grf.covariance())
    out = grf.log_prob(x)
    assert out.dtype == torch.float64 and out.shape == (5,)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-8)
    # the [B, 1, *spatial] layout gives the same numbers
    np.testing.assert_allclose(grf.log_prob(x[:, None]).numpy(), ref, rtol=0, atol=1e-8)


def test_grf_covariance_is_the_sampling_covariance_of_the_eigenvalues() -> None:
    """Dense C has eigenvalues lambda_k and C = U^* diag(lambda) U applied to unit vectors."""
    grf = GaussianRandomField(6, 2, slope=3.0, p0=2.0)
    cov = grf.covariance()
    eig = torch.linalg.eigvalsh(cov)
    lam = grf.spectrum().flatten().sort().values
    torch.testing.assert_close(eig, lam, rtol=1e-10, atol=1e-12)
    # the k = 0 eigenvalue is p0 and the pointwise variance is the mean eigenvalue
    assert grf.spectrum()[0, 0].item() == 2.0
    torch.testing.assert_close(cov.diagonal(), lam.mean().expand(36), rtol=1e-12, atol=0)


def test_grf_default_p0_is_power_at_smallest_wavenumber() -> None:
    grf = GaussianRandomField(8, 2, slope=3.0, amplitude=0.4)
    lam = grf.spectrum()
    assert lam[0, 0].item() == pytest.approx(0.4, rel=1e-15)
    assert lam[0, 1].item() == pytest.approx(0.4, rel=1e-15)
    assert lam[1, 1].item() == pytest.approx(0.4 * 2 ** (-1.5), rel=1e-14)


def test_grf_log_prob_per_sample_and_grid_of_slopes() -> None:
    grf = GaussianRandomField(5, 2, amplitude=0.5)
    x = grf.sample(3, seed=2)
    slopes = torch.tensor([1.0, 2.5, 4.0, 5.0])
    grid = grf.log_prob_grid(x, slopes)
    assert grid.shape == (3, 4)
    for j, s in enumerate(slopes.tolist()):
        cov = GaussianRandomField(5, 2, slope=s, amplitude=0.5).covariance()
        np.testing.assert_allclose(grid[:, j].numpy(), _scipy_log_prob(x, cov), atol=1e-8, rtol=0)
    per_sample = grf.log_prob(x, slope=slopes[:3])
    torch.testing.assert_close(per_sample, grid.diagonal(), rtol=0, atol=1e-10)
    # per-sample amplitude as well
    amps = torch.tensor([0.2, 0.5, 1.5])
    out = grf.log_prob(x, slope=2.0, amplitude=amps)
    for i in range(3):
        cov = GaussianRandomField(5, 2, slope=2.0, amplitude=amps[i].item()).covariance()
        np.testing.assert_allclose(out[i].item(), _scipy_log_prob(x[i:i + 1], cov)[0], atol=1e-8)


def test_grf_slope_maximum_likelihood_recovers_true_slope() -> None:
    """With D = 32^2 modes the MLE of the slope is within a few hundredths of the truth."""
    grf = GaussianRandomField(32, 2, slope=3.0)
    x = grf.sample(4, seed=3)
    slopes = torch.linspace(2.0, 4.0, 201)
    best = slopes[grf.log_prob_grid(x, slopes).argmax(dim=1)]
    # Fisher information per mode for the slope is (1/2) (log|k|)^2; sd of the MLE ~ 0.01
    assert (best - 3.0).abs().max().item() < 0.06


@pytest.mark.parametrize("size,dims", [(8, 1), (5, 2), (6, 2), (2, 3)])
def test_lognormal_log_prob_matches_change_of_variables(size: int, dims: int) -> None:
    field = LognormalField(size, dims, slope=2.0, amplitude=0.3, mu=0.4)
    y = field.sample(4, seed=4)
    assert (y > 0).all()
    g = torch.log(y) - 0.4
    ref = _scipy_log_prob(g, field.grf.covariance()) - torch.log(y).flatten(1).sum(1).numpy()
    np.testing.assert_allclose(field.log_prob(y).numpy(), ref, rtol=0, atol=1e-8)
    y_bad = y.clone()
    y_bad[0].view(-1)[0] = -1.0
    out = field.log_prob(y_bad)
    assert out[0].item() == -math.inf and torch.isfinite(out[1:]).all()


# ---------------------------------------------------------------------- GRF statistics
def test_grf_samples_have_requested_spectrum() -> None:
    """Per |k|-shell, the mean of |x_hat_k|^2 / lambda_k is 1 within 5 standard errors.

    Each field is independent, so the standard error of a shell average is the sample
    standard deviation of the per-field shell averages over sqrt(N).  Half the fields use
    slope 2, half slope 4 (one spectrum per field).
    """
    n_fields, size = 400, 24
    grf = GaussianRandomField(size, 2, amplitude=2.0)
    slopes = torch.tensor([2.0, 4.0]).repeat(n_fields // 2)
    x = grf.sample(n_fields, slope=slopes, seed=5)
    lam = grf.spectrum(half=True, slope=slopes)                       # [N, n, n//2+1]
    ratio = rfft(x, 2).abs() ** 2 / lam
    w = half_weights(size, 2)
    shell = wavenumber_norm(size, 2, half=True).round().long()
    n_checked = 0
    for s in range(int(shell.max()) + 1):
        sel = shell == s
        if not sel.any():
            continue
        per_field = (ratio[:, sel] * w[sel]).sum(1) / w[sel].sum()   # [N]
        for group in (per_field[0::2], per_field[1::2]):
            se = group.std() / math.sqrt(group.numel())
            assert abs(group.mean().item() - 1.0) < 5 * se.item(), (s, group.mean(), se)
            n_checked += 1
    assert n_checked > 30
    # zero mean and pointwise variance (1/D) sum_k lambda_k, for the slope-4 half
    var_true = grf.spectrum(slope=4.0).mean().item()
    box_means = x[1::2].mean(dim=(1, 2))
    se_mean = math.sqrt(var_true / box_means.numel())  # crude bound: |box mean| <= pixel sd
    assert abs(box_means.mean().item()) < 5 * se_mean


def test_grf_pointwise_variance_matches_spectrum() -> None:
    grf = GaussianRandomField(16, 1, slope=1.0, amplitude=1.0)
    x = grf.sample(4000, seed=6)
    var_true = grf.spectrum().mean().item()
    # variance of a sample variance of a Gaussian: 2 var^2 / N (pixel 0 only: independent fields)
    v = x[:, 0].var().item()
    assert abs(v - var_true) < 5 * var_true * math.sqrt(2 / 4000)


# ---------------------------------------------------------------------- GRF marginals
@pytest.mark.parametrize("size,dims", [(8, 1), (5, 2), (2, 3)])
def test_grf_marginal_log_prob_matches_dense(size: int, dims: int) -> None:
    grf = GaussianRandomField(size, dims, slope=3.0, amplitude=0.8)
    x = torch.randn((3, *grf.spatial_shape), generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64)
    alpha_t, sigma_t = 0.6, 0.8
    ref = _scipy_log_prob(x, grf.marginal_covariance(alpha_t, sigma_t))
    np.testing.assert_allclose(grf.marginal_log_prob(x, alpha_t, sigma_t).numpy(), ref, atol=1e-8,
                               rtol=0)


def test_grf_marginal_score_is_gradient_of_marginal_log_prob() -> None:
    grf = GaussianRandomField(6, 2, slope=2.0, amplitude=1.3, p0=0.5)
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    alpha_t = torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64)
    sigma_t = (1 - alpha_t**2).sqrt() + 1e-3
    x.requires_grad_(True)
    log_p = grf.marginal_log_prob(x, alpha_t, sigma_t)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    score = grf.marginal_score(x.detach(), alpha_t, sigma_t)
    assert score.shape == x.shape
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-12)
    # and it is -(alpha^2 C + sigma^2 I)^{-1} x with the dense matrices
    for i in range(4):
        cov = grf.marginal_covariance(alpha_t[i].item(), sigma_t[i].item())
        dense = -torch.linalg.solve(cov, x[i].detach().flatten())
        torch.testing.assert_close(score[i].flatten(), dense, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------- heat equation
def test_heat_forward_single_mode_decays_exactly() -> None:
    length, kappa, tau, m = 2.0, 0.03, 0.7, 3
    heat = HeatEquation(16, 2, kappa=kappa, tau=tau, grf=GaussianRandomField(16, 2, length=length))
    x = torch.arange(16, dtype=torch.float64) * length / 16
    u0 = torch.cos(2 * math.pi * m * x / length)[None, None, :].expand(1, 16, 16)
    factor = math.exp(-kappa * (2 * math.pi * m / length) ** 2 * tau)
    torch.testing.assert_close(heat.forward(u0), factor * u0, rtol=0, atol=1e-13)


@pytest.mark.parametrize("size,dims", [(8, 1), (6, 2), (5, 2)])
def test_heat_posterior_matches_dense_bayes(size: int, dims: int) -> None:
    grf = GaussianRandomField(size, dims, slope=2.0, amplitude=1.0)
    heat = HeatEquation(size, dims, kappa=0.01, tau=0.5, grf=grf)
    noise_std = 0.1
    u0 = grf.sample(3, seed=9)
    y = heat.observe(u0, noise_std, seed=10)
    post = heat.posterior(y, noise_std)
    cov, h_mat = grf.covariance(), heat.operator()
    torch.testing.assert_close(heat.forward(u0).flatten(1), u0.flatten(1) @ h_mat.T,
                               rtol=0, atol=1e-12)
    precision = torch.linalg.inv(cov) + h_mat.T @ h_mat / noise_std**2
    post_cov = torch.linalg.inv(precision)
    post_mean = (post_cov @ h_mat.T @ y.flatten(1).T / noise_std**2).T
    torch.testing.assert_close(post.mean.flatten(1), post_mean, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(post.covariance(), post_cov, rtol=1e-8, atol=1e-10)
    # the posterior density too
    u_test = grf.sample(3, seed=11)
    ref = [multivariate_normal(post_mean[i].numpy(), post_cov.numpy()).logpdf(
        u_test[i].flatten().numpy()) for i in range(3)]
    np.testing.assert_allclose(post.log_prob(u_test).numpy(), ref, rtol=0, atol=1e-7)


def test_heat_posterior_samples_have_posterior_moments() -> None:
    grf = GaussianRandomField(8, 1, slope=2.0)
    heat = HeatEquation(8, 1, kappa=0.02, tau=0.5, grf=grf)
    y = heat.observe(grf.sample(1, seed=12), 0.2, seed=13).expand(3000, 8)
    post = heat.posterior(y, 0.2)
    draws = post.sample(seed=14)
    var = post.covariance().diagonal()
    err = (draws.mean(0) - post.mean[0]).abs()
    assert (err < 5 * (var / 3000).sqrt()).all()
    assert ((draws.var(0) - var).abs() < 5 * var * math.sqrt(2 / 3000)).all()


# ---------------------------------------------------------------------- Navier-Stokes
def _grid(ns: NavierStokes2D) -> tuple[torch.Tensor, torch.Tensor]:
    x = ns.coordinates()
    return x[None, :], x[:, None]   # X varies along the last axis, Y along the first


def test_navier_stokes_taylor_green_decays_exactly() -> None:
    """omega = 2 sin x sin y: the advection vanishes and omega(t) = omega(0) exp(-2 nu t)."""
    ns = NavierStokes2D(16)
    x, y = _grid(ns)
    omega0 = (2 * torch.sin(x) * torch.sin(y))[None].repeat(2, 1, 1)
    params = ns.parameters(2, reynolds=torch.tensor([10.0, 50.0]))
    out = ns.solve(omega0, 1.5, params)
    nu = torch.tensor([0.1, 0.02], dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(out, omega0 * torch.exp(-2 * nu * 1.5), rtol=0, atol=1e-12)


def test_navier_stokes_advection_matches_analytic_derivatives() -> None:
    """u . grad(omega) for psi = sin x cos 2y + cos(3x + y) / 2, derivatives by autograd."""
    ns = NavierStokes2D(32)
    xg, yg = _grid(ns)
    xx = xg.expand(32, 32).clone().requires_grad_(True)
    yy = yg.expand(32, 32).clone().requires_grad_(True)
    psi = torch.sin(xx) * torch.cos(2 * yy) + 0.5 * torch.cos(3 * xx + yy)
    omega = 5 * torch.sin(xx) * torch.cos(2 * yy) + 5 * torch.cos(3 * xx + yy)  # -Lap psi
    u = torch.autograd.grad(psi.sum(), yy, create_graph=True)[0]
    v = -torch.autograd.grad(psi.sum(), xx, create_graph=True)[0]
    w_x, w_y = torch.autograd.grad(omega.sum(), (xx, yy))
    exact = (u * w_x + v * w_y).detach()
    torch.testing.assert_close(ns.advection(omega.detach()[None])[0], exact, rtol=0, atol=1e-11)
    u_num, v_num = ns.velocity(omega.detach()[None])
    torch.testing.assert_close(u_num[0], u.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(v_num[0], v.detach(), rtol=0, atol=1e-12)


def test_navier_stokes_laminar_kolmogorov_flow_from_rest() -> None:
    """From rest the shear mode obeys w' = -(nu k_f^2 + mu) w - A k_f cos(k_f y) exactly.

    Lawson-RK4 integrates the linear part exactly; its error on the constant forcing is
    O(dt^4): at dt = 0.05 and rate r = nu k_f^2 + mu <= 1.0 it is <= r^4 dt^4 t ~ 1e-5 of
    the amplitude at worst; we measured 1e-10 and require 1e-8.
    """
    ns = NavierStokes2D(16)
    _, y = _grid(ns)
    params = ns.parameters(2, reynolds=torch.tensor([10.0, 20.0]), drag=0.1,
                           forcing_amplitude=torch.tensor([1.0, 0.5]),
                           forcing_wavenumber=torch.tensor([2.0, 3.0]))
    out = ns.solve(torch.zeros(2, 16, 16, dtype=torch.float64), 2.0, params, dt=0.05)
    kf, amp = params.forcing_wavenumber, params.forcing_amplitude
    rate = params.viscosity * kf**2 + params.drag
    exact = -amp * kf * torch.cos(kf * y[None]) / rate * (1 - torch.exp(-rate * 2.0))
    err = (out - exact).abs().max() / exact.abs().max()
    assert err.item() < 1e-8


def test_navier_stokes_inviscid_conservation() -> None:
    """nu = mu = f = 0: the 2/3-truncated system conserves E and Z exactly in time; the
    drift is the RK4 error, which must fall at least 8x (order >= 3) per halving of dt from
    dt = 0.05 (CFL ~ 0.4; measured ratios 20-30) and stay below 1e-7 relative at dt = 0.0125;
    the box-mean vorticity is invariant to round-off (its Fourier mode is never touched)."""
    ns = NavierStokes2D(32)
    w0 = GaussianRandomField(32, 2, slope=4.0).sample(2, seed=15)
    w0 = w0 / w0.std() + torch.tensor([0.0, 0.7], dtype=torch.float64)[:, None, None]
    params = ns.parameters(2, reynolds=math.inf)
    w0 = ns.solve(w0, 0.0, params)          # projection onto the de-aliased band
    e0, z0 = ns.energy(w0), ns.enstrophy(w0)
    drifts = []
    for dt in (0.05, 0.025, 0.0125):
        w = ns.solve(w0, 1.0, params, dt=dt)
        drifts.append(max(((ns.energy(w) - e0) / e0).abs().max().item(),
                          ((ns.enstrophy(w) - z0) / z0).abs().max().item()))
        torch.testing.assert_close(w.mean(dim=(-2, -1)), w0.mean(dim=(-2, -1)), rtol=0,
                                   atol=1e-13)
        assert (w - w0).abs().max() > 0.1   # the flow did evolve nonlinearly
    assert drifts[0] / drifts[1] > 8 and drifts[1] / drifts[2] > 8, drifts
    assert drifts[2] < 1e-7, drifts


def test_navier_stokes_resample_is_exact_for_band_limited_fields() -> None:
    ns = NavierStokes2D(16)
    x, y = _grid(ns)
    w = (torch.sin(3 * x) * torch.cos(2 * y) + 0.3)[None]
    fine = sims.resample(w, 48)
    xf = torch.arange(48, dtype=torch.float64) * 2 * math.pi / 48
    exact = (torch.sin(3 * xf[None, :]) * torch.cos(2 * xf[:, None]) + 0.3)[None]
    torch.testing.assert_close(fine, exact, rtol=0, atol=1e-13)
    torch.testing.assert_close(sims.resample(fine, 16), w, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------- Gray-Scott
def test_gray_scott_homogeneous_state_is_fixed() -> None:
    gs = GrayScott(16, dt=1.0)
    u0 = torch.ones(2, 16, 16, dtype=torch.float64)
    u, v = gs.solve(u0, torch.zeros_like(u0), 50.0, feed=torch.tensor([0.03, 0.05]), kill=0.06)
    torch.testing.assert_close(u, u0, rtol=0, atol=1e-14)
    assert v.abs().max().item() < 1e-14


def test_gray_scott_linear_modes_decay_at_analytic_rate() -> None:
    """Around (1, 0): du_k ~ exp(-(D_u k^2 + F) t), dv_k ~ exp(-(D_v k^2 + F + k) t).

    The neglected terms are quadratic in the perturbation (eps_v^2 t = 1e-13 against a
    mode of size ~3e-8 at time t, so ~3e-6 relative; round-off of u ~ 1 adds ~1e-15), and
    ETDRK2 integrates the linear part exactly: we require 1e-4 relative.
    """
    length, n, feed, kill, t = 10.0, 16, 0.03, 0.06, 10.0
    gs = GrayScott(n, length=length, diffusion_u=0.2, diffusion_v=0.1, dt=0.5)
    x = gs.coordinates()
    eps_u, eps_v, mu_, mv = 1e-6, 1e-7, 2, 1
    du0 = eps_u * torch.cos(2 * math.pi * mu_ * x / length)[None, None, :].expand(1, n, n)
    dv0 = eps_v * torch.sin(2 * math.pi * mv * x / length)[None, :, None].expand(1, n, n)
    u, v = gs.solve(1.0 + du0, dv0, t, feed=feed, kill=kill)
    rate_u = 0.2 * (2 * math.pi * mu_ / length) ** 2 + feed
    rate_v = 0.1 * (2 * math.pi * mv / length) ** 2 + feed + kill
    torch.testing.assert_close(u - 1.0, du0 * math.exp(-rate_u * t), rtol=0,
                               atol=1e-4 * eps_u * math.exp(-rate_u * t))
    torch.testing.assert_close(v, dv0 * math.exp(-rate_v * t), rtol=0,
                               atol=1e-4 * eps_v * math.exp(-rate_v * t))


def test_gray_scott_well_mixed_kinetics_second_order() -> None:
    """A uniform state follows the reaction ODE; ETDRK2's error falls ~4x per halving of dt."""
    feed, kill = 0.03, 0.06

    def rhs(_t: float, z: np.ndarray) -> list[float]:
        return [-z[0] * z[1] ** 2 + feed * (1 - z[0]), z[0] * z[1] ** 2 - (feed + kill) * z[1]]

    ref = solve_ivp(rhs, (0, 20), [0.5, 0.25], rtol=1e-12, atol=1e-14).y[:, -1]
    errs = []
    for dt in (1.0, 0.5, 0.25):
        gs = GrayScott(8, dt=dt)
        start = torch.full((1, 8, 8), 0.5, dtype=torch.float64)
        u, v = gs.solve(start, start / 2, 20.0, feed=feed, kill=kill)
        assert (u - u[0, 0, 0]).abs().max().item() < 1e-14   # stays uniform
        errs.append(abs(u[0, 0, 0].item() - ref[0]) + abs(v[0, 0, 0].item() - ref[1]))
    assert 3.0 < errs[0] / errs[1] < 5.0 and 3.0 < errs[1] / errs[2] < 5.0, errs
    assert errs[2] < 1e-4


# ---------------------------------------------------------------------- registry
FAST = {
    "grf": {},
    "lognormal": {"mu": 0.5},
    "heat": {"tau": 0.2},
    "navier_stokes": {"spinup_time": 0.5, "relax_time": 0.2, "spinup_size": 16},
    "gray_scott": {"time": 20.0},
}
FIELDS = {"grf": ["field"], "lognormal": ["field"], "heat": ["u0", "u_tau"],
          "navier_stokes": ["vorticity"], "gray_scott": ["u", "v"]}
PER_SAMPLE = {"grf": ["slope", "amplitude"], "lognormal": ["slope", "amplitude", "mu"],
              "heat": ["slope", "amplitude"],
              "navier_stokes": ["reynolds", "forcing_amplitude", "forcing_wavenumber", "drag"],
              "gray_scott": ["F", "k"]}


def test_available_lists_all_simulators() -> None:
    assert sims.available() == ["ar1", "gray_scott", "grf", "heat", "lognormal", "lorenz96", "navier_stokes",
                                "navier_stokes_trajectory"]


@pytest.mark.parametrize("name", sorted(FAST))
def test_make_layout_and_netcdf_round_trip(name: str, tmp_path) -> None:
    ds = sims.make(name, 5, size=16, seed=3, progress=False, **FAST[name])
    for var in FIELDS[name]:
        assert ds[var].dims == ("sample", "y", "x")
        assert ds[var].shape == (5, 16, 16)
        assert ds[var].dtype == np.float32
        assert np.isfinite(ds[var].values).all()
        assert ds[var].attrs["units"] and ds[var].attrs["long_name"]
    for var in PER_SAMPLE[name]:
        assert ds[var].dims == ("sample",)
        assert ds[var].attrs["units"] and ds[var].attrs["long_name"]
    for c in ("x", "y"):
        assert ds[c].attrs["units"] and ds[c].attrs["long_name"]
        np.testing.assert_allclose(np.diff(ds[c].values), ds[c].values[1])
    assert ds.attrs["simulator"] == name and ds.attrs["seed"] == 3
    assert ds.attrs["scidiff_version"] == __version__
    json.loads(ds.attrs["parameters"])
    path = tmp_path / f"{name}.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        xr.testing.assert_identical(back.load(), ds)
    again = sims.make(name, 5, size=16, seed=3, progress=False, **FAST[name])
    xr.testing.assert_identical(again, ds)


@pytest.mark.parametrize("dims,names", [(1, ("sample", "x")), (3, ("sample", "z", "y", "x"))])
def test_make_grf_other_dimensions(dims: int, names: tuple[str, ...]) -> None:
    ds = sims.make("grf", 3, size=8, dims=dims, progress=False)
    assert ds["field"].dims == names
    assert set(ds.coords) == {"sample", *names[1:]}


def test_make_grf_parameters_give_exact_density_and_unit_variance() -> None:
    ds = sims.make("grf", 6, size=8, seed=4, slope=(1.5, 3.5), dtype="float64", progress=False)
    slopes = ds["slope"].values
    assert ((slopes >= 1.5) & (slopes <= 3.5)).all() and np.ptp(slopes) > 0
    x = torch.from_numpy(ds["field"].values)
    for i in range(6):
        grf = GaussianRandomField(8, 2, slope=float(slopes[i]),
                                  amplitude=float(ds["amplitude"][i]))
        assert grf.spectrum().mean().item() == pytest.approx(1.0, rel=1e-12)
        ref = _scipy_log_prob(x[i:i + 1], grf.covariance())
        assert grf.log_prob(x[i:i + 1]).item() == pytest.approx(ref[0], abs=1e-8)


def test_make_navier_stokes_reynolds_range_and_forcing_range() -> None:
    ds = sims.make("navier_stokes", 4, size=16, seed=1, progress=False, reynolds=(50.0, 200.0),
                   forcing_wavenumber=(2, 4), spinup_time=0.2, relax_time=0.1, spinup_size=16)
    re = ds["reynolds"].values
    assert ((re >= 50) & (re <= 200)).all()
    assert set(ds["forcing_wavenumber"].values) <= {2.0, 3.0, 4.0}


@pytest.mark.parametrize("call,match", [
    (lambda: sims.make("nope", 3), "unknown simulator 'nope'"),
    (lambda: sims.make("grf", 3, colour=1), "unknown option"),
    (lambda: sims.make("grf", 0), "n must be"),
    (lambda: sims.make("grf", 3, slope=(3.0, 2.0)), "slope range"),
    (lambda: sims.make("grf", 3, dims=4), "dims must be"),
    (lambda: sims.make("grf", 3, variance=-1.0), "variance"),
    (lambda: sims.make("grf", 3, dtype="float16"), "dtype"),
    (lambda: sims.make("navier_stokes", 3, reynolds=-5.0), "reynolds"),
    (lambda: sims.make("navier_stokes", 3, forcing_wavenumber=2.5), "forcing_wavenumber"),
    (lambda: sims.make("gray_scott", 3, F=-0.1), "F must be"),
    (lambda: sims.make("gray_scott", 3, k="fast"), "k must be a number"),
    (lambda: sims.make("heat", 3, kappa=0.0), "kappa"),
    (lambda: GaussianRandomField(1), "size"),
    (lambda: GaussianRandomField(8, amplitude=-1.0), "amplitude"),
    (lambda: GaussianRandomField(8, slope=float("nan")), "slope"),
    (lambda: GaussianRandomField(8).log_prob(torch.zeros(2, 7, 8)), "x must have shape"),
    (lambda: NavierStokes2D(16, cfl=3.0), "cfl"),
    (lambda: HeatEquation(8, 2, grf=GaussianRandomField(6, 2)), "same grid"),
])
def test_bad_parameters_raise_clear_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
