"""Embeddings of the diffusion time t in [0, 1] and of a conditioning vector.

Both time features are computed in the dtype and on the device of ``t``, so a
float64 network sees a float64 embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    r"""Transformer-style sinusoidal features of t (Vaswani et al. 2017; Ho et al. 2020).

    With ``half = features // 2`` and frequencies
    :math:`\omega_k = \exp(-\ln(P)\, k / \mathrm{half})`, :math:`k = 0..half-1`,

    .. math:: e(t) = [\sin(s t \omega_k), \cos(s t \omega_k)]_k ,

    where ``s = time_scale`` (1000 by default) stretches t in [0, 1] to the range of
    the integer step index of a 1000-step DDPM, and ``P = max_period`` (10000).
    The highest angular rate is then 1000 per unit of t, the lowest 0.1.

    Shapes: t [B] -> [B, features].
    """

    def __init__(self, features: int, *, time_scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if features < 2 or features % 2:
            raise ValueError(f"SinusoidalEmbedding needs an even number of features >= 2; got {features}")
        self.features = features
        self.time_scale = time_scale
        self.max_period = max_period

    def forward(self, t: Tensor) -> Tensor:
        half = self.features // 2
        k = torch.arange(half, dtype=t.dtype, device=t.device)
        omega = torch.exp(-math.log(self.max_period) * k / half)
        angle = (self.time_scale * t)[:, None] * omega[None, :]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class FourierEmbedding(nn.Module):
    r"""Random Fourier features of t (Tancik et al. 2020; Song et al. 2021).

    .. math:: e(t) = [\sin(2\pi W_k t), \cos(2\pi W_k t)]_k, \qquad W_k \sim N(0, s^2),

    with ``s = scale`` (16 by default, so that t in [0, 1] spans about 16 periods of
    a typical frequency).  The frequencies ``W`` [features // 2] are drawn once at
    construction (from torch's global generator) and stored as a buffer, so they
    are saved with the model and never trained.

    Shapes: t [B] -> [B, features].
    """

    W: Tensor

    def __init__(self, features: int, *, scale: float = 16.0) -> None:
        super().__init__()
        if features < 2 or features % 2:
            raise ValueError(f"FourierEmbedding needs an even number of features >= 2; got {features}")
        self.features = features
        self.register_buffer("W", torch.randn(features // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        W = self.W.to(dtype=t.dtype, device=t.device)
        angle = 2.0 * math.pi * t[:, None] * W[None, :]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class LogTimeEmbedding(nn.Module):
    r"""Sinusoidal features of log t, smooth in t wherever the noise level changes slowly.

    With ``half = features // 2``, u = ln(max(t, 1e-6)) and frequencies
    :math:`\omega_k = \exp(-\ln(P)\, k / (\mathrm{half} - 1))` from 1 down to 1/P (P = 1000) radians
    per unit of ln t,

    .. math:: e(t) = [\sin(\omega_k u), \cos(\omega_k u)]_k .

    In the spirit of EDM's c_noise = ln(sigma) / 4 (Karras et al. 2022): for the VP schedules
    sigma^2 ~ beta_min t near t = 0, so ln t is the log noise level there.  The fastest feature
    turns at 1 / t radians per unit t -- about 3 at t = 0.3, against 1000 everywhere for
    :class:`SinusoidalEmbedding` -- so a network built on it is as smooth in t as its target
    where the target is, and the probability-flow ODE needs far fewer evaluations
    (docs/likelihood.md).

    Shapes: t [B] -> [B, features].
    """

    def __init__(self, features: int, *, max_period: float = 1000.0) -> None:
        super().__init__()
        if features < 4 or features % 2:
            raise ValueError(f"LogTimeEmbedding needs an even number of features >= 4; got {features}")
        self.features = features
        self.max_period = max_period

    def forward(self, t: Tensor) -> Tensor:
        half = self.features // 2
        k = torch.arange(half, dtype=t.dtype, device=t.device)
        omega = torch.exp(-math.log(self.max_period) * k / (half - 1))
        angle = torch.log(t.clamp_min(1e-6))[:, None] * omega[None, :]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


TIME_EMBEDDINGS = ("sinusoidal", "fourier", "log")


def time_features(kind: str, features: int) -> nn.Module:
    """The time-feature module named ``kind``: "sinusoidal", "fourier" or "log"."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(features)
    if kind == "fourier":
        return FourierEmbedding(features)
    if kind == "log":
        return LogTimeEmbedding(features)
    raise ValueError(f"time_embedding must be one of {list(TIME_EMBEDDINGS)}; got {kind!r}")


def mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features))


class Embedding(nn.Module):
    r"""The joint embedding of time and conditioning vector fed to every residual block.

    .. math:: e = \mathrm{MLP}_t(\phi(t)) + \mathrm{MLP}_c(c)

    where :math:`\phi` is the sinusoidal or Fourier feature map and the second term
    is present only when ``cond_dim > 0``.

    Shapes: t [B], cond [B, cond_dim] -> [B, emb_dim].
    """

    def __init__(self, emb_dim: int, *, feature_dim: int, time_embedding: str = "sinusoidal", cond_dim: int = 0) -> None:
        super().__init__()
        self.features = time_features(time_embedding, feature_dim)
        self.time_mlp = mlp(feature_dim, emb_dim, emb_dim)
        self.cond_mlp = mlp(cond_dim, emb_dim, emb_dim) if cond_dim > 0 else None

    def forward(self, t: Tensor, cond: Tensor | None = None) -> Tensor:
        e = self.time_mlp(self.features(t))
        if self.cond_mlp is not None and cond is not None:
            e = e + self.cond_mlp(cond)
        return e
