"""Latent diffusion: the autoencoder's shapes and reconstruction, and the bound on log p(x).

The bound is checked exactly on a linear-Gaussian model (a linear decoder, a Gaussian latent
whose every marginal score is known): with q(z | x) the true posterior every draw of
log p(x | z) + log p(z) - log q(z | x) equals log p(x); with another Gaussian q the bound has
a closed form.  On a Gaussian random field (exact log-density) a trained autoencoder and
latent score model give a bound below the exact log p, within its standard error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import scidiff as sd
from scidiff.latent import (
    Autoencoder,
    AutoencoderLoss,
    AutoencoderTrainer,
    DiagonalGaussian,
    LatentDiffusion,
    latent_statistics,
    load_autoencoder,
    reconstruction_error_spectrum,
    reconstruction_panels,
    shell_power,
    spectral_distance,
    train_autoencoder,
)
from scidiff.simulators import GaussianRandomField
from scidiff.training import TrainConfig

_LOG_2PI = math.log(2.0 * math.pi)


# ---- shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims, spatial, factor", [
    (1, (24,), 8), (2, (12, 16), (4, 2)), (2, (6, 16), (1, 8)), (3, (8, 4, 6), (4, 2, 2)),
])
def test_shapes_round_trip(dims, spatial, factor):
    torch.manual_seed(0)
    ae = Autoencoder(2, dims, factor=factor, latent_channels=3, base_channels=8, groups=4)
    x = torch.randn(2, 2, *spatial)
    q = ae.encode(x)
    f = (factor,) * dims if isinstance(factor, int) else factor
    expect = (3, *(n // k for n, k in zip(spatial, f)))
    assert tuple(q.mean.shape[1:]) == expect == ae.latent_shape(spatial)
    assert q.log_var.shape == q.mean.shape
    assert ae.decode(q.sample()).shape == x.shape


def test_periodic_autoencoder_commutes_with_shifts():
    """Circular padding: a shift of x by one latent cell (f pixels) shifts mu(x) by one cell."""
    torch.manual_seed(1)
    ae = Autoencoder(1, 2, factor=(2, 4), latent_channels=2, base_channels=8, groups=4).double()
    x = torch.randn(2, 1, 8, 16, dtype=torch.float64)
    mu = ae.encode(x).mean
    mu_shift = ae.encode(torch.roll(x, shifts=(2, 4), dims=(2, 3))).mean
    torch.testing.assert_close(mu_shift, torch.roll(mu, shifts=(1, 1), dims=(2, 3)), rtol=1e-10, atol=1e-10)
    z = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ae.decode(torch.roll(z, 1, dims=3)), torch.roll(ae.decode(z), 4, dims=3),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spatial, factor, axis, size", [((30,), 4, 0, 30), ((16, 12), 8, 1, 12),
                                                          ((9, 8, 8), 2, 0, 9)])
def test_non_dividing_factor_fails_in_one_line(spatial, factor, axis, size):
    ae = Autoencoder(1, len(spatial), factor=factor, base_channels=8, groups=4)
    with pytest.raises(ValueError) as err:
        ae.encode(torch.zeros(1, 1, *spatial))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"axis {axis} has size {size}" in msg and f"factor {factor}" in msg


def test_bad_factor_is_refused():
    with pytest.raises(ValueError, match="factor must be one of"):
        Autoencoder(1, 2, factor=3)
    with pytest.raises(ValueError, match="factor must be one of"):
        Autoencoder(1, 2, factor=(2, 2, 2))


# ---- reconstruction ----------------------------------------------------------------------------
def _smooth_fields(n: int, size: int, seed: int) -> Tensor:
    """sum_{k=1..3} a_k cos(2 pi k s / N) + b_k sin(...), a, b ~ N(0, 1/k^2): smooth periodic fields."""
    g = torch.Generator().manual_seed(seed)
    s = torch.arange(size, dtype=torch.float64) * 2 * math.pi / size
    x = torch.zeros(n, 1, size, dtype=torch.float64)
    for k in (1, 2, 3):
        a, b = torch.randn(2, n, 1, 1, generator=g, dtype=torch.float64) / k
        x += a * torch.cos(k * s) + b * torch.sin(k * s)
    return x.float()


def test_factor_one_without_kl_reconstructs_smooth_fields():
    """Factor 1, KL weight 0, 300 steps: held-out relative L2 error below 10%."""
    torch.manual_seed(0)
    train, test = _smooth_fields(256, 32, 0), _smooth_fields(64, 32, 1)
    ae = Autoencoder(1, 1, factor=1, latent_channels=2, base_channels=16, groups=4)
    cfg = TrainConfig(steps=300, batch_size=32, lr=3e-3, warmup_steps=20, ema_decay=0.9, log_every=100, seed=0)
    ae = train_autoencoder(ae, train, cfg, loss=AutoencoderLoss(kl_weight=0.0), progress=False)
    with torch.no_grad():
        rel = ((ae(test) - test).norm(dim=(1, 2)) / test.norm(dim=(1, 2))).mean()
    assert rel < 0.10, f"relative reconstruction error {float(rel):.3f}"


def test_checkpoint_round_trip_and_resume(tmp_path):
    """Saved and reloaded weights give the same outputs; 20 + 20 resumed steps equal 40 straight."""
    x = _smooth_fields(64, 16, 2)
    cfg = TrainConfig(steps=40, batch_size=16, lr=1e-3, warmup_steps=5, log_every=10, seed=3)

    def fresh() -> Autoencoder:
        torch.manual_seed(0)
        return Autoencoder(1, 1, factor=2, latent_channels=2, base_channels=8, groups=4)

    straight = AutoencoderTrainer(fresh(), cfg)
    straight.fit(x, progress=False)
    part = AutoencoderTrainer(fresh(), cfg, checkpoint=tmp_path / "ae")
    part.fit(x, until=20, progress=False)
    resumed = AutoencoderTrainer(fresh(), cfg, checkpoint=tmp_path / "ae", resume=True)
    assert resumed.step == 20
    resumed.fit(x, progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    loaded = load_autoencoder(tmp_path / "ae")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), resumed.ema_model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decoder_log_var, resumed.ema_model.decoder_log_var)


@pytest.mark.slow
def test_latent_run_trains_under_torchrun_and_resumes(tmp_path: Path, torchrun) -> None:
    """`torchrun --nproc_per_node 2 -m scidiff.cli train --latent ...`: one clean run folder (rank 0
    writes it), both models at the requested step, and a resume under torchrun continues both."""
    import xarray as xr

    g = GaussianRandomField(8, dims=2, slope=2.0).sample(32, seed=0).numpy()
    data = tmp_path / "rho.nc"
    xr.Dataset({"rho": (("sample", "y", "x"), 5.0 + 2.0 * g)}).to_netcdf(data, engine="h5netcdf")
    run = tmp_path / "run"
    common = ["-m", "scidiff.cli", "train", "--data", str(data), "--var", "rho", "--out", str(run), "--periodic",
              "--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--batch-size", "8",
              "--warmup-steps", "1", "--latent", "factor=2,channels=2,base_channels=8", "--no-progress"]
    # log_every (100) exceeds the steps: one history entry at the end of each training
    for steps, extra, logged in ((4, [], [4]), (6, ["--resume"], [4, 6])):
        proc = torchrun([*common, "--steps", str(steps), *extra])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert sorted(p.name for p in run.iterdir()) == sorted(
            ["autoencoder", "checkpoints", "config.toml", "latent.json", "latest", "run.json"])
        ae_meta = json.loads((run / "autoencoder" / "autoencoder.json").read_text())
        assert ae_meta["step"] == steps and [e["step"] for e in ae_meta["history"]] == logged
        assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == f"step_{steps:08d}"
        info = json.loads((run / "latent.json").read_text())
        assert info["latent_shape"] == [2, 4, 4] and all(s > 0 for s in info["latent_scale"])
    loaded = sd.runs.Run.open(run).load()
    assert loaded.checkpoint.step == 6 and loaded.latent is not None


def test_fitted_decoder_variance_is_the_mean_squared_residual():
    torch.manual_seed(0)
    ae = Autoencoder(2, 1, factor=2, latent_channels=2, base_channels=8, groups=4).double()
    x = torch.randn(32, 2, 16, dtype=torch.float64)
    var = ae.fit_decoder_variance(x, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        r = x - ae.decode(ae.encode(x).sample(torch.Generator().manual_seed(5)))
    torch.testing.assert_close(var, r.square().mean(dim=(0, 2)))
    torch.testing.assert_close(ae.decoder_log_var.exp(), var)


# ---- the bound, exactly: a linear-Gaussian latent model --------------------------------------------
class _LinearGaussian(nn.Module):
    """x = W z + N(0, s2 I) with z ~ N(0, diag(lam)), z [B, 1, 4], x [B, 1, 8]; W^T W = diag(w^2).

    encode gives q(z | x) = N(c_mean * mu_post(x) + shift, c_var * Sigma_post): the true posterior
    for c_mean = 1, shift = 0, c_var = 1.
    """

    def __init__(self, *, c_mean: float = 1.0, shift: float = 0.0, c_var: float = 1.0) -> None:
        super().__init__()
        dt = torch.float64
        self.w = torch.tensor([1.5, 0.7, 2.0, 1.1], dtype=dt)
        self.lam = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=dt)
        self.s2 = 0.09
        self.W = torch.zeros(8, 4, dtype=dt)
        for j in range(4):
            self.W[2 * j:2 * j + 2, j] = self.w[j] / math.sqrt(2.0)
        self.post_var = 1.0 / (1.0 / self.lam + self.w**2 / self.s2)
        self.c_mean, self.shift, self.c_var = c_mean, shift, c_var
        self.dummy = nn.Parameter(torch.zeros((), dtype=dt))  # gives the module a dtype and device

    def latent_shape(self, spatial):
        return (1, 4)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        mean = self.c_mean * (x.flatten(1) @ self.W) * self.post_var / self.s2 + self.shift
        var = (self.c_var * self.post_var).expand_as(mean)
        return DiagonalGaussian(mean[:, None], var.log()[:, None])

    def decode(self, z: Tensor) -> Tensor:
        return (z.flatten(1) @ self.W.T)[:, None]

    def decoder_log_prob(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return -0.5 * ((x - x_hat).square() / self.s2 + math.log(self.s2) + _LOG_2PI).flatten(1).sum(1)

    def latent_score(self, u: Tensor, t: Tensor, sde: sd.VPSDE, cond: Tensor | None = None) -> Tensor:
        """The score of N(0, c lam) at time t, c = cond[:, 0] (1 without cond)."""
        a, s = sde.alpha(t).to(u)[:, None, None], sde.sigma(t).to(u)[:, None, None]
        c = 1.0 if cond is None else cond[:, :1, None]
        return -u / (a**2 * c * self.lam + s**2)

    def prior_log_prob(self, u: Tensor, sde: sd.VPSDE, c: float = 1.0) -> Tensor:
        """log N(u; 0, alpha_1^2 c lam + sigma_1^2): the latent marginal at t = 1 (not exactly N(0, I))."""
        one = torch.ones((), dtype=torch.float64)
        var = sde.alpha(one) ** 2 * c * self.lam + sde.sigma(one) ** 2
        return -0.5 * (u.square() / var + var.log() + _LOG_2PI).flatten(1).sum(1)

    def exact_log_prob(self, x: Tensor) -> Tensor:
        cov = self.W @ torch.diag(self.lam) @ self.W.T + self.s2 * torch.eye(8, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(torch.zeros(8, dtype=torch.float64), cov).log_prob(x.flatten(1))

    def closed_form_bound(self, x: Tensor, c: float = 1.0) -> Tensor:
        """E_q[log p(x | z)] - KL(q || N(0, c lam)) in closed form."""
        lam = c * self.lam
        q = self.encode(x)
        m, v = q.mean.flatten(1), q.log_var.exp().flatten(1)
        rec = -0.5 * ((x.flatten(1) - m @ self.W.T).square().sum(1) / self.s2 + (self.w**2 * v).sum(1) / self.s2
                      + 8 * (math.log(self.s2) + _LOG_2PI))
        kl = 0.5 * (v / lam + m**2 / lam - 1.0 - (v / lam).log()).sum(1)
        return rec - kl


def _linear_model(**kw) -> tuple[_LinearGaussian, LatentDiffusion]:
    ae = _LinearGaussian(**kw)
    sde = sd.VPSDE()
    ld = LatentDiffusion(ae, lambda u, t, cond=None: ae.latent_score(u, t, sde, cond), (1, 8), sde=sde)
    return ae, ld


def _linear_data(ae: _LinearGaussian, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64) * ae.lam.sqrt()
    return ((z @ ae.W.T) + math.sqrt(ae.s2) * torch.randn(n, 8, generator=g, dtype=torch.float64))[:, None]


def test_bound_is_tight_at_the_true_posterior():
    """q = p(z | x): every draw gives log p(x) exactly, so the bound equals it (to the ODE's tolerance)."""
    ae, ld = _linear_model()
    x = _linear_data(ae, 6, 0)
    res = ld.log_likelihood_bound(x, samples=8, generator=torch.Generator().manual_seed(1), rtol=1e-8, atol=1e-8,
                                  prior_log_prob=lambda u: ae.prior_log_prob(u, ld.sde))
    exact = ae.exact_log_prob(x)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=1e-5)
    assert float(res.log_prob_se.max()) < 1e-5
    assert res.is_bound
    torch.testing.assert_close(res.bits_per_dim, -exact / (8 * math.log(2.0)), rtol=0, atol=1e-6)


