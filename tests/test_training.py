"""Tests of the training losses, options, EMA, warm-up, the loop, resume and DDP.

The losses are checked against closed forms for Gaussian data x_0 ~ N(0, v I), whose exact
noise predictor is eps-hat(x_t, t) = sigma_t x_t / (alpha_t^2 v + sigma_t^2); statistical
checks use fixed seeds and tolerances of 5 standard errors of the sample at hand.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import Tensor, nn

import scidiff as sd
from scidiff.ddpm import DDPM
from scidiff.training import EMA, TrainConfig, Trainer, ddpm_for, ddpm_loss, dsm_loss, lr_at, sample_time, train

F64 = torch.float64
Z_SIGMAS = 5.0  # tolerance in standard errors


# ---- closed-form Gaussian "networks" ------------------------------------------------------------
class GaussianExact(nn.Module):
    """The exact posterior-mean prediction for x_0 ~ N(0, v I); no parameters.

    With s2 = alpha^2 v + sigma^2: eps-hat = sigma x_t / s2, x0-hat = alpha v x_t / s2,
    v-hat = alpha sigma (1 - v) x_t / s2.  ``v_model`` != v gives a fixed, imperfect model.
    """

    def __init__(self, sde: sd.VPSDE, v_model: float, prediction: str = "eps") -> None:
        super().__init__()
        self.sde, self.v, self.prediction = sde, v_model, prediction

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        coef = self.sde.coefficients(t).like(x)
        alpha, sigma = coef.alpha, coef.sigma
        s2 = alpha**2 * self.v + sigma**2
        if self.prediction == "eps":
            return sigma * x / s2
        if self.prediction == "x0":
            return alpha * self.v * x / s2
        return alpha * sigma * (1.0 - self.v) * x / s2


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _lam(sde: sd.VPSDE, t: float) -> float:
    return float(sde.log_snr(torch.tensor([t], dtype=F64)))


def _eps_mse(sde: sd.VPSDE, t: float, v: float, v_model: float) -> float:
    """E (eps-hat - eps)^2 per element for eps-hat = c x_t, c = sigma / (alpha^2 v_model + sigma^2)."""
    tt = torch.tensor([t], dtype=F64)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    c = sigma / (alpha**2 * v_model + sigma**2)
    return c**2 * (alpha**2 * v + sigma**2) - 2.0 * c * sigma + 1.0


def _mean_se(values: Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


SDE = sd.VPSDE(0.1, 20.0)
V_DATA = 0.3
D = 8  # elements per sample


def _gaussian_data(n: int, seed: int, v: float = V_DATA) -> Tensor:
    return math.sqrt(v) * torch.randn(n, 1, D, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_likelihood_floor_closed_form_all_predictions() -> None:
    """E[dsm_loss] at the exact model = D/2 [softplus(lambda(t_min) + log v) - softplus(lambda(1) + log v)]."""
    t_min = 1e-3
    expected = 0.5 * D * (_softplus(_lam(SDE, t_min) + math.log(V_DATA)) - _softplus(_lam(SDE, 1.0) + math.log(V_DATA)))
    x0 = _gaussian_data(20_000, 0)
    for prediction in ("eps", "x0", "v"):
        model = sd.ScoreModel(GaussianExact(SDE, V_DATA, prediction), SDE, prediction=prediction)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            loss = dsm_loss(model, x0, t_min=t_min, time_sampling="importance", weighting="likelihood", generator=gen)
        mean, se = _mean_se(loss)
        assert loss.shape == (x0.shape[0],) and loss.dtype == F64
        assert abs(mean - expected) < Z_SIGMAS * se, (prediction, mean, expected, se)


@pytest.mark.parametrize("v_model", [V_DATA, 1.0])
def test_uniform_and_importance_estimators_agree_with_quadrature(v_model: float) -> None:
    """Both time samplings estimate the same integral, for the exact and for a wrong fixed model."""
    t_min = 1e-2
    model = sd.ScoreModel(GaussianExact(SDE, v_model), SDE)
    x0 = _gaussian_data(40_000, 2)
    rate = lambda t: float(SDE.beta(torch.tensor([t], dtype=F64))) / float(SDE.sigma(torch.tensor([t], dtype=F64))) ** 2
    quad = dict(limit=200, epsabs=1e-10, epsrel=1e-9)
    exact = {
        "likelihood": 0.5 * D * integrate.quad(lambda t: rate(t) * _eps_mse(SDE, t, V_DATA, v_model), t_min, 1.0, **quad)[0],
        "simple": integrate.quad(lambda t: _eps_mse(SDE, t, V_DATA, v_model), t_min, 1.0, **quad)[0] / (1 - t_min),
    }
    for weighting, expected in exact.items():
        stats = {}
        for i, sampling in enumerate(("uniform", "importance")):
            gen = torch.Generator().manual_seed(10 + i)
            with torch.no_grad():
                loss = dsm_loss(model, x0, t_min=t_min, time_sampling=sampling, weighting=weighting, generator=gen)
            stats[sampling] = _mean_se(loss)
            mean, se = stats[sampling]
            assert abs(mean - expected) < Z_SIGMAS * se, (weighting, sampling, mean, expected, se)
        (m_u, se_u), (m_i, se_i) = stats["uniform"], stats["importance"]
        assert abs(m_u - m_i) < Z_SIGMAS * math.hypot(se_u, se_i)


def test_importance_sampling_is_lower_variance_for_likelihood_weighting() -> None:
    t_min = 1e-3
    model = sd.ScoreModel(GaussianExact(SDE, V_DATA), SDE)
    x0 = _gaussian_data(20_000, 3)
    se = {}
    for sampling in ("uniform", "importance"):
        with torch.no_grad():
            loss = dsm_loss(model, x0, t_min=t_min, time_sampling=sampling, weighting="likelihood",
                            generator=torch.Generator().manual_seed(4))
        se[sampling] = _mean_se(loss)[1]
    assert se["importance"] < 0.5 * se["uniform"]


def test_sample_time_importance_density() -> None:
    """E_p[1 / p(t)] = 1 - t_min and E_p[t / p(t)] = (1 - t_min^2) / 2 for the importance density."""
    t_min, n = 1e-4, 200_000
    for schedule_sde in (SDE, sd.VPSDE.cosine()):
        t, inv_p = sample_time(schedule_sde, n, t_min=t_min, time_sampling="importance",
                               generator=torch.Generator().manual_seed(5))
        assert t.dtype == F64 and float(t.min()) >= t_min and float(t.max()) <= 1.0
        for f, expected in ((torch.ones_like(t), 1 - t_min), (t, 0.5 * (1 - t_min**2))):
            mean, se = _mean_se(f * inv_p)
            assert abs(mean - expected) < Z_SIGMAS * se, (mean, expected, se)
        # the CDF: P(T <= t) = (lambda(t_min) - lambda(t)) / Z, checked at the median
        lam = schedule_sde.log_snr(torch.tensor([t_min, 1.0], dtype=F64))
        t_med = schedule_sde.schedule.t_of_log_snr((lam[0] + lam[1]) / 2)
        frac = float((t <= t_med).double().mean())
        assert abs(frac - 0.5) < Z_SIGMAS * math.sqrt(0.25 / n)


def test_ddpm_loss_floor_is_exact_mean_over_steps() -> None:
    """L_simple at the exact model = (1/N) sum_n sigmoid(lambda_n + log v), lambda_n the log-SNR of step n."""
    ddpm = ddpm_for(SDE, 50)
    model = sd.ScoreModel(GaussianExact(SDE, V_DATA), SDE)
    x0 = _gaussian_data(20_000, 6)
    with torch.no_grad():
        loss = ddpm_loss(model, ddpm, x0, generator=torch.Generator().manual_seed(7))
    abar = ddpm.alphas_bar[1:]
    lam_n = torch.log(abar / (1 - abar))
    expected = float(torch.sigmoid(lam_n + math.log(V_DATA)).mean())
    mean, se = _mean_se(loss)
    assert abs(mean - expected) < Z_SIGMAS * se
    # the DDPM built for the SDE has alpha_bar_n = alpha(n / N)^2 exactly
    t = torch.arange(1, 51, dtype=F64) / 50
    assert torch.allclose(abar, SDE.alpha(t) ** 2, rtol=1e-12, atol=0)


# ---- training reduces the loss to the floor ------------------------------------------------------
class PointwiseScale(nn.Module):
    """eps-hat = x * g(t) with g a small MLP: contains the exact Gaussian predictor c(t) x."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @property
    def config(self) -> dict[str, int]:
        return {"width": self.mlp[0].out_features}

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        feats = torch.stack([t, t.sqrt(), torch.log(t)], dim=1)
        return x * self.mlp(feats).reshape(-1, *([1] * (x.ndim - 1)))


