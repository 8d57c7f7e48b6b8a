"""Guidance against closed forms: the linear-Gaussian inverse problem in float64.

Prior x_0 ~ N(m, C) in d = 4, observation y = A x_0 + N(0, s^2 I) with A [2, 4].  Under the VP
process x_t = alpha_t x_0 + sigma_t eps everything is Gaussian:

    Cov[x_0 | x_t] = V_t = (C^-1 + alpha_t^2 / sigma_t^2 I)^-1,
    E[x_0 | x_t]   = V_t (C^-1 m + alpha_t / sigma_t^2 x_t),
    p(y | x_t)     = N(y; A E[x_0 | x_t], A V_t A^T + s^2 I),

and the posterior is N(m_post, C_post), C_post = (C^-1 + A^T A / s^2)^-1,
m_post = C_post (C^-1 m + A^T y / s^2).
"""

import math
import time

import pytest
import torch

import scidiff as sd
from scidiff.analytic import GaussianMixture
from scidiff.guidance import ClassifierGuidance, DPSGuidance
from scidiff.simulators.heat import HeatEquation
from scidiff.operators import CoarseGrain, Lambda, Mask, MatrixOperator, SparseSensors, Subsample, random_sensors

N = 4000  # posterior samples per sampler
F64 = torch.float64

M0 = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=F64)
_L = torch.tensor([[1.0, 0, 0, 0], [0.4, 0.8, 0, 0], [-0.3, 0.2, 0.7, 0], [0.1, -0.5, 0.3, 0.9]], dtype=F64)
C0 = _L @ _L.T
A = torch.tensor([[1.0, 0.5, 0.0, -0.5], [0.0, 1.0, 1.0, 0.5]], dtype=F64)
S_Y = 0.4
Y = torch.tensor([1.2, -0.3], dtype=F64)


def _posterior():
    ci = torch.linalg.inv(C0)
    c_post = torch.linalg.inv(ci + A.T @ A / S_Y**2)
    m_post = c_post @ (ci @ M0 + A.T @ Y / S_Y**2)
    return m_post, c_post


def _coefs(sde, t):
    """alpha_t, sigma_t^2 at the times t [b] (float64)."""
    la = sde.schedule.log_alpha(t.double())
    return la.exp(), -torch.expm1(2 * la)


def _shared(t):
    """The samplers call with one time for the whole batch: compute per-time matrices once."""
    return t[:1] if bool((t == t[0]).all()) else t


def _exact_log_p_y(sde):
    """log p(y | x_t) of the linear-Gaussian problem, differentiable in x_t [B, 4]; t [B]."""
    ci = torch.linalg.inv(C0)
    eye = torch.eye(4, dtype=F64)

    def log_prob_fn(x, t):
        alpha, sigma2 = _coefs(sde, _shared(t))
        v = torch.linalg.inv(ci[None] + (alpha**2 / sigma2)[:, None, None] * eye)  # V_t [b, 4, 4]
        a_v = A[None] @ v  # [b, 2, 4]
        # A E[x_0 | x_t] = A V_t C^-1 m + alpha / sigma^2 A V_t x_t
        mean_y = (a_v @ (ci @ M0))[:, None, :] + (alpha / sigma2)[:, None, None] * torch.einsum("bij,nj->bni", a_v, x)
        cov_y = a_v @ A.T[None] + S_Y**2 * torch.eye(2, dtype=F64)  # [b, 2, 2]
        r = Y - mean_y  # [b or 1, B, 2] -> per sample
        r = r[0] if r.shape[0] == 1 else torch.diagonal(r, dim1=0, dim2=1).T
        cov_inv = torch.linalg.inv(cov_y)
        cov_inv = cov_inv.expand(x.shape[0], 2, 2) if cov_inv.shape[0] == 1 else cov_inv
        quad = torch.einsum("bi,bij,bj->b", r, cov_inv, r)
        logdet = torch.logdet(cov_y).expand(x.shape[0])
        return -0.5 * (quad + logdet + 2 * math.log(2 * math.pi))

    return log_prob_fn


def _prior_score(sde, mean=M0, cov=C0):
    """Closed-form score of N(alpha_t m, alpha_t^2 C + sigma_t^2 I): -(.)^-1 (x - alpha_t m)."""
    eye = torch.eye(4, dtype=F64)

    def score(x, t):
        alpha, sigma2 = _coefs(sde, _shared(t))
        p_inv = torch.linalg.inv(alpha[:, None, None] ** 2 * cov + sigma2[:, None, None] * eye)
        diff = x - alpha[:, None] * mean
        return -torch.einsum("bij,bj->bi", p_inv.expand(x.shape[0], 4, 4), diff) if p_inv.shape[0] > 1 else -diff @ p_inv[0]

    return score