def test_bound_matches_its_closed_form_and_stays_below_log_p():
    """A mis-set q: the Monte-Carlo bound agrees with E_q[log p(x|z)] - KL(q || p) within 4 SE, below log p."""
    ae, ld = _linear_model(c_mean=0.8, shift=0.3, c_var=2.5)
    x = _linear_data(ae, 4, 2)
    res = ld.log_likelihood_bound(x, samples=256, generator=torch.Generator().manual_seed(3), rtol=1e-6, atol=1e-6,
                                  prior_log_prob=lambda u: ae.prior_log_prob(u, ld.sde))
    closed = ae.closed_form_bound(x)
    assert bool(((res.log_prob - closed).abs() < 4 * res.log_prob_se).all()), (res.log_prob, closed, res.log_prob_se)
    assert bool((closed < ae.exact_log_prob(x)).all())
    torch.testing.assert_close(res.reconstruction - res.kl, res.log_prob)


def test_conditional_bound_uses_the_conditioned_latent_prior():
    """cond = c per field makes p(z) = N(0, c lam): the bound matches its closed form for that prior within 4 SE."""
    ae, ld = _linear_model()
    x = _linear_data(ae, 4, 5)
    c = 2.5
    res = ld.log_likelihood_bound(x, samples=256, cond=torch.full((4, 1), c, dtype=torch.float64),
                                  generator=torch.Generator().manual_seed(6), rtol=1e-6, atol=1e-6,
                                  prior_log_prob=lambda u: ae.prior_log_prob(u, ld.sde, c))
    closed = ae.closed_form_bound(x, c)
    assert bool(((res.log_prob - closed).abs() < 4 * res.log_prob_se).all()), (res.log_prob, closed, res.log_prob_se)
    assert bool(((closed - ae.closed_form_bound(x)).abs() > 10 * res.log_prob_se).any())  # cond changes the bound
    with pytest.raises(ValueError, match=r"cond must be a tensor \[B, P\]"):
        ld.log_likelihood_bound(x, cond=torch.ones(3, 1, dtype=torch.float64))


