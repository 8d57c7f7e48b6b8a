r"""Gray-Scott reaction-diffusion on a periodic square, batched in torch.

    du/dt = D_u Laplacian(u) - u v^2 + F (1 - u),
    dv/dt = D_v Laplacian(v) + u v^2 - (F + k) v,

on ``[0, L)^2`` (Pearson, 1993, "Complex patterns in a simple system", Science 261).
``F`` (feed rate) and ``k`` (kill rate) may differ across the batch.  The homogeneous
state ``(u, v) = (1, 0)`` is a stable fixed point; patterns grow from local
perturbations of it.

Time stepping: exponential time differencing, second order (ETDRK2 of Cox & Matthews,
2002, J. Comput. Phys. 176).  The linear part ``L_u = -D_u |k|^2 - F`` and
``L_v = -D_v |k|^2 - (F + k)`` is integrated exactly in Fourier space; the rest,
``N_u = -u v^2 + F`` and ``N_v = u v^2``, by the scheme

    a = e^{L dt} w + dt phi_1(L dt) N(w),
    w_next = a + dt phi_2(L dt) (N(a) - N(w)),

with ``phi_1(z) = (e^z - 1) / z`` and ``phi_2(z) = (e^z - 1 - z) / z^2`` (both evaluated
in float64).  A Fourier mode of a small perturbation of ``(1, 0)`` therefore decays at
exactly ``exp(L t)`` (the nonlinear terms are quadratic in the perturbation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from scidiff._progress import progress as iterate
from scidiff.simulators._checks import check_positive, check_size, check_tensor_param

ParamLike = float | Tensor


class GrayScott:
    """Batched pseudo-spectral Gray-Scott solver on an ``n x n`` periodic grid.

    Fields are ``[B, n, n]`` tensors indexed ``[sample, y, x]`` with ``x_j = j L / n``;
    dtype and device come from the initial state.

    Args:
        size: grid side ``n``.
        length: box side ``L`` (same length unit as the diffusivities).
        diffusion_u, diffusion_v: ``D_u``, ``D_v`` (length^2 / time), > 0.
        dt: time step (time units), > 0.
    """

    def __init__(self, size: int, *, length: float = 64.0, diffusion_u: float = 0.16,
                 diffusion_v: float = 0.08, dt: float = 1.0) -> None:
        self.size = check_size(size, minimum=4)
        self.length = check_positive(length, "length")
        self.diffusion_u = check_positive(diffusion_u, "diffusion_u")
        self.diffusion_v = check_positive(diffusion_v, "diffusion_v")
        self.dt = check_positive(dt, "dt")

    def coordinates(self) -> Tensor:
        """``x_j = j L / n`` (float64, ``[n]``)."""
        return torch.arange(self.size, dtype=torch.float64) * (self.length / self.size)

    def _k2(self, device: torch.device) -> Tensor:
        """``|k|^2`` with ``k = 2 pi m / L`` on the rfft grid ``[n, n // 2 + 1]`` (float64)."""
        n = self.size
        kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)[None, :]
        ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)[:, None]
        return (2.0 * math.pi / self.length) ** 2 * (kx * kx + ky * ky)

    def rates(self, batch: int, feed: ParamLike, kill: ParamLike) -> tuple[Tensor, Tensor]:
        """Validated ``(F, k)`` as float64 tensors ``[B, 1, 1]``; ValueError names a bad one."""
        def as_batch(value: ParamLike, name: str) -> Tensor:
            t = torch.as_tensor(value, dtype=torch.float64)
            if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
                raise ValueError(f"{name} must be a number or a tensor of shape [{batch}], "
                                 f"got shape {tuple(t.shape)}.")
            check_tensor_param(t, name)
            if (t < 0).any():
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
            return t.expand(batch).reshape(batch, 1, 1).clone()

        return as_batch(feed, "F"), as_batch(kill, "k")

    def linear_rates(self, feed: Tensor, kill: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """``L_u = -D_u |k|^2 - F`` and ``L_v = -D_v |k|^2 - (F + k)``, ``[B, n, n//2+1]`` float64."""
        k2 = self._k2(device)
        feed, kill = feed.to(device), kill.to(device)
        return -self.diffusion_u * k2 - feed, -self.diffusion_v * k2 - (feed + kill)

    def solve(self, u0: Tensor, v0: Tensor, t_final: float, *, feed: ParamLike, kill: ParamLike,
              progress: bool = False, on_step: Callable[[float], None] | None = None,
              ) -> tuple[Tensor, Tensor]:
        """Integrate ``(u, v)`` from ``(u0, v0)`` (each ``[B, n, n]``) to ``t_final``.

        ``t_final`` is rounded to a whole number of steps ``dt`` (at least one if > 0).
        Returns ``(u, v)`` at that time, each ``[B, n, n]``.  ``progress`` shows a tqdm bar;
        ``on_step(dt)`` is called after every step (for an outer progress bar).
        """
        shape = (self.size, self.size)
        if u0.ndim != 3 or tuple(u0.shape[1:]) != shape or u0.shape != v0.shape:
            raise ValueError(f"u0 and v0 must both have shape [B, {self.size}, {self.size}], got "
                             f"{tuple(u0.shape)} and {tuple(v0.shape)}.")
        t_final = check_positive(t_final, "t_final", allow_zero=True)
        steps = int(round(t_final / self.dt))
        feed_t, kill_t = self.rates(u0.shape[0], feed, kill)
        lin_u, lin_v = self.linear_rates(feed_t, kill_t, u0.device)
        cdtype = torch.fft.rfft2(u0[:1, :1, :1]).dtype
        coef = [self._etd_coefficients(lin, cdtype) for lin in (lin_u, lin_v)]
        # N_u = F - u v^2 and N_v = u v^2: the constant F only feeds the k = 0 mode, so its
        # ETD contribution dt phi_1 F n^2 (unnormalised FFT) is computed once
        feed_hat = torch.zeros_like(lin_u)
        feed_hat[..., 0, 0] = feed_t[:, 0, 0].to(lin_u.device) * self.size**2
        feed_term = (coef[0][1].to(torch.float64) * feed_hat).to(coef[0][1].dtype)
        u_hat, v_hat = torch.fft.rfft2(u0), torch.fft.rfft2(v0)
        for _ in iterate(range(steps), total=steps, desc="gray-scott", enabled=progress, unit="step"):
            u_hat, v_hat = self._etdrk2_step(u_hat, v_hat, feed_term, coef)
            if on_step is not None:
                on_step(self.dt)
        return torch.fft.irfft2(u_hat, s=shape), torch.fft.irfft2(v_hat, s=shape)

    def _etd_coefficients(self, lin: Tensor, cdtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``(e^{z}, dt phi_1(z), dt phi_2(z))`` with ``z = L dt`` (``z = L dt <= 0``)."""
        z = lin * self.dt
        e = torch.exp(z)
        # Taylor series where |z| is small (the closed forms lose digits or divide by 0)
        small = z.abs() < 1e-3
        z_safe = torch.where(small, torch.ones_like(z), z)
        phi1 = torch.where(small, 1.0 + z / 2.0 + z * z / 6.0, torch.expm1(z_safe) / z_safe)
        phi2 = torch.where(small, 0.5 + z / 6.0 + z * z / 24.0,
                           (torch.expm1(z_safe) - z_safe) / (z_safe * z_safe))
        rdtype = torch.float32 if cdtype == torch.complex64 else torch.float64
        return e.to(rdtype), (self.dt * phi1).to(rdtype), (self.dt * phi2).to(rdtype)

    def _uvv_hat(self, u_hat: Tensor, v_hat: Tensor) -> Tensor:
        """Fourier transform of the reaction ``u v^2`` (``N_u = F - u v^2``, ``N_v = u v^2``)."""
        shape = (self.size, self.size)
        u = torch.fft.irfft2(u_hat, s=shape)
        v = torch.fft.irfft2(v_hat, s=shape)
        return torch.fft.rfft2(u * v * v)

    def _etdrk2_step(self, u_hat: Tensor, v_hat: Tensor, feed_term: Tensor,
                     coef: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """One ETDRK2 step; ``feed_term = dt phi_1(L_u dt) FFT(F)`` (constant)."""
        (eu, p1u, p2u), (ev, p1v, p2v) = coef
        r0 = self._uvv_hat(u_hat, v_hat)
        au = eu * u_hat + feed_term - p1u * r0
        av = ev * v_hat + p1v * r0
        dr = self._uvv_hat(au, av) - r0
        return au - p2u * dr, av + p2v * dr


def seeded_initial_state(batch: int, size: int, *, seeds: int = 8, patch: int = 4,
                         noise: float = 0.01, generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Perturbed homogeneous state: ``(u, v) = (1, 0)`` with ``seeds`` random square patches.

    Inside a patch (side ``patch`` grid cells, random position, periodic wrap)
    ``(u, v) = (1/2, 1/4)`` (Pearson, 1993); everywhere a uniform noise of relative size
    ``noise`` multiplies both fields.  Returns ``(u0, v0)``, each ``[batch, size, size]``.
    """
    u = torch.ones(batch, size, size, dtype=torch.float64)
    v = torch.zeros(batch, size, size, dtype=torch.float64)
    corners = torch.randint(0, size, (batch, seeds, 2), generator=generator)
    offs = torch.arange(patch)
    b_idx = torch.arange(batch)[:, None, None, None]
    rows = (corners[..., 0, None, None] + offs[:, None]) % size       # [B, S, P, 1]
    cols = (corners[..., 1, None, None] + offs[None, :]) % size       # [B, S, 1, P]
    rows, cols = torch.broadcast_tensors(rows, cols)
    b_idx = b_idx.expand_as(rows)
    u[b_idx, rows, cols] = 0.5
    v[b_idx, rows, cols] = 0.25
    jitter = 1.0 + noise * (2.0 * torch.rand(2, batch, size, size, generator=generator,
                                             dtype=torch.float64) - 1.0)
    return (u * jitter[0]).to(dtype), (v * jitter[1]).to(dtype)