def test_training_reaches_the_gaussian_floor() -> None:
    """Trained on N(0, v) fields, the EMA model closes >= 99% of the gap between the initial
    loss (output 0: E|eps|^2 = 1 per element) and the Bayes floor, and never beats the floor."""
    torch.manual_seed(0)
    t_min = 1e-3
    data = _gaussian_data(4096, 8).float()
    model = sd.ScoreModel(PointwiseScale(), SDE)
    config = TrainConfig(steps=200, batch_size=64, lr=1e-2, warmup_steps=20, ema_decay=0.95, grad_clip=1.0,
                         t_min=t_min, log_every=50, val_every=0, checkpoint_every=0, seed=3)
    result = train(model, data, config, progress=False)
    assert [e["step"] for e in result.history] == [50, 100, 150, 200]
    exact = sd.ScoreModel(GaussianExact(SDE, V_DATA), SDE)
    x0 = _gaussian_data(32_768, 9).float()
    with torch.no_grad():
        trained = dsm_loss(result.model, x0, t_min=t_min, generator=torch.Generator().manual_seed(11))
        floor = dsm_loss(exact, x0, t_min=t_min, generator=torch.Generator().manual_seed(11))
    floor_mean = integrate.quad(lambda t: _eps_mse(SDE, t, V_DATA, V_DATA), t_min, 1.0)[0] / (1 - t_min)
    excess, se = _mean_se(trained.double() - floor.double())  # common random numbers: paired difference
    assert excess > -Z_SIGMAS * se, "a model cannot beat the Bayes error"
    assert excess < 0.01 * (1.0 - floor_mean) + Z_SIGMAS * se, (excess, floor_mean)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


