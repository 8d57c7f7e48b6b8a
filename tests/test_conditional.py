"""Conditioned models, classifier-free guidance, noisy regressors and parameter inference,
against closed forms in float64.

The closed-form "network" below is the exact eps-predictor of the Gaussian emulator problem

    theta ~ N(0, tau^2),   x | theta ~ N(theta 1, v I_d),

conditioned with the convention c = [theta, 1] and c = [0, 0] for "unconditional":
    s(x, t | theta) = -(x - alpha theta 1) / (alpha^2 v + sigma^2),
    s(x, t)         = -(alpha^2 (v I + tau^2 1 1^T) + sigma^2 I)^-1 x.
"""

import math

import pytest
import torch

import scidiff as sd
from scidiff.conditional import (
    ClassifierFreeGuidance,
    ConditionDropout,
    cfg_loss,
    condition,
    conditional_score,
    drop_condition,
    null_condition,
)
from scidiff.guidance import NoisyRegressor, train_noisy_regressor
from scidiff.inference import grid_posterior, log_likelihood_grid, metropolis, parabolic_maximum

F64 = torch.float64
D, V, TAU = 3, 0.25, 1.0


class GaussianEmulatorNet(torch.nn.Module):
    """Exact eps-hat of the Gaussian emulator problem for x [B, 1, D], cond [B, 2]."""

    cond_dim = 2
    channels = 1
    dims = 1

    def __init__(self, sde):
        super().__init__()
        self.sde = sde
        self.calls = 0
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x, t, cond=None):
        self.calls += 1
        la = self.sde.schedule.log_alpha(t.double())
        alpha, sigma2 = la.exp()[:, None], -torch.expm1(2 * la)[:, None]
        xf = x.flatten(1)
        theta, flag = cond[:, :1], cond[:, 1:]
        s_cond = -(xf - alpha * theta) / (alpha**2 * V + sigma2)
        cov = alpha[:, :, None] ** 2 * (V * torch.eye(D, dtype=F64) + TAU**2) + sigma2[:, :, None] * torch.eye(D, dtype=F64)
        s_unc = -torch.linalg.solve(cov, xf[..., None])[..., 0]
        s = flag * s_cond + (1 - flag) * s_unc
        return (-(sigma2.sqrt()) * s + 0 * self.dummy).reshape(x.shape)


def _model(beta_max=20.0):
    sde = sd.VPSDE(beta_max=beta_max)
    return sd.ScoreModel(GaussianEmulatorNet(sde), sde)


def _exact_log_lik(x, theta):
    """log N(x; theta 1, v I) for x [B, 1, D] and theta [G] -> [G, B]."""
    xf = x.flatten(1)
    return torch.distributions.Normal(theta[:, None, None], math.sqrt(V)).log_prob(xf[None]).sum(-1)


# ---------------------------------------------------------------- emulation


def test_conditional_score_samples_p_x_given_theta():
    """sd.sample with the conditional score draws x | theta ~ N(theta 1, v I), shared or per-sample theta."""
    model = _model()
    n = 3000
    x = sd.sample(conditional_score(model, torch.tensor([1.5])), model.sde, (n, 1, D), "ode", dtype=F64,
                  generator=torch.Generator().manual_seed(0), progress=False).flatten(1)
    se = math.sqrt(V / n)
    assert bool(((x.mean(0) - 1.5).abs() < 5 * se).all()), x.mean(0)
    assert bool(((x.var(0) - V).abs() < 5 * V * math.sqrt(2 / n)).all()), x.var(0)
    # one theta per sample: the residuals x - theta are N(0, v I)
    theta = torch.linspace(-2, 2, n, dtype=F64)[:, None]
    x = sd.sample(conditional_score(model, theta), model.sde, (n, 1, D), "euler_maruyama", steps=200, dtype=F64,
                  generator=torch.Generator().manual_seed(1), progress=False).flatten(1)
    r = x - theta
    assert bool((r.mean(0).abs() < 5 * se).all()) and bool(((r.var(0) - V).abs() < 5 * V * math.sqrt(2 / n)).all())


