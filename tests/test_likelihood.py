"""PF-ODE log-likelihoods against exact mixture densities (float64)."""

import math

import pytest
import torch

import scidiff as sd
from scidiff.analytic import GaussianMixture
from scidiff.likelihood import divergence_exact, divergence_hutchinson


def _mixture(sde, d=3):
    means = [[-1.0, 0.5, 0.0, 0.3][:d], [1.5, -0.5, 0.2, -0.4][:d]]
    covs = [[0.2, 0.1, 0.3, 0.15][:d], [0.3, 0.4, 0.2, 0.25][:d]]
    return GaussianMixture([0.3, 0.7], means, covs, sde=sde)


@pytest.fixture(params=["linear", "cosine"])
def sde(request):
    return sd.VPSDE() if request.param == "linear" else sd.VPSDE.cosine()


@pytest.mark.parametrize("time_variable", ["logsnr", "t", "sigma"])
def test_exact_trace_likelihood_matches_mixture_density(sde, time_variable):
    gm = _mixture(sde)
    x = gm.sample(100, generator=torch.Generator().manual_seed(0))
    exact = gm.log_prob(x)
    # N(0, I) prior: limited by p_1 != N(0, I) (about 4e-3 nats here)
    res = sd.log_likelihood(gm, sde, x, time_variable=time_variable)
    assert float((res.log_prob - exact).abs().mean()) < 0.02
    # the true p_1: what is left is the integration itself
    p1 = lambda z: gm.log_prob(z, 1.0)  # noqa: E731
    res = sd.log_likelihood(gm, sde, x, time_variable=time_variable, prior_log_prob=p1)
    assert float((res.log_prob - exact).abs().mean()) < 1e-4
    torch.testing.assert_close(res.bits_per_dim, -res.log_prob / (3 * math.log(2)))
    assert res.nfe > 0 and res.x1.shape == x.shape


def test_fields_with_event_shape_and_float32():
    sde = sd.VPSDE()
    gm = GaussianMixture([0.5, 0.5], [[0.0] * 4, [1.0] * 4], [0.5, 0.3], sde=sde, event_shape=(1, 2, 2))
    x = gm.sample(20, generator=torch.Generator().manual_seed(1))
    res = sd.log_likelihood(gm, sde, x.float())
    assert res.log_prob.dtype == torch.float32 and res.log_prob.shape == (20,)
    assert float((res.log_prob.double() - gm.log_prob(x)).abs().mean()) < 0.02


def test_hutchinson_is_unbiased_within_its_standard_error():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    x = gm.sample(400, generator=torch.Generator().manual_seed(2))
    exact = sd.log_likelihood(gm, sde, x).log_prob
    for dist in ["rademacher", "gaussian"]:
        est = sd.log_likelihood(gm, sde, x, divergence="hutchinson", probe_dist=dist,
                                generator=torch.Generator().manual_seed(3)).log_prob
        diff = est - exact
        se = float(diff.std()) / math.sqrt(diff.numel())
        assert abs(float(diff.mean())) < 4 * se, (dist, float(diff.mean()), se)
        assert float(diff.std()) > 0  # it is an estimate, not the exact trace
    # averaging K probes divides the variance by about K
    one = sd.log_likelihood(gm, sde, x, divergence="hutchinson", generator=torch.Generator().manual_seed(4))
    eight = sd.log_likelihood(gm, sde, x, divergence="hutchinson", probes=8, generator=torch.Generator().manual_seed(5))
    ratio = float((one.log_prob - exact).var() / (eight.log_prob - exact).var())
    assert 4.0 < ratio < 16.0, ratio  # 8 within the sampling error of two variance estimates of 400


def test_divergence_estimators_against_jacobian_trace():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6)).double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    s = net(x)
    jac = torch.stack([torch.autograd.functional.jacobian(net, x[i].detach()) for i in range(5)])
    trace = torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1)
    for chunk in (1, 4, 6):
        torch.testing.assert_close(divergence_exact(s, x, chunk_size=chunk), trace, rtol=1e-12, atol=1e-12)
    # with the D basis vectors as probes, mean_k e_k^T J e_k = tr(J) / D exactly
    probes = torch.eye(6, dtype=torch.float64)[:, None, :].expand(6, 5, 6)
    torch.testing.assert_close(divergence_hutchinson(s, x, probes) * 6, trace, rtol=1e-12, atol=1e-12)


