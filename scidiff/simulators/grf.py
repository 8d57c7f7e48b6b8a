r"""Gaussian and lognormal random fields on a periodic grid, with exact log-densities.

A stationary Gaussian field on a periodic grid of side ``n`` in ``d`` dimensions
(``D = n**d`` values) has a circulant covariance ``C``, diagonalised by the unitary DFT
``U`` (``x_hat = U x = rfftn(x, norm="ortho")`` on the half spectrum):

    C = U^* diag(lambda) U,        E |x_hat_k|^2 = lambda_k.

Here ``lambda_k = P(|k|)`` with the power-law spectrum

    P(k) = amplitude * |k|^(-slope)   for k != 0,        P(0) = p0,

where ``k`` is the integer wavenumber (in units of ``2 pi / L``; the smallest non-zero
``|k|`` is 1).  The default ``p0 = None`` means ``P(0) = P(k_min) = amplitude``: the mean
of the field over the box is kept as a random mode with that finite positive variance,
so ``C`` is positive definite.  The field has zero mean and pointwise variance
``(1 / D) sum_k lambda_k``.

Sampling: ``x = irfftn(sqrt(lambda) * rfftn(w, norm="ortho"), norm="ortho")`` with white
noise ``w ~ N(0, I_D)``, which is exactly ``x ~ N(0, C)``.

Log-density (Parseval, ``U`` unitary):

    log p(x) = -1/2 sum_k |x_hat_k|^2 / lambda_k - 1/2 sum_k log(2 pi lambda_k),

the sums running over the full spectrum, computed on the half spectrum with the
multiplicities of :func:`scidiff.simulators._fourier.half_weights`; cost ``O(D log D)``.

Noisy marginals of the VP forward process ``x_t = alpha_t x_0 + sigma_t eps`` stay
diagonal in Fourier space: ``x_t ~ N(0, alpha_t^2 C + sigma_t^2 I)`` with eigenvalues
``alpha_t^2 lambda_k + sigma_t^2``; the score is ``-U^* diag(1 / lambda_t) U x_t``.

Reference: e.g. Dietrich & Newsam (1997), "Fast and exact simulation of stationary
Gaussian processes through circulant embedding of the covariance matrix", SIAM J. Sci.
Comput. 18(4); the periodic grid is the case where no embedding is needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scidiff.simulators._checks import (
    check_dims,
    check_finite,
    check_positive,
    check_size,
    check_tensor_param,
    make_generator,
)
from scidiff.simulators._fourier import half_weights, irfft, rfft, wavenumber_norm

_LOG_2PI = math.log(2.0 * math.pi)
ParamLike = float | Tensor


class GaussianRandomField:
    """Zero-mean stationary Gaussian random field with a power-law spectrum, periodic grid.

    Args:
        size: grid side ``n`` (the grid is ``n``, ``n x n`` or ``n x n x n``).
        dims: number of spatial dimensions, 1, 2 or 3.
        slope: spectral slope ``s`` in ``P(k) = amplitude |k|^(-s)`` (any finite real).
        amplitude: ``P(k = 1)``, > 0 (units of the field squared).
        p0: variance eigenvalue of the ``k = 0`` mode, > 0; ``None`` means ``amplitude``.
        length: box length ``L`` (only sets the coordinates; ``k`` is in units of ``2 pi / L``).

    Fields are tensors shaped ``[B, *spatial]`` or ``[B, 1, *spatial]`` with
    ``spatial = (n,) * dims`` ordered ``(z, y, x)``.
    """

    def __init__(
        self,
        size: int,
        dims: int = 2,
        *,
        slope: float = 3.0,
        amplitude: float = 1.0,
        p0: float | None = None,
        length: float = 1.0,
    ) -> None:
        self.size = check_size(size)
        self.dims = check_dims(dims)
        self.slope = check_finite(slope, "slope")
        self.amplitude = check_positive(amplitude, "amplitude")
        self.p0 = None if p0 is None else check_positive(p0, "p0")
        self.length = check_positive(length, "length")

    # ------------------------------------------------------------------ spectrum
    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(n,) * dims``."""
        return (self.size,) * self.dims

    @property
    def num_pixels(self) -> int:
        """``D = n ** dims``."""
        return self.size**self.dims

    def power(self, k: Tensor, *, slope: ParamLike | None = None,
              amplitude: ParamLike | None = None) -> Tensor:
        """``P(k) = amplitude |k|^(-slope)`` for ``k > 0`` and ``P(0) = p0`` (or ``amplitude``).

        ``k``: integer-unit wavenumber magnitudes, any shape; ``slope``/``amplitude``
        broadcast against ``k``.  Returns float64 (or ``k``'s floating dtype).
        """
        s = torch.as_tensor(self.slope if slope is None else slope, dtype=k.dtype, device=k.device)
        a = torch.as_tensor(self.amplitude if amplitude is None else amplitude,
                            dtype=k.dtype, device=k.device)
        k_safe = torch.where(k > 0, k, torch.ones_like(k))
        p = a * k_safe ** (-s)
        p_zero = a * torch.ones_like(p) if self.p0 is None else torch.full_like(p, self.p0)
        return torch.where(k > 0, p, p_zero)

    def spectrum(self, *, half: bool = False, slope: ParamLike | None = None,
                 amplitude: ParamLike | None = None, device: torch.device | str | None = None,
                 ) -> Tensor:
        """Covariance eigenvalues ``lambda_k = P(|k|)`` on the spectral grid (float64).

        ``half=False``: full grid ``[*spatial]`` in ``fftn`` order; ``half=True``: the
        ``rfftn`` half grid ``[n, ..., n // 2 + 1]``.  A tensor ``slope``/``amplitude`` of
        shape ``P`` gives shape ``[*P, *grid]``.
        """
        k = wavenumber_norm(self.size, self.dims, half=half, device=device)
        slope_t, amp_t = self._params(slope, amplitude, device=device)
        expand = (1,) * self.dims
        return self.power(k, slope=slope_t.reshape(slope_t.shape + expand),
                          amplitude=amp_t.reshape(amp_t.shape + expand))

    def covariance(self) -> Tensor:
        """Dense covariance ``C`` (float64, ``[D, D]``, pixels flattened in C order).

        ``C_ij = c(r_i - r_j)`` with ``c = ifftn(lambda)`` (real); for small grids only.
        """
        lam = self.spectrum(half=False)
        return _circulant_dense(lam)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        *,
        slope: ParamLike | None = None,
        amplitude: ParamLike | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``n`` fields ``x ~ N(0, C)``, returned as ``[n, *spatial]``.

        ``slope``/``amplitude`` may be tensors of shape ``[n]`` (one spectrum per field).
        The draw is done in float64 and cast to ``dtype``.
        """
        check_size(n, name="n", minimum=1)
        gen = make_generator(generator, seed, device)
        lam = self.spectrum(half=True, slope=slope, amplitude=amplitude, device=device)
        if lam.ndim > self.dims + 1 or (lam.ndim == self.dims + 1 and lam.shape[0] not in (1, n)):
            raise ValueError(
                f"slope/amplitude must be scalars or tensors of shape [{n}], got a spectrum "
                f"of shape {tuple(lam.shape)}."
            )
        w = torch.randn((n, *self.spatial_shape), generator=gen, dtype=torch.float64,
                        device=device)
        x = irfft(lam.sqrt() * rfft(w, self.dims), self.size, self.dims)
        return x.to(dtype)

    # ------------------------------------------------------------------ densities
    def log_prob(self, x: Tensor, *, slope: ParamLike | None = None,
                 amplitude: ParamLike | None = None) -> Tensor:
        """Exact ``log p(x)`` (nats, float64) under ``N(0, C)``.

        ``x``: ``[B, *spatial]`` or ``[B, 1, *spatial]``.  ``slope``/``amplitude``: a number
        (result ``[B]``), a tensor ``[B]`` (one spectrum per field, result ``[B]``), or a
        tensor broadcastable to ``[B, S]`` such as ``slopes[None, :]`` (every field under
        every spectrum, result ``[B, S]``: a likelihood over a grid of slopes).
        """
        x2 = self._as_fields(x).to(torch.float64)
        lam = self.spectrum(half=True, slope=slope, amplitude=amplitude, device=x.device)
        return _fourier_log_prob(x2, lam, self.dims)

    def log_prob_grid(self, x: Tensor, slopes: Tensor) -> Tensor:
        """``log p(x | slope_s)`` for every field and every slope: ``[B, S]`` (float64).

        ``slopes``: ``[S]``.  Same as ``log_prob(x, slope=slopes[None, :])``.
        """
        slopes = torch.as_tensor(slopes, dtype=torch.float64)
        if slopes.ndim != 1:
            raise ValueError(f"slopes must be a 1-D tensor [S], got shape {tuple(slopes.shape)}.")
        return self.log_prob(x, slope=slopes[None, :])

    def score(self, x: Tensor) -> Tensor:
        """``grad_x log p(x) = -C^{-1} x`` (float64 arithmetic), shaped and typed like ``x``."""
        return self.marginal_score(x, 1.0, 0.0)

    def marginal_log_prob(self, x: Tensor, alpha_t: ParamLike, sigma_t: ParamLike) -> Tensor:
        """Exact ``log p_t(x)`` for ``x_t ~ N(0, alpha_t^2 C + sigma_t^2 I)`` (nats, ``[B]``).

        ``alpha_t``, ``sigma_t``: numbers or tensors ``[B]``; ``x`` as in :meth:`log_prob`.
        """
        x2 = self._as_fields(x).to(torch.float64)
        lam_t = self._marginal_spectrum(alpha_t, sigma_t, x2)
        return _fourier_log_prob(x2, lam_t, self.dims)

    def marginal_score(self, x: Tensor, alpha_t: ParamLike, sigma_t: ParamLike) -> Tensor:
        """``grad_x log p_t(x) = -U^* diag(1 / (alpha_t^2 lambda + sigma_t^2)) U x``.

        Shaped and typed like ``x``; the arithmetic is float64.
        """
        x2 = self._as_fields(x).to(torch.float64)
        lam_t = self._marginal_spectrum(alpha_t, sigma_t, x2)
        s = -irfft(rfft(x2, self.dims) / lam_t, self.size, self.dims)
        return s.reshape(x.shape).to(x.dtype)

    def marginal_covariance(self, alpha_t: float, sigma_t: float) -> Tensor:
        """Dense ``alpha_t^2 C + sigma_t^2 I`` (float64, ``[D, D]``), small grids only."""
        return alpha_t**2 * self.covariance() + sigma_t**2 * torch.eye(
            self.num_pixels, dtype=torch.float64)

    # ------------------------------------------------------------------ internals
    def _params(self, slope: ParamLike | None, amplitude: ParamLike | None,
                device: torch.device | str | None) -> tuple[Tensor, Tensor]:
        s = torch.as_tensor(self.slope if slope is None else slope, dtype=torch.float64,
                            device=device)
        a = torch.as_tensor(self.amplitude if amplitude is None else amplitude,
                            dtype=torch.float64, device=device)
        check_tensor_param(s, "slope")
        check_tensor_param(a, "amplitude", positive=True)
        return torch.broadcast_tensors(s, a)

    def _marginal_spectrum(self, alpha_t: ParamLike, sigma_t: ParamLike, x2: Tensor) -> Tensor:
        a = torch.as_tensor(alpha_t, dtype=torch.float64, device=x2.device)
        s = torch.as_tensor(sigma_t, dtype=torch.float64, device=x2.device)
        check_tensor_param(a, "alpha_t")
        check_tensor_param(s, "sigma_t")
        a, s = torch.broadcast_tensors(a, s)
        if a.ndim > 1 or (a.ndim == 1 and a.shape[0] not in (1, x2.shape[0])):
            raise ValueError(
                f"alpha_t and sigma_t must be numbers or tensors of shape [{x2.shape[0]}], "
                f"got shape {tuple(a.shape)}."
            )
        expand = (1,) * self.dims
        a = a.reshape(a.shape + expand)
        s = s.reshape(s.shape + expand)
        lam = self.spectrum(half=True, device=x2.device)
        lam_t = a * a * lam + s * s
        if not (lam_t > 0).all():
            raise ValueError("alpha_t and sigma_t must not both be zero.")
        return lam_t

    def _as_fields(self, x: Tensor) -> Tensor:
        """``[B, *spatial]`` view of ``x`` given as ``[B, *spatial]`` or ``[B, 1, *spatial]``."""
        return as_fields(x, self.size, self.dims)


class LognormalField:
    """``y = exp(mu + g)`` with ``g`` a :class:`GaussianRandomField`; exact log-density.

    ``log p(y) = log p_g(log y - mu) - sum_r log y_r`` (change of variables), ``-inf`` if
    any ``y_r <= 0``.  ``mu`` is the mean shift of ``log y`` (the median of ``y_r`` is
    ``exp(mu)``).  The other arguments are those of :class:`GaussianRandomField`.
    """

    def __init__(
        self,
        size: int,
        dims: int = 2,
        *,
        slope: float = 3.0,
        amplitude: float = 1.0,
        p0: float | None = None,
        mu: float = 0.0,
        length: float = 1.0,
    ) -> None:
        self.grf = GaussianRandomField(size, dims, slope=slope, amplitude=amplitude, p0=p0,
                                       length=length)
        self.mu = check_finite(mu, "mu")

    @property
    def size(self) -> int:
        return self.grf.size

    @property
    def dims(self) -> int:
        return self.grf.dims

    def sample(self, n: int, *, slope: ParamLike | None = None,
               amplitude: ParamLike | None = None, generator: torch.Generator | None = None,
               seed: int | None = None, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> Tensor:
        """Draw ``n`` fields ``exp(mu + g)``, ``[n, *spatial]`` (see ``GaussianRandomField.sample``)."""
        g = self.grf.sample(n, slope=slope, amplitude=amplitude, generator=generator, seed=seed,
                            dtype=torch.float64, device=device)
        return torch.exp(self.mu + g).to(dtype)

    def log_prob(self, x: Tensor, *, slope: ParamLike | None = None,
                 amplitude: ParamLike | None = None) -> Tensor:
        """Exact ``log p(x)`` (nats, float64); shapes as in ``GaussianRandomField.log_prob``."""
        x2 = self.grf._as_fields(x).to(torch.float64)
        positive = (x2 > 0).flatten(1).all(dim=1)
        log_x = torch.log(torch.where(x2 > 0, x2, torch.ones_like(x2)))
        log_g = self.grf.log_prob(log_x - self.mu, slope=slope, amplitude=amplitude)
        jac = log_x.flatten(1).sum(dim=1)
        if log_g.ndim == 2:
            jac = jac[:, None]
            positive = positive[:, None]
        out = log_g - jac
        return torch.where(positive, out, torch.full_like(out, -math.inf))


# ---------------------------------------------------------------------- helpers
def as_fields(x: Tensor, size: int, dims: int) -> Tensor:
    """Return ``x`` as ``[B, *spatial]``, accepting ``[B, *spatial]`` or ``[B, 1, *spatial]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    spatial = (size,) * dims
    if x.ndim == dims + 1 and tuple(x.shape[1:]) == spatial:
        return x
    if x.ndim == dims + 2 and x.shape[1] == 1 and tuple(x.shape[2:]) == spatial:
        return x[:, 0]
    raise ValueError(
        f"x must have shape [B, {', '.join(map(str, spatial))}] or [B, 1, "
        f"{', '.join(map(str, spatial))}], got {tuple(x.shape)}."
    )


