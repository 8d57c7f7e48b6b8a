"""Trajectories: the linear-Gaussian AR(1) system in closed form, the Markov-blanket composition,
the Kalman smoother, assimilation through the guidance, emulation, Lorenz-96, files.

Everything statistical uses fixed seeds and float64, with tolerances from the sample size
(chi-square quantiles for means and variances); the composition's own error, measured in
``docs/trajectories.md``, is added where a composed score is sampled.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import scidiff as sd
from scidiff.data import DataError
from scidiff.guidance import DPSGuidance, MMPSGuidance
from scidiff.guidance.operators import MatrixOperator, SparseSensors
from scidiff.simulators import AR1Field, Lorenz96, NavierStokes2D
from scidiff.trajectories import (
    ExactScore, MarkovBlanketScore, StackedWindowScore, StateObservation, WindowDataset,
    autoregressive_rollout, compose_windows, every_nth, from_layout, gaussian_conditional, kalman_smoother,
    open_trajectories, to_layout, trajectories_layout, unfold_windows, window_fields, write_trajectories,
)

F64 = torch.float64


def _system(size: int = 8) -> AR1Field:
    return AR1Field(size, 1, slope=2.0, tau=0.5, kappa=0.002, dt=0.2)


def _full_operator(obs: StateObservation) -> torch.Tensor:
    """The trajectory operator as one dense matrix [T M, L D] (state-major flattening)."""
    H = obs.matrix()
    m, d = H.shape
    full = torch.zeros(len(obs.times) * m, obs.length * d, dtype=F64)
    for j, k in enumerate(obs.times):
        full[j * m:(j + 1) * m, k * d:(k + 1) * d] = H
    return full


def _assimilation_problem(length: int = 10):
    """AR(1) field of 8 points, 2 point sensors every 4th state, noise 0.1: (system, obs, y, exact posterior)."""
    p = _system()
    obs = StateObservation(SparseSensors(torch.tensor([[0, 1], [0, 5]]), (1, 8)), every_nth(length, 4), length, (1, 8))
    truth = p.sample(1, length, seed=3)[:, :, None]
    g = torch.Generator().manual_seed(5)
    y = obs(truth)[0] + 0.1 * torch.randn(obs(truth)[0].shape, dtype=F64, generator=g)
    mu, P = gaussian_conditional(p.covariance(length), _full_operator(obs), y.reshape(-1), torch.tensor(0.01))
    return p, obs, y, mu, P


def _check_posterior_samples(x: torch.Tensor, mu: torch.Tensor, P: torch.Tensor, *, bias: float = 0.0) -> None:
    """Sample mean and variances of x [B, D] against N(mu, P): the mean's Mahalanobis distance by
    its chi-square law (when ``bias`` is 0), every mean within bias + 4.5 standard errors (in
    posterior sds), every variance within the chi-square 1e-4 / D quantiles (x (1 +- 2 bias))."""
    b, d = x.shape
    sd_post = P.diagonal().sqrt()
    err = x.mean(0) - mu
    if bias == 0.0:
        chi2 = float(err @ torch.linalg.solve(P / b, err))
        assert chi2 < stats.chi2.ppf(1 - 1e-4, d), chi2
    assert float((err.abs() / sd_post).max()) < bias + 4.5 / math.sqrt(b)
    ratio = x.var(0) / P.diagonal()
    lo, hi = stats.chi2.ppf([1e-4 / d, 1 - 1e-4 / d], b - 1) / (b - 1)
    assert float(ratio.min()) > lo * (1 - 2 * bias) and float(ratio.max()) < hi * (1 + 2 * bias), (ratio.min(), ratio.max())


# ---------------------------------------------------------------------- the AR(1) system
def test_ar1_lag_covariance_matches_closed_form() -> None:
    p = _system()
    n = 20000
    x = p.sample(n, 4, seed=0).flatten(2)                       # [n, 4, 8]
    for lag in (0, 1, 3):
        exact = p.lag_covariance(lag)
        emp = (x[:, lag, :, None] * x[:, 0, None, :]).mean(0)
        var = p.lag_covariance(0).diagonal()
        se = ((var[:, None] * var[None, :] + exact**2) / n).sqrt()   # Gaussian sampling sd of a covariance
        assert float(((emp - exact) / se).abs().max()) < 5.0, lag
    # stationary: the marginal of every state is the GRF covariance C
    assert torch.allclose(p.lag_covariance(0), p.grf.covariance(), atol=1e-12)


@pytest.mark.parametrize("dims,size", [(1, 8), (2, 4)])
def test_ar1_density_and_score_match_dense_gaussian(dims: int, size: int) -> None:
    p = AR1Field(size, dims, slope=3.0, tau=0.7, kappa=0.01, dt=0.3)
    length = 5
    x = p.sample(3, length, seed=1)
    cov = p.covariance(length)
    for alpha, sigma in ((1.0, 0.0), (0.8, 0.6), (0.1, 0.995)):
        cov_t = alpha**2 * cov + sigma**2 * torch.eye(cov.shape[0], dtype=F64)
        mvn = torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0], dtype=F64), cov_t)
        assert torch.allclose(p.marginal_log_prob(x, alpha, sigma), mvn.log_prob(x.flatten(1)), atol=1e-9)
        exact = -torch.linalg.solve(cov_t, x.flatten(1).T).T
        assert torch.allclose(p.marginal_score(x, alpha, sigma).flatten(1), exact, atol=1e-9 * exact.abs().max())
    # the channel axis is accepted and kept
    assert p.score(x[:, :, None]).shape == (3, length, 1, *p.spatial_shape)


def test_ar1_state_space_generates_the_same_law() -> None:
    p = _system()
    F, Q, P0 = p.state_space()
    # stationarity of the dense model: P = F P F^T + Q with P = C
    assert torch.allclose(F @ P0 @ F.T + Q, P0, atol=1e-12)
    assert torch.allclose(F @ P0, p.lag_covariance(1), atol=1e-12)


# ---------------------------------------------------------------------- the composition
def test_unfold_and_compose_windows() -> None:
    x = torch.arange(2 * 9, dtype=F64).reshape(2, 9, 1)
    w = unfold_windows(x, 5)
    assert w.shape == (2, 5, 5, 1) and torch.equal(w[:, 2], x[:, 2:7])
    # composing the windows themselves gives back the trajectory (each state from its own slot)
    assert torch.equal(compose_windows(w, 9), x)
    assert torch.equal(compose_windows(unfold_windows(x, 9), 9), x)
    with pytest.raises(ValueError, match="longer than the trajectory"):
        unfold_windows(x, 11)
    with pytest.raises(ValueError, match="odd"):
        MarkovBlanketScore(lambda x, t: x, 4)


def _relative_error(window: int, t: float, n: int = 500, length: int = 12) -> float:
    p = _system()
    sde = sd.VPSDE()
    exact = ExactScore(p, sde)
    x0 = p.sample(n, length, seed=2)[:, :, None]
    tt = torch.full((n,), t, dtype=F64)
    c = sde.coefficients(tt)
    x_t = c.alpha[0] * x0 + c.sigma[0] * torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    ref = exact(x_t, tt)
    comp = MarkovBlanketScore(exact, window)(x_t, tt)
    return float((comp - ref).pow(2).sum() / ref.pow(2).sum()) ** 0.5


def test_composition_is_exact_at_t0_for_a_markov_chain() -> None:
    """AR(1) is Markov of order 1: every window of W >= 3 holds the Markov blanket of its centre."""
    for window in (3, 5, 7):
        assert _relative_error(window, 0.0) < 1e-12
    assert _relative_error(1, 0.0) > 0.3          # W = 1 drops the neighbours: not the joint score


def test_composition_is_approximate_above_t0_and_improves_with_w() -> None:
    """The noised trajectory is not Markov: the error is positive for t > 0, shrinks with W and as t -> 0."""
    for t in (0.05, 0.3):
        errors = [_relative_error(w, t) for w in (3, 5, 7, 9)]
        assert errors[0] > 1e-3
        assert all(a > 1.5 * b for a, b in zip(errors, errors[1:])), errors
    assert _relative_error(3, 1e-3) < 0.1 * _relative_error(3, 0.05)


def test_markov_blanket_score_is_one_batched_call() -> None:
    p = _system()
    sde = sd.VPSDE()
    calls = []

    def window_score(x, t):
        calls.append(x.shape[0])
        return ExactScore(p, sde)(x, t)

    x = torch.randn(3, 11, 1, 8, dtype=F64)
    t = torch.full((3,), 0.4, dtype=F64)
    score = MarkovBlanketScore(window_score, 5)
    out = score(x, t)
    assert calls == [3 * (11 - 5 + 1)] and score.windows_per_trajectory(11) == 7
    chunked = MarkovBlanketScore(window_score, 5, max_windows=4)(x, t)
    assert torch.allclose(out, chunked, atol=1e-14)
    # with L = W the composition is the window score itself
    assert torch.allclose(MarkovBlanketScore(window_score, 5)(x[:, :5], t), window_score(x[:, :5], t), atol=1e-14)


# ---------------------------------------------------------------------- the Kalman smoother
def test_rts_smoother_equals_dense_gaussian_conditioning() -> None:
    p, obs, y, mu, P = _assimilation_problem()
    F, Q, P0 = p.state_space()
    res = kalman_smoother(F, Q, P0, obs.length, obs.linear_observations(y, 0.1))
    assert torch.allclose(res.mean.reshape(-1), mu, atol=1e-8)
    dense_var = P.diagonal().reshape(obs.length, -1)
    assert torch.allclose(res.std**2, dense_var, atol=1e-8)
    # log-evidence against the marginal N(0, H Sigma H^T + R) of y
    H = _full_operator(obs)
    s = H @ p.covariance(obs.length) @ H.T + 0.01 * torch.eye(H.shape[0], dtype=F64)
    log_y = torch.distributions.MultivariateNormal(torch.zeros(H.shape[0], dtype=F64), s).log_prob(y.reshape(-1))
    assert torch.allclose(res.log_evidence, log_y, atol=1e-8)
    with pytest.raises(ValueError, match="outside the trajectory"):
        kalman_smoother(F, Q, P0, 3, obs.linear_observations(y, 0.1))


# ---------------------------------------------------------------------- assimilation
def test_mmps_with_the_exact_score_is_the_exact_posterior_score() -> None:
    p, obs, y, mu, P = _assimilation_problem()
    sde = sd.VPSDE()
    guided = MMPSGuidance(ExactScore(p, sde), sde, obs, y, 0.1, cg_steps=8)
    x = torch.randn(4, obs.length, 1, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(mu.numel(), dtype=F64)
    for t in (0.02, 0.3, 0.8):
        tt = torch.full((4,), t, dtype=F64)
        c = sde.coefficients(tt)
        a, s = float(c.alpha[0]), float(c.sigma[0])
        exact = -torch.linalg.solve(a * a * P + s * s * eye, (x.flatten(1) - a * mu).T).T
        assert torch.allclose(guided(x, tt).flatten(1), exact, atol=1e-6 * exact.abs().max()), t


def test_conjugate_gradient_floor_is_inert_for_a_covariance_and_bounds_an_indefinite_one() -> None:
    """CG with the curvature floor D: M = D + B B^T is solved exactly as without it; along a direction
    where M is nearly singular plain CG's step is huge, the floored one stays within |b| / min D;
    along a negative curvature neither steps."""
    from scidiff.guidance.mmps import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    n = 6
    d = 0.05 + torch.rand(n, dtype=F64, generator=g)
    b_mat = torch.randn(n, 3, dtype=F64, generator=g)
    m = torch.diag(d) + b_mat @ b_mat.T
    b = torch.randn(2, n, dtype=F64, generator=g)
    exact = torch.linalg.solve(m, b.T).T
    for floor in (None, d[None]):
        u = conjugate_gradient(lambda v: v @ m, b, n, floor=floor)
        assert torch.allclose(u, exact, atol=1e-9 * exact.abs().max())
    # an indefinite "Sigma_y" (a learned V may be): M v = 1e-12 v along v
    v = torch.randn(n, dtype=F64, generator=g)
    v = v / v.norm()
    m_bad = torch.diag(d) - (v @ torch.diag(d) @ v - 1e-12) * torch.outer(v, v)
    assert float(v @ m_bad @ v) == pytest.approx(1e-12, abs=1e-14)
    rhs = v[None]
    plain = conjugate_gradient(lambda x: x @ m_bad, rhs, 1)
    floored = conjugate_gradient(lambda x: x @ m_bad, rhs, 1, floor=d[None])
    assert float(plain.norm()) > 1e9
    assert float(floored.norm()) <= 1.0 / float(d.min()) * (1 + 1e-12)
    # along a direction of negative curvature no step is taken, with or without the floor
    m_neg = torch.diag(d) - (v @ torch.diag(d) @ v + 1.0) * torch.outer(v, v)
    assert float(v @ m_neg @ v) == pytest.approx(-1.0)
    for floor in (None, d[None]):
        assert float(conjugate_gradient(lambda x: x @ m_neg, rhs, 1, floor=floor).abs().max()) == 0.0


def test_dps_takes_the_trajectory_operator() -> None:
    """DPS over a StateObservation equals DPS over the same operator written as one matrix."""
    p, obs, y, _, _ = _assimilation_problem()
    sde = sd.VPSDE()
    prior = MarkovBlanketScore(ExactScore(p, sde), 5)
    x = torch.randn(3, obs.length, 1, 8, dtype=F64)
    t = torch.full((3,), 0.3, dtype=F64)
    for inflation in (None, 1.0):
        a = DPSGuidance(prior, sde, obs, y, 0.1, inflation=inflation)(x, t)
        b = DPSGuidance(prior, sde, MatrixOperator(_full_operator(obs)), y.reshape(-1), 0.1, inflation=inflation)(x, t)
        assert torch.allclose(a, b, atol=1e-10)


def test_posterior_samples_match_the_kalman_smoother() -> None:
    """PF-ODE samples of the MMPS-guided exact trajectory score against the RTS posterior."""
    p, obs, y, mu, P = _assimilation_problem()
    sde = sd.VPSDE()
    guided = MMPSGuidance(ExactScore(p, sde), sde, obs, y, 0.1, cg_steps=6)
    x = sd.sample(guided, sde, (800, obs.length, 1, 8), "ode", generator=torch.Generator().manual_seed(0),
                  dtype=F64, progress=False)
    _check_posterior_samples(x.flatten(1), mu, P)


def test_posterior_from_composed_window_scores_matches_within_composition_error() -> None:
    """The same with the composition of exact W = 7 window scores.  Measured with 8000 samples
    (docs/trajectories.md) its largest mean error is 0.059 posterior sd (0.17 for W = 5, 0.48 for
    W = 3; sampling noise alone about 0.03): 0.06 is allowed for the composition's bias."""
    p, obs, y, mu, P = _assimilation_problem()
    sde = sd.VPSDE()
    prior = MarkovBlanketScore(ExactScore(p, sde), 7)
    guided = MMPSGuidance(prior, sde, obs, y, 0.1, cg_steps=6)
    x = sd.sample(guided, sde, (400, obs.length, 1, 8), "ode", generator=torch.Generator().manual_seed(1),
                  dtype=F64, progress=False)
    _check_posterior_samples(x.flatten(1), mu, P, bias=0.06)


