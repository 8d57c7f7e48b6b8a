"""The float64 coefficient API of the schedules and the eps / x0 / v / score conversions."""

from __future__ import annotations

import pytest
import torch

import scidiff as sd
from scidiff.parameterisation import PARAMETERISATIONS, batch_time, convert, x0_hat
from scidiff.schedules import Coefficients

F64 = torch.float64
SDES = {"linear": sd.VPSDE(0.1, 20.0), "cosine": sd.VPSDE.cosine()}


@pytest.mark.parametrize("kind", sorted(SDES))
def test_coefficients_match_closed_forms(kind):
    sde = SDES[kind]
    t = torch.linspace(1e-4, 1.0, 101, dtype=F64)
    c = sde.coefficients(t)
    assert isinstance(c, Coefficients)
    for v in (c.alpha, c.sigma, c.log_snr, c.beta):
        assert v.dtype == F64 and v.shape == t.shape
    torch.testing.assert_close(c.alpha**2 + c.sigma**2, torch.ones_like(t), rtol=0, atol=1e-15)
    torch.testing.assert_close(c.log_snr, torch.log(c.alpha**2 / c.sigma**2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.alpha, sde.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(c.sigma, sde.sigma(t), rtol=0, atol=0)
    torch.testing.assert_close(c.beta, sde.beta(t), rtol=0, atol=0)
    # beta = -2 d log alpha / dt, by central differences of the float64 log alpha
    h = 1e-6
    inner = t[1:-1]
    dlog = (sde.schedule.log_alpha(inner + h) - sde.schedule.log_alpha(inner - h)) / (2 * h)
    torch.testing.assert_close(-2 * dlog, c.beta[1:-1], rtol=1e-7, atol=1e-7)
    if kind == "linear":
        # log alpha = -t^2 (b1 - b0) / 4 - t b0 / 2
        expected = torch.exp(-0.25 * 19.9 * t**2 - 0.05 * t)
        torch.testing.assert_close(c.alpha, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", sorted(SDES))
def test_inverses(kind):
    schedule = SDES[kind].schedule
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    c = schedule.coefficients(t)
    torch.testing.assert_close(schedule.t_of_log_snr(c.log_snr), t, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(schedule.t_of_sigma(c.sigma), t, rtol=1e-9, atol=1e-9)
    assert schedule.t_of_sigma(c.sigma.float()).dtype == torch.float32


def test_coefficients_like_broadcasts_and_casts():
    sde = SDES["linear"]
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    scalar = sde.coefficients(torch.tensor(0.5)).like(x)
    per_sample = sde.coefficients(torch.full((3,), 0.5)).like(x)
    for a, b in zip((scalar.alpha, scalar.sigma, scalar.log_snr, scalar.beta), (per_sample.alpha, per_sample.sigma, per_sample.log_snr, per_sample.beta)):
        assert a.shape == (3, 1, 1, 1) and a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sde.coefficients(0.5).alpha.dtype == F64
    with pytest.raises(ValueError, match="batch of 3"):
        sde.coefficients(torch.full((2,), 0.5)).like(x)


def test_batch_time():
    x = torch.zeros(4, 3)
    assert batch_time(0.3, x).shape == (4,) and batch_time(0.3, x).dtype == F64
    assert batch_time(torch.tensor(0.3), x).shape == (4,)
    assert batch_time(torch.tensor([0.3]), x).shape == (4,)
    t = torch.rand(4, dtype=torch.float32)
    assert batch_time(t, x).dtype == torch.float32
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        batch_time(torch.rand(3), x)


def _exact_readings(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 2, 3, generator=g, dtype=F64)
    eps = torch.randn(5, 2, 3, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64) * 0.98 + 0.01
    c = SDES["cosine"].coefficients(t).like(x0)
    x_t = c.alpha * x0 + c.sigma * eps
    readings = {"eps": eps, "x0": x0, "v": c.alpha * eps - c.sigma * x0, "score": -eps / c.sigma}
    return x_t, c, readings


@pytest.mark.parametrize("source", PARAMETERISATIONS)
@pytest.mark.parametrize("target", PARAMETERISATIONS)
def test_convert_every_pair(source, target):
    x_t, c, r = _exact_readings()
    got = convert(r[source], source=source, target=target, x_t=x_t, alpha=c.alpha, sigma=c.sigma)
    torch.testing.assert_close(got, r[target], rtol=1e-11, atol=1e-11)


def test_x0_hat_is_tweedie_for_a_gaussian():
    # x_0 ~ N(m, v): E[x_0 | x_t] = m + alpha v (x_t - alpha m) / (alpha^2 v + sigma^2)
    m, v = 0.7, 2.5
    sde = SDES["linear"]
    t = torch.tensor([0.1, 0.4, 0.9], dtype=F64)
    c = sde.coefficients(t)
    x_t = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    var_t = c.alpha**2 * v + c.sigma**2
    score = -(x_t - c.alpha * m) / var_t
    expected = m + c.alpha * v * (x_t - c.alpha * m) / var_t
    torch.testing.assert_close(x0_hat(x_t, score, c.alpha, c.sigma), expected, rtol=1e-13, atol=1e-13)


def test_convert_rejects_unknown_kind():
    x_t, c, r = _exact_readings()
    with pytest.raises(ValueError, match="'noise'"):
        convert(r["eps"], source="noise", target="x0", x_t=x_t, alpha=c.alpha, sigma=c.sigma)  # type: ignore[arg-type]
