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
    for method, options in [("ode", {}), ("ancestral", {"steps": 300})]:
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