# ---- EMA and learning rate ---------------------------------------------------------------------------
def test_ema_matches_closed_form_recursion() -> None:
    """ema_k = theta_k for k <= start, then d^(k - s) theta_s + (1 - d) sum_{j > s} d^(k - j) theta_j."""
    d, start, steps = 0.9, 3, 12
    lin = nn.Linear(2, 1).double()
    ema = EMA(lin, decay=d, start=start)
    thetas = torch.randn(steps + 1, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    for k in range(1, steps + 1):
        with torch.no_grad():
            lin.weight.copy_(thetas[k, :2].reshape(1, 2))
            lin.bias.copy_(thetas[k, 2:])
        ema.update(lin, k)
        if k <= start:
            expected = thetas[k]
        else:
            js = torch.arange(start + 1, k + 1)
            expected = d ** (k - start) * thetas[start] + (1 - d) * (torch.tensor(d, dtype=F64) ** (k - js)[:, None] * thetas[js]).sum(0)
        got = torch.cat([ema.module.weight.flatten(), ema.module.bias])
        assert torch.allclose(got, expected, rtol=1e-13, atol=1e-14), k


def test_warmup_and_cosine_lr_schedule() -> None:
    cfg = TrainConfig(steps=10, lr=1e-3, warmup_steps=4)
    assert [lr_at(cfg, k) for k in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=1e-15)
    cos = cfg.replace(lr_decay="cosine")
    assert lr_at(cos, 4) == pytest.approx(1e-3) and lr_at(cos, 7) == pytest.approx(0.5e-3)
    assert lr_at(cos, 10) == pytest.approx(0.0, abs=1e-18)
    assert lr_at(cfg.replace(warmup_steps=0), 0) == 1e-3


def test_trainer_uses_the_scheduled_lr_and_clips_gradients() -> None:
    torch.manual_seed(0)
    model = sd.ScoreModel(PointwiseScale(8), SDE)
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=3, grad_clip=1e-3, log_every=1, val_every=0)
    trainer = Trainer(model, cfg)
    seen = []
    original = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert float(norm) <= 1e-3 * (1 + 1e-5)
        return original(*args, **kwargs)

    trainer.optimizer.step = spy  # type: ignore[method-assign]
    history = trainer.fit(_gaussian_data(16, 1).float(), progress=False)
    assert seen == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2], rel=1e-15)
    assert [e["lr"] for e in history] == pytest.approx(seen, rel=1e-15)


