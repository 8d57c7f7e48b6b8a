r"""Simulator-parameter inference from observed fields by the model's likelihood.

A parameter-conditioned model gives log p(x | theta) for any field x through the
probability-flow ODE (:func:`scidiff.log_likelihood` with the score s(x, t | theta)); with a
prior p(theta), Bayes' rule gives the posterior

    log p(theta | x) = log p(x | theta) + log p(theta) - log Z(x).

On a grid theta_1 .. theta_G (:func:`log_likelihood_grid`, :func:`grid_posterior`) the
posterior is normalised over the grid; its mean, standard deviation, MAP and the
maximum-likelihood value follow (for one parameter the maximum is refined by a parabola
through the best grid point and its neighbours).  :func:`metropolis` samples the posterior
by random-walk Metropolis, one chain per field, each step one likelihood solve for all chains.

Hutchinson divergences are drawn from the same seed for every theta (common random
numbers), so the estimation noise is nearly the same along the grid and the likelihood
curve stays smooth in theta.

Reference: Song, Durkan, Murray & Ermon (2021) for the likelihood; the use of a conditional
diffusion likelihood for simulation-based inference in the spirit of e.g. Cranmer, Brehmer &
Louppe (2020), "The frontier of simulation-based inference", PNAS 117(48).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scidiff.sde import VPSDE
from scidiff._validate import check_int
from scidiff._progress import progress_bar

__all__ = [
    "log_likelihood_grid",
    "grid_posterior",
    "GridPosterior",
    "parabolic_maximum",
    "metropolis",
    "MetropolisResult",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _as_grid(thetas: Tensor) -> Tensor:
    """thetas as [G, P] float64."""
    th = torch.as_tensor(thetas, dtype=torch.float64)
    if th.ndim == 1:
        th = th[:, None]
    if th.ndim != 2 or th.shape[0] < 1:
        raise ValueError(f"thetas must be [G] or [G, P], got shape {list(th.shape)}")
    if not bool(torch.isfinite(th).all()):
        raise ValueError("thetas contain NaN or inf")
    return th


def log_likelihood_grid(
    score_of_theta: Callable[[Tensor], ScoreFn],
    sde: VPSDE,
    x: Tensor,
    thetas: Tensor,
    *,
    thetas_per_solve: int = 1,
    seed: int = 0,
    progress: bool = True,
    **likelihood_options: Any,
) -> Tensor:
    """log p(x_b | theta_g) for every field and grid value: [G, B] (nats, float64).

    Args:
        score_of_theta: ``score_of_theta(theta) -> score(x, t)``; theta is [P] (or, when
            ``thetas_per_solve > 1``, [k B, P] with one row per sample of the stacked batch), e.g.
            ``lambda th: scidiff.conditional.conditional_score(model, th)``.
        sde: the VP-SDE of the model.
        x: the fields, [B, *event].
        thetas: the grid, [G] (one parameter) or [G, P].
        thetas_per_solve: k grid values solved together in one ODE on a batch of k B fields
            (fewer, larger network calls; the adaptive step size is then shared); exact
            divergence only.
        seed: seed of the Hutchinson probes, the same for every theta.
        progress: a progress bar over the grid.
        **likelihood_options: passed to :func:`scidiff.log_likelihood` (``divergence``, ``rtol``,
            ``atol``, ``t_min``, ``probes``, ``log_abs_det_jacobian``, ...).
    """
    from scidiff.likelihood import log_likelihood

    if not isinstance(sde, VPSDE):
        raise TypeError(f"sde must be a scidiff.VPSDE, got {type(sde).__name__}")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor of fields [B, *event]")
    check_int("thetas_per_solve", thetas_per_solve)
    if "generator" in likelihood_options:
        raise ValueError("pass seed= instead of generator=: every theta uses the same probes")
    if thetas_per_solve > 1 and likelihood_options.get("divergence", "exact") == "hutchinson":
        raise ValueError(
            "divergence='hutchinson' needs thetas_per_solve=1 so that every theta sees the same probes "
            "(common random numbers keep the likelihood curve smooth)"
        )
    grid = _as_grid(thetas)
    squeeze = torch.as_tensor(thetas).ndim == 1
    bsz = x.shape[0]
    out = torch.empty(grid.shape[0], bsz, dtype=torch.float64, device=x.device)
    bar = progress_bar(grid.shape[0], "log p(x | theta) on the grid", enabled=progress, leave=False)
    gen_device = x.device
    for g0 in range(0, grid.shape[0], thetas_per_solve):
        g1 = min(grid.shape[0], g0 + thetas_per_solve)
        k = g1 - g0
        th = grid[g0:g1].to(dtype=x.dtype, device=x.device)
        if thetas_per_solve == 1:
            score = score_of_theta(th[0, 0] if squeeze else th[0])
            xs = x
        else:
            per_sample = th.repeat_interleave(bsz, dim=0)  # [k B, P]
            score = score_of_theta(per_sample[:, 0:1] if squeeze else per_sample)
            xs = x.repeat(k, *([1] * (x.ndim - 1)))
        gen = torch.Generator(device=gen_device).manual_seed(seed)
        res = log_likelihood(score, sde, xs, generator=gen, **likelihood_options).log_prob
        out[g0:g1] = res.double().reshape(k, bsz)
        bar.update(k)
    bar.close()
    return out


def parabolic_maximum(thetas: Tensor, values: Tensor) -> Tensor:
    """Maximiser of a curve sampled on a uniform 1-D grid, per column: values [G, B] -> [B].

    The best grid point i is refined by the vertex of the parabola through (i - 1, i, i + 1):
    theta_i + h/2 (v_{i-1} - v_{i+1}) / (v_{i-1} - 2 v_i + v_{i+1}); at the grid's ends the
    grid point itself is returned.
    """
    th = torch.as_tensor(thetas, dtype=torch.float64).flatten()
    v = values.double()
    if v.ndim == 1:
        v = v[:, None]
    if v.shape[0] != th.numel():
        raise ValueError(f"values have {v.shape[0]} rows for a grid of {th.numel()}")
    i = v.argmax(0)
    out = th[i].clone()
    if th.numel() < 3:
        return out
    h = float(th[1] - th[0])
    inner = (i > 0) & (i < th.numel() - 1)
    cols = torch.arange(v.shape[1])
    im, ip = (i - 1).clamp(0, th.numel() - 1), (i + 1).clamp(0, th.numel() - 1)
    vm, v0, vp = v[im, cols], v[i, cols], v[ip, cols]
    denom = vm - 2 * v0 + vp
    shift = torch.where(denom < 0, 0.5 * h * (vm - vp) / torch.where(denom < 0, denom, -torch.ones_like(denom)),
                        torch.zeros_like(denom))
    return torch.where(inner, out + shift.clamp(-h, h), out)


@dataclass
class GridPosterior:
    """A posterior over parameters on a grid, for B fields.

    Attributes:
        thetas: the grid [G, P] (float64).
        log_likelihood: log p(x_b | theta_g) [G, B].
        log_prior: log p(theta_g) [G] (up to a constant).
        weights: normalised posterior weights over the grid [G, B] (sum over g = 1).
    """

    thetas: Tensor
    log_likelihood: Tensor
    log_prior: Tensor
    weights: Tensor

    @property
    def mean(self) -> Tensor:
        """E[theta | x_b] = sum_g w_gb theta_g, [B, P]."""
        return self.weights.T @ self.thetas

    @property
    def std(self) -> Tensor:
        """sqrt(sum_g w_gb (theta_g - mean_b)^2), [B, P]."""
        second = self.weights.T @ self.thetas.pow(2)
        return (second - self.mean.pow(2)).clamp_min(0).sqrt()

    @property
    def map(self) -> Tensor:
        """The grid value of highest posterior weight, [B, P]."""
        return self.thetas[self.weights.argmax(0)]

    @property
    def max_likelihood(self) -> Tensor:
        """The maximum-likelihood value, [B, P]; refined by a parabola for one parameter on a uniform grid."""
        if self.thetas.shape[1] == 1 and _uniform(self.thetas[:, 0]):
            return parabolic_maximum(self.thetas[:, 0], self.log_likelihood)[:, None]
        return self.thetas[self.log_likelihood.argmax(0)]


def _uniform(th: Tensor) -> bool:
    if th.numel() < 3:
        return False
    d = th.diff()
    return bool(((d - d[0]).abs() <= 1e-9 * d[0].abs().clamp_min(1e-300)).all()) and bool(d[0] > 0)


def grid_posterior(
    log_lik: Tensor,
    thetas: Tensor,
    log_prior: Tensor | Callable[[Tensor], Tensor] | None = None,
) -> GridPosterior:
    """Posterior over a grid: w_gb proportional to p(x_b | theta_g) p(theta_g).

    Args:
        log_lik: log p(x_b | theta_g), [G, B] (e.g. from :func:`log_likelihood_grid`).
        thetas: the grid, [G] or [G, P].
        log_prior: log p(theta_g) as a tensor [G], a function of the grid [G, P] -> [G], or
            None for a flat prior on the grid.
    """
    grid = _as_grid(thetas).to(log_lik.device)
    ll = log_lik.double()
    if ll.ndim == 1:
        ll = ll[:, None]
    if ll.shape[0] != grid.shape[0]:
        raise ValueError(f"log_lik has {ll.shape[0]} rows for a grid of {grid.shape[0]} values")
    if log_prior is None:
        lp = torch.zeros(grid.shape[0], dtype=torch.float64, device=ll.device)
    elif callable(log_prior):
        lp = torch.as_tensor(log_prior(grid), dtype=torch.float64).to(ll.device).flatten()
    else:
        lp = torch.as_tensor(log_prior, dtype=torch.float64).to(ll.device).flatten()
    if lp.shape != (grid.shape[0],):
        raise ValueError(f"log_prior must give one value per grid point ({grid.shape[0]}), got {list(lp.shape)}")
    weights = torch.softmax(ll + lp[:, None], dim=0)
    return GridPosterior(thetas=grid, log_likelihood=ll, log_prior=lp, weights=weights)


@dataclass
class MetropolisResult:
    """Chains of :func:`metropolis`: ``samples`` [steps, B, P], ``log_density`` [steps, B],
    ``acceptance`` [B] (fraction of accepted proposals per chain)."""

    samples: Tensor
    log_density: Tensor
    acceptance: Tensor


def metropolis(
    log_density: Callable[[Tensor], Tensor],
    theta0: Tensor,
    steps: int,
    *,
    step_size: float | Tensor,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> MetropolisResult:
    """Random-walk Metropolis with Gaussian proposals, one chain per field.

    Args:
        log_density: theta [B, P] -> log p(x_b | theta_b) + log p(theta_b) [B] (e.g. one
            :func:`scidiff.log_likelihood` solve with the per-sample conditional score, plus a
            prior that returns -inf outside its support).
        theta0: starting values [B, P] (finite log density).
        steps: number of proposals per chain.
        step_size: proposal standard deviation (a number or [P]).
        generator: for proposals and acceptance draws.
        progress: a progress bar.
    """
    theta = torch.as_tensor(theta0, dtype=torch.float64).clone()
    if theta.ndim != 2:
        raise ValueError(f"theta0 must be [B, P], got shape {list(theta.shape)}")
    check_int("steps", steps)
    scale = torch.as_tensor(step_size, dtype=torch.float64)
    if not bool((scale > 0).all()):
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    lp = log_density(theta).double()
    if not bool(torch.isfinite(lp).all()):
        raise ValueError("the log density is not finite at theta0")
    samples, dens = [], []
    accepted = torch.zeros(theta.shape[0], dtype=torch.float64)
    bar = progress_bar(steps, "metropolis", enabled=progress, leave=False)
    for _ in range(steps):
        prop = theta + scale * torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        lp_prop = log_density(prop).double()
        log_u = torch.log(torch.rand(theta.shape[0], generator=generator, dtype=torch.float64))
        accept = log_u < (lp_prop - lp)
        theta = torch.where(accept[:, None], prop, theta)
        lp = torch.where(accept, lp_prop, lp)
        accepted += accept.double()
        samples.append(theta.clone())
        dens.append(lp.clone())
        bar.update()
    bar.close()
    return MetropolisResult(samples=torch.stack(samples), log_density=torch.stack(dens), acceptance=accepted / steps)