def test_state_observation_rejects_bad_input() -> None:
    op = SparseSensors(torch.tensor([[0, 1]]), (1, 8))
    with pytest.raises(ValueError, match=r"observation times \[12\] lie outside the trajectory of 10 states"):
        StateObservation(op, [0, 12], 10, (1, 8))
    with pytest.raises(ValueError, match="does not accept states of shape"):
        StateObservation(op, [0], 10, (1, 16))
    obs = StateObservation(op, [0, 3], 10, (1, 8))
    with pytest.raises(ValueError, match="built for trajectories"):
        obs(torch.zeros(2, 9, 1, 8))
    assert obs(torch.arange(80.0).reshape(1, 10, 1, 8)).tolist() == [[[1.0], [25.0]]]


# ---------------------------------------------------------------------- emulation
def test_autoregressive_rollout_keeps_the_stationary_law() -> None:
    """Rollout with the exact W = 3 window score from stationary first states: the lag-1
    covariance and the variance at the last lead time match the closed form."""
    p = _system()
    sde = sd.VPSDE()
    n = 400
    x_past = p.sample(n, 1, seed=7)[:, :, None]
    out = autoregressive_rollout(ExactScore(p, sde), sde, x_past, 5, window=3, noise_std=1e-3, cg_steps=8,
                                 generator=torch.Generator().manual_seed(2), rtol=1e-4, atol=1e-4)
    assert out.shape == (n, 5, 1, 8) and torch.equal(out[:, 0], x_past[:, 0])
    x = out[:, :, 0]
    var = p.lag_covariance(0).diagonal()
    for lag in (0, 1):
        exact = p.lag_covariance(lag).diagonal()
        emp = (x[:, -1] * x[:, -1 - lag]).mean(0)
        se = ((var * var + exact**2) / n).sqrt()
        assert float(((emp - exact) / se).abs().max()) < 5.0, lag