def test_bound_in_data_units_adds_the_log_jacobian():
    ae, ld = _linear_model()
    x = _linear_data(ae, 3, 4)
    a = ld.log_likelihood_bound(x, samples=2, generator=torch.Generator().manual_seed(0))
    b = ld.log_likelihood_bound(x, samples=2, generator=torch.Generator().manual_seed(0), log_abs_det_jacobian=-2.5)
    torch.testing.assert_close(b.log_prob, a.log_prob - 2.5)


def test_latent_samples_decode_to_the_model_covariance():
    """u from the PF-ODE of N(0, diag(lam)), decoded by W: pixel variances (W lam W^T)_ii within 4 SE."""
    ae, ld = _linear_model()
    n = 3000
    x = ld.sample(n, "ode", generator=torch.Generator().manual_seed(7), dtype=torch.float64, progress=False,
                  rtol=1e-6, atol=1e-6)
    var = x.flatten(1).var(0)
    expect = torch.diag(ae.W @ torch.diag(ae.lam) @ ae.W.T)
    assert bool(((var - expect).abs() < 4 * expect * math.sqrt(2.0 / n)).all()), (var, expect)


def test_posterior_sampling_through_the_decoder_moves_towards_the_data():
    """A(x) = x (every pixel), noise 0.1: guidance through W gives fields 10x closer to x_true than the prior's.

    DPS is an approximation (here with Rozet & Louppe's variance inflation, which keeps the
    guidance stable at small noise), so only the direction and size of the pull are checked.
    """
    ae, ld = _linear_model()
    x_true = _linear_data(ae, 1, 9)[0]
    y = x_true + 0.1 * torch.randn(x_true.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    post = ld.posterior_sample(lambda x: x, y, 0.1, 64, "euler_maruyama", steps=200, inflation=1.0,
                               generator=torch.Generator().manual_seed(2), progress=False)
    prior = ld.sample(64, "euler_maruyama", steps=200, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64, progress=False)
    err_post = (post - x_true).square().mean()
    err_prior = (prior - x_true).square().mean()
    assert err_post < 0.1 * err_prior, (float(err_post), float(err_prior))


# ---- the bound on a Gaussian random field, with trained networks --------------------------------------
def test_trained_latent_bound_below_the_exact_grf_density():
    """GRF (exact log p): mean bound - mean exact log p < 3 SE, for a briefly trained pair of networks.

    The inequality holds for any autoencoder and latent model, so this checks the estimator (its
    pieces, signs and units, the log-Jacobian of the normalisation), not the training.
    """
    torch.manual_seed(0)
    grf = GaussianRandomField(32, dims=1, slope=2.0)
    x_train = grf.sample(512, seed=0)[:, None]
    x_test = grf.sample(8, seed=1)[:, None]
    scale = float(x_train.std())
    d = 32
    ae = Autoencoder(1, 1, factor=2, latent_channels=2, base_channels=8, groups=4)
    cfg = TrainConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=10, ema_decay=0.9, log_every=40, seed=0)
    ae = train_autoencoder(ae, (x_train / scale).float(), cfg, val_data=(x_test / scale).float(), progress=False)
    shift, s = latent_statistics(ae, (x_train / scale).float())
    net = sd.UNet(channels=2, dims=1, periodic=True, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                  groups=4, attention_levels=())
    model = sd.ScoreModel(net, sd.VPSDE())
    with torch.no_grad():
        u_train = (ae.encode((x_train / scale).float()).mean - shift[:, None]) / s[:, None]
    fit = sd.training.train(model, u_train, cfg, progress=False)
    ld = LatentDiffusion(ae, fit.model.eval(), (1, 32), latent_shift=shift, latent_scale=s)
    # Hutchinson probes drawn afresh per latent draw: the SE over draws holds their noise too
    res = ld.log_likelihood_bound((x_test / scale).float(), samples=4, generator=torch.Generator().manual_seed(0),
                                  log_abs_det_jacobian=-d * math.log(scale), divergence="hutchinson",
                                  rtol=1e-3, atol=1e-3)
    exact = grf.log_prob(x_test)
    gap = exact - res.log_prob
    se_mean = float(res.log_prob_se.square().sum().sqrt()) / len(gap)
    assert bool(torch.isfinite(res.log_prob).all()) and bool((res.log_prob_se > 0).all())
    assert float(gap.mean()) > -3 * se_mean, (float(gap.mean()), se_mean)