# ---- the configuration ----------------------------------------------------------------------------------
def test_config_toml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=123, lr=3e-4, loss="dsm", weighting="likelihood", time_sampling="importance",
                      grad_clip=0.0, precision="bf16", t_min=1e-4)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    f = tmp_path / "cfg.toml"
    f.write_text("# run options\n" + cfg.to_toml() + "\n[model]\nbase_channels = 32\n")
    assert TrainConfig.from_toml(f) == cfg
    g = tmp_path / "flat.toml"
    g.write_text(cfg.to_toml(table=None))
    assert TrainConfig.from_toml(g) == cfg
    h = tmp_path / "partial.toml"
    h.write_text("[train]\nsteps = 5\nlr = 1e-3\n")
    assert TrainConfig.from_toml(h) == TrainConfig(steps=5, lr=1e-3)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"steps": 0}, r"TrainConfig\.steps must be an integer >= 1; got 0"),
        ({"batch_size": 2.5}, r"batch_size"),
        ({"lr": -1.0}, r"TrainConfig\.lr must lie in \(0\.0"),
        ({"ema_decay": 1.0}, r"ema_decay must lie in \[0\.0, 1\.0\)"),
        ({"t_min": 0.0}, r"t_min"),
        ({"loss": "l2"}, r"TrainConfig\.loss must be one of \['dsm', 'ddpm'\]; got 'l2'"),
        ({"precision": "fp16"}, r"precision must be one of"),
        ({"loss": "ddpm", "weighting": "likelihood"}, r"loss='ddpm'"),
        ({"grad_clip": float("nan")}, r"grad_clip"),
    ],
)
def test_config_validation_errors(changes: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**changes)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        TrainConfig.from_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = \n")
    with pytest.raises(ValueError, match="bad.toml.*not valid TOML"):
        TrainConfig.from_toml(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nstpes = 3\n")
    with pytest.raises(ValueError, match=r"unknown\.toml.*unknown training option\(s\) \['stpes'\]"):
        TrainConfig.from_toml(unknown)


# ---- resume, bad input, DDP (a tiny UNet) ------------------------------------------------------------------
def _tiny_unet_model(seed: int = 0, cond_dim: int = 0) -> sd.ScoreModel:
    torch.manual_seed(seed)
    net = sd.UNet(1, 1, base_channels=8, channel_mults=(1, 2), groups=4, cond_dim=cond_dim)
    return sd.ScoreModel(net, SDE)


def _fields(n: int = 20, length: int = 16, seed: int = 0) -> Tensor:
    return torch.randn(n, 1, length, generator=torch.Generator().manual_seed(seed))


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for (ka, va), (kb, vb) in zip(a.ema_model.state_dict().items(), b.ema_model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), f"ema {ka}"
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in sa[i]:
            assert torch.equal(sa[i][name], sb[i][name]), (i, name)


@pytest.mark.parametrize("loss", ["dsm", "ddpm"])
def test_resume_is_bitwise_identical(tmp_path: Path, loss: str) -> None:
    """N steps straight == N/2 steps, a checkpoint, a fresh process-like Trainer, N/2 steps."""
    data = _fields()  # 20 fields, batch 8: 2 batches per epoch, the resume point is mid-epoch
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.8, ema_start=1, log_every=2,
                      val_every=0, checkpoint_every=3, seed=5, loss=loss, ddpm_steps=100,
                      time_sampling="uniform", weighting="simple")
    straight = Trainer(_tiny_unet_model(0), cfg)
    straight.fit(data, progress=False)

    first = Trainer(_tiny_unet_model(0), cfg, run_dir=tmp_path / "run")
    first.fit(data, until=3, progress=False)
    assert first.step == 3 and (tmp_path / "run" / "checkpoints" / "step_00000003").is_dir()
    torch.manual_seed(999)  # disturb the global RNG: the checkpoint must restore it
    resumed = Trainer(_tiny_unet_model(1), cfg, run_dir=tmp_path / "run", resume=True)
    assert resumed.step == 3
    resumed.fit(data, progress=False)
    assert resumed.step == 6
    _assert_same_state(straight, resumed)
    assert [e["step"] for e in resumed.history] == [e["step"] for e in straight.history]
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in straight.history]

    again = Trainer.resume(tmp_path / "run" / "checkpoints" / "step_00000003")
    again.fit(data, progress=False)
    _assert_same_state(straight, again)


