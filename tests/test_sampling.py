"""Every sampler against a Gaussian mixture whose marginal scores are closed-form (float64)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import scidiff as sd
from scidiff.analytic import GaussianMixture

N = 4000  # samples per sampler: mean standard error ~ 0.02 here


def _mixture(sde):
    # well separated: component membership is read off without ambiguity
    return GaussianMixture(
        [0.3, 0.7],
        [[-2.0, 1.0], [2.0, -1.0]],
        [[[0.30, 0.10], [0.10, 0.20]], [[0.25, -0.05], [-0.05, 0.40]]],
        sde=sde,
    )


def _check_against_mixture(x, gm):
    n = x.shape[0]
    # weights: component by the nearer mean (misclassification ~1e-8 at this separation)
    comp = (x[:, 0] > 0).double()
    w_hat = float(comp.mean())
    assert abs(w_hat - 0.7) < 5 * math.sqrt(0.21 / n), w_hat
    cov_true = gm.covariance()
    mean_true = gm.mean()
    se_mean = torch.sqrt(torch.diagonal(cov_true) / n)
    assert bool(((x.mean(0) - mean_true).abs() < 5 * se_mean).all()), (x.mean(0), mean_true)
    # covariance: standard error of each entry from the samples' fourth moments
    xc = x - x.mean(0)
    prod = xc[:, :, None] * xc[:, None, :]
    se_cov = prod.std(0) / math.sqrt(n)
    assert bool(((torch.cov(x.T) - cov_true).abs() < 5 * se_cov + 5e-3).all()), (torch.cov(x.T), cov_true)
    # within each component: its own mean and covariance
    for k, mask in enumerate([comp == 0, comp == 1]):
        xk = x[mask]
        se_k = torch.sqrt(torch.diagonal(gm.covs[k]) / xk.shape[0])
        assert bool(((xk.mean(0) - gm.means[k]).abs() < 5 * se_k).all())
        rel = (torch.cov(xk.T) - gm.covs[k]).abs().max() / gm.covs[k].abs().max()
        assert float(rel) < 5 * math.sqrt(2 / xk.shape[0]) + 0.02
    # the whole 1-D marginal along a projection: KS test against the exact mixture CDF
    u = torch.tensor([0.6, 0.8], dtype=torch.float64)
    proj = (x @ u).numpy()
    m = (gm.means @ u).numpy()
    s = torch.sqrt(torch.einsum("i,kij,j->k", u, gm.covs, u)).numpy()
    w = gm.weights.numpy()
    cdf = lambda z: sum(w[k] * stats.norm.cdf(z, m[k], s[k]) for k in range(2))  # noqa: E731
    assert stats.kstest(proj, cdf).pvalue > 1e-3


CASES = [
    ("ancestral", {"steps": 300}),
    ("euler_maruyama", {"steps": 300}),
    ("pc", {"steps": 200, "snr": 0.1}),
    ("ode", {}),
    ("ode", {"time_variable": "t"}),
    ("ode", {"time_variable": "sigma"}),
    ("ode", {"ode_method": "rk4", "steps": 30}),
]


@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_sampler_reproduces_mixture(method, options):
    sde = sd.VPSDE()
    gm = _mixture(sde)
    res = sd.sample(
        gm, sde, (N, 2), method, generator=torch.Generator().manual_seed(7), dtype=torch.float64,
        progress=False, return_result=True, **options,
    )
    assert res.x.dtype == torch.float64 and res.x.shape == (N, 2)
    assert res.nfe > 0
    _check_against_mixture(res.x, gm)


def test_samplers_on_cosine_schedule():
    sde = sd.VPSDE.cosine()
    gm = _mixture(sde)
    for method, options in [("ode", {}), ("ancestral", {"steps": 300}), ("auto", {"steps": 20})]:
        x = sd.sample(gm, sde, (N, 2), method, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                      progress=False, **options)
        _check_against_mixture(x, gm)


def test_ancestral_and_ode_agree_in_distribution():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    g = torch.Generator().manual_seed(11)
    a = sd.sample(gm, sde, (N, 2), "ancestral", steps=300, generator=g, dtype=torch.float64, progress=False)
    b = sd.sample(gm, sde, (N, 2), "ode", generator=g, dtype=torch.float64, progress=False)
    rng = np.random.default_rng(0)
    for _ in range(4):  # KS on random projections, Bonferroni-corrected level 1e-3
        u = torch.as_tensor(rng.normal(size=2))
        assert stats.ks_2samp((a @ u).numpy(), (b @ u).numpy()).pvalue > 2.5e-4


def test_pc_with_few_steps_stays_finite_and_improves_with_steps():
    # beta dt > 1 on grids of fewer than ~20 steps: the corrector's step size must stay positive
    sde = sd.VPSDE()
    gm = _mixture(sde)
    sd_true = torch.diagonal(gm.covariance()).sqrt()
    errors = []
    for steps in (5, 10, 15):
        x = sd.sample(gm, sde, (N, 2), "pc", steps=steps, progress=False, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(steps))
        assert bool(torch.isfinite(x).all()), steps
        errors.append(float(((x.std(0) - sd_true).abs() / sd_true).max()))
    # relative standard error of a sample std from N draws (Gaussian approximation; the
    # bimodal mixture's lower kurtosis makes it smaller): 1 / sqrt(2 (N - 1)) = 1.1%
    se = 1.0 / math.sqrt(2 * (N - 1))
    # discretisation bias allowances: 5 steps is coarse (measured 31% too wide), 15 steps 4%
    assert errors[0] < 0.45 + 5 * se, errors
    assert errors[2] < 0.05 + 5 * se and errors[2] < errors[0], errors


def test_seeds_reproduce_and_differ():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    kw = dict(method="euler_maruyama", steps=20, dtype=torch.float64, progress=False)
    a = sd.sample(gm, sde, (8, 2), generator=torch.Generator().manual_seed(3), **kw)
    b = sd.sample(gm, sde, (8, 2), generator=torch.Generator().manual_seed(3), **kw)
    c = sd.sample(gm, sde, (8, 2), generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["ode", "ancestral", "euler_maruyama", "pc"])
def test_score_only_called_inside_unit_interval(method):
    sde = sd.VPSDE()
    gm = _mixture(sde)
    seen = []

    def score(x, t):
        seen.append(t.detach().clone())
        return gm.score(x, t)

    sd.sample(score, sde, (64, 2), method, steps=20, progress=False, dtype=torch.float64,
              **({} if method != "ode" else {"rtol": 1e-3, "atol": 1e-3}))
    ts = torch.cat(seen)
    assert float(ts.min()) >= 0.0 and float(ts.max()) <= 1.0
    assert ts.shape[0] == 64 * len(seen)


def test_nfe_counts_and_ode_dtype():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    res = sd.sample(gm, sde, (16, 2), "euler_maruyama", steps=25, progress=False, return_result=True,
                    dtype=torch.float64)
    assert res.nfe == 26  # 25 steps + the final denoising
    res = sd.sample(gm, sde, (16, 2), "pc", steps=10, corrector_steps=2, denoise=False, progress=False,
                    return_result=True, dtype=torch.float64)
    assert res.nfe == 30
    x32 = sd.sample(lambda x, t: -x, sde, (4, 3, 5), "ode", progress=False)
    assert x32.dtype == torch.float32 and x32.shape == (4, 3, 5)


def test_bad_arguments_are_named():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="unknown sampling method 'langevin'"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "langevin")
    with pytest.raises(ValueError, match="snr"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "pc", snr=-1.0)
    with pytest.raises(ValueError, match="bad option for method='ode'"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "ode", snr=0.1)
    with pytest.raises(ValueError, match="unknown ODE method"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "ode", ode_method="rk99")
    with pytest.raises(ValueError, match="score returned shape"):
        sd.sample(lambda x, t: x[:, :1], sde, (2, 2), "ode", progress=False)
    with pytest.raises(ValueError, match="x1 has shape"):
        sd.sample(lambda x, t: -x, sde, (2, 2), x1=torch.zeros(3, 2))


# ---- few-step samplers: grids, exact identities, convergence orders ---------------------------

from scidiff import sampling  # noqa: E402

F64 = torch.float64
FEW_STEP_CASES = [  # each new sampler at its recommended size
    ("ddim", {"steps": 50}),
    ("dpmpp_2m", {"steps": 20}),
    ("dpmpp_3m", {"steps": 20}),
    ("heun", {"steps": 18}),
    ("ddim", {"steps": 100, "eta": 1.0}),
    ("heun", {"steps": 25, "s_churn": 10.0}),
    ("dpmpp_2m", {"steps": 20, "grid": "karras"}),
    ("unipc_2", {"steps": 20}),
    ("unipc_3", {"steps": 20}),
    ("unipc_2", {"steps": 20, "variant": "bh1"}),
    ("auto", {"steps": 20}),
]


@pytest.mark.parametrize("method,options", FEW_STEP_CASES, ids=[f"{m}-{o}" for m, o in FEW_STEP_CASES])
def test_few_step_sampler_reproduces_mixture(method, options):
    sde = sd.VPSDE()
    gm = _mixture(sde)
    res = sd.sample(gm, sde, (N, 2), method, generator=torch.Generator().manual_seed(5), dtype=F64,
                    progress=False, return_result=True, **options)
    assert res.nfe == sampling.make_sampler(method, **options).nfe
    _check_against_mixture(res.x, gm)


class _Gaussian:
    """x_0 ~ N(m, diag(v)): p_t = N(alpha m, alpha^2 v + sigma^2); the PF-ODE flow map from t to s
    is x_s = alpha_s m + sqrt((alpha_s^2 v + sigma_s^2) / (alpha_t^2 v + sigma_t^2)) (x_t - alpha_t m)."""

    m = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=F64)
    v = torch.tensor([0.01, 0.1, 1.0, 4.0], dtype=F64)

    def __init__(self, sde):
        self.sde = sde

    def _coef(self, t):
        c = self.sde.schedule.coefficients(torch.as_tensor(t, dtype=F64).reshape(-1)[:1])
        return c.alpha, c.sigma

    def score(self, x, t):
        a, s = self._coef(t)
        return -(x - a * self.m) / (a * a * self.v + s * s)

    def sample_then_denoise(self, x1, t_min):
        """The exact deterministic map: the flow from t = 1 to t_min, then E[x_0 | x_{t_min}]."""
        a1, s1 = self._coef(1.0)
        a0, s0 = self._coef(t_min)
        x = a0 * self.m + torch.sqrt((a0**2 * self.v + s0**2) / (a1**2 * self.v + s1**2)) * (x1 - a1 * self.m)
        return self.m + a0 * self.v / (a0**2 * self.v + s0**2) * (x - a0 * self.m)


ORDER_CASES = [
    ("ddim", "logsnr"), ("ddim", "karras"), ("dpmpp_2m", "logsnr"), ("dpmpp_2m", "karras"),
    ("dpmpp_3m", "logsnr"), ("dpmpp_3m", "karras"), ("heun", "logsnr"), ("heun", "karras"), ("heun", "uniform"),
    ("unipc_2", "logsnr"), ("unipc_2", "karras"), ("unipc_3", "logsnr"), ("unipc_3", "karras"),
    ("auto", "logsnr"), ("auto", "karras"),
]


@pytest.mark.parametrize("method,grid", ORDER_CASES, ids=[f"{m}-{g}" for m, g in ORDER_CASES])
def test_convergence_order_matches_declared_order(method, grid):
    # the slope of log(max error) against log(steps), fitted over 64..256 grid points, against the
    # closed-form flow map of Gaussian data (float64; t_min = 0.05 keeps the problem non-stiff so
    # the asymptotic rate is reached)
    sde = sd.VPSDE()
    g = _Gaussian(sde)
    x1 = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = g.sample_then_denoise(x1, 0.05)
    steps = [64, 128, 256]
    errors = [float((sd.sample(g.score, sde, x1.shape, method, x1=x1, steps=n, grid=grid, t_min=0.05,
                               progress=False) - exact).abs().max()) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    order = sampling.SAMPLERS[method].order
    assert abs(slope - order) < 0.3, (errors, slope, order)


@pytest.mark.parametrize("ode_method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_ode_fixed_grid_convergence_order(ode_method, order):
    sde = sd.VPSDE()
    g = _Gaussian(sde)
    x1 = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = g.sample_then_denoise(x1, 0.05)
    steps = [16, 32, 64] if order < 4 else [8, 16, 32]
    errors = [float((sd.sample(g.score, sde, x1.shape, "ode", x1=x1, ode_method=ode_method, steps=n,
                               t_min=0.05, progress=False) - exact).abs().max()) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (errors, slope)


def test_ddim_eta0_is_the_first_order_exponential_step_in_sigma_over_alpha():
    # Euler in x-tilde = x / alpha against sigma-tilde = sigma / alpha:
    # x_s / alpha_s = x_t / alpha_t + (sigma_s / alpha_s - sigma_t / alpha_t) eps-hat, eps-hat = -sigma_t s
    sde = sd.VPSDE()
    g = _Gaussian(sde)
    x1 = torch.randn(32, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    times = [1.0, 0.6, 0.3, 0.1, 0.02]
    x = x1.clone()
    for t, s in zip(times[:-1], times[1:]):
        a_t, s_t = g._coef(t)
        a_s, s_s = g._coef(s)
        eps = -s_t * g.score(x, torch.full((32,), t, dtype=F64))
        x = a_s * (x / a_t + (s_s / a_s - s_t / a_t) * eps)
    y = sd.sample(g.score, sde, x1.shape, "ddim", x1=x1, grid=times, denoise=False, progress=False)
    torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    # and DPM-Solver++ at order 1 is the same step
    class _First(sampling.DPMSolverPP):
        name, solver_order = "dpmpp_1", 1
    z = _First(grid=times, denoise=False).sample(g.score, sde, x1).x
    torch.testing.assert_close(z, x, rtol=1e-12, atol=1e-12)


def test_ddim_eta1_is_the_ancestral_step():
    # the same noise draws give the same samples (so the same law), on any grid
    sde = sd.VPSDE()
    gm = _mixture(sde)
    for grid in ["uniform", "logsnr", [1.0, 0.5, 0.2, 0.05, 0.01]]:
        kw = dict(dtype=F64, progress=False, grid=grid, **({} if isinstance(grid, list) else {"steps": 12}))
        a = sd.sample(gm, sde, (256, 2), "ddim", eta=1.0, generator=torch.Generator().manual_seed(2), **kw)
        b = sd.sample(gm, sde, (256, 2), "ancestral", generator=torch.Generator().manual_seed(2), **kw)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and in distribution against the ODE with its own noise (KS on a projection)
    a = sd.sample(gm, sde, (N, 2), "ddim", eta=1.0, steps=100, generator=torch.Generator().manual_seed(8),
                  dtype=F64, progress=False)
    b = sd.sample(gm, sde, (N, 2), "dpmpp_3m", steps=30, generator=torch.Generator().manual_seed(9),
                  dtype=F64, progress=False)
    u = torch.tensor([0.6, 0.8], dtype=F64)
    assert stats.ks_2samp((a @ u).numpy(), (b @ u).numpy()).pvalue > 1e-3


def test_pc_langevin_step_rule_is_pinned():
    # one corrector step then one predictor step, replayed from the formulas with the same draws:
    # eps = 2 exp(-beta dt) (snr mean|z| / mean|s|)^2; x <- x + eps s + sqrt(2 eps) z; then
    # x <- x + beta dt (x / 2 + s) + sqrt(beta dt) z'.  Halving eps (or dropping the 2) fails here.
    sde = sd.VPSDE()
    gm = _mixture(sde)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    t0, t1 = 0.5, 0.4
    out = sd.sample(gm, sde, x1.shape, "pc", x1=x1, grid=[t0, t1], snr=0.2, denoise=False, progress=False,
                    generator=torch.Generator().manual_seed(6))
    gen = torch.Generator().manual_seed(6)
    beta = float(sde.beta(torch.tensor(t0, dtype=F64)))
    dt = t0 - t1
    tv = torch.full((64,), t0, dtype=F64)
    s = gm.score(x1, tv)
    z = torch.randn(x1.shape, generator=gen, dtype=F64)
    eps = 2 * math.exp(-beta * dt) * (0.2 * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
    x = x1 + eps * s + torch.sqrt(2 * eps) * z
    z2 = torch.randn(x1.shape, generator=gen, dtype=F64)
    x = x + beta * dt * (0.5 * x + gm.score(x, tv)) + math.sqrt(beta * dt) * z2
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,options", [("dpmpp_2m", {"steps": 20}), ("heun", {"steps": 25}),
                                            ("ddim", {"steps": 100}), ("dpmpp_3m", {"steps": 15}),
                                            ("unipc_2", {"steps": 15}), ("auto", {"steps": 12})])
def test_few_step_samplers_take_guided_scores(method, options):
    # prior N(m, C) in d = 2, y = A x_0 + N(0, s^2): p(y | x_t) is Gaussian in closed form, so the
    # guided score is the posterior's score and the samples must follow N(m_post, C_post)
    sde = sd.VPSDE()
    m = torch.tensor([0.5, -1.0], dtype=F64)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    a_op = torch.tensor([[1.0, 0.5]], dtype=F64)
    s_y, y = 0.3, torch.tensor([1.0], dtype=F64)
    prior = GaussianMixture([1.0], m[None], cov[None], sde=sde)
    eye = torch.eye(2, dtype=F64)

    def log_p_y(x, t):
        c = sde.schedule.coefficients(t[:1].double())
        alpha, sigma2 = c.alpha, c.sigma**2
        v_t = torch.linalg.inv(torch.linalg.inv(cov) + alpha**2 / sigma2 * eye)
        mean0 = (v_t @ (torch.linalg.inv(cov) @ m)) + (alpha / sigma2) * x @ v_t.T
        var_y = a_op @ v_t @ a_op.T + s_y**2
        r = y - mean0 @ a_op.T
        return -0.5 * (r**2).sum(1) / var_y[0, 0]

    guided = sd.ClassifierGuidance(prior, sde, log_p_y, scale=1.0)
    x = sd.sample(guided, sde, (N, 2), method, generator=torch.Generator().manual_seed(3), dtype=F64,
                  progress=False, **options)
    c_post = torch.linalg.inv(torch.linalg.inv(cov) + a_op.T @ a_op / s_y**2)
    m_post = c_post @ (torch.linalg.inv(cov) @ m + a_op.T @ y / s_y**2)
    se = torch.sqrt(torch.diagonal(c_post) / N)
    assert bool(((x.mean(0) - m_post).abs() < 5 * se).all()), (x.mean(0), m_post)
    xc = x - m_post
    se_cov = (xc[:, :, None] * xc[:, None, :]).std(0) / math.sqrt(N)
    assert bool(((torch.cov(x.T) - c_post).abs() < 5 * se_cov + 2e-3).all()), (torch.cov(x.T), c_post)


def test_grids():
    sch = sd.VPSDE().schedule
    for name in sampling.GRIDS:
        t = sampling.make_grid(name).times(10, sch, 1e-3)
        assert t.dtype == F64 and t.shape == (10,) and float(t[0]) == 1.0 and float(t[-1]) == 1e-3
        assert bool((t[1:] < t[:-1]).all())
    lam = sch.coefficients(sampling.UniformLogSNR().times(9, sch, 1e-3)).log_snr
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(8), rtol=1e-9, atol=1e-9)
    st = torch.exp(-0.5 * sch.coefficients(sampling.Karras(rho=7).times(9, sch, 1e-3)).log_snr)
    root = st ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(8), rtol=1e-9, atol=1e-9)
    assert sampling.make_grid([0.9, 0.5, 0.1]).times(3, sch, 1e-3).tolist() == [0.9, 0.5, 0.1]
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampling.make_grid([0.5, 0.9])
    with pytest.raises(ValueError, match="unknown grid 'cosine'"):
        sampling.make_grid("cosine")
    with pytest.raises(ValueError, match="has 3 points but ddim with steps=5"):
        sd.sample(lambda x, t: -x, sd.VPSDE(), (2, 2), "ddim", grid=[0.9, 0.5, 0.1], steps=5, progress=False)


def test_nfe_of_new_samplers_and_registry_options():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    for method, options, nfe in [("ddim", {"steps": 10}, 10), ("dpmpp_2m", {"steps": 7}, 7),
                                 ("dpmpp_3m", {"steps": 5}, 5), ("heun", {"steps": 6}, 11),
                                 ("heun", {"steps": 6, "s_churn": 5.0}, 11), ("ancestral", {"steps": 9}, 9),
                                 ("unipc_2", {"steps": 5}, 5), ("unipc_3", {"steps": 8}, 8),
                                 ("auto", {"steps": 5}, 5)]:
        res = sd.sample(gm, sde, (8, 2), method, dtype=F64, progress=False, return_result=True, **options)
        assert res.nfe == nfe == sampling.make_sampler(method, **options).nfe, (method, res.nfe)
        assert bool(torch.isfinite(res.x).all())
    opts = sampling.sampler_options()
    assert set(opts["grid"].methods) >= {"ddim", "dpmpp_2m", "dpmpp_3m", "heun", "ancestral"}
    assert opts["eta"].methods == ("ddim",) and opts["ode_method"].methods == ("ode",)
    assert opts["steps"].type is int and opts["grid"].choices == tuple(sampling.GRIDS)
    assert sampling.DEFAULT_METHOD in sampling.SAMPLERS
    with pytest.raises(ValueError, match="eta must lie in"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "ddim", eta=2.0)
    with pytest.raises(ValueError, match="bad option for method='heun'"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "heun", eta=0.5)
    with pytest.raises(ValueError, match="variant must be one of"):
        sd.sample(lambda x, t: -x, sde, (2, 2), "unipc_2", variant="bh3")


def test_unipc_predictor_alone_is_dpmpp_2m():
    # UniP-2 with B(h) = e^{-h} - 1 and the single weight 1/2 is DPM-Solver++(2M) (Zhao et al. 2023, Sec. 3.2)
    sde = sd.VPSDE()
    g = _Gaussian(sde)
    x1 = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    for grid in ["logsnr", "karras", [1.0, 0.7, 0.4, 0.2, 0.08, 0.01]]:
        kw = {"grid": grid, **({} if isinstance(grid, list) else {"steps": 9})}
        a = sampling.UniPC2(corrector=False, **kw).sample(g.score, sde, x1).x
        b = sampling.DPMSolverPP2M(**kw).sample(g.score, sde, x1).x
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        # the corrector changes the result (and costs nothing): same NFE
        c = sampling.UniPC2(**kw).sample(g.score, sde, x1)
        assert c.nfe == sampling.DPMSolverPP2M(**kw).nfe and float((c.x - a).abs().max()) > 1e-6


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_weights_integrate_polynomials_exactly(variant):
    # -B(h) sum_m a_m Delta_m must equal the exact remainder integral_0^h e^{-(h - tau)} (D(tau) - D(0)) dtau
    # for any polynomial D of degree <= q through the points tau = r_m h (q differences)
    from scipy import integrate

    from scidiff.sampling.unipc import unipc_weights

    rng = np.random.default_rng(0)
    for h in (0.05, 0.4, 1.5):
        for r in ([-0.7, 1.0], [-1.0, -2.1, 1.0], [-0.8, -1.9]):
            q = len(r)
            coef = rng.normal(size=q + 1)
            d = lambda tau: np.polyval(coef, tau)  # noqa: E731
            a, big_b = unipc_weights(r, h, variant)
            approx = -big_b * sum(w * (d(rm * h) - d(0.0)) / rm for w, rm in zip(a, r))
            exact = integrate.quad(lambda tau: math.exp(-(h - tau)) * (d(tau) - d(0.0)), 0.0, h,
                                   epsabs=1e-13, epsrel=1e-13)[0]
            assert abs(approx - exact) < 1e-9 * (1 + abs(exact)), (h, r, approx, exact)


def test_ode_solve_object_shared_with_the_likelihood():
    from scidiff import _ode, likelihood

    assert likelihood.ODESolve is _ode.ODESolve is sampling.ODESolve
    # a tuple state: y' = -y, z' = y from (1, 0) over [0, 1]: (e^-1, 1 - e^-1)
    u = torch.tensor([0.0, 1.0], dtype=F64)
    for solve in (_ode.ODESolve(rtol=1e-10, atol=1e-10), _ode.ODESolve(method="rk4", steps=200)):
        y, z = solve(lambda u_, s: (-s[0], s[0]), (torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)), u)
        torch.testing.assert_close(y, torch.full((3,), math.exp(-1), dtype=F64), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(z, torch.full((3,), 1 - math.exp(-1), dtype=F64), rtol=1e-9, atol=1e-9)
    assert _ode.ODESolve(method="euler").adaptive is False and _ode.ODESolve().adaptive is True
    for bad, match in [({"method": "rk99"}, "unknown ODE method"), ({"rtol": 0.0}, "rtol and atol"),
                       ({"steps": 0}, "steps"), ({"time_variable": "tau"}, "time_variable")]:
        with pytest.raises(ValueError, match=match):
            _ode.ODESolve(**bad)
    with pytest.raises(ValueError, match="unknown ODE method"):
        sd.log_likelihood(lambda x, t: -x, sd.VPSDE(), torch.zeros(2, 2, dtype=F64), method="rk99")


def test_auto_is_the_family_member_its_step_size_picks():
    # with the thresholds pushed to the ends, every step is one member: the runs must coincide exactly
    inf = math.inf
    sde = sd.VPSDE()
    g = _Gaussian(sde)
    x1 = torch.randn(16, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    for grid in ["logsnr", "karras", [1.0, 0.8, 0.5, 0.3, 0.12, 0.05, 0.01]]:
        kw = {"grid": grid, **({} if isinstance(grid, list) else {"steps": 7})}
        for opts, other in [({"h_small": 0.0, "h_large": inf}, sampling.DPMSolverPP2M(**kw)),
                            ({"h_small": 0.0, "h_large": 0.0}, sampling.UniPC2(variant="exact", **kw)),
                            ({"h_small": inf, "h_large": inf}, sampling.UniPC3(**kw))]:
            a = sampling.StepSizeMultistep(**opts, **kw).sample(g.score, sde, x1).x
            torch.testing.assert_close(a, other.sample(g.score, sde, x1).x, rtol=1e-12, atol=1e-12)
    # the default thresholds on the default grid: 5 steps are exact-weight UniPC-2 steps, 10 are 2M, 20 UniPC-3
    for steps, other in [(5, sampling.UniPC2(5, variant="exact")), (10, sampling.DPMSolverPP2M(10)),
                         (20, sampling.UniPC3(20))]:
        a = sampling.StepSizeMultistep(steps).sample(g.score, sde, x1).x
        torch.testing.assert_close(a, other.sample(g.score, sde, x1).x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="h_large must be >= h_small"):
        sampling.StepSizeMultistep(h_small=1.0, h_large=0.5)


def test_auto_on_the_steep_gaussian_field_per_mode():
    # The k^-3 field of the benchmarks (16 x 16, pointwise variance 1) with its exact score: every
    # sampler here is linear and diagonal in the field's Fourier basis, x_0 = g_k x_1 per mode, so the
    # sample variance of mode k is exactly g_k^2: run the sampler on x_1 = 1 with one coordinate per mode
    # (variance lambda_k); mean_k |ln(g_k^2 / lambda_k)| is the benchmark's error for infinitely many
    # samples.  The default must beat DPM-Solver++ 2M and 3M at 5 evaluations, equal 2M at 10 and beat
    # both at 20.
    from scidiff.simulators import GaussianRandomField

    spec = GaussianRandomField(16, 2, slope=3.0).spectrum()
    lam = GaussianRandomField(16, 2, slope=3.0, amplitude=256 / float(spec.sum())).spectrum().flatten()
    sde = sd.VPSDE()

    def score(x, t):
        c = sde.schedule.coefficients(t[:1].double())
        return -x / (c.alpha**2 * lam + c.sigma**2)

    def error(method, steps):
        g = sampling.make_sampler(method, steps=steps).sample(score, sde, torch.ones(1, lam.numel(), dtype=F64)).x[0]
        return float((torch.log(g**2) - torch.log(lam)).abs().mean())

    e5 = {m: error(m, 5) for m in ("auto", "dpmpp_2m", "dpmpp_3m")}
    assert e5["auto"] < 0.85 * min(e5["dpmpp_2m"], e5["dpmpp_3m"]), e5
    assert error("auto", 10) == pytest.approx(error("dpmpp_2m", 10), rel=1e-9)
    e20 = {m: error(m, 20) for m in ("auto", "dpmpp_2m", "dpmpp_3m")}
    assert e20["auto"] < 0.5 * min(e20["dpmpp_2m"], e20["dpmpp_3m"]), e20
