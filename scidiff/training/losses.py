r"""Training losses: denoising score matching on the VP-SDE, and the DDPM's L_simple.

Notation: x_t = alpha_t x_0 + sigma_t eps with eps ~ N(0, I); lambda(t) = log(alpha_t^2 / sigma_t^2)
the log-SNR; o = net(x_t, t) the network output read by the model's prediction type
("eps", "x0" or "v"; target = eps, x_0 or v = alpha_t eps - sigma_t x_0); eps-hat the
predicted noise; the score error is s - grad log q(x_t | x_0) = -(eps-hat - eps) / sigma_t.

``dsm_loss`` estimates one of two objectives, each a time integral over [t_min, 1]:

    "simple":      J = 1 / (1 - t_min) * int E |o - target|^2 / D dt        (mean over the D elements)
    "likelihood":  J = 1 / 2 * int beta(t) E |s - grad log q|^2 dt
                     = 1 / 2 * int beta(t) / sigma_t^2 E |eps-hat - eps|^2 dt   (sum over elements, nats)

(Song, Durkan, Murray & Ermon, "Maximum Likelihood Training of Score-Based Diffusion
Models", NeurIPS 2021: with g^2 = beta the second is, up to terms free of the network, an
upper bound on -log p(x_0) of the model's SDE.)  The time is drawn by

    "uniform":     t ~ U[t_min, 1],                        density p(t) = 1 / (1 - t_min)
    "importance":  p(t) = beta(t) / (sigma_t^2 Z),         Z = lambda(t_min) - lambda(1),

and each sample is weighted by w(t) / p(t), so both estimators are unbiased for J.  The
importance density is sampled exactly through the log-SNR: d(-lambda)/dt = beta / sigma^2,
so lambda ~ U[lambda(1), lambda(t_min)] and t = t(lambda).  With likelihood weighting and
importance sampling the per-sample estimate is simply Z / 2 |eps-hat - eps|^2.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from scidiff.ddpm import DDPM
from scidiff.models import ScoreModel
from scidiff.parameterisation import convert
from scidiff.sde import VPSDE, expand_like

__all__ = ["dsm_loss", "ddpm_loss", "sample_time", "unwrap"]

TimeSampling = Literal["uniform", "importance"]
Weighting = Literal["simple", "likelihood"]


def unwrap(model: nn.Module) -> ScoreModel:
    """The ScoreModel inside a DistributedDataParallel (or any ``.module``) wrapper."""
    core = model
    while not isinstance(core, ScoreModel) and isinstance(getattr(core, "module", None), nn.Module):
        core = core.module  # type: ignore[assignment]
    if not isinstance(core, ScoreModel):
        raise TypeError(f"the model must be a scidiff.ScoreModel (or a DDP wrapper of one), got {type(model).__name__}")
    return core


def sample_time(
    sde: VPSDE,
    batch: int,
    *,
    t_min: float = 1e-5,
    time_sampling: TimeSampling = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw t [B] in [t_min, 1] and return (t, 1 / p(t)), both float64 [B].

    "uniform": p(t) = 1 / (1 - t_min).  "importance": p(t) = beta(t) / (sigma_t^2 Z) with
    Z = lambda(t_min) - lambda(1), drawn as lambda ~ U[lambda(1), lambda(t_min)], t = t(lambda).
    """
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must lie in (0, 1); got {t_min!r}")
    if generator is not None and device is None:
        device = generator.device
    u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
    if time_sampling == "uniform":
        t = t_min + (1.0 - t_min) * u
        return t, torch.full_like(t, 1.0 - t_min)
    if time_sampling != "importance":
        raise ValueError(f"time_sampling must be 'uniform' or 'importance'; got {time_sampling!r}")
    ends = torch.tensor([1.0, t_min], dtype=torch.float64, device=u.device)
    lam_1, lam_min = sde.coefficients(ends).log_snr.unbind()
    lam = lam_1 + (lam_min - lam_1) * u
    t = sde.schedule.t_of_log_snr(lam).clamp(t_min, 1.0)
    c = sde.coefficients(t)
    inv_density = (lam_min - lam_1) * c.sigma.square() / c.beta
    return t, inv_density