class Streamed(torch.utils.data.IterableDataset):
    """An iterable dataset with its own seeded order per epoch (like scidiff.data.FieldDataset)."""

    world_size = 1

    def __init__(self, x: Tensor) -> None:
        self.x, self.epoch = x, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self):
        for i in torch.randperm(len(self.x), generator=torch.Generator().manual_seed(100 + self.epoch)):
            yield self.x[i]


def test_resume_is_bitwise_identical_for_an_iterable_dataset(tmp_path: Path) -> None:
    """The data position (epoch, batches taken) is checkpointed, so a streamed order resumes exactly."""
    cfg = TrainConfig(steps=5, batch_size=8, warmup_steps=1, log_every=5, val_every=0, checkpoint_every=0, seed=2)
    straight = Trainer(_tiny_unet_model(0), cfg)
    straight.fit(Streamed(_fields()), progress=False)
    first = Trainer(_tiny_unet_model(0), cfg, run_dir=tmp_path)
    first.fit(Streamed(_fields()), until=3, progress=False)
    assert first.data_position == (1, 1)  # 2 batches per epoch (drop_last), the 3rd is epoch 1's first
    resumed = Trainer(_tiny_unet_model(3), cfg, run_dir=tmp_path, resume=True)
    resumed.fit(Streamed(_fields()), progress=False)
    _assert_same_state(straight, resumed)
    assert resumed.history == straight.history


def test_validation_loss_and_dataset_input(tmp_path: Path) -> None:
    """A Dataset of (x, cond) pairs trains like the tensors; the validation loss is deterministic."""
    from torch.utils.data import TensorDataset

    x, c = _fields(24), torch.randn(24, 2, generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=1, log_every=2, val_every=2, checkpoint_every=0, seed=1)
    a = Trainer(_tiny_unet_model(0, cond_dim=2), cfg)
    ha = a.fit(x, c, val_data=x[:10], val_cond=c[:10], progress=False)
    b = Trainer(_tiny_unet_model(0, cond_dim=2), cfg)
    hb = b.fit(TensorDataset(x, c), val_data=TensorDataset(x[:10], c[:10]), progress=False)
    assert [e["loss"] for e in ha] == [e["loss"] for e in hb]
    assert all("val_loss" in e for e in ha) and [e["val_loss"] for e in ha] == [e["val_loss"] for e in hb]
    assert a.validate(x[:10], c[:10]) == a.validate(x[:10], c[:10]) == ha[-1]["val_loss"]


@pytest.mark.parametrize(
    "data, cond, pattern",
    [
        (torch.randn(16, 3, 16), None, r"model expects fields \[B, 1, L\], training data has \[B, 3, 16\]"),
        (torch.randn(16, 1, 8, 8), None, r"model expects fields \[B, 1, L\], training data has \[B, 1, 8, 8\]"),
        (torch.randn(16, 1, 16), torch.randn(16, 2), r"model takes no conditioning \(cond_dim=0\)"),
        (torch.randn(16, 1, 16), torch.randn(15, 2), r"cond for training data must be a tensor \[N, P\] with N = 16"),
        (torch.randn(4, 1, 16), None, r"training data has 4 fields, fewer than one batch per rank"),
        (torch.randn(16, 16), None, r"training data must be fields shaped \[N, C, \*spatial\]"),
    ],
)
def test_bad_training_data_gives_clear_error(data: Tensor, cond: Tensor | None, pattern: str) -> None:
    trainer = Trainer(_tiny_unet_model(0), TrainConfig(steps=1, batch_size=8, val_every=0))
    with pytest.raises(ValueError, match=pattern):
        trainer.fit(data, cond, progress=False)


