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


# ----------------------------------------------------------------------------------------
# divergence estimators: the exact trace, standard errors, the lattice, target_se
# ----------------------------------------------------------------------------------------
from scidiff.divergence import Exact, Hutchinson, Lattice, linearize  # noqa: E402
from scidiff.simulators import GaussianRandomField  # noqa: E402


def _small_unet():
    torch.manual_seed(0)
    net = sd.UNet(channels=2, dims=2, periodic=True, base_channels=8, channel_mults=(1, 2)).double().eval()
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="v")
    return model


@pytest.mark.parametrize("functional", [True, False])
def test_exact_trace_equals_the_full_jacobian_trace(functional):
    """The batched exact trace against torch.autograd.functional.jacobian, several batch and chunk sizes."""
    model = _small_unet()
    for bsz in (1, 3):
        x = torch.randn(bsz, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(bsz))
        t = torch.full((bsz,), 0.4, dtype=torch.float64)
        trace = torch.stack([
            torch.autograd.functional.jacobian(lambda z: model.score(z[None], t[:1])[0], x[b]).reshape(32, 32).trace()
            for b in range(bsz)
        ])
        for chunk in (1, 7, 32, None):
            s, vjp = linearize(lambda z: model.score(z, t), x, functional=functional)
            with torch.enable_grad():
                got = Exact(chunk_size=chunk).terms(vjp, x)[0]
            torch.testing.assert_close(got, trace, rtol=1e-8, atol=1e-8)
            torch.testing.assert_close(s, model.score(x, t))