def test_exact_trace_through_a_unet_with_attention():
    torch.manual_seed(0)
    net = sd.UNet(channels=1, dims=2, base_channels=8, channel_mults=(1, 2), groups=4, attention_levels=(1,)).double()
    for p in net.parameters():  # leave the zero-initialised output behind
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.full((2,), 0.3, dtype=torch.float64)
    s = net(x, t)
    jac = torch.autograd.functional.jacobian(lambda z: net(z, t).sum(0), x.detach())  # [1,4,4, 2,1,4,4]
    trace = torch.stack([torch.diagonal(jac[..., b, :, :, :].reshape(16, 16)).sum() for b in range(2)])
    torch.testing.assert_close(divergence_exact(s, x, chunk_size=5), trace, rtol=1e-10, atol=1e-10)


def test_log_abs_det_jacobian_gives_original_units():
    """Model on z = (x - m) / c: log p_x(x) = log p_z(z) - D log c."""
    sde = sd.VPSDE()
    gm = _mixture(sde)
    m, c = 10.0, 3.0
    z = gm.sample(30, generator=torch.Generator().manual_seed(6))
    x = m + c * z
    res = sd.log_likelihood(gm, sde, (x - m) / c, log_abs_det_jacobian=-3 * math.log(c),
                            prior_log_prob=lambda u: gm.log_prob(u, 1.0))
    exact_x = gm.log_prob(z) - 3 * math.log(c)
    assert float((res.log_prob - exact_x).abs().max()) < 1e-3


def test_score_only_called_inside_t_min_1():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    seen = []

    def score(x, t):
        seen.append(t.detach())
        return gm.score(x, t)

    for tv in ["logsnr", "t", "sigma"]:
        sd.log_likelihood(score, sde, gm.sample(8), time_variable=tv, rtol=1e-3, atol=1e-3)
    ts = torch.cat(seen)
    assert float(ts.min()) >= 1e-5 * (1 - 1e-9) and float(ts.max()) <= 1.0


def test_works_under_inference_mode_and_leaves_no_grad():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    score = lambda x, t: -x + 0.1 * net(x)  # noqa: E731
    with torch.inference_mode():
        x = torch.randn(4, 3, dtype=torch.float64)
        res = sd.log_likelihood(score, sd.VPSDE(), x, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(res.log_prob).all()
    assert all(p.grad is None for p in net.parameters())


def test_bad_input_is_named():
    sde = sd.VPSDE()
    x = torch.zeros(4, 3, dtype=torch.float64)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in samples \[2\]"):
        sd.log_likelihood(lambda x, t: -x, sde, x)
    with pytest.raises(ValueError, match="unknown divergence 'trace'"):
        sd.log_likelihood(lambda x, t: -x, sde, torch.zeros(2, 3), divergence="trace")
    with pytest.raises(ValueError, match="t_min"):
        sd.log_likelihood(lambda x, t: -x, sde, torch.zeros(2, 3), t_min=0.0)
    with pytest.raises(ValueError, match="score returned shape"):
        sd.log_likelihood(lambda x, t: x[:, :1], sde, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="probes"):
        sd.log_likelihood(lambda x, t: -x, sde, torch.zeros(2, 3), divergence="hutchinson", probes=0)


@pytest.mark.parametrize("time_variable", ["logsnr", "t"])
def test_integrated_divergence_is_the_log_det_of_the_flow_map(time_variable):
    """For a score that is no true score (a random network), the likelihood's integral of the
    divergence equals log|det dx_1/dx_0| of the PF-ODE flow map, differentiated through the solver."""
    from torchdiffeq import odeint

    from scidiff import _ode

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).double()
    score = lambda x, t: -x + net(torch.cat([x, t[:, None]], 1))  # noqa: E731
    sde = sd.VPSDE()
    x = torch.randn(3, 4, dtype=torch.float64)
    res = sd.log_likelihood(score, sde, x, time_variable=time_variable, rtol=1e-9, atol=1e-9)
    var = _ode.time_variable(time_variable, sde.schedule)
    u = var.u_of_t(torch.tensor([1e-5, 1.0], dtype=torch.float64))
    drift = _ode.PFODEDrift(_ode.NFECounter(score), var, 1e-5, 1.0)
    for b in range(3):
        flow = lambda z: odeint(drift, z[None], u, rtol=1e-9, atol=1e-9, options={"step_t": u[-1:]})[-1][0]  # noqa: E731
        jac = torch.autograd.functional.jacobian(flow, x[b])
        assert float(res.delta_log_p[b]) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-6)
        torch.testing.assert_close(res.x1[b], flow(x[b]), rtol=1e-7, atol=1e-7)
