"""The discrete DDPM against closed forms: forward chain, Bayes posterior, and L_vlb."""

import math

import pytest
import torch

import scidiff as sd


def test_linear_ddpm_continuous_limit():
    ddpm = sd.DDPM.linear(1000, 1e-4, 0.02)
    assert ddpm.sde.beta_min == pytest.approx(0.1)
    assert ddpm.sde.beta_max == pytest.approx(20.0)
    # log abar_n = sum log(1 - b_i) tends to -integral beta: agreement to O(b) relative
    n = torch.tensor([100, 500, 1000])
    log_abar_sde = 2 * ddpm.sde.schedule.log_alpha(n.double() / 1000)
    rel = (ddpm.log_alphas_bar[n] - log_abar_sde).abs() / log_abar_sde.abs()
    assert float(rel.max()) < 0.01


def test_cosine_ddpm_equals_its_sde_at_the_steps():
    ddpm = sd.DDPM.cosine(200)
    n = torch.arange(0, 200)
    abar_sde = ddpm.sde.schedule.alpha(n.double() / 200) ** 2
    torch.testing.assert_close(ddpm.alphas_bar[n], abar_sde, rtol=1e-10, atol=1e-14)


def test_q_closed_form_equals_composed_single_steps():
    ddpm = sd.DDPM.linear(50, 1e-3, 0.1)
    # exact: mean coefficient and variance of n composed Gaussian steps
    coef, var = 1.0, 0.0
    for i in range(50):
        b = float(ddpm.betas[i])
        coef, var = coef * math.sqrt(1 - b), (1 - b) * var + b
        assert coef == pytest.approx(float(ddpm.alphas_bar[i + 1].sqrt()), rel=1e-12)
        assert var == pytest.approx(1 - float(ddpm.alphas_bar[i + 1]), rel=1e-12)
    # statistically: simulate the chain with q_step and compare to q_sample's law
    g = torch.Generator().manual_seed(0)
    n_samples = 40000
    x0 = torch.full((n_samples, 1), 2.0, dtype=torch.float64)
    x = x0
    for i in range(1, 31):
        x = ddpm.q_step(x, torch.full((n_samples,), i), generator=g)
    abar = float(ddpm.alphas_bar[30])
    se_mean = math.sqrt((1 - abar) / n_samples)
    assert abs(float(x.mean()) - math.sqrt(abar) * 2.0) < 5 * se_mean
    assert abs(float(x.var()) - (1 - abar)) < 5 * (1 - abar) * math.sqrt(2 / n_samples)


@pytest.mark.parametrize("n", [1, 2, 17, 50])
def test_posterior_is_bayes_rule_by_quadrature(n):
    ddpm = sd.DDPM.linear(50, 1e-3, 0.1)
    x0, x_n = torch.tensor([[0.8]], dtype=torch.float64), torch.tensor([[0.3]], dtype=torch.float64)
    mean, var = ddpm.q_posterior(x0, x_n, torch.tensor([n]))
    if n == 1:  # q(x_0 | x_1, x_0) is a point mass at x_0
        assert float(var) == 0.0 and float(mean) == pytest.approx(0.8)
        return
    # prior q(x_{n-1} | x_0) times likelihood q(x_n | x_{n-1}), normalised on a fine grid
    abar_prev = float(ddpm.alphas_bar[n - 1])
    b = float(ddpm.betas[n - 1])
    grid = torch.linspace(-6, 6, 400001, dtype=torch.float64)
    log_w = -0.5 * (grid - math.sqrt(abar_prev) * 0.8) ** 2 / (1 - abar_prev)
    log_w = log_w - 0.5 * (0.3 - math.sqrt(1 - b) * grid) ** 2 / b
    w = torch.softmax(log_w, 0)
    m = float((w * grid).sum())
    v = float((w * (grid - m) ** 2).sum())
    assert float(mean) == pytest.approx(m, abs=1e-9)
    assert float(var) == pytest.approx(v, rel=1e-6)


def _exact_eps_gaussian(ddpm, mu, v):
    """eps-hat = E[eps | x_n] for x_0 ~ N(mu, v I), evaluated at t = n / N."""

    def eps_fn(x, t):
        n = torch.round(t.double() * ddpm.steps).long()
        abar = ddpm.alphas_bar[n].to(x.dtype)[:, None]
        return torch.sqrt(1 - abar) * (x - abar.sqrt() * mu) / (abar * v + 1 - abar)

    return eps_fn


def test_vlb_of_exact_denoiser_equals_analytic_value():
    ddpm = sd.DDPM.linear(100, 1e-3, 0.1)
    mu, v, d, bsz = 0.5, 0.3, 4, 3000
    g = torch.Generator().manual_seed(3)
    x0 = mu + math.sqrt(v) * torch.randn(bsz, d, generator=g, dtype=torch.float64)
    total = ddpm.vlb(_exact_eps_gaussian(ddpm, mu, v), x0, generator=g, progress=False)
    # analytic expectation over x_0 and x_n
    abar = ddpm.alphas_bar
    post_var_x0 = v * (1 - abar) / (abar * v + 1 - abar)  # Var(x_0 | x_n)
    expected = 0.5 * d * (float(abar[-1]) * (mu**2 + v) + (1 - float(abar[-1])) - 1 - math.log(1 - float(abar[-1])))
    for n in range(2, 101):
        b = float(ddpm.betas[n - 1])
        c0 = math.sqrt(float(abar[n - 1])) * b / (1 - float(abar[n]))
        var_n = (1 - float(abar[n - 1])) / (1 - float(abar[n])) * b
        expected += d * c0**2 * float(post_var_x0[n]) / (2 * var_n)
    b1 = float(ddpm.betas[0])
    expected += d * (float(post_var_x0[1]) / (2 * b1) + 0.5 * math.log(2 * math.pi * b1))
    se = float(total.std()) / math.sqrt(bsz)
    assert abs(float(total.mean()) - expected) < 5 * se
    # and it is a bound: E[L_vlb] >= -E log p(x_0) = the entropy of N(mu, v I)
    assert expected >= 0.5 * d * math.log(2 * math.pi * math.e * v)


def test_ddpm_ancestral_sampling_of_gaussian_data():
    ddpm = sd.DDPM.linear(200, 5e-4, 0.1)
    mu, v = -1.0, 0.25
    x = ddpm.sample(
        _exact_eps_gaussian(ddpm, mu, v), (20000, 1), generator=torch.Generator().manual_seed(0),
        dtype=torch.float64, progress=False,
    )
    n = x.numel()
    assert abs(float(x.mean()) - mu) < 5 * math.sqrt(v / n)
    # the final step returns the decoder mean, which removes Var(x_0 | x_1) from the spread
    assert abs(float(x.var()) - v) < 5 * v * math.sqrt(2 / n) + 2e-3


def test_bad_step_indices_and_nan():
    ddpm = sd.DDPM.linear(10)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        ddpm.q_posterior(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0]))
    with pytest.raises(ValueError, match="samples \\[1\\]"):
        ddpm.vlb(lambda x, t: x, torch.tensor([[0.0], [float("nan")]]), progress=False)
    with pytest.raises(ValueError, match="steps"):
        sd.DDPM.linear(0)