def _prior(sde):
    return GaussianMixture([1.0], M0[None], C0[None], sde=sde)


def _check_gaussian(x, mean, cov, slack=0.0):
    n = x.shape[0]
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    err = (x.mean(0) - mean).abs()
    assert bool((err < 5 * se_mean + slack).all()), (x.mean(0), mean, err / se_mean)
    xc = x - mean
    se_cov = (xc[:, :, None] * xc[:, None, :]).std(0) / math.sqrt(n)
    cerr = (torch.cov(x.T) - cov).abs()
    assert bool((cerr < 5 * se_cov + slack).all()), (torch.cov(x.T), cov, cerr / se_cov)


CASES = [
    ("ode", {}),
    ("ancestral", {"steps": 300}),
    ("euler_maruyama", {"steps": 300}),
    ("pc", {"steps": 200, "snr": 0.1}),
]


@pytest.mark.parametrize("method,options", CASES, ids=[m for m, _ in CASES])
def test_exact_likelihood_guidance_gives_exact_posterior(method, options):
    """Prior score + grad log p(y | x_t) at scale 1 is the posterior score: every sampler
    reproduces N(m_post, C_post) within 5 standard errors (means and covariance entries)."""
    sde = sd.VPSDE()
    guided = ClassifierGuidance(_prior_score(sde), sde, _exact_log_p_y(sde), scale=1.0)
    x = sd.sample(guided, sde, (N, 4), method, generator=torch.Generator().manual_seed(3), dtype=F64,
                  progress=False, **options)
    m_post, c_post = _posterior()
    # the posterior differs from the prior by many standard errors: the test has power
    assert float(((M0 - m_post).abs() / torch.sqrt(torch.diagonal(c_post) / N)).max()) > 50
    _check_gaussian(x, m_post, c_post, slack=2e-3)


def test_guided_score_equals_posterior_score_pointwise():
    """At every (x, t) the guided score is grad log p_t(x | y), the score of the diffused posterior."""
    sde = sd.VPSDE()
    m_post, c_post = _posterior()
    post = GaussianMixture([1.0], m_post[None], c_post[None], sde=sde)
    guided = ClassifierGuidance(_prior(sde), sde, _exact_log_p_y(sde))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=F64) * 2
    t = torch.rand(64, generator=g, dtype=F64) * 0.98 + 0.01
    torch.testing.assert_close(guided(x, t), post.score(x, t), rtol=1e-9, atol=1e-9)


def _dps_jacobian_formula(sde, x, t, s_y, gamma=None):
    """grad_x log N(y; A x0-hat, Sigma_t) for the Gaussian prior: J^T A^T Sigma_t^-1 (y - A x0-hat),
    J = d x0-hat / d x_t = (I - sigma^2 (alpha^2 C + sigma^2 I)^-1) / alpha."""
    la = sde.schedule.log_alpha(t.double())
    alpha, sigma2 = la.exp(), -torch.expm1(2 * la)
    eye = torch.eye(4, dtype=F64)
    out = []
    for i in range(x.shape[0]):
        p_inv = torch.linalg.inv(alpha[i] ** 2 * C0 + sigma2[i] * eye)
        score = -p_inv @ (x[i] - alpha[i] * M0)
        x0 = (x[i] + sigma2[i] * score) / alpha[i]
        jac = (eye - sigma2[i] * p_inv) / alpha[i]
        cov = s_y**2 * torch.eye(2, dtype=F64)
        if gamma is not None:
            cov = cov + gamma * sigma2[i] / alpha[i] ** 2 * A @ A.T
        out.append(jac.T @ A.T @ torch.linalg.solve(cov, Y - A @ x0))
    return torch.stack(out)


@pytest.mark.parametrize("gamma", [None, 0.5])
def test_dps_gradient_matches_closed_form(gamma):
    """DPS's guidance term is grad log N(y; A x0-hat(x_t), s^2 I + gamma sigma^2/alpha^2 A A^T)
    through the exact Jacobian of Tweedie's mean (dense A A^T for a MatrixOperator)."""
    sde = sd.VPSDE()
    prior = _prior(sde)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=F64)
    t = torch.rand(16, generator=g, dtype=F64) * 0.9 + 0.05
    dps = DPSGuidance(prior, sde, MatrixOperator(A), Y, S_Y, scale=2.0, inflation=gamma)
    expected = prior.score(x, t) + 2.0 * _dps_jacobian_formula(sde, x, t, S_Y, gamma)
    torch.testing.assert_close(dps(x, t), expected, rtol=1e-9, atol=1e-9)