# ---------------------------------------------------------------------- window data
def test_window_data_and_layouts() -> None:
    x = torch.randn(3, 7, 2, 4, dtype=F64)
    ds = WindowDataset(x, 3)
    assert len(ds) == 3 * 5
    assert torch.equal(ds[7], x[1, 2:5].reshape(6, 4))
    fields = window_fields(x, 3)
    assert fields.shape == (15, 6, 4) and torch.equal(fields[7], ds[7])
    axis = window_fields(x, 3, layout="axis")
    assert axis.shape == (15, 2, 3, 4) and torch.equal(axis[7], x[1, 2:5].transpose(0, 1))
    w = unfold_windows(x, 3).reshape(-1, 3, 2, 4)
    for layout in ("channels", "axis"):
        assert torch.equal(from_layout(to_layout(w, layout), layout, 3), w)
    with pytest.raises(ValueError, match="longer than the trajectory"):
        WindowDataset(x, 9)


def test_stacked_window_score_is_the_window_score() -> None:
    """A score network on states stacked as channels, read back through StackedWindowScore."""
    p = _system()
    sde = sd.VPSDE()
    exact = ExactScore(p, sde)

    def stacked_net_score(x, t):                 # [B, W, *spatial] channels = W states of 1 channel
        return exact(x[:, :, None], t)[:, :, 0]

    x = torch.randn(4, 5, 1, 8, dtype=F64)
    t = torch.full((4,), 0.2, dtype=F64)
    assert torch.allclose(StackedWindowScore(stacked_net_score)(x, t), exact(x, t), atol=1e-14)