def _fourier_log_prob(x: Tensor, lam_half: Tensor, dims: int) -> Tensor:
    """``-1/2 sum_k |x_hat_k|^2 / lambda_k - 1/2 sum_k log(2 pi lambda_k)`` (full-spectrum sums).

    ``x``: ``[B, *spatial]`` float64.  ``lam_half``: ``[*half]``, ``[B or 1, *half]`` or
    ``[B or 1, S, *half]``.  Returns ``[B]`` or ``[B, S]``.
    """
    size = x.shape[-1]
    w = half_weights(size, dims, device=x.device).flatten()
    power = (rfft(x, dims).abs() ** 2).flatten(1) * w          # [B, M]
    lam = lam_half.flatten(-dims)                              # [..., M]
    logdet = (w * torch.log(2.0 * math.pi * lam)).sum(-1)      # [...]
    if lam.ndim == 3:
        quad = (power[:, None, :] / lam).sum(-1)              # [B, S]
    else:
        quad = (power / lam).sum(-1)                           # [B]
    return -0.5 * quad - 0.5 * logdet


def _circulant_dense(lam: Tensor) -> Tensor:
    """Dense circulant matrix with full-grid eigenvalues ``lam`` ``[*spatial]`` -> ``[D, D]``.

    ``C_ij = c((r_i - r_j) mod n)`` with ``c = ifftn(lam).real`` (per-axis index differences).
    """
    dims = lam.ndim
    size = lam.shape[0]
    c = torch.fft.ifftn(lam.to(torch.complex128)).real
    idx = torch.stack(torch.meshgrid(*[torch.arange(size)] * dims, indexing="ij"), -1)
    idx = idx.reshape(-1, dims)                                # [D, dims]
    diff = (idx[:, None, :] - idx[None, :, :]) % size          # [D, D, dims]
    return c[tuple(diff[..., i] for i in range(dims))]