def _moment_errors(x):
    m_post, c_post = _posterior()
    sd_post = torch.sqrt(torch.diagonal(c_post))
    mean_err = float(((x.mean(0) - m_post).abs() / sd_post).max())
    spread_err = float((x.std(0) / sd_post - 1).abs().max())
    return mean_err, spread_err


def test_dps_is_approximate_but_beats_the_prior():
    """DPS (and its variance-inflated form) against the exact posterior, errors in units of the
    posterior standard deviations (max over the 4 coordinates).  Measured with these seeds
    (N = 4000, ancestral sampler, 300 steps):
        prior:                 mean error 1.69, spread error 1.04 (|std / std_post - 1|)
        plain DPS:             mean error 0.25, spread error 0.11
        inflation gamma = 1:   mean error 0.25, spread error 0.007
    Sampling error alone: 5 standard errors are 0.08 on the mean and 0.06 on the spread."""
    sde = sd.VPSDE()
    x_prior = _prior(sde).sample(N, generator=torch.Generator().manual_seed(5))
    prior_mean_err, prior_spread_err = _moment_errors(x_prior)
    results = {}
    for name, gamma in (("dps", None), ("inflated", 1.0)):
        guided = DPSGuidance(_prior_score(sde), sde, MatrixOperator(A), Y, S_Y, inflation=gamma)
        x = sd.sample(guided, sde, (N, 4), "ancestral", steps=300, generator=torch.Generator().manual_seed(4),
                      dtype=F64, progress=False)
        results[name] = _moment_errors(x)
    assert prior_mean_err > 1.5 and prior_spread_err > 0.9  # measured 1.69, 1.04
    dps_mean, dps_spread = results["dps"]
    inf_mean, inf_spread = results["inflated"]
    assert dps_mean < 0.35 and dps_spread < 0.2  # measured 0.25, 0.11
    assert inf_mean < 0.35 and inf_spread < 0.06  # measured 0.25, 0.007
    # DPS is biased (beyond sampling error) but far closer to the posterior than the prior is
    assert dps_mean > 0.1
    assert dps_mean < prior_mean_err / 4 and dps_spread < prior_spread_err / 4


def test_closed_forms_of_this_file_agree_with_the_analytic_module():
    """The fast closed forms used by the sampler tests equal GaussianMixture's score, and the
    exact log p(y | x_t) equals log int p(y | x_0) p(x_0 | x_t) computed by Monte Carlo."""
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, generator=g, dtype=F64)
    for t in (torch.full((8,), 0.3, dtype=F64), torch.rand(8, generator=g, dtype=F64) * 0.9 + 0.05):
        torch.testing.assert_close(_prior_score(sde)(x, t), _prior(sde).score(x, t), rtol=1e-10, atol=1e-10)
    # p(y | x_t) = E_{x_0 ~ p(x_0 | x_t)} N(y; A x_0, s^2 I) for one x_t
    t = torch.full((1,), 0.4, dtype=F64)
    alpha, sigma2 = _coefs(sde, t)
    ci = torch.linalg.inv(C0)
    v = torch.linalg.inv(ci + alpha**2 / sigma2 * torch.eye(4, dtype=F64))
    mu = v @ (ci @ M0 + alpha / sigma2 * x[0])
    x0 = mu + torch.randn(200_000, 4, generator=g, dtype=F64) @ torch.linalg.cholesky(v).T
    lik = torch.distributions.Normal(x0 @ A.T, S_Y).log_prob(Y).sum(1)
    mc = torch.logsumexp(lik, 0) - math.log(lik.numel())
    se = float(torch.exp(lik - lik.max()).std() / torch.exp(lik - lik.max()).mean()) / math.sqrt(lik.numel())
    assert abs(float(_exact_log_p_y(sde)(x[:1], t)) - float(mc)) < 5 * se + 1e-4


# ---------------------------------------------------------------- operators


def _dense_matrix(op, event_shape):
    """The matrix of a linear operator, column by column (its Jacobian), [M, D]."""
    x = torch.zeros((1, *event_shape), dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda z: op(z).flatten(1)[0], x)
    return jac.reshape(jac.shape[0], -1)