# ---------------------------------------------------------------------- Lorenz-96
def test_lorenz96_advection_conserves_energy() -> None:
    model = Lorenz96(40)
    x = 5.0 * torch.randn(16, 40, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert float((x * model.advection(x)).sum(-1).abs().max()) < 1e-11
    # the pure advection flow dx/dt = N(x), integrated by RK4, keeps E to the integrator's accuracy
    z = x.clone()
    h = 1e-3
    for _ in range(200):
        k1 = model.advection(z)
        k2 = model.advection(z + 0.5 * h * k1)
        k3 = model.advection(z + 0.5 * h * k2)
        k4 = model.advection(z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    rel = (model.energy(z) - model.energy(x)).abs() / model.energy(x)
    assert float(rel.max()) < 1e-6


def test_lorenz96_rk4_is_fourth_order() -> None:
    x0 = Lorenz96(40).initial_state(4, seed=1) + torch.randn(4, 40, dtype=F64, generator=torch.Generator().manual_seed(1))
    ref = Lorenz96(40, dt=1e-4).solve(x0, 0.5)
    errs = [float((Lorenz96(40, dt=h).solve(x0, 0.5) - ref).abs().max()) for h in (0.02, 0.01)]
    order = math.log2(errs[0] / errs[1])
    assert 3.6 < order < 4.4, (errs, order)


def test_lorenz96_attractor_statistics() -> None:
    """F = 8, N = 40: climatological mean about 2.34 and standard deviation about 3.63 per variable."""
    model = Lorenz96(40)
    x = model.solve(model.initial_state(64, seed=0), 10.0)
    traj = model.trajectory(x, 120, 0.5)
    assert abs(float(traj.mean()) - 2.34) < 0.1
    assert abs(float(traj.std()) - 3.63) < 0.1


# ---------------------------------------------------------------------- Navier-Stokes trajectories
def test_navier_stokes_trajectory_follows_the_linear_decay_of_a_single_mode() -> None:
    """A single Fourier mode has no advection (u . grad omega = 0): omega(t) = exp(-(nu k^2 + mu) t) omega(0)."""
    solver = NavierStokes2D(16)
    params = solver.parameters(2, reynolds=50.0, drag=0.1, forcing_amplitude=0.0)
    y = solver.coordinates()
    omega0 = torch.cos(3.0 * y)[None, :, None].expand(2, 16, 16).to(F64).clone()
    traj = solver.trajectory(omega0, 4, 0.5, params)
    times = torch.arange(4, dtype=F64) * 0.5
    exact = torch.exp(-(9.0 / 50.0 + 0.1) * times)[None, :, None, None] * omega0[:, None]
    assert traj.shape == (2, 4, 16, 16)
    assert torch.allclose(traj, exact, atol=1e-6)


# ---------------------------------------------------------------------- files and the registry
def test_registry_ar1_file_round_trip_keeps_time_and_units(tmp_path) -> None:
    ds = sd.simulators.make("ar1", 3, size=8, seed=0, progress=False, states=6, interval=0.25, dtype="float64")
    assert ds["field"].dims == ("sample", "time", "x")
    assert ds["time"].attrs["units"] == "model time unit"
    path = tmp_path / "ar1.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    tr = open_trajectories(path, "field")
    assert tr.x.shape == (3, 6, 1, 8) and tr.time_units == "model time unit"
    assert np.allclose(tr.time, 0.25 * np.arange(6)) and tr.interval == pytest.approx(0.25)
    assert np.array_equal(tr.x[:, :, 0].numpy(), ds["field"].values)
    # and back out, through the writer, with the same layout
    out = write_trajectories(tmp_path / "copy.nc", tr.x, **trajectories_layout(tr), attrs={"source": "test"})
    again = open_trajectories(out, ["field"])
    assert torch.equal(again.x, tr.x) and again.time_units == tr.time_units and np.array_equal(again.time, tr.time)
    with pytest.raises(DataError, match="has no dim named 'lead'"):
        open_trajectories(path, "field", time_dim="lead")


def test_plain_hdf5_trajectories_with_named_dims(tmp_path) -> None:
    import h5py

    values = np.random.default_rng(0).normal(size=(2, 8, 5, 3)).astype(np.float64)   # sample, x, time, channel-less
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["u"] = values
    tr = open_trajectories(path, "u", dims=("sample", "x", "step", "y"), time_dim="step")
    assert tr.x.shape == (2, 5, 1, 8, 3) and np.array_equal(tr.x[:, :, 0].numpy(), values.transpose(0, 2, 1, 3))
    assert np.array_equal(tr.time, np.arange(5))


def test_trajectory_simulators_in_the_registry() -> None:
    l96 = sd.simulators.make("lorenz96", 2, size=40, seed=0, progress=False, states=5, spinup=1.0)
    assert l96["state"].dims == ("sample", "time", "x") and l96["state"].shape == (2, 5, 40)
    assert np.allclose(l96["time"].values, 0.05 * np.arange(5))
    ns = sd.simulators.make("navier_stokes_trajectory", 1, size=16, seed=0, progress=False, states=3, interval=0.25,
                            spinup_time=0.5, spinup_size=16, relax_time=0.0)
    assert ns["vorticity"].dims == ("sample", "time", "y", "x") and ns["vorticity"].shape == (1, 3, 16, 16)
    assert "units" in ns["time"].attrs


# ---------------------------------------------------------------------- the command line
def test_cli_trajectory_path(tmp_path, capsys) -> None:
    """data make -> trajectory train -> sample -> assimilate, files with time coordinates and provenance."""
    import xarray as xr

    from scidiff.cli import main

    data = tmp_path / "ar1.nc"
    assert main(["data", "make", "ar1", "--n", "16", "--size", "8", "--param", "states=8", "--param", "interval=0.2",
                 "--out", str(data), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["trajectory", "train", "--data", str(data), "--var", "field", "--window", "3", "--steps", "3",
                 "--batch-size", "8", "--base-channels", "8", "--channel-mults", "1", "--out", str(run),
                 "--no-progress"]) == 0
    out = tmp_path / "samples.nc"
    assert main(["trajectory", "sample", str(run), "--n", "2", "--length", "6", "--method", "dpmpp_2m", "--steps", "3",
                 "--out", str(out), "--no-progress"]) == 0
    with xr.open_dataset(out) as ds:
        assert ds["field"].dims == ("sample", "time", "x") and ds["field"].shape == (2, 6, 8)
        assert ds["time"].attrs["units"] == "model time unit" and np.allclose(ds["time"].values, 0.2 * np.arange(6))
        assert ds.attrs["window_evaluations_per_trajectory"] == 3 * (6 - 3 + 1)
    obs = xr.Dataset({"value": ("obs", np.array([0.5, -0.2])),
                      "time": ("obs", np.array([0.0, 0.6]), {"units": "model time unit"}),
                      "x": ("obs", np.array([0.0, 0.5])), "noise_std": ("obs", np.array([0.1, 0.1]))})
    obs_path = tmp_path / "obs.nc"
    obs.to_netcdf(obs_path, engine="h5netcdf")
    post = tmp_path / "post.nc"
    assert main(["trajectory", "assimilate", str(run), "--obs", str(obs_path), "--n", "2", "--length", "6",
                 "--method", "dpmpp_2m", "--steps", "3", "--out", str(post), "--no-progress"]) == 0
    with xr.open_dataset(post) as ds:
        assert ds["field"].shape == (2, 6, 8) and ds.attrs["guidance"] == "mmps" and ds.attrs["num_observations"] == 2
        assert ds.attrs["last_observed_time"] == pytest.approx(0.6)
    capsys.readouterr()
    # bad input: one clear line each
    late = obs.assign(time=("obs", np.array([0.0, 3.0]), {"units": "model time unit"}))
    late.to_netcdf(tmp_path / "late.nc", engine="h5netcdf")
    assert main(["trajectory", "assimilate", str(run), "--obs", str(tmp_path / "late.nc"), "--length", "6",
                 "--out", str(post)]) == 2
    assert "observation times [3.0] lie outside the trajectory of 6 states" in capsys.readouterr().err
    off = obs.assign(x=("obs", np.array([0.0, 0.3])))
    off.to_netcdf(tmp_path / "off.nc", engine="h5netcdf")
    assert main(["trajectory", "assimilate", str(run), "--obs", str(tmp_path / "off.nc"), "--length", "6",
                 "--out", str(post)]) == 2
    assert "not a grid point" in capsys.readouterr().err
    assert main(["trajectory", "sample", str(run), "--length", "2", "--out", str(out)]) == 2
    assert "longer than the trajectory" in capsys.readouterr().err
    assert main(["trajectory", "train", "--data", str(data), "--var", "field", "--time-dim", "lead",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "no dim named 'lead'" in capsys.readouterr().err
    # outputs: netCDF suffixes only, never the observation file, never over a run; the run folder's lock is honoured
    assert main(["trajectory", "sample", str(run), "--length", "6", "--out", str(tmp_path / "samples.txt")]) == 2
    assert "this command writes netCDF files" in capsys.readouterr().err
    assert main(["trajectory", "assimilate", str(run), "--obs", str(obs_path), "--length", "6",
                 "--out", str(obs_path)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(["trajectory", "train", "--data", str(data), "--var", "field", "--window", "3", "--steps", "3",
                 "--out", str(run)]) == 2
    assert "already holds a window run" in capsys.readouterr().err
    from scidiff.runs import Run

    with Run.lock(tmp_path / "busy"):
        assert main(["trajectory", "train", "--data", str(data), "--var", "field", "--window", "3", "--steps", "3",
                     "--out", str(tmp_path / "busy"), "--no-progress"]) == 2
        assert "is locked by process" in capsys.readouterr().err
    with Run.lock(run):
        assert main(["trajectory", "sample", str(run), "--n", "2", "--length", "6", "--method", "dpmpp_2m",
                     "--steps", "3", "--out", str(run / "inside.nc"), "--no-progress"]) == 2
        assert "is locked by process" in capsys.readouterr().err
    assert not (run / "inside.nc").exists()
    # `data info` on a trajectory file points to the trajectory commands
    assert main(["data", "info", str(data)]) == 0
    assert f"scidiff trajectory train --data {data} --var field" in capsys.readouterr().out
    for action in ("train", "sample", "assimilate"):
        with pytest.raises(SystemExit):
            main(["trajectory", action, "--help"])
        assert "example: scidiff trajectory" in capsys.readouterr().out