def _call(model: nn.Module, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    """Network output in x_t's dtype (autocast may have computed it in bf16)."""
    out = model(x_t, t.to(x_t.dtype)) if cond is None else model(x_t, t.to(x_t.dtype), cond)
    return out.to(x_t.dtype)


def dsm_loss(
    model: nn.Module,
    x0: Tensor,
    *,
    cond: Tensor | None = None,
    t_min: float = 1e-5,
    time_sampling: TimeSampling = "uniform",
    weighting: Weighting = "simple",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Per-sample denoising score-matching loss on the model's VP-SDE; shape [B].

    Draws t [B] (see :func:`sample_time`) and eps ~ N(0, I) like x0, sets
    x_t = alpha_t x_0 + sigma_t eps and returns, per sample, an unbiased estimate of J
    (module docstring):

        "simple":      p(t)^-1 / (1 - t_min) * mean_elements |o - target|^2   (= the plain MSE for uniform t)
        "likelihood":  p(t)^-1 beta(t) / (2 sigma_t^2) * sum_elements |eps-hat - eps|^2   (nats)

    Args:
        model: a ScoreModel (or a DistributedDataParallel wrapper of one).
        x0: data [B, C, *spatial]; the loss is computed in its dtype.
        cond: optional conditioning [B, P] passed to the network.
        t_min: lower end of the time interval, in (0, 1).
        time_sampling: "uniform" or "importance".
        weighting: "simple" or "likelihood".
        generator: draws t and eps (on x0's device).
    """
    if weighting not in ("simple", "likelihood"):
        raise ValueError(f"weighting must be 'simple' or 'likelihood'; got {weighting!r}")
    core = unwrap(model)
    t, inv_p = sample_time(
        core.sde, x0.shape[0], t_min=t_min, time_sampling=time_sampling, generator=generator, device=x0.device
    )
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    coef = core.sde.coefficients(t)
    c = coef.like(x0)
    x_t = c.alpha * x0 + c.sigma * eps
    out = _call(model, x_t, t, cond)
    if weighting == "simple":
        target = core.target(x0, eps, t)
        err = (out - target).pow(2).flatten(1).mean(1)
        return err * (inv_p / (1.0 - t_min)).to(x0.dtype)
    eps_hat = convert(out, source=core.prediction, target="eps", x_t=x_t, alpha=c.alpha, sigma=c.sigma)
    err = (eps_hat - eps).pow(2).flatten(1).sum(1)
    w = 0.5 * coef.beta / coef.sigma.square()
    return err * (w * inv_p).to(x0.dtype)


def ddpm_loss(
    model: nn.Module,
    ddpm: DDPM,
    x0: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Per-sample L_simple of the discrete DDPM (Ho et al. 2020); shape [B].

    n ~ U{1..N}, x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps (``ddpm.q_sample``), the network
    evaluated at t = n / N, and the loss mean_elements |o - target|^2 with target eps (or x_0,
    or v = sqrt(abar_n) eps - sqrt(1 - abar_n) x_0, for the model's prediction type).
    """
    core = unwrap(model)
    n = torch.randint(1, ddpm.steps + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_n, _ = ddpm.q_sample(x0, n, eps=eps)
    t = ddpm.time(n)
    out = _call(model, x_n, t, cond)
    if core.prediction == "eps":
        target = eps
    else:
        abar = ddpm.alphas_bar.to(x0.device)[n]
        a = expand_like(abar.sqrt(), x0)
        s = expand_like(torch.sqrt(-torch.expm1(ddpm.log_alphas_bar.to(x0.device)[n])), x0)
        target = x0 if core.prediction == "x0" else a * eps - s * x0
    return (out - target).pow(2).flatten(1).mean(1)