def test_classifier_free_guidance_formula_one_forward():
    """s_w = (1 + w) s(x | theta) - w s(x), both halves from one network call on a doubled batch."""
    model = _model()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 1, D, generator=g, dtype=F64)
    t = torch.rand(7, generator=g, dtype=F64) * 0.9 + 0.05
    theta = torch.tensor([0.7], dtype=F64)
    cfg = ClassifierFreeGuidance(model, theta, scale=2.0)
    calls = model.net.calls
    out = cfg(x, t)
    assert model.net.calls == calls + 1
    s_c = model.score(x, t, condition(theta)[None].expand(7, 2))
    s_u = model.score(x, t, null_condition(7, 1, dtype=F64))
    torch.testing.assert_close(out, 3.0 * s_c - 2.0 * s_u)
    # the unconditional half is the exact marginal score of p(x) = N(0, v I + tau^2 1 1^T)
    la = model.sde.schedule.log_alpha(t)
    alpha2, sigma2 = la.exp() ** 2, -torch.expm1(2 * la)
    cov = alpha2[:, None, None] * (V * torch.eye(D, dtype=F64) + TAU**2) + sigma2[:, None, None] * torch.eye(D, dtype=F64)
    torch.testing.assert_close(s_u.flatten(1), -torch.linalg.solve(cov, x.flatten(1)[..., None])[..., 0])
    with pytest.raises(ValueError, match=r"theta must be \[1\]"):
        ClassifierFreeGuidance(model, torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(model, theta, -2.0)


def _guided_mean_ode(sde, theta, w, t_min=1e-3):
    """Exact mean of the PF-ODE sampler's output under the w-guided score, from x_1 ~ N(0, I).

    The guided score is affine in x and the coordinates are exchangeable, so the mean stays
    mu(t) 1 with  dmu/dt = -beta/2 [mu + s_w(mu)],  s_w(mu) = -(1 + w)(mu - alpha theta) / (alpha^2 v + sigma^2)
    + w mu / (alpha^2 (v + D tau^2) + sigma^2)  (1 is an eigenvector of the unconditional covariance);
    integrated from t = 1 (mu = 0) to t_min by scipy, then the sampler's final Tweedie step."""
    from scipy.integrate import solve_ivp

    def coefs(t):
        la = float(sde.schedule.log_alpha(torch.tensor(t, dtype=F64)))
        return math.exp(la), -math.expm1(2 * la), float(sde.schedule.beta(torch.tensor(t, dtype=F64)))

    def s_w(mu, t):
        a, s2, _ = coefs(t)
        return -(1 + w) * (mu - a * theta) / (a * a * V + s2) + w * mu / (a * a * (V + D * TAU**2) + s2)

    def rhs(t, y):
        return [-0.5 * coefs(t)[2] * (y[0] + s_w(y[0], t))]

    mu = solve_ivp(rhs, (1.0, t_min), [0.0], rtol=1e-11, atol=1e-12).y[0, -1]
    a, s2, _ = coefs(t_min)
    return (mu + s2 * s_w(mu, t_min)) / a


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_classifier_free_guidance_mean_matches_its_ode(w):
    """The CFG-guided PF-ODE samples have the mean predicted by integrating the guided ODE exactly;
    w > 0 pushes the fields beyond theta, away from the unconditional mean 0 (w = 0: exactly theta)."""
    model = _model()
    theta, n = 1.0, 2000
    x = sd.sample(ClassifierFreeGuidance(model, torch.tensor([theta]), w), model.sde, (n, 1, D), "ode", dtype=F64,
                  generator=torch.Generator().manual_seed(3), progress=False).flatten(1)
    m_w = _guided_mean_ode(model.sde, theta, w)
    if w == 0.0:  # theta, up to the prior mismatch x_1 ~ N(0, I) instead of N(alpha_1 theta, ...)
        assert abs(m_w - theta) < 0.01
    else:
        assert m_w > theta + 0.05
    per_sample = x.mean(1)
    se = float(per_sample.std()) / math.sqrt(n)
    assert abs(float(per_sample.mean()) - m_w) < 5 * se + 1e-3, (float(per_sample.mean()), m_w, se)


def test_drop_condition_and_cfg_loss():
    g = torch.Generator().manual_seed(4)
    cond = condition(torch.randn(20000, 2, generator=g, dtype=F64))
    dropped = drop_condition(cond, 0.3, generator=g)
    null = (dropped == 0).all(1)
    kept = (dropped == cond).all(1)
    assert bool((null | kept).all())
    assert abs(float(null.double().mean()) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 20000)
    # cfg_loss = dsm_loss with the dropped condition, same random stream
    from scidiff.training import dsm_loss

    model = _model()
    x0 = torch.randn(16, 1, D, dtype=F64)
    theta = torch.randn(16, 1, dtype=F64)
    a = cfg_loss(model, x0, theta, p_uncond=0.5, generator=torch.Generator().manual_seed(5))
    g2 = torch.Generator().manual_seed(5)
    b = dsm_loss(model, x0, cond=drop_condition(condition(theta), 0.5, generator=g2), generator=g2)
    torch.testing.assert_close(a, b)
    # ConditionDropout: p = 1 in training mode is the unconditional network, eval mode the conditional
    net = ConditionDropout(model.net, 1.0)
    t = torch.full((16,), 0.4, dtype=F64)
    c = condition(theta)
    torch.testing.assert_close(net.train()(x0, t, cond=c), model.net(x0, t, cond=torch.zeros_like(c)))
    torch.testing.assert_close(net.eval()(x0, t, cond=c), model.net(x0, t, cond=c))
    assert net.cond_dim == 2 and net.channels == 1
    with pytest.raises(ValueError, match="p_uncond"):
        drop_condition(cond, 1.5)


# ---------------------------------------------------------------- parameter inference


def test_likelihood_grid_and_posterior_match_the_exact_gaussian():
    """log p(x | theta) on a grid through the PF-ODE equals log N(x; theta 1, v I); with a flat
    prior the grid posterior of theta is N(mean(x), v / D) and the refined ML is mean(x).
    beta_max = 50 makes p_1 = N(0, I) exact to alpha_1 ~ 4e-6 (with 20, alpha_1 = 7e-3 and the prior
    mismatch costs up to 0.4 nats at fields 7 standard deviations from theta)."""
    model = _model(beta_max=50.0)
    g = torch.Generator().manual_seed(6)
    x = (torch.tensor([[-0.5], [0.3], [0.9]], dtype=F64) + math.sqrt(V) * torch.randn(3, D, generator=g, dtype=F64))[:, None]
    thetas = torch.linspace(-2.5, 3.5, 25, dtype=F64)  # step 0.25; every mean(x) is > 5 posterior sd from the ends
    assert bool(((x.flatten(1).mean(1) - thetas[0]) > 5 * math.sqrt(V / D)).all())
    assert bool(((thetas[-1] - x.flatten(1).mean(1)) > 5 * math.sqrt(V / D)).all())
    # the whole grid in one stacked solve (batch 25 x 3), per-sample theta
    ll = log_likelihood_grid(lambda th: conditional_score(model, th), model.sde, x, thetas, thetas_per_solve=25,
                             progress=False, rtol=1e-6, atol=1e-6)
    exact = _exact_log_lik(x, thetas)
    assert ll.shape == (25, 3)
    assert float((ll - exact).abs().max()) < 2e-3, (ll - exact).abs().max()
    # one solve per grid value (theta a 0-d tensor) gives the same curve
    ll1 = log_likelihood_grid(lambda th: conditional_score(model, th), model.sde, x, thetas[::6], progress=False,
                              rtol=1e-6, atol=1e-6)
    assert float((ll1 - exact[::6]).abs().max()) < 2e-3
    post = grid_posterior(ll, thetas)
    xbar = x.flatten(1).mean(1)
    torch.testing.assert_close(post.mean[:, 0], xbar, atol=2e-3, rtol=0)
    torch.testing.assert_close(post.std[:, 0], torch.full((3,), math.sqrt(V / D), dtype=F64), atol=2e-3, rtol=0)
    torch.testing.assert_close(post.max_likelihood[:, 0], xbar, atol=2e-3, rtol=0)
    # a Gaussian prior N(0, tau^2): the conjugate posterior mean and std
    post_p = grid_posterior(ll, thetas, lambda th: -0.5 * th[:, 0] ** 2 / TAU**2)
    prec = D / V + 1 / TAU**2
    torch.testing.assert_close(post_p.mean[:, 0], (D / V) * xbar / prec, atol=2e-3, rtol=0)
    torch.testing.assert_close(post_p.std[:, 0], torch.full((3,), prec**-0.5, dtype=F64), atol=2e-3, rtol=0)


def test_parabolic_maximum_is_exact_for_a_parabola():
    th = torch.linspace(0, 1, 11, dtype=F64)
    peaks = torch.tensor([0.33, 0.71, 0.0], dtype=F64)
    values = -((th[:, None] - peaks) ** 2) * 7
    torch.testing.assert_close(parabolic_maximum(th, values), peaks)


def test_metropolis_samples_a_gaussian():
    """200 independent chains on N(mu, s^2) (P = 2): their final states have the right moments."""
    mu, s = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)

    def log_density(theta):
        return (-0.5 * ((theta - mu) / s) ** 2).sum(1)

    res = metropolis(log_density, torch.zeros(200, 2, dtype=F64), 400, step_size=torch.tensor([1.0, 4.0]),
                     generator=torch.Generator().manual_seed(7), progress=False)
    last = res.samples[-1]
    n = last.shape[0]
    assert bool(((last.mean(0) - mu).abs() < 5 * s / math.sqrt(n)).all()), last.mean(0)
    assert bool(((last.std(0) / s - 1).abs() < 5 * math.sqrt(1 / (2 * n))).all()), last.std(0)
    assert bool(((res.acceptance > 0.15) & (res.acceptance < 0.8)).all())


