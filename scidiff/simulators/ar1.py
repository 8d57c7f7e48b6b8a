r"""A linear-Gaussian dynamical system with exact densities, scores and smoother: AR(1) per Fourier mode.

The state ``x_k`` is a field on a periodic grid (``D = n**d`` values, as in
:mod:`scidiff.simulators.grf`).  In the unitary Fourier basis ``x_hat = U x`` every mode ``m``
is an independent stationary AR(1) process,

    x_hat_{k+1, m} = a_m x_hat_{k, m} + sqrt(1 - a_m^2) sqrt(lambda_m) w_hat_{k, m},
    x_hat_{1, m} ~ N(0, lambda_m),         w ~ N(0, I_D) white in space and time,

i.e. ``x_{k+1} = A x_k + (I - A^2)^{1/2} C^{1/2} w_k`` with ``A = U^* diag(a) U`` and the
power-law covariance ``C = U^* diag(lambda) U`` of :class:`GaussianRandomField`.  It is the
exact sampling, at the output interval ``dt``, of the stochastic heat (Ornstein-Uhlenbeck)
equation ``du = -(1/tau + kappa (-Laplacian)) u dt + noise`` in its stationary state:

    a_m = exp(-dt (1 / tau + kappa |k_m|^2)),        k_m = 2 pi m / length.

With ``kappa = 0`` every mode has the same ``a = exp(-dt / tau)``.  The chain starts in its
stationary law, so no spin-up is needed: ``x_k ~ N(0, C)`` for every ``k`` and

    Cov(x_{k + l}, x_k) = A^{|l|} C,          per mode  lambda_m a_m^{|l|}.

A trajectory ``x_{1:L}`` is Gaussian; per Fourier mode its ``L x L`` time covariance is the
Toeplitz matrix ``S_m[i, j] = lambda_m a_m^{|i - j|}``.  Under the VP noising
``x_t = alpha_t x + sigma_t eps`` of the whole trajectory it stays diagonal over modes with
time covariance ``alpha_t^2 S_m + sigma_t^2 I_L``, so the exact log-density and score of the
noised trajectory (and of any window of ``W`` consecutive states: the same with ``L = W``)
cost one FFT and one ``L x L`` eigen-decomposition per mode (done once and cached):

    S_m = Q_m diag(d_m) Q_m^T,
    grad log p_t(x_{1:L}) = -U^* [Q_m diag(1 / (alpha_t^2 d_m + sigma_t^2)) Q_m^T x_hat_m]_m.

The process is Markov of order 1, so a window of ``W >= 3`` states is the Markov blanket of
its centre (see :mod:`scidiff.trajectories.composition`).  :meth:`AR1Field.state_space` gives
the dense ``(F, Q, P_1)`` of the state-space model for the Kalman / Rauch-Tung-Striebel
smoother in :mod:`scidiff.trajectories.kalman`.

Shapes: trajectories are ``[B, L, *spatial]`` or ``[B, L, 1, *spatial]``.
Reference: the Ornstein-Uhlenbeck process per mode is e.g. Da Prato & Zabczyk, "Stochastic
Equations in Infinite Dimensions" (1992), ch. 5; Rauch, Tung & Striebel, AIAA J. 3(8), 1965.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scidiff.simulators._checks import check_positive, check_size, make_generator
from scidiff.simulators._fourier import half_weights, irfft, rfft, wavenumber_norm
from scidiff.simulators.grf import GaussianRandomField, _circulant_dense

__all__ = ["AR1Field"]

ParamLike = float | Tensor
_LOG_2PI = math.log(2.0 * math.pi)


class AR1Field:
    """Stationary linear-Gaussian trajectories of a periodic Gaussian random field.

    Args:
        size: grid side ``n``.
        dims: spatial dimensions, 1, 2 or 3.
        slope, amplitude, p0, length: the stationary spectrum ``lambda_m`` of
            :class:`GaussianRandomField` (``length`` also sets the physical wavenumbers).
        tau: correlation time of the mean (``k = 0``) mode, > 0 (time units).
        kappa: diffusivity, >= 0 (length^2 / time); small scales decorrelate faster.
        dt: output interval between consecutive states, > 0 (time units).
    """

    def __init__(
        self,
        size: int,
        dims: int = 1,
        *,
        slope: float = 2.0,
        amplitude: float = 1.0,
        p0: float | None = None,
        length: float = 1.0,
        tau: float = 1.0,
        kappa: float = 0.0,
        dt: float = 0.1,
    ) -> None:
        self.grf = GaussianRandomField(size, dims, slope=slope, amplitude=amplitude, p0=p0,
                                       length=length)
        self.tau = check_positive(tau, "tau")
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)
        self.dt = check_positive(dt, "dt")
        self._eigen: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ parameters
    @property
    def size(self) -> int:
        return self.grf.size

    @property
    def dims(self) -> int:
        return self.grf.dims

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.grf.spatial_shape

    @property
    def num_pixels(self) -> int:
        return self.grf.num_pixels

    def spectrum(self, *, half: bool = True, device: torch.device | str | None = None) -> Tensor:
        """Stationary variance ``lambda_m`` per mode (float64, half or full spectral grid)."""
        return self.grf.spectrum(half=half, device=device)

    def decay(self, *, half: bool = True, device: torch.device | str | None = None) -> Tensor:
        """``a_m = exp(-dt (1/tau + kappa |2 pi m / length|^2))`` per mode (float64), in (0, 1)."""
        m = wavenumber_norm(self.size, self.dims, half=half, device=device)
        k = 2.0 * math.pi * m / self.grf.length
        return torch.exp(-self.dt * (1.0 / self.tau + self.kappa * k * k))

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        length: int,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``n`` stationary trajectories of ``length`` states, ``[n, length, *spatial]``.

        ``x_1 ~ N(0, C)`` exactly, then the recursion of the module docstring (float64, cast
        to ``dtype`` at the end).
        """
        check_size(n, name="n", minimum=1)
        check_size(length, name="length", minimum=1)
        gen = make_generator(generator, seed, device)
        lam = self.spectrum(device=device)
        a = self.decay(device=device)
        w = torch.randn((n, length, *self.spatial_shape), generator=gen, dtype=torch.float64,
                        device=device)
        w_hat = rfft(w, self.dims)
        x_hat = torch.empty_like(w_hat)
        x_hat[:, 0] = lam.sqrt() * w_hat[:, 0]
        innovation = ((1.0 - a * a) * lam).sqrt()
        for k in range(1, length):
            x_hat[:, k] = a * x_hat[:, k - 1] + innovation * w_hat[:, k]
        return irfft(x_hat, self.size, self.dims).to(dtype)

    def step(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """One transition ``x_{k+1} = A x_k + (I - A^2)^{1/2} C^{1/2} w`` of states ``[B, *spatial]``."""
        x2 = x.to(torch.float64)
        w = torch.randn(x2.shape, generator=generator, dtype=torch.float64, device=x.device)
        lam = self.spectrum(device=x.device)
        a = self.decay(device=x.device)
        x_hat = a * rfft(x2, self.dims) + ((1.0 - a * a) * lam).sqrt() * rfft(w, self.dims)
        return irfft(x_hat, self.size, self.dims).to(x.dtype)

    # ------------------------------------------------------------------ dense references
    def lag_covariance(self, lag: int) -> Tensor:
        """Dense ``Cov(x_{k + lag}, x_k) = A^{|lag|} C`` (float64, ``[D, D]``); small grids only."""
        return _circulant_dense(self.spectrum(half=False) * self.decay(half=False) ** abs(int(lag)))

    def covariance(self, length: int) -> Tensor:
        """Dense covariance of a trajectory ``x_{1:L}`` flattened state-major, ``[L D, L D]``."""
        blocks = [[self.lag_covariance(i - j) for j in range(length)] for i in range(length)]
        return torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)

    def state_space(self) -> tuple[Tensor, Tensor, Tensor]:
        """Dense ``(F, Q, P_1)`` with ``x_{k+1} = F x_k + N(0, Q)``, ``x_1 ~ N(0, P_1)`` ([D, D] each).

        ``F = A``, ``Q = (I - A^2) C``, ``P_1 = C`` (circulant; pixels flattened in C order).
        """
        lam = self.spectrum(half=False)
        a = self.decay(half=False)
        return _circulant_dense(a), _circulant_dense((1.0 - a * a) * lam), _circulant_dense(lam)

    # ------------------------------------------------------------------ exact densities
    def time_covariance(self, length: int, *, device: torch.device | str | None = None) -> Tensor:
        """Per-mode Toeplitz time covariance ``S_m[i, j] = lambda_m a_m^{|i-j|}``, ``[*half, L, L]``."""
        lam = self.spectrum(device=device)
        a = self.decay(device=device)
        idx = torch.arange(length, device=device)
        lag = (idx[:, None] - idx[None, :]).abs().to(torch.float64)
        return lam[..., None, None] * a[..., None, None] ** lag

    def _time_eigen(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Cached ``(d [*half, L], Q [*half, L, L])`` with ``S_m = Q diag(d) Q^T``."""
        key = (length, str(device))
        if key not in self._eigen:
            d, q = torch.linalg.eigh(self.time_covariance(length, device=device))
            self._eigen[key] = (d.clamp_min(0.0), q)
        return self._eigen[key]

    def _as_trajectories(self, x: Tensor) -> Tensor:
        """``[B, L, *spatial]`` view of ``x`` given as ``[B, L, *spatial]`` or ``[B, L, 1, *spatial]``."""
        spatial = self.spatial_shape
        if x.ndim == self.dims + 2 and tuple(x.shape[2:]) == spatial:
            return x
        if x.ndim == self.dims + 3 and x.shape[2] == 1 and tuple(x.shape[3:]) == spatial:
            return x[:, :, 0]
        dims = ", ".join(map(str, spatial))
        raise ValueError(f"trajectories must have shape [B, L, {dims}] or [B, L, 1, {dims}], got "
                         f"{tuple(x.shape)}.")

    def _modes(self, x: Tensor, alpha_t: ParamLike, sigma_t: ParamLike
               ) -> tuple[Tensor, Tensor, Tensor]:
        """``(c, d_t, Q)``: time-eigen coordinates ``c = Q^T x_hat`` ``[B, *half, L]`` (complex),
        noised eigenvalues ``d_t = alpha^2 d + sigma^2`` ``[B or 1, *half, L]`` and ``Q``."""
        x2 = self._as_trajectories(x).to(torch.float64)
        length = x2.shape[1]
        d, q = self._time_eigen(length, x2.device)
        x_hat = rfft(x2, self.dims).movedim(1, -1)                      # [B, *half, L]
        c = torch.complex(torch.einsum("...ji,b...j->b...i", q, x_hat.real),
                          torch.einsum("...ji,b...j->b...i", q, x_hat.imag))
        a = torch.as_tensor(alpha_t, dtype=torch.float64, device=x2.device)
        s = torch.as_tensor(sigma_t, dtype=torch.float64, device=x2.device)
        a, s = torch.broadcast_tensors(a, s)
        if a.ndim > 1 or (a.ndim == 1 and a.shape[0] not in (1, x2.shape[0])):
            raise ValueError(f"alpha_t and sigma_t must be numbers or tensors of shape [{x2.shape[0]}], "
                             f"got shape {tuple(a.shape)}.")
        expand = (1,) * (self.dims + 1)
        a = a.reshape(-1, *expand)
        s = s.reshape(-1, *expand)
        d_t = a * a * d + s * s
        if not (d_t > 0).all():
            raise ValueError("the noised time covariance is singular: alpha_t and sigma_t must not "
                             "both be zero.")
        return c, d_t, q

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x_{1:L})`` (nats, float64, ``[B]``) of trajectories ``[B, L, *spatial]``."""
        return self.marginal_log_prob(x, 1.0, 0.0)

    def marginal_log_prob(self, x: Tensor, alpha_t: ParamLike, sigma_t: ParamLike) -> Tensor:
        """Exact ``log p_t(x_{1:L})`` of the noised trajectory ``alpha_t x + sigma_t eps`` ([B]).

        ``-1/2 sum_m w_m sum_l (|c_ml|^2 / d_t,ml + log(2 pi d_t,ml))`` with the half-spectrum
        multiplicities ``w_m`` of :func:`~scidiff.simulators._fourier.half_weights`.
        """
        c, d_t, _ = self._modes(x, alpha_t, sigma_t)
        w = half_weights(self.size, self.dims, device=c.device)[..., None]
        quad = (w * c.abs() ** 2 / d_t).flatten(1).sum(1)
        logdet = (w * torch.log(2.0 * math.pi * d_t)).flatten(1).sum(1)
        return -0.5 * (quad + logdet)

    def score(self, x: Tensor) -> Tensor:
        """``grad log p(x_{1:L})``, shaped and typed like ``x``."""
        return self.marginal_score(x, 1.0, 0.0)

    def marginal_score(self, x: Tensor, alpha_t: ParamLike, sigma_t: ParamLike) -> Tensor:
        """Exact score of the noised trajectory, ``-Cov_t^{-1} x`` (module docstring); like ``x``.

        ``x``: ``[B, L, *spatial]`` or ``[B, L, 1, *spatial]`` (any ``L``: a window of ``W``
        states is a trajectory of length ``W``); ``alpha_t``, ``sigma_t``: numbers or ``[B]``.
        """
        c, d_t, q = self._modes(x, alpha_t, sigma_t)
        z = c / d_t
        out_hat = torch.complex(torch.einsum("...ij,b...j->b...i", q, z.real),
                                torch.einsum("...ij,b...j->b...i", q, z.imag)).movedim(-1, 1)
        s = -irfft(out_hat, self.size, self.dims)
        return s.reshape(x.shape).to(x.dtype)

    def __repr__(self) -> str:
        return (f"AR1Field(size={self.size}, dims={self.dims}, slope={self.grf.slope}, "
                f"amplitude={self.grf.amplitude}, tau={self.tau}, kappa={self.kappa}, dt={self.dt})")