@pytest.mark.parametrize(
    "op,event_shape",
    [
        (SparseSensors(torch.tensor([[0, 1, 2], [0, 3, 3], [0, 0, 5]]), (1, 4, 6)), (1, 4, 6)),
        (Mask(torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(0)) > 0.6), (2, 4, 6)),
        (Subsample(2, offset=1), (1, 4, 6)),
        (CoarseGrain(2), (2, 4, 6)),
        (CoarseGrain(3, dims=1), (2, 6)),
        (MatrixOperator(A), (4,)),
    ],
    ids=["sensors", "mask", "subsample", "coarse", "coarse1d", "matrix"],
)
def test_operator_aat_matches_its_jacobian(op, event_shape):
    """A A^T from the operator's Jacobian equals the diagonal it reports (or its dense A A^T)."""
    mat = _dense_matrix(op, event_shape)
    aat = mat @ mat.T
    like = op(torch.zeros((3, *event_shape), dtype=F64))
    diag = op.aat_diag(like)
    if isinstance(op, MatrixOperator):
        assert diag is None
        torch.testing.assert_close(op.aat_dense(like), aat)
    else:
        torch.testing.assert_close(aat, torch.diag(diag.flatten()), rtol=0, atol=1e-14)
    # linearity: A(a x + b z) = a A(x) + b A(z)
    g = torch.Generator().manual_seed(1)
    x, z = (torch.randn((2, *event_shape), generator=g, dtype=F64) for _ in range(2))
    torch.testing.assert_close(op(2.0 * x - 0.5 * z), 2.0 * op(x) - 0.5 * op(z))


def test_operator_values():
    x = torch.arange(2 * 1 * 4 * 4, dtype=F64).reshape(2, 1, 4, 4)
    torch.testing.assert_close(CoarseGrain(2)(x)[0, 0, 0, 0], (x[0, 0, 0, 0] + x[0, 0, 0, 1] + x[0, 0, 1, 0] + x[0, 0, 1, 1]) / 4)
    torch.testing.assert_close(Subsample(2)(x), x[:, :, ::2, ::2])
    sensors = SparseSensors(torch.tensor([[0, 3, 1], [0, 0, 2]]), (1, 4, 4))
    torch.testing.assert_close(sensors(x), torch.stack([x[:, 0, 3, 1], x[:, 0, 0, 2]], 1))
    field = sensors.scatter(sensors(x))
    assert bool(torch.isnan(field).sum() == 2 * 14) and bool((field[:, 0, 3, 1] == x[:, 0, 3, 1]).all())
    # a 5 % random sensor set is reproducible from its seed and has round(0.05 D) points
    a, b = SparseSensors.random((1, 32, 32), 0.05, seed=7), SparseSensors.random((1, 32, 32), 0.05, seed=7)
    assert a.num_sensors == round(0.05 * 1024) and torch.equal(a.flat_indices, b.flat_indices)
    assert not torch.equal(a.flat_indices, random_sensors((1, 32, 32), 0.05, seed=8))


def test_operator_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        CoarseGrain(3)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="out of range"):
        SparseSensors(torch.tensor([[0, 4, 0]]), (1, 4, 4))
    with pytest.raises(ValueError, match="duplicates"):
        SparseSensors(torch.tensor([3, 3]), (1, 4, 4))
    with pytest.raises(ValueError, match="built for fields"):
        SparseSensors(torch.tensor([3]), (1, 4, 4))(torch.zeros(2, 1, 5, 4))
    with pytest.raises(TypeError, match="boolean"):
        Mask(torch.ones(4, 4))
    with pytest.raises(ValueError, match="factor"):
        Subsample(0)


# ---------------------------------------------------------------- with a network


