r"""Closed-form diffused densities: Gaussian mixtures under a VP process.

If x_0 ~ sum_k w_k N(mu_k, S_k), then under the VP forward process

    x_t ~ p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I),

so log p_t, its score grad_x log p_t and samples are known exactly at every t.  These
are the references the tests and benchmarks check samplers, likelihoods and guidance
against; they are also handy for a user who wants to see a sampler work before training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from scidiff.parameterisation import batch_time, x0_hat
from scidiff.sde import VPSDE

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A Gaussian mixture sum_k w_k N(mu_k, S_k) on R^d and its VP-diffused marginals.

    Args:
        weights: [K] positive (normalised internally).
        means: [K, d].
        covs: [K, d, d] symmetric positive definite, or [K, d] diagonals, or [K] isotropic variances.
        sde: the VP-SDE whose marginals :meth:`score` and :meth:`log_prob` use (optional
            for t = 0 quantities).

    Samples are [B, d] (or [B, *event] with prod(event) = d if ``event_shape`` is given).
    """

    def __init__(
        self,
        weights: Tensor | Sequence[float],
        means: Tensor | Sequence[Sequence[float]],
        covs: Tensor | Sequence,
        *,
        sde: VPSDE | None = None,
        event_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.means = torch.as_tensor(means, dtype=dtype)
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {list(self.means.shape)}")
        k, d = self.means.shape
        w = torch.as_tensor(weights, dtype=dtype).flatten()
        if w.numel() != k or bool((w <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers, got {w.tolist()}")
        self.weights = w / w.sum()
        c = torch.as_tensor(covs, dtype=dtype)
        if c.ndim == 1:
            c = c[:, None, None] * torch.eye(d, dtype=dtype)
        elif c.ndim == 2:
            c = torch.diag_embed(c)
        if c.shape != (k, d, d):
            raise ValueError(f"covs must be [K, d, d], [K, d] or [K] with K={k}, d={d}; got {list(c.shape)}")
        self.covs = c
        self.sde = sde
        self.d = d
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not have {d} elements")

    # ---- data distribution ---------------------------------------------------------
    def mean(self) -> Tensor:
        """E[x_0], [d]."""
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        """Cov[x_0] = sum_k w_k (S_k + mu_k mu_k^T) - m m^T, [d, d]."""
        m = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x_0, [n, *event_shape]."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.d, dtype=self.means.dtype, generator=generator)
        x = self.means[comp] + torch.einsum("nij,nj->ni", chol[comp], z)
        return x.reshape(n, *self.event_shape)

    # ---- diffused marginals p_t ------------------------------------------------------
    def _marginal_params(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample component means [B, K, d] and covariances [B, K, d, d] at times t [B]."""
        if self.sde is None:
            alpha = torch.ones_like(t, dtype=self.means.dtype)
            sigma = torch.zeros_like(alpha)
        else:
            c = self.sde.coefficients(t)
            alpha = c.alpha.to(self.means.dtype)
            sigma = c.sigma.to(self.means.dtype)
        eye = torch.eye(self.d, dtype=self.means.dtype)
        mu = alpha[:, None, None] * self.means[None]
        cov = alpha[:, None, None, None] ** 2 * self.covs[None] + sigma[:, None, None, None] ** 2 * eye
        return mu, cov

    def _component_terms(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Log of w_k N(x; mu_k(t), C_k(t)) [B, K] and C_k^{-1}(x - mu_k) [B, K, d]."""
        xf = x.reshape(x.shape[0], self.d).to(self.means.dtype)
        if bool((t == t[0]).all()):
            # one time for the whole batch (the samplers' case): factorise K matrices, not B K
            mu, cov = self._marginal_params(t[:1])
            chol = torch.linalg.cholesky(cov[0])
            diff = xf[:, None, :] - mu
            inv = torch.cholesky_inverse(chol)
            sol = torch.einsum("kij,bkj->bki", inv, diff)
            logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)[None]
        else:
            mu, cov = self._marginal_params(t)
            chol = torch.linalg.cholesky(cov)
            diff = xf[:, None, :] - mu
            sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]
            logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        maha = (diff * sol).sum(-1)
        logn = -0.5 * (maha + logdet + self.d * math.log(2.0 * math.pi))
        return torch.log(self.weights)[None] + logn, sol

    def log_prob(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:
        """log p_t(x), [B]; ``x`` is [B, *event_shape], ``t`` [B] or a scalar."""
        t = batch_time(t, x)
        logw, _ = self._component_terms(x, t)
        return torch.logsumexp(logw, dim=1).to(x.dtype)

    def score(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:
        """grad_x log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - mu_k), shaped like ``x``."""
        t = batch_time(t, x)
        logw, sol = self._component_terms(x, t)
        resp = torch.softmax(logw, dim=1)
        return (-(resp[..., None] * sol).sum(1)).reshape(x.shape).to(x.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The score, so the mixture itself can be passed to samplers and the likelihood."""
        return self.score(x, t)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t] = (x_t + sigma_t^2 grad log p_t) / alpha_t (Tweedie)."""
        if self.sde is None:
            raise ValueError("denoise needs the mixture's sde")
        t = batch_time(t, x)
        c = self.sde.coefficients(t).like(x)
        return x0_hat(x, self.score(x, t), c.alpha, c.sigma)