# ---- spectra of reconstructions ------------------------------------------------------------------------
def test_reconstruction_error_spectrum_is_the_residual_power_over_the_data_power():
    """x_hat = x + c * (x high-passed at |k| > 4): e(k) = 0 for |k| <= 4 and c^2 above, exactly."""
    x = GaussianRandomField(32, dims=2, slope=2.0).sample(8, seed=3)
    xf = torch.fft.fftn(x, dim=(1, 2))
    k = torch.fft.fftfreq(32, d=1 / 32)
    high = (k[:, None] ** 2 + k[None, :] ** 2).sqrt().round() > 4
    x_hat = x + 0.3 * torch.fft.ifftn(xf * high, dim=(1, 2)).real
    kk, e = reconstruction_error_spectrum(x.numpy(), x_hat.numpy())
    shell = np.round(kk / (2 * np.pi)).astype(int)
    np.testing.assert_allclose(e[shell <= 4], 0.0, atol=1e-20)
    np.testing.assert_allclose(e[(shell > 4) & np.isfinite(e)], 0.09, rtol=1e-10)
    fig = reconstruction_panels(x[:3], x_hat[:3], x_hat[3:6])
    assert len(fig.axes) == 3 * 3 + 1  # three rows of three, one colour bar


def test_spectral_term_vanishes_only_for_equal_shell_power():
    """S(x, x) = 0; S(x, 2x) = (ln 4)^2 on every shell; shell_power sums |FFT|^2 / modes by Parseval."""
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(spectral_distance(x, x), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(spectral_distance(2 * x, x), torch.full((3,), math.log(4.0) ** 2, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    p = shell_power(x)
    assert p.shape[:2] == (3, 2) and bool((p[..., 1:] > 0).all())
