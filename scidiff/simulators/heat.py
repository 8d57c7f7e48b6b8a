r"""Heat equation on a periodic grid: a linear-Gaussian test bed for guidance.

The heat equation ``du/dt = kappa Laplacian(u)`` on the periodic box ``[0, L)^d`` acts
on each Fourier mode independently:

    u_hat_k(tau) = h_k u_hat_k(0),      h_k = exp(-kappa |k|^2 tau),   |k| = 2 pi |m| / L,

with ``m`` the integer wavenumber.  With a Gaussian random field prior
``u0 ~ N(0, C)`` (eigenvalues ``lambda_k``) and noisy observations of the evolved field

    y = H u0 + e,     H = U^* diag(h) U,     e ~ N(0, s^2 I),

the posterior of ``u0`` is Gaussian and again diagonal in Fourier space (``U`` the unitary
DFT):

    v_k = 1 / (1 / lambda_k + h_k^2 / s^2),      m_hat_k = v_k h_k y_hat_k / s^2,

i.e. ``p(u0 | y) = N(U^* m_hat, U^* diag(v) U)``.  Reference: any text on Bayesian
linear inverse problems, e.g. Stuart (2010), "Inverse problems: a Bayesian perspective",
Acta Numerica 19, section 6 (the heat equation example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scidiff.simulators._checks import check_dims, check_positive, check_size, make_generator
from scidiff.simulators._fourier import irfft, rfft, wavenumber_norm
from scidiff.simulators.grf import GaussianRandomField, _circulant_dense, _fourier_log_prob, as_fields


@dataclass(frozen=True)
class HeatPosterior:
    """Gaussian posterior ``N(mean, U^* diag(variance) U)`` of ``u0`` given ``y``.

    Attributes:
        mean: posterior mean fields ``[B, *spatial]`` (float64).
        variance: per-mode posterior variance ``v_k`` on the full spectral grid
            ``[*spatial]`` in ``fftn`` order (float64); identical for every ``y``.
        size, dims: the grid.
    """

    mean: Tensor
    variance: Tensor
    size: int
    dims: int

    def sample(self, *, generator: torch.Generator | None = None,
               seed: int | None = None) -> Tensor:
        """One posterior draw per observation: ``mean + U^* sqrt(v) U w``, ``[B, *spatial]``."""
        gen = make_generator(generator, seed, self.mean.device)
        w = torch.randn(self.mean.shape, generator=gen, dtype=torch.float64,
                        device=self.mean.device)
        return self.mean + irfft(self._half_variance().sqrt() * rfft(w, self.dims),
                                 self.size, self.dims)

    def log_prob(self, u0: Tensor) -> Tensor:
        """Exact posterior ``log p(u0 | y)`` (nats, ``[B]``, float64)."""
        u = as_fields(u0, self.size, self.dims).to(torch.float64)
        return _fourier_log_prob(u - self.mean, self._half_variance(), self.dims)

    def covariance(self) -> Tensor:
        """Dense posterior covariance ``[D, D]`` (float64), small grids only."""
        return _circulant_dense(self.variance)

    def _half_variance(self) -> Tensor:
        return self.variance[..., : self.size // 2 + 1]


class HeatEquation:
    """Pairs ``(u0, u(tau))`` of the periodic heat equation with a GRF initial condition.

    Args:
        size: grid side ``n``.
        dims: 1, 2 or 3.
        kappa: diffusivity (units ``L^2 / time``), > 0.
        tau: elapsed time, > 0.
        grf: prior of ``u0``; default ``GaussianRandomField(size, dims, slope=3.0)``.
        length: box length ``L`` (default: that of ``grf``).
    """

    def __init__(
        self,
        size: int,
        dims: int = 2,
        *,
        kappa: float = 0.01,
        tau: float = 0.1,
        grf: GaussianRandomField | None = None,
        length: float | None = None,
    ) -> None:
        self.size = check_size(size)
        self.dims = check_dims(dims)
        self.kappa = check_positive(kappa, "kappa")
        self.tau = check_positive(tau, "tau")
        if grf is None:
            grf = GaussianRandomField(size, dims, length=1.0 if length is None else length)
        if grf.size != size or grf.dims != dims:
            raise ValueError(
                f"grf must live on the same grid (size={size}, dims={dims}), got "
                f"size={grf.size}, dims={grf.dims}."
            )
        self.grf = grf
        self.length = grf.length if length is None else check_positive(length, "length")

    def decay(self, *, half: bool = False, device: torch.device | str | None = None) -> Tensor:
        """``h_k = exp(-kappa (2 pi |m| / L)^2 tau)`` on the (full or half) grid, float64."""
        m = wavenumber_norm(self.size, self.dims, half=half, device=device)
        k = 2.0 * math.pi * m / self.length
        return torch.exp(-self.kappa * k * k * self.tau)

    def forward(self, u0: Tensor) -> Tensor:
        """``u(tau) = U^* diag(h) U u0``, shaped and typed like ``u0`` (float64 arithmetic)."""
        u = as_fields(u0, self.size, self.dims).to(torch.float64)
        h = self.decay(half=True, device=u.device)
        return irfft(h * rfft(u, self.dims), self.size, self.dims).reshape(u0.shape).to(u0.dtype)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               seed: int | None = None, slope: float | Tensor | None = None,
               dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """Draw ``n`` pairs ``(u0, u(tau))``, each ``[n, *spatial]``."""
        u0 = self.grf.sample(n, generator=generator, seed=seed, slope=slope)
        return u0.to(dtype), self.forward(u0).to(dtype)

    def observe(self, u0: Tensor, noise_std: float, *, generator: torch.Generator | None = None,
                seed: int | None = None) -> Tensor:
        """``y = H u0 + noise_std * e`` with ``e ~ N(0, I)``, ``[B, *spatial]`` float64."""
        s = check_positive(noise_std, "noise_std")
        gen = make_generator(generator, seed, u0.device)
        u_tau = self.forward(as_fields(u0, self.size, self.dims).to(torch.float64))
        return u_tau + s * torch.randn(u_tau.shape, generator=gen, dtype=torch.float64,
                                       device=u0.device)

    def posterior(self, y: Tensor, noise_std: float) -> HeatPosterior:
        """Exact posterior of ``u0`` given ``y = H u0 + N(0, noise_std^2 I)`` (module docstring).

        ``y``: ``[B, *spatial]`` or ``[B, 1, *spatial]``.  The prior is ``self.grf`` at its
        own slope and amplitude.
        """
        s2 = check_positive(noise_std, "noise_std") ** 2
        y2 = as_fields(y, self.size, self.dims).to(torch.float64)
        lam = self.grf.spectrum(half=False, device=y2.device)
        h = self.decay(half=False, device=y2.device)
        v = 1.0 / (1.0 / lam + h * h / s2)
        n_half = self.size // 2 + 1
        mean_hat = (v * h)[..., :n_half] / s2 * rfft(y2, self.dims)
        mean = irfft(mean_hat, self.size, self.dims)
        return HeatPosterior(mean=mean, variance=v, size=self.size, dims=self.dims)

    def operator(self) -> Tensor:
        """Dense forward operator ``H`` (float64, ``[D, D]``), small grids only."""
        return _circulant_dense(self.decay(half=False))
