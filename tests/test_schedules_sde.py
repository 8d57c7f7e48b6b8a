"""Schedules and the VP-SDE against closed forms and a brute-force forward simulation."""

import math

import pytest
import torch

import scidiff as sd
from scidiff.schedules import CosineSchedule, LinearSchedule

SCHEDULES = [LinearSchedule(0.1, 20.0), LinearSchedule(0.5, 0.5), CosineSchedule()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_beta_is_minus_twice_dlogalpha_dt(schedule):
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(schedule.log_alpha(t).sum(), t)
    torch.testing.assert_close(-2.0 * grad, schedule.beta(t.detach()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_variance_preserving_and_log_snr_inverse(schedule):
    t = torch.linspace(1e-6, 1.0, 257, dtype=torch.float64)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-14)
    lam = schedule.log_snr(t)
    torch.testing.assert_close(lam, torch.log(alpha**2 / sigma**2), rtol=1e-9, atol=1e-9)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease"
    torch.testing.assert_close(schedule.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-12)


def test_linear_closed_form_and_small_t_precision():
    s = LinearSchedule(0.1, 20.0)
    t = torch.tensor([1e-7, 0.3, 1.0], dtype=torch.float64)
    log_alpha = -(t**2) * 19.9 / 4 - t * 0.05
    torch.testing.assert_close(s.alpha(t), log_alpha.exp(), rtol=1e-14, atol=0)
    # sigma^2 ~ beta_min t for small t: no cancellation
    assert math.isclose(float(s.sigma(t[:1]) ** 2), 0.1e-7, rel_tol=1e-5)


def test_cosine_matches_nichol_dhariwal_away_from_the_truncation():
    s = CosineSchedule(s=0.008, log_snr_min=-10.0)
    # with phi_1 close to pi/2 the truncated schedule is the paper's in a rescaled time
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    phi0 = math.pi / 2 * 0.008 / 1.008
    phi = phi0 + t * (s._phi1 - phi0)
    abar = torch.cos(phi) ** 2 / math.cos(phi0) ** 2
    torch.testing.assert_close(s.alpha(t) ** 2, abar, rtol=1e-12, atol=1e-15)
    assert abs(float(s.log_snr(torch.tensor(1.0, dtype=torch.float64))) + 10.0) < 1e-9
    assert math.pi / 2 - s._phi1 < 0.01


def test_time_dtype_preserved_and_validated():
    sde = sd.VPSDE()
    t32 = torch.tensor([0.5], dtype=torch.float32)
    assert sde.alpha(t32).dtype == torch.float32
    for bad in ([-0.1], [1.5], [float("nan")]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            sde.sigma(torch.tensor(bad))
    with pytest.raises(ValueError, match="beta_max"):
        sd.VPSDE(beta_min=1.0, beta_max=0.5)


def test_prior_log_prob_is_standard_normal():
    from scipy.stats import multivariate_normal

    sde = sd.VPSDE()
    x = sde.prior_sample((5, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = multivariate_normal(mean=torch.zeros(6), cov=torch.eye(6)).logpdf(x.reshape(5, 6).numpy())
    torch.testing.assert_close(sde.prior_log_prob(x), torch.as_tensor(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VPSDE.cosine()], ids=["linear", "cosine"])
def test_marginals_match_euler_maruyama_simulation_of_forward_sde(sde):
    """q(x_t | x_0) = N(alpha x_0, sigma^2) against Euler-Maruyama with dt = 1e-3 on dx = f dt + g dw,
    up to t = 0.75 (beyond, the cosine schedule's beta grows to ~470 and dt would need shrinking)."""
    g = torch.Generator().manual_seed(1)
    n = 20000
    x0 = torch.tensor([1.5, -0.7], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    steps, checkpoints = 750, {250: None, 750: None}
    dt = 1e-3
    for k in range(steps):
        t = torch.full((n,), k * dt, dtype=torch.float64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * torch.randn(
            x.shape, generator=g, dtype=x.dtype
        )
        if k + 1 in checkpoints:
            checkpoints[k + 1] = x.clone()
    for k, xs in checkpoints.items():
        t = torch.tensor([k * dt], dtype=torch.float64)
        mean, std = sde.marginal(x0[None], t)
        var = float(std) ** 2
        se_mean = math.sqrt(var / n)
        se_var = var * math.sqrt(2.0 / (n - 1))
        # Euler-Maruyama's own O(dt) bias on the variance is below 0.1% here
        assert (xs.mean(0) - mean[0]).abs().max() < 5 * se_mean + 2e-3
        assert (xs.var(0) - var).abs().max() < 5 * se_var + 2e-3 * var