def test_field_shape_is_enforced_after_the_first_batch(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=2, batch_size=8, warmup_steps=0, val_every=0, checkpoint_every=0)
    trainer = Trainer(_tiny_unet_model(0), cfg, run_dir=tmp_path)
    trainer.fit(_fields(16, 16), until=1, progress=False)
    with pytest.raises(ValueError, match=r"model expects fields \[B, 1, 16\], training data has \[B, 1, 32\]"):
        trainer.fit(_fields(16, 32), progress=False)
    resumed = Trainer.resume(tmp_path)
    with pytest.raises(ValueError, match=r"model expects fields \[B, 1, 16\], validation data has \[B, 1, 8\]"):
        resumed.validate(_fields(4, 8))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ddp_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks (different initial weights, different data shards and noise):
    DDP broadcasts rank 0's weights and all-reduces gradients, so both end identical."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "scidiff.training.ddp_check", "--out", str(tmp_path), "--steps", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2] and [r["step"] for r in reports] == [4, 4]
    assert reports[0]["raw"] == reports[1]["raw"]
    assert reports[0]["ema"] == reports[1]["ema"]
    assert reports[0]["raw"] != reports[0]["initial_rank0"]  # it trained
    assert reports[0]["loss"] == reports[1]["loss"]  # the logged loss is averaged over ranks
    # only rank 0 wrote a checkpoint, and it holds the common weights
    from scidiff.checkpoint import load_checkpoint
    from scidiff.training.ddp_check import weights_sha256

    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step == 4 and weights_sha256(ckpt.raw_model) == reports[0]["raw"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000004"]


@pytest.mark.slow
def test_ddp_two_ranks_train_one_autoencoder(tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks training the latent autoencoder (different initial weights,
    data shards and z draws): rank 0's weights are broadcast and the gradients averaged, so both
    end with the same raw and EMA weights, history and decoder variance, written once by rank 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    steps = 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "scidiff.latent.ddp_check", "--out", str(tmp_path),
           "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r0["world_size"], r1["world_size"]] == [2, 2] and [r0["step"], r1["step"]] == [steps, steps]
    assert r0["initial_parameters"] != r1["initial_parameters"]  # the ranks did start apart
    assert r0["raw"] == r1["raw"] and r0["ema"] == r1["ema"]
    assert r0["raw_parameters"] != r0["initial_parameters"]  # it trained
    assert len(r0["losses"]) == steps // 2 and r0["losses"] == r1["losses"]  # log_every=2, averaged over ranks
    assert all(math.isfinite(v) for v in r0["losses"])
    assert r0["decoder_log_var"] == r1["decoder_log_var"] == r0["ema_decoder_log_var"]
    assert r0["decoder_log_var"] != [0.0]  # fitted
    # rank 0 alone wrote: at steps 2 and 4 (checkpoint_every=2) and after the variance fit
    assert r0["checkpoint_writes"] == steps // 2 + 1 and r1["checkpoint_writes"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autoencoder", "rank0.json", "rank1.json"]
    from scidiff.latent import load_autoencoder
    from scidiff.training.ddp_check import weights_sha256

    meta = json.loads((tmp_path / "autoencoder" / "autoencoder.json").read_text())
    assert meta["step"] == steps and [e["loss"] for e in meta["history"]] == r0["losses"]
    assert weights_sha256(load_autoencoder(tmp_path / "autoencoder", ema=False)) == r0["raw"]
    ema = load_autoencoder(tmp_path / "autoencoder")
    assert weights_sha256(ema) == r0["ema"] and ema.decoder_log_var.tolist() == r0["decoder_log_var"]


def test_dataloader_input_normalizer_pickup_and_bf16_on_cpu(tmp_path: Path) -> None:
    """A ready DataLoader is used as it is; its normaliser is saved; bf16 falls back to fp32 on a CPU."""
    from torch.utils.data import DataLoader, TensorDataset

    class Loader(DataLoader):
        normalizer = {"mean": [0.0], "std": [1.5]}

    loader = Loader(TensorDataset(_fields(16)), batch_size=8, shuffle=False)
    with pytest.warns(UserWarning, match="bf16.*fp32 on cpu"):
        trainer = Trainer(_tiny_unet_model(0), TrainConfig(steps=2, batch_size=8, precision="bf16", val_every=0),
                          run_dir=tmp_path)
    trainer.fit(loader, progress=False)
    assert trainer.step == 2 and next(trainer.model.parameters()).dtype == torch.float32
    from scidiff.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path).normalizer == {"mean": [0.0], "std": [1.5]}
