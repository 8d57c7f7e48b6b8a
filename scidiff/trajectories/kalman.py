r"""The Kalman filter and Rauch-Tung-Striebel smoother: the exact posterior of a linear-Gaussian chain.

State-space model, states ``x_k`` in R^D (``k = 0..L-1``, 0-based):

    x_0 ~ N(m_0, P_0),      x_{k+1} = F x_k + q_k,  q_k ~ N(0, Q),
    y_k = H_k x_k + r_k,    r_k ~ N(0, R_k)          (only at the observed k).

Filter (predict, then update where observed):

    m^-_{k} = F m_{k-1},  P^-_k = F P_{k-1} F^T + Q,
    S_k = H_k P^-_k H_k^T + R_k,  K_k = P^-_k H_k^T S_k^{-1},
    m_k = m^-_k + K_k (y_k - H_k m^-_k),   P_k = (I - K_k H_k) P^-_k (Joseph form used),

and the backward (RTS) pass, ``G_k = P_k F^T (P^-_{k+1})^{-1}``:

    m^s_k = m_k + G_k (m^s_{k+1} - m^-_{k+1}),   P^s_k = P_k + G_k (P^s_{k+1} - P^-_{k+1}) G_k^T.

The smoothed ``(m^s_k, P^s_k)`` are the exact posterior marginals ``p(x_k | y_{0:L-1})``; the
log-evidence ``log p(y) = sum_k log N(y_k; H_k m^-_k, S_k)`` comes with the filter.  Dense
float64 linear algebra: ``O(L D^3)``, for the small systems of tests and benchmarks.

Reference: R. E. Kalman (1960), J. Basic Eng. 82(1); H. E. Rauch, F. Tung & C. T. Striebel
(1965), "Maximum likelihood estimates of linear dynamic systems", AIAA J. 3(8);
S. Sarkka, "Bayesian Filtering and Smoothing" (2013), ch. 4 and 8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LinearObservation", "SmootherResult", "kalman_smoother", "gaussian_conditional"]


@dataclass(frozen=True)
class LinearObservation:
    """``y = H x + N(0, R)`` at one time: ``H`` [M, D], ``y`` [M], ``noise_var`` [M] (diagonal R) or [M, M]."""

    H: Tensor
    y: Tensor
    noise_var: Tensor

    def covariance(self) -> Tensor:
        r = torch.as_tensor(self.noise_var, dtype=torch.float64)
        if r.ndim == 0:
            r = r.expand(self.H.shape[0])
        return torch.diag(r) if r.ndim == 1 else r


@dataclass(frozen=True)
class SmootherResult:
    """Smoothed means ``mean`` [L, D] and covariances ``cov`` [L, D, D]; filtered ones likewise;
    ``log_evidence`` = log p(y) (nats)."""

    mean: Tensor
    cov: Tensor
    filter_mean: Tensor
    filter_cov: Tensor
    log_evidence: Tensor

    @property
    def std(self) -> Tensor:
        """Posterior marginal standard deviations ``sqrt(diag P^s_k)``, [L, D]."""
        return torch.diagonal(self.cov, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()


def kalman_smoother(F: Tensor, Q: Tensor, P0: Tensor, length: int,
                    observations: Mapping[int, LinearObservation], *, m0: Tensor | None = None) -> SmootherResult:
    """The exact posterior marginals of ``x_{0:L-1}`` given ``observations`` {k: LinearObservation}.

    ``F``, ``Q``, ``P0``: [D, D]; ``m0``: [D] (default 0).  Observation times must lie in ``[0, L)``.
    All arithmetic in float64.
    """
    F, Q, P0 = (torch.as_tensor(a, dtype=torch.float64) for a in (F, Q, P0))
    d = F.shape[0]
    if F.shape != (d, d) or Q.shape != (d, d) or P0.shape != (d, d):
        raise ValueError(f"F, Q and P0 must be square [D, D] of one size, got {list(F.shape)}, "
                         f"{list(Q.shape)}, {list(P0.shape)}")
    bad = sorted(k for k in observations if not 0 <= k < length)
    if bad:
        raise ValueError(f"observation times {bad} lie outside the trajectory of {length} states (0..{length - 1})")
    eye = torch.eye(d, dtype=torch.float64)
    m = torch.zeros(d, dtype=torch.float64) if m0 is None else torch.as_tensor(m0, dtype=torch.float64)
    P = P0
    pred_m, pred_P, filt_m, filt_P = [], [], [], []
    log_ev = torch.zeros((), dtype=torch.float64)
    for k in range(length):
        if k > 0:
            m = F @ m
            P = F @ P @ F.T + Q
        pred_m.append(m)
        pred_P.append(P)
        if k in observations:
            obs = observations[k]
            H = torch.as_tensor(obs.H, dtype=torch.float64)
            y = torch.as_tensor(obs.y, dtype=torch.float64).reshape(-1)
            if H.ndim != 2 or H.shape[1] != d or y.shape[0] != H.shape[0]:
                raise ValueError(f"observation at time {k}: H must be [M, {d}] and y [M], got "
                                 f"{list(H.shape)} and {list(y.shape)}")
            R = obs.covariance()
            S = H @ P @ H.T + R
            chol = torch.linalg.cholesky(S)
            innov = y - H @ m
            z = torch.linalg.solve_triangular(chol, innov[:, None], upper=False)[:, 0]
            log_ev = log_ev - 0.5 * (z @ z) - torch.log(torch.diagonal(chol)).sum() \
                - 0.5 * y.shape[0] * math.log(2.0 * math.pi)
            K = torch.cholesky_solve(H @ P, chol).T                  # P H^T S^-1
            m = m + K @ innov
            IKH = eye - K @ H
            P = IKH @ P @ IKH.T + K @ R @ K.T
            P = 0.5 * (P + P.T)
        filt_m.append(m)
        filt_P.append(P)
    sm, sP = [filt_m[-1]], [filt_P[-1]]
    for k in range(length - 2, -1, -1):
        G = torch.linalg.solve(pred_P[k + 1], F @ filt_P[k]).T      # P_k F^T (P^-_{k+1})^-1
        mk = filt_m[k] + G @ (sm[0] - pred_m[k + 1])
        Pk = filt_P[k] + G @ (sP[0] - pred_P[k + 1]) @ G.T
        sm.insert(0, mk)
        sP.insert(0, 0.5 * (Pk + Pk.T))
    return SmootherResult(torch.stack(sm), torch.stack(sP), torch.stack(filt_m), torch.stack(filt_P), log_ev)


def gaussian_conditional(cov: Tensor, H: Tensor, y: Tensor, noise_var: Tensor,
                         mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Posterior ``N(mu, P)`` of ``x ~ N(mean, cov)`` given ``y = H x + N(0, diag(noise_var))`` (dense).

    ``mu = mean + cov H^T S^{-1} (y - H mean)``, ``P = cov - cov H^T S^{-1} H cov``,
    ``S = H cov H^T + R``; float64.  A second, independent route to the smoother's answer.
    """
    cov = torch.as_tensor(cov, dtype=torch.float64)
    H = torch.as_tensor(H, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    r = torch.as_tensor(noise_var, dtype=torch.float64)
    r = r.expand(H.shape[0]) if r.ndim == 0 else r.reshape(-1)
    mean = torch.zeros(cov.shape[0], dtype=torch.float64) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
    S = H @ cov @ H.T + torch.diag(r)
    chol = torch.linalg.cholesky(S)
    CHt = cov @ H.T
    mu = mean + CHt @ torch.cholesky_solve((y - H @ mean)[:, None], chol)[:, 0]
    P = cov - CHt @ torch.cholesky_solve(CHt.T, chol)
    return mu, 0.5 * (P + P.T)