# ---------------------------------------------------------------- noisy regressor


def test_noisy_regressor_learns_p_theta_given_x_t():
    """Trained on the Gaussian problem (D = 8), the regressor's mean tracks theta at low noise and
    its variance follows the exact posterior variance 1 / (1/tau^2 + D alpha^2 / (alpha^2 v + sigma^2))
    from ~0.03 (t = 0.05) to ~1 (t = 0.95) within a factor 2.  Budget: 400 steps, ~5 s."""
    torch.manual_seed(0)
    sde = sd.VPSDE()
    d = 8
    g = torch.Generator().manual_seed(8)
    theta = TAU * torch.randn(4096, 1, generator=g)
    x = theta[:, :, None] + math.sqrt(V) * torch.randn(4096, 1, d, generator=g)
    reg = NoisyRegressor(1, 1, 1, base_channels=8, channel_mults=(1, 2), attention_levels=(), groups=4)
    losses = train_noisy_regressor(reg, sde, x, theta, steps=400, batch_size=128, lr=3e-3, seed=0, progress=False)
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50
    x_test = theta[:256, :, None] + math.sqrt(V) * torch.randn(256, 1, d, generator=g)
    for t_val in (0.05, 0.95):
        t = torch.full((256,), t_val)
        x_t, _ = sde.perturb(x_test, t, generator=g)
        with torch.no_grad():
            mu, log_var = reg(x_t, t)
        la = float(sde.schedule.log_alpha(torch.tensor(t_val, dtype=F64)))
        a2, s2 = math.exp(2 * la), -math.expm1(2 * la)
        exact_var = 1 / (1 / TAU**2 + d * a2 / (a2 * V + s2))
        mean_var = float(log_var.exp().mean())
        assert exact_var / 2 < mean_var < 2 * exact_var, (t_val, mean_var, exact_var)
        mse = float((mu - theta[:256]).pow(2).mean())
        assert mse < 2 * exact_var + 0.02, (t_val, mse, exact_var)
    # its log_prob_fn plugs into ClassifierGuidance and steers toward theta = 2
    guided = sd.ClassifierGuidance(lambda x_, t_: -x_ / (sde.coefficients(t_).like(x_).alpha ** 2 * (V + TAU**2) + sde.coefficients(t_).like(x_).sigma ** 2),
                                   sde, reg.log_prob_fn(torch.tensor([2.0])), scale=1.0)
    xs = sd.sample(guided, sde, (64, 1, d), "euler_maruyama", steps=50, generator=torch.Generator().manual_seed(9),
                   progress=False)
    assert float(xs.mean()) > 1.0
    assert all(p.grad is None for p in reg.parameters())