def _linear_score(d, seed):
    """s(x) = A x with a fixed non-symmetric A whose entries decay away from the diagonal (a 1-D ring)."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(d)
    dist = (i[:, None] - i[None, :]).abs()
    dist = torch.minimum(dist, d - dist).double()
    a = torch.randn(d, d, dtype=torch.float64, generator=g) * torch.exp(-dist / 1.5)
    return a


def _lattice_variance(a, labels):
    """Var(sum_c v_c^T A v_c) = sum over same-class pairs i != j of A_ij^2 + A_ij A_ji."""
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    return float((a.square() + a * a.T)[same].sum())


def test_lattice_is_unbiased_and_has_the_closed_form_variance():
    d = 24
    a = _linear_score(d, 0)
    x = torch.zeros(4000, d, dtype=torch.float64)  # the samples only carry independent probes
    vjp = lambda vs: vs @ a  # noqa: E731  (v^T A for each cotangent)
    trace = float(a.trace())
    for spacing in (2, 4, 6):
        est = Lattice(spacing, chunk_size=64)
        est.prepare(x, torch.Generator().manual_seed(spacing))
        terms = est.terms(vjp, x)
        value, se = est.combine(terms)
        labels = torch.arange(d) % spacing
        var = _lattice_variance(a, labels)
        n = value.numel()
        assert abs(float(value.mean()) - trace) < 4 * math.sqrt(var / n)
        # the sample variance over 4000 draws: relative sd about sqrt(2 / n) (plus kurtosis)
        assert float(value.var()) == pytest.approx(var, rel=6 * math.sqrt(2 / n))
        # the class-spread standard error is conservative: its mean square is >= the variance
        assert float(se.square().mean()) >= var * (1 - 6 * math.sqrt(2 / n))
    # plain Rademacher Hutchinson: all pairs; the lattice at equal cost has less variance
    hutch = Hutchinson(4, chunk_size=64)
    hutch.prepare(x, torch.Generator().manual_seed(9))
    plain_var = float(hutch.combine(hutch.terms(vjp, x))[0].var())
    assert plain_var > 5 * _lattice_variance(a, torch.arange(d) % 4) / 4
    # a spacing covering the grid is the exact trace
    est = Lattice(d)
    est.prepare(x[:3])
    value, se = est.combine(est.terms(vjp, x[:3]))
    torch.testing.assert_close(value, torch.full((3,), trace, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert float(se.abs().max()) == 0.0


def test_lattice_classes_follow_the_grid():
    est = Lattice((2, 4))
    x = torch.zeros(1, 3, 6, 8)
    est.prepare(x)
    assert est.steps((3, 6, 8)) == (2, 4) and est.classes == 3 * 8 and est.max_class_size == 6
    labels = est.labels
    assert labels.shape == (3, 6, 8) and int(labels.max()) == 23
    assert torch.equal(labels[0, 2:4, 4:8], labels[0, 0:2, 0:4])  # periodic in both axes
    assert not torch.equal(labels[1], labels[0])  # channels are classes of their own
    assert Lattice(4).steps((1, 6, 6)) == (3, 3)  # the nearest divisor of 6 (a tie goes up)
    with pytest.raises(ValueError, match="spacing"):
        Lattice(0)
    with pytest.raises(ValueError, match="3 entries for fields with 2 spatial axes"):
        Lattice((2, 2, 2)).prepare(torch.zeros(1, 1, 4, 4))


def _grf_problem(n=8, count=64, seed=1):
    grf = GaussianRandomField(n, 2, slope=3.0)
    sde = sd.VPSDE()

    def score(x, t):
        c = sde.coefficients(t)
        return grf.marginal_score(x, c.alpha, c.sigma)

    x = grf.sample(count, generator=torch.Generator().manual_seed(seed)).reshape(count, 1, n, n).double()
    c1 = sde.coefficients(torch.tensor(1.0, dtype=torch.float64))
    p1 = lambda z: grf.marginal_log_prob(z, c1.alpha, c1.sigma)  # noqa: E731
    return grf, sde, score, x, p1


@pytest.fixture(scope="module")
def grf_exact():
    grf, sde, score, x, p1 = _grf_problem()
    res = sd.log_likelihood(score, sde, x, prior_log_prob=p1, rtol=1e-7, atol=1e-7)
    return grf, sde, score, x, p1, res


def test_grf_exact_trace_matches_the_closed_form_density(grf_exact):
    grf, _, _, x, _, res = grf_exact
    assert float((res.log_prob - grf.log_prob(x)).abs().max()) < 5e-3
    assert float(res.log_prob_se.abs().max()) == 0.0 and set(res.divergence) == {"exact"}


@pytest.mark.parametrize("divergence,probes", [("hutchinson", 8), ("lattice", 1), ("lattice", 3)])
def test_standard_errors_are_calibrated_on_the_grf(grf_exact, divergence, probes):
    """|estimate - exact| <= 2 SE for the fraction of fields a t distribution with the SE's
    degrees of freedom gives, within three binomial standard deviations of the 64 fields."""
    from scipy import stats

    _, sde, score, x, p1, exact = grf_exact
    res = sd.log_likelihood(score, sde, x, prior_log_prob=p1, rtol=1e-7, atol=1e-7, divergence=divergence,
                            probes=probes, spacing=2, generator=torch.Generator().manual_seed(5))
    err = res.log_prob - exact.log_prob
    dof = probes - 1 if divergence == "hutchinson" else 4 * probes - probes  # lattice: S = 4 classes
    cover = float((err.abs() <= 2 * res.log_prob_se).double().mean())
    expected = 2 * stats.t.cdf(2.0, dof) - 1
    n = x.shape[0]
    assert cover >= expected - 3 * math.sqrt(expected * (1 - expected) / n), (cover, expected)
    # unbiased: the mean error within four standard errors of the mean
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(n)
    # the SE describes the spread: mean SE^2 against the mean squared error (chi-square, n dof)
    assert float(res.log_prob_se.square().mean()) == pytest.approx(float(err.square().mean()), rel=0.6)
    torch.testing.assert_close(res.bits_per_dim_se, res.log_prob_se / (64 * math.log(2)))


def test_lattice_beats_hutchinson_at_equal_cost_on_the_grf(grf_exact):
    """Four lattice classes (spacing 2) against four Rademacher probes: four products each."""
    _, sde, score, x, p1, exact = grf_exact
    kw = dict(prior_log_prob=p1, rtol=1e-7, atol=1e-7, probes=4)
    lat = sd.log_likelihood(score, sde, x, divergence="lattice", spacing=2, probes=1,
                            generator=torch.Generator().manual_seed(6), **{k: v for k, v in kw.items() if k != "probes"})
    hut = sd.log_likelihood(score, sde, x, divergence="hutchinson", generator=torch.Generator().manual_seed(6), **kw)
    var_lat = float((lat.log_prob - exact.log_prob).square().mean())
    var_hut = float((hut.log_prob - exact.log_prob).square().mean())
    # measured ratio about 90 (docs/likelihood.md); 64 fields estimate each variance to ~25 %
    assert var_hut / var_lat > 20, var_hut / var_lat


def test_target_se_is_met(grf_exact):
    _, sde, score, x, p1, exact = grf_exact
    for divergence in ("lattice", "hutchinson"):
        res = sd.log_likelihood(score, sde, x[:16], prior_log_prob=p1, rtol=1e-7, atol=1e-7, divergence=divergence,
                                spacing=2, target_se=0.01, generator=torch.Generator().manual_seed(7))
        assert float(res.bits_per_dim_se.max()) <= 0.01
        err_bpd = (res.log_prob - exact.log_prob[:16]).abs() / (64 * math.log(2))
        assert float(err_bpd.max()) < 5 * 0.01
        assert all(n in (divergence, "exact") for n in res.divergence)
    with pytest.raises(ValueError, match="target_se"):
        sd.log_likelihood(score, sde, x[:2], target_se=-1.0, divergence="lattice")


def test_guided_scores_fall_back_to_autograd():
    """A score that takes gradients itself cannot go through torch.func; the exact trace still works."""
    sde = sd.VPSDE()
    gm = _mixture(sde)

    def score(x, t):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((x_in**2).sum(), x_in)
        return gm.score(x, t) + 0.0 * g

    x = gm.sample(8, generator=torch.Generator().manual_seed(0))
    res = sd.log_likelihood(score, sde, x, rtol=1e-6, atol=1e-6)
    assert float((res.log_prob - gm.log_prob(x)).abs().mean()) < 0.02


# ------------------------------------------------- the divergence by quadrature on the path
def test_quadrature_on_the_path_matches_the_closed_form_density(grf_exact):
    """x solved alone, the divergence by the trapezoid rule in log-SNR: the GRF's density to
    solver accuracy with 16 intervals, and the reported quadrature error bounds the true one."""
    grf, sde, score, x, p1, exact = grf_exact
    truth = grf.log_prob(x)
    kw = dict(prior_log_prob=p1, rtol=1e-7, atol=1e-7)
    res = sd.log_likelihood(score, sde, x, nodes=16, max_nodes=16, **kw)
    assert float((res.log_prob - truth).abs().max()) < 5e-3
    assert float(res.log_prob_se.abs().max()) == 0.0
    # the estimate of the rule's error (the change from 8 intervals) is not below the true one
    # by more than the solver's error
    assert bool(((res.log_prob - truth).abs() <= res.quadrature_error + 2e-3).all())
    # a coarse rule is visibly wrong: the nodes are the rule's
    coarse = sd.log_likelihood(score, sde, x, nodes=4, max_nodes=4, **kw)
    assert float((coarse.log_prob - truth).abs().max()) > 0.05
    # the path costs forwards only: 17 node evaluations against 5, on one solve of x
    assert res.nfe - coarse.nfe == 16 - 4
    # refined from 4 intervals until the estimated error is below quadrature_tol
    adaptive = sd.log_likelihood(score, sde, x, nodes=4, max_nodes=64, quadrature_tol=1e-5, **kw)
    assert float((adaptive.log_prob - truth).abs().max()) < 5e-3
    assert adaptive.nfe > coarse.nfe


def test_quadrature_refines_to_the_tolerance_on_the_mixture():
    """A non-Gaussian density, whose log-det changes faster in log-SNR: 16 intervals are not
    enough at this tolerance, the refinement is, and the error estimate holds once converging."""
    sde = sd.VPSDE()
    gm = _mixture(sde)
    x = gm.sample(100, generator=torch.Generator().manual_seed(3))
    p1 = lambda z: gm.log_prob(z, 1.0)  # noqa: E731
    kw = dict(prior_log_prob=p1, rtol=1e-6, atol=1e-6)
    fixed = sd.log_likelihood(gm, sde, x, nodes=16, max_nodes=16, **kw)
    assert float((fixed.log_prob - gm.log_prob(x)).abs().max()) > 1e-2
    # once the rule converges, the change from half the nodes bounds its error
    finer = sd.log_likelihood(gm, sde, x, nodes=32, max_nodes=32, **kw)
    err = (finer.log_prob - gm.log_prob(x)).abs()
    assert bool((err <= finer.quadrature_error + 1e-4).all())
    res = sd.log_likelihood(gm, sde, x, nodes=16, max_nodes=256, quadrature_tol=1e-5, **kw)
    assert float((res.log_prob - gm.log_prob(x)).abs().max()) < 1e-3
    assert res.nfe > fixed.nfe


def test_quadrature_standard_errors_and_target_se(grf_exact):
    """Lattice probes on the path: unbiased within the SE, calibrated, and target_se met by
    reusing the path (the refinement costs node evaluations only)."""
    from scipy import stats

    _, sde, score, x, p1, exact = grf_exact
    res = sd.log_likelihood(score, sde, x, prior_log_prob=p1, rtol=1e-7, atol=1e-7, divergence="lattice",
                            spacing=2, probes=2, nodes=16, generator=torch.Generator().manual_seed(8))
    err = res.log_prob - exact.log_prob
    n = x.shape[0]
    expected = 2 * stats.t.cdf(2.0, 4 * 2 - 2) - 1
    cover = float((err.abs() <= 2 * res.log_prob_se).double().mean())
    assert cover >= expected - 3 * math.sqrt(expected * (1 - expected) / n), (cover, expected)
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(n)
    ref = sd.log_likelihood(score, sde, x[:16], prior_log_prob=p1, rtol=1e-7, atol=1e-7, divergence="lattice",
                            spacing=2, nodes=16, max_nodes=16, generator=torch.Generator().manual_seed(9))
    tgt = sd.log_likelihood(score, sde, x[:16], prior_log_prob=p1, rtol=1e-7, atol=1e-7, divergence="lattice",
                            spacing=2, nodes=16, max_nodes=16, target_se=0.004,
                            generator=torch.Generator().manual_seed(9))
    assert float(tgt.bits_per_dim_se.max()) <= 0.004
    assert (tgt.nfe - ref.nfe) % 17 == 0 and tgt.nfe > ref.nfe


def test_bad_nodes_are_named():
    sde = sd.VPSDE()
    gm = _mixture(sde)
    x = gm.sample(2, generator=torch.Generator().manual_seed(0))
    for bad in (0, 3, 7, -4, 8.0, True):
        with pytest.raises(ValueError, match="nodes"):
            sd.log_likelihood(gm, sde, x, nodes=bad)
    for bad in (12, 4, 24, 16.0):
        with pytest.raises(ValueError, match="max_nodes"):
            sd.log_likelihood(gm, sde, x, nodes=8, max_nodes=bad)
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="quadrature_tol"):
            sd.log_likelihood(gm, sde, x, nodes=8, quadrature_tol=bad)