class _Counting(torch.nn.Module):
    """A ScoreModel's score that counts network forwards and backward passes through its output."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def score(self, x, t):
        self.forwards += 1
        s = self.model.score(x, t)
        if s.requires_grad:
            s.register_hook(self._count)
        return s

    def _count(self, grad):
        self.backwards += 1


def _tiny_model():
    torch.manual_seed(0)
    net = sd.UNet(channels=1, dims=2, base_channels=8, channel_mults=(1, 2), attention_levels=(), groups=4)
    # perturb the zero-initialised output layer so the score depends on the network
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sd.ScoreModel(net, sd.VPSDE())


def test_guidance_leaves_parameters_alone_and_serves_inference_mode():
    """No parameter gets a .grad, the output carries no graph, and calls under no_grad and
    inference_mode give the same values as plain calls; one forward and one backward per DPS
    evaluation, the prior score and x0-hat sharing the forward."""
    model = _tiny_model()
    counting = _Counting(model)
    sde = model.sde
    op = SparseSensors.random((1, 8, 8), 0.2, seed=0)
    y = torch.randn(op.num_sensors)
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 0.3)
    dps = DPSGuidance(counting.score, sde, op, y, 0.1, inflation=1.0)
    plain = dps(x, t)
    assert (counting.forwards, counting.backwards) == (1, 1)
    with torch.no_grad():
        under_no_grad = dps(x, t)
    with torch.inference_mode():
        x_inf, t_inf = x.clone(), t.clone()
        under_inference = dps(x_inf, t_inf)
        dps_built_inside = DPSGuidance(counting.score, sde, op, y.clone(), 0.1, inflation=1.0)(x_inf, t_inf)
    for out in (plain, under_no_grad, under_inference, dps_built_inside):
        assert not out.requires_grad and out.grad_fn is None
        torch.testing.assert_close(out, plain)
    assert all(p.grad is None for p in model.parameters())
    assert (counting.forwards, counting.backwards) == (4, 4)
    # the guidance is really there: it differs from the prior score
    assert float((plain - model.score(x, t).detach()).abs().max()) > 1e-3

    # classifier guidance: the score is evaluated without a graph, the classifier with one
    enc = sd.nets.NoisyEncoder(1, 2, 1, base_channels=8, channel_mults=(1, 2), attention_levels=(), groups=4)
    cg = ClassifierGuidance(counting.score, sde, lambda x_t, t_: enc(x_t, t_)[:, 0], scale=3.0)
    with torch.inference_mode():
        out = cg(x.clone(), t.clone())
    assert (counting.forwards, counting.backwards) == (5, 4)
    assert all(p.grad is None for p in list(model.parameters()) + list(enc.parameters()))
    assert out.grad_fn is None


def test_guided_sampling_runs_with_a_network_under_inference_mode():
    model = _tiny_model()
    op = Subsample(2)
    y = torch.zeros(1, 4, 4)
    dps = DPSGuidance(model.score, model.sde, op, y, 0.5)
    with torch.inference_mode():
        res = sd.sample(dps, model.sde, (2, 1, 8, 8), "euler_maruyama", steps=5, progress=False,
                        generator=torch.Generator().manual_seed(0), return_result=True)
    assert res.x.shape == (2, 1, 8, 8) and bool(torch.isfinite(res.x).all()) and res.nfe == 6
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- bad input


def test_dps_bad_input_is_a_clear_error():
    sde = sd.VPSDE()
    score = _prior_score(sde)
    op = SparseSensors(torch.tensor([1, 5, 9]), (1, 4, 4))
    with pytest.raises(ValueError, match=r"y has shape \[4\] but operator\(x\) gives observations of shape \[3\]"):
        DPSGuidance(score, sde, op, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="noise_std must be a positive"):
        DPSGuidance(score, sde, op, torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="noise_std must be a positive"):
        DPSGuidance(score, sde, op, torch.zeros(3), -1.0)
    with pytest.raises(ValueError, match="noise_std must be positive"):
        DPSGuidance(score, sde, op, torch.zeros(3), torch.tensor([0.1, 0.0, 0.1]))
    with pytest.raises(ValueError, match="y contains 1 NaN"):
        DPSGuidance(score, sde, op, torch.tensor([0.0, float("nan"), 1.0]), 0.1)
    with pytest.raises(ValueError, match="inflation"):
        DPSGuidance(score, sde, op, torch.zeros(3), 0.1, inflation=-1.0)
    with pytest.raises(ValueError, match="scale"):
        DPSGuidance(score, sde, op, torch.zeros(3), 0.1, scale=float("inf"))
    with pytest.raises(TypeError, match="sde"):
        DPSGuidance(score, "vp", op, torch.zeros(3), 0.1)
    # an operator that does not know the field shape: checked at the first call
    dps = DPSGuidance(score, sde, Lambda(lambda x: x[:, :2]), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match=r"y has shape \[3\] but operator\(x\) gives observations of shape \[2\]"):
        dps(torch.zeros(5, 4, dtype=F64), torch.full((5,), 0.5, dtype=F64))
    # ... or at construction when event_shape is given
    with pytest.raises(ValueError, match="y has shape"):
        DPSGuidance(score, sde, Lambda(lambda x: x[:, :2]), torch.zeros(3), 0.1, event_shape=(4,))
    # one y per sample must match the batch
    dps = DPSGuidance(score, sde, MatrixOperator(A), torch.zeros(3, 2, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="holds 3 observations but the batch has 5"):
        dps(torch.zeros(5, 4, dtype=F64), torch.full((5,), 0.5, dtype=F64))


def test_classifier_guidance_bad_input():
    sde = sd.VPSDE()
    score = _prior_score(sde)
    with pytest.raises(TypeError, match="log_prob_fn"):
        ClassifierGuidance(score, sde, "not callable")
    x, t = torch.zeros(5, 4, dtype=F64), torch.full((5,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match=r"one value per sample, shape \[5\]"):
        ClassifierGuidance(score, sde, lambda x_, t_: x_.sum())(x, t)
    with pytest.raises(ValueError, match="does not depend on x_t"):
        ClassifierGuidance(score, sde, lambda x_, t_: t_ * 2)(x, t)


# ---------------------------------------------------------------- a field-sized exact test bed


def test_exact_guidance_on_the_heat_equation_posterior():
    """Heat equation on a periodic 8 x 8 grid, GRF prior, y = H u0 + N(0, s^2 I): everything is
    diagonal in Fourier space (U the unitary DFT), so log p(y | x_t) is exact,

        p(y | x_t) = N(y; U* h mu_t, U* (h^2 V_t + s^2) U),  V_t = 1 / (1/lambda + alpha^2/sigma^2),
        mu_t = V_t alpha / sigma^2 U x_t,

    and guided PF-ODE sampling must reproduce the simulator's exact posterior: the mean field
    within 5 standard errors per pixel and every Fourier mode's variance within 5 standard errors.
    (The ancestral sampler with 300 uniform steps under-disperses the smallest-variance modes of
    this prior by up to ~25 % even without guidance, so the PF-ODE is used here.)"""
    n, s_y, n_samples = 8, 0.05, 1000
    heat = HeatEquation(n, 2, kappa=0.01, tau=0.1)
    grf = heat.grf
    sde = sd.VPSDE()
    lam = grf.spectrum(half=False)  # [n, n] full grid, fftn order
    h = heat.decay(half=False)
    u0 = grf.sample(1, seed=11)
    y = heat.observe(u0, s_y, seed=12)  # [1, n, n]
    y_hat = torch.fft.fftn(y[0], norm="ortho")

    def fft(x):
        return torch.fft.fftn(x, dim=(-2, -1), norm="ortho")

    def prior_score(x, t):
        coef = sde.coefficients(t).like(x)
        alpha, sigma = coef.alpha, coef.sigma
        return grf.marginal_score(x, alpha.flatten(), sigma.flatten())

    def log_p_y(x, t):
        coef = sde.coefficients(t).like(x[:, 0])  # [B, 1, 1]
        alpha, sigma = coef.alpha, coef.sigma
        v = 1.0 / (1.0 / lam + alpha**2 / sigma**2)
        mean_hat = h * v * alpha / sigma**2 * fft(x[:, 0])
        var_y = h**2 * v + s_y**2
        return -0.5 * ((y_hat - mean_hat).abs() ** 2 / var_y + torch.log(2 * math.pi * var_y)).flatten(1).sum(1)

    guided = ClassifierGuidance(prior_score, sde, log_p_y)
    x = sd.sample(guided, sde, (n_samples, 1, n, n), "ode", dtype=F64,
                  generator=torch.Generator().manual_seed(13), progress=False)[:, 0]
    post = heat.posterior(y, s_y)
    sd_pixel = torch.sqrt(torch.diagonal(post.covariance())).reshape(n, n)
    z_mean = (x.mean(0) - post.mean[0]) / (sd_pixel / math.sqrt(n_samples))
    assert float(z_mean.abs().max()) < 5, z_mean.abs().max()
    # the data moved the posterior far from the prior (mean 0): the test has power
    assert float((post.mean[0].abs() / (sd_pixel / math.sqrt(n_samples))).max()) > 50
    power = (fft(x - post.mean[0]).abs() ** 2).mean(0)  # per mode, E |z_k|^2 = v_k
    rel = power / post.variance - 1
    assert float(rel.abs().max()) < 5 * math.sqrt(2 / n_samples) + 0.02, rel.abs().max()
    # the posterior variances differ from the prior's by far more than that
    assert float((post.variance / lam).min()) < 0.2
