r"""Moment-matching posterior sampling (MMPS) for linear y = A x_0 + N(0, sigma_y^2 I).

The likelihood of the noisy state, p(y | x_t) = int p(y | x_0) p(x_0 | x_t) dx_0, is computed
with p(x_0 | x_t) replaced by the Gaussian with its first two moments (Tweedie):

    E[x_0 | x_t]   = x0-hat = (x_t + sigma_t^2 s(x_t, t)) / alpha_t,
    Cov[x_0 | x_t] = V = (sigma_t^2 / alpha_t) d x0-hat / d x_t,

    log p(y | x_t) ~= log N(y; A x0-hat, Sigma_y),      Sigma_y = sigma_y^2 I + A V A^T,

    grad_{x_t} log p(y | x_t) ~= (d x0-hat / d x_t)^T A^T Sigma_y^{-1} (y - A x0-hat)

(the covariance held fixed in the gradient).  Sigma_y^{-1} r is found by conjugate gradients
with matrix-vector products ``v -> sigma_y^2 v + A V A^T v``; ``V A^T v`` is one vector-Jacobian
product through the score (``d x0-hat / d x_t`` is symmetric for an exact score, a Hessian).
When the prior is Gaussian, p(x_0 | x_t) *is* that Gaussian and V does not depend on x_t, so
the guided score is the exact posterior score grad log p_t(x_t | y): with enough CG steps (at
most the number of observations M) sampling it gives the exact posterior, e.g. the
Rauch-Tung-Striebel smoother of a linear-Gaussian trajectory.

Cost per evaluation: one score forward with graph, ``cg_steps + 1`` backward passes.

What it needs of a trained model: an accurate x0-hat at *every* noise level.  For a network
predicting eps, x0-hat = (x_t - sigma_t eps-hat) / alpha_t multiplies its error by
sigma_t / alpha_t (150 at t = 1 for the linear VP-SDE with beta 0.1..20), and V by the square:
an eps error of 0.3 % already makes V indefinite and members blow up
(``benchmarks/bench_trajectories.py --sections parameterisation``).  Train with
``prediction="v"`` (x0-hat = alpha_t x_t - sigma_t v-hat) or ``"x0"``.

Reference: F. Rozet, G. Andry, F. Lanusse & G. Louppe, "Learning diffusion priors from
observations by expectation maximization", NeurIPS 2024 (MMPS); the covariance
approximation goes back to Boys et al. (2023) and Finzi et al. (2023).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scidiff.guidance.base import GuidedScore, ScoreFn
from scidiff.parameterisation import batch_time
from scidiff.sde import VPSDE

__all__ = ["MMPSGuidance", "conjugate_gradient"]


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, steps: int, *,
                       floor: Tensor | None = None) -> Tensor:
    """``steps`` iterations of batched CG for ``M u = b`` (b [B, N], M SPD per sample), from u = 0.

    ``floor`` (broadcastable to [B, N]): a diagonal ``D`` known to satisfy ``M >= D`` (for MMPS,
    the noise variances: ``Sigma_y = sigma_y^2 I + A V A^T`` with V a covariance).  A positive
    curvature ``p^T M p`` of a search direction is taken as ``max(p^T M p, p^T D p)``, which changes
    nothing while M honours the bound and keeps the step finite when it does not (a nearly
    singular V from a learned score's Jacobian); along a direction of negative curvature no step
    is taken, with or without the floor.
    Fixed iteration count and no host syncs; a converged sample (zero residual) stays put.
    """
    u = torch.zeros_like(b)
    res = b.clone()
    p = res.clone()
    rs = (res * res).sum(1, keepdim=True)
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(steps):
        mp = matvec(p)
        pmp = (p * mp).sum(1, keepdim=True)
        if floor is not None:  # a positive curvature below the bound is raised to it; a negative one: no step
            pmp = torch.where(pmp > 0, torch.maximum(pmp, (p * p * floor).sum(1, keepdim=True)), pmp)
        a = torch.where(pmp > tiny, rs / pmp.clamp_min(tiny), torch.zeros_like(pmp))
        u = u + a * p
        res = res - a * mp
        rs_new = (res * res).sum(1, keepdim=True)
        p = res + torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs)) * p
        rs = rs_new
    return u


class MMPSGuidance(GuidedScore):
    r"""The MMPS posterior score for a linear operator A: s(x, t) + scale * grad log p(y | x_t).

    Args:
        score: the prior score s(x, t) [B, *event] (differentiable in x).
        sde: its VP-SDE.
        operator: a *linear* operator A(x) [B, *event] -> [B, *obs] (e.g.
            :class:`~scidiff.trajectories.StateObservation`, ``SparseSensors``, ``CoarseGrain``).
        y: the observations [*obs] (shared) or [B, *obs].
        noise_std: sigma_y > 0, a number or a tensor broadcastable to [*obs].
        scale: guidance weight (1: Bayes' rule).
        cg_steps: conjugate-gradient iterations for Sigma_y^{-1} r (exact after M for M observations).
        safeguard: bound the CG curvature below by the noise variance (``Sigma_y >= sigma_y^2 I``
            holds for any covariance V; see :func:`conjugate_gradient`).  Inactive for an exact
            score; for a learned one it stops the rare member whose V is nearly singular along a
            CG direction from being thrown far out.

    Call: ``guided(x, t)``, returns a tensor like x with no graph.
    """

    def __init__(self, score: ScoreFn, sde: VPSDE, operator: Callable[[Tensor], Tensor], y: Tensor,
                 noise_std: float | Tensor, scale: float = 1.0, *, cg_steps: int = 3, safeguard: bool = True) -> None:
        super().__init__(score, sde, scale=scale)
        if not callable(operator):
            raise TypeError(f"operator must be callable, got {type(operator).__name__}")
        if getattr(operator, "linear", True) is False:
            raise ValueError(f"MMPSGuidance needs a linear operator; {operator!r} says it is not linear "
                             "(use DPSGuidance for nonlinear observations)")
        if not isinstance(y, Tensor) or not torch.is_floating_point(y) or y.ndim == 0:
            raise TypeError("y must be a floating-point tensor [*obs] or [B, *obs]")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or infinite values")
        if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
            raise ValueError(f"cg_steps must be a positive integer, got {cg_steps!r}")
        std = torch.as_tensor(noise_std, dtype=torch.float64)
        if not bool((torch.isfinite(std) & (std > 0)).all()):
            raise ValueError(f"noise_std must be positive and finite, got {noise_std!r}")
        self.operator = operator
        with torch.inference_mode(False):
            self.y = y.detach().clone()
            self.noise_std = std.detach().clone()
        self.cg_steps = cg_steps
        self.safeguard = bool(safeguard)

    def _y_like(self, a_x: Tensor) -> Tensor:
        obs = tuple(a_x.shape[1:])
        if tuple(self.y.shape) == obs:
            return self.y.to(a_x)[None]
        if tuple(self.y.shape[1:]) == obs and self.y.shape[0] in (1, a_x.shape[0]):
            return self.y.to(a_x)
        raise ValueError(f"y has shape {list(self.y.shape)} but the operator gives observations "
                         f"{list(obs)} per sample (batch {a_x.shape[0]})")

    def _score_and_log_p(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError  # the gradient is assembled in score_and_grad

    def score_and_grad(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(s(x, t), grad_x log p(y | x_t), -r^T Sigma_y^{-1} r / 2), all detached."""
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError("x must be a floating-point tensor [B, *event]")
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            t_in = batch_time(t, x_in).detach().clone()
            c = self.sde.coefficients(t_in.to(torch.float64)).like(x_in)
            s = self.score(x_in, t_in)
            x0 = (x_in + c.sigma.square() * s) / c.alpha
            a_x0 = self.operator(x0)
            r = (self._y_like(a_x0) - a_x0).detach()
            obs_shape = a_x0.shape[1:]
            var = torch.broadcast_to(self.noise_std.to(a_x0).square(), obs_shape)[None]
            # A^T as a vector-Jacobian product of the (linear) operator at a free point
            z = torch.zeros_like(x0, requires_grad=True)
            a_z = self.operator(z)
            ratio = (c.sigma.square() / c.alpha).detach()

            def adjoint(v: Tensor) -> Tensor:
                return torch.autograd.grad(a_z, z, v, retain_graph=True)[0]

            def jac_t(v: Tensor) -> Tensor:  # (d x0-hat / d x_t)^T v
                return torch.autograd.grad(x0, x_in, v, retain_graph=True)[0]

            def matvec(v_flat: Tensor) -> Tensor:
                v = v_flat.reshape(-1, *obs_shape)
                cov_v = ratio * jac_t(adjoint(v))
                return (var * v + self.operator(cov_v).detach()).flatten(1)

            floor = torch.broadcast_to(var, r.shape).flatten(1) if self.safeguard else None
            u = conjugate_gradient(matvec, r.flatten(1), self.cg_steps, floor=floor).reshape(r.shape)
            grad = jac_t(adjoint(u))
            log_p = -0.5 * (r * u).flatten(1).sum(1)
        return s.detach(), grad.detach(), log_p.detach()

    def __repr__(self) -> str:
        return (f"MMPSGuidance(operator={self.operator!r}, y of shape {list(self.y.shape)}, "
                f"scale={self.scale}, cg_steps={self.cg_steps}, safeguard={self.safeguard})")
