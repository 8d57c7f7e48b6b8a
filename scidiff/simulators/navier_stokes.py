r"""2-D incompressible Navier-Stokes in vorticity form, pseudo-spectral, batched in torch.

On the periodic square ``[0, 2 pi)^2`` the vorticity ``omega = dv/dx - du/dy`` obeys

    d omega / dt + u . grad(omega) = nu Laplacian(omega) - mu omega + f,

with velocity ``u = (d psi/dy, -d psi/dx)`` from the stream function ``-Laplacian(psi) =
omega``, viscosity ``nu = 1 / Re``, optional linear drag ``mu`` and Kolmogorov forcing:
the body force ``F = A sin(k_f y) e_x`` whose curl is the vorticity forcing

    f(x, y) = -A k_f cos(k_f y).

Space: Fourier pseudo-spectral on an ``n x n`` grid; the advection term is evaluated in
the conservative form ``div(u omega)`` (so the mean vorticity, the ``k = 0`` mode, is
untouched exactly) and de-aliased with the 2/3 rule: only modes with ``|k_x|, |k_y| <= K``,
``K = floor((n - 1) / 3)``, are kept, which makes the quadratic term alias-free (a
Galerkin truncation, which conserves energy and enstrophy when ``nu = mu = f = 0``).

Time: the integrating-factor (Lawson) fourth-order Runge-Kutta scheme: the linear part
``L = -nu |k|^2 - mu`` is integrated exactly by ``exp(L dt)``, the rest ``N + f`` by RK4
(Lawson, 1967, SIAM J. Numer. Anal. 4(3)).  ``dt`` comes from the CFL condition
``dt = cfl * dx / max(|u|, |v|)`` (capped by ``dt_max``), re-evaluated every step, with
the last step shortened to land exactly on the final time.  One ``dt`` is shared by the
whole batch.

The parameters ``nu``, ``mu``, ``A`` and ``k_f`` may differ across the batch (tensors
``[B]``).  Reference for the set-up: Kochkov et al. (2021), "Machine learning-accelerated
computational fluid dynamics", PNAS 118(21) (Kolmogorov flow with ``k_f = 4``,
``mu = 0.1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scidiff._progress import progress_bar
from scidiff.simulators._checks import check_positive, check_size, check_tensor_param

ParamLike = float | Tensor


@dataclass(frozen=True)
class FlowParameters:
    """Per-sample physical parameters, each a float64 tensor ``[B, 1, 1]``.

    ``viscosity`` ``nu = 1/Re``, ``drag`` ``mu``, ``forcing_amplitude`` ``A`` and
    ``forcing_wavenumber`` ``k_f`` (an integer, so the forcing is periodic).
    """

    viscosity: Tensor
    drag: Tensor
    forcing_amplitude: Tensor
    forcing_wavenumber: Tensor


class NavierStokes2D:
    """Pseudo-spectral vorticity solver on an ``n x n`` periodic grid of ``[0, 2 pi)^2``.

    Fields are tensors ``[B, n, n]`` indexed ``[sample, y, x]`` with ``x_j = 2 pi j / n``.
    The dtype and device of the solution are those of the initial vorticity.

    Args:
        size: grid side ``n`` (>= 8).
        cfl: Courant number of the adaptive step, in (0, 2].
        dt_max: largest allowed step (time units).
    """

    def __init__(self, size: int, *, cfl: float = 0.5, dt_max: float = 0.05) -> None:
        self.size = check_size(size, minimum=8)
        self.cfl = check_positive(cfl, "cfl")
        if self.cfl > 2.0:
            raise ValueError(f"cfl must be in (0, 2], got {cfl!r}.")
        self.dt_max = check_positive(dt_max, "dt_max")
        self.cutoff = (self.size - 1) // 3

    # ------------------------------------------------------------------ grid
    @property
    def dx(self) -> float:
        """Grid spacing ``2 pi / n``."""
        return 2.0 * math.pi / self.size

    def coordinates(self) -> Tensor:
        """``x_j = 2 pi j / n``, float64 ``[n]`` (the same for ``y``)."""
        return torch.arange(self.size, dtype=torch.float64) * self.dx

    def _spectral(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(k_x, k_y, |k|^2, mask)`` on the rfft grid ``[n, n // 2 + 1]``, real dtype of ``like``."""
        dtype = like.real.dtype if like.is_complex() else like.dtype
        n = self.size
        kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=dtype, device=like.device)[None, :]
        ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=dtype, device=like.device)[:, None]
        k2 = kx * kx + ky * ky
        mask = (kx.abs() <= self.cutoff) & (ky.abs() <= self.cutoff)
        return kx, ky, k2, mask

    # ------------------------------------------------------------------ physics
    def parameters(self, batch: int, *, reynolds: ParamLike, drag: ParamLike = 0.0,
                   forcing_amplitude: ParamLike = 0.0, forcing_wavenumber: ParamLike = 4,
                   ) -> FlowParameters:
        """Validate and broadcast per-sample parameters to ``[B, 1, 1]`` float64 tensors.

        ``reynolds`` may be ``math.inf`` (inviscid).  Raises ValueError naming a bad value.
        """
        def as_batch(value: ParamLike, name: str) -> Tensor:
            t = torch.as_tensor(value, dtype=torch.float64)
            if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
                raise ValueError(f"{name} must be a number or a tensor of shape [{batch}], "
                                 f"got shape {tuple(t.shape)}.")
            return t.expand(batch).reshape(batch, 1, 1).clone()

        re = as_batch(reynolds, "reynolds")
        if torch.isnan(re).any() or not (re > 0).all():
            raise ValueError("reynolds must be > 0 (math.inf for an inviscid flow), got "
                             f"{reynolds!r}.")
        mu = as_batch(drag, "drag")
        check_tensor_param(mu, "drag")
        if (mu < 0).any():
            raise ValueError(f"drag must be >= 0, got {drag!r}.")
        amp = as_batch(forcing_amplitude, "forcing_amplitude")
        check_tensor_param(amp, "forcing_amplitude")
        kf = as_batch(forcing_wavenumber, "forcing_wavenumber")
        check_tensor_param(kf, "forcing_wavenumber")
        if (kf != kf.round()).any() or (kf < 1).any() or (kf > self.cutoff).any():
            raise ValueError(
                f"forcing_wavenumber must be an integer in [1, {self.cutoff}] (the de-aliased "
                f"band of a {self.size}-point grid), got {forcing_wavenumber!r}."
            )
        return FlowParameters(viscosity=1.0 / re, drag=mu, forcing_amplitude=amp,
                              forcing_wavenumber=kf)

    def forcing(self, params: FlowParameters, like: Tensor) -> Tensor:
        """Vorticity forcing ``f = -A k_f cos(k_f y)``, ``[B, n, n]`` like ``like``."""
        y = self.coordinates().to(like.device)[None, :, None]
        kf, amp = params.forcing_wavenumber.to(like.device), params.forcing_amplitude.to(like.device)
        f = -amp * kf * torch.cos(kf * y)
        return f.expand(-1, self.size, self.size).to(like.dtype)

    def velocity(self, omega: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, v) = (d psi/dy, -d psi/dx)`` with ``psi_hat = omega_hat / |k|^2``; ``[B, n, n]`` each."""
        return self._velocity_hat(torch.fft.rfft2(omega))

    def _velocity_hat(self, omega_hat: Tensor) -> tuple[Tensor, Tensor]:
        kx, ky, k2, _ = self._spectral(omega_hat)
        psi_hat = omega_hat / torch.where(k2 > 0, k2, torch.ones_like(k2))
        psi_hat = torch.where(k2 > 0, psi_hat, torch.zeros_like(psi_hat))
        s = (self.size, self.size)
        u = torch.fft.irfft2(1j * ky * psi_hat, s=s)
        v = torch.fft.irfft2(-1j * kx * psi_hat, s=s)
        return u, v

    def advection(self, omega: Tensor) -> Tensor:
        """``u . grad(omega) = div(u omega)`` de-aliased by the 2/3 rule, ``[B, n, n]``."""
        omega_hat = torch.fft.rfft2(omega)
        _, _, _, mask = self._spectral(omega_hat)
        n_hat, _ = self._nonlinear_hat(omega_hat * mask)
        return -torch.fft.irfft2(n_hat, s=(self.size, self.size))

    def _nonlinear_hat(self, omega_hat: Tensor) -> tuple[Tensor, Tensor]:
        """``N_hat = -mask * FFT(div(u omega))`` and ``max(|u|, |v|)`` per sample ``[B]``."""
        kx, ky, _, mask = self._spectral(omega_hat)
        u, v = self._velocity_hat(omega_hat)
        omega = torch.fft.irfft2(omega_hat, s=(self.size, self.size))
        flux_x = torch.fft.rfft2(u * omega)
        flux_y = torch.fft.rfft2(v * omega)
        n_hat = -(1j * kx * flux_x + 1j * ky * flux_y) * mask
        speed = torch.maximum(u.abs().amax(dim=(-2, -1)), v.abs().amax(dim=(-2, -1)))
        return n_hat, speed

    def energy(self, omega: Tensor) -> Tensor:
        """Kinetic energy per unit area ``E = 1/2 <|u|^2>`` (box average), ``[B]``."""
        u, v = self.velocity(omega)
        return 0.5 * (u * u + v * v).mean(dim=(-2, -1))

    def enstrophy(self, omega: Tensor) -> Tensor:
        """Enstrophy per unit area ``Z = 1/2 <omega^2>``, ``[B]``."""
        return 0.5 * (omega * omega).mean(dim=(-2, -1))

    # ------------------------------------------------------------------ integration
    def solve(
        self,
        omega0: Tensor,
        t_final: float,
        params: FlowParameters,
        *,
        dt: float | None = None,
        progress: bool = False,
        on_step: Callable[[float], None] | None = None,
    ) -> Tensor:
        """Integrate from ``omega0`` ``[B, n, n]`` over ``[0, t_final]``; returns ``[B, n, n]``.

        The initial field is first projected onto the de-aliased band.  ``dt=None`` uses
        the adaptive CFL step; a number fixes the step (the last one is shortened).
        ``progress`` shows a tqdm bar over simulated time; ``on_step(dt)`` is called after
        every step (for an outer progress bar).
        """
        if omega0.ndim != 3 or tuple(omega0.shape[1:]) != (self.size, self.size):
            raise ValueError(f"omega0 must have shape [B, {self.size}, {self.size}], got "
                             f"{tuple(omega0.shape)}.")
        t_final = check_positive(t_final, "t_final", allow_zero=True)
        if dt is not None:
            dt = check_positive(dt, "dt")
        omega_hat = torch.fft.rfft2(omega0)
        _, _, k2, mask = self._spectral(omega_hat)
        omega_hat = omega_hat * mask
        rdtype = omega0.dtype
        nu = params.viscosity.to(device=omega0.device, dtype=rdtype)
        mu = params.drag.to(device=omega0.device, dtype=rdtype)
        lin = -nu * k2 - mu                                          # [B, n, n//2+1]
        f_hat = torch.fft.rfft2(self.forcing(params, omega0)) * mask
        t = 0.0
        bar = progress_bar(t_final, "navier-stokes", enabled=progress, unit="t",
                           bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} [{elapsed}<{remaining}]")
        n_hat, speed = self._nonlinear_hat(omega_hat)
        while t < t_final * (1.0 - 1e-12):
            step = self._cfl_dt(speed) if dt is None else dt
            step = min(step, t_final - t)
            omega_hat = self._lawson_rk4(omega_hat, n_hat + f_hat, f_hat, lin, step)
            t += step
            bar.update(step)
            if on_step is not None:
                on_step(step)
            n_hat, speed = self._nonlinear_hat(omega_hat)
        bar.close()
        return torch.fft.irfft2(omega_hat, s=(self.size, self.size))

    def trajectory(
        self,
        omega0: Tensor,
        length: int,
        interval: float,
        params: FlowParameters,
        *,
        on_step: Callable[[float], None] | None = None,
    ) -> Tensor:
        """States ``omega(j * interval)`` for ``j = 0..length-1`` from ``omega0`` [B, n, n].

        Returns ``[B, length, n, n]``; each interval is one :meth:`solve` (adaptive CFL steps,
        the last shortened to land on the output time).  ``on_step(dt)`` as in :meth:`solve`.
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an integer >= 1, got {length!r}.")
        interval = check_positive(interval, "interval")
        states = [self.solve(omega0, 0.0, params)]  # projected on the de-aliased band
        for _ in range(length - 1):
            states.append(self.solve(states[-1], interval, params, on_step=on_step))
        return torch.stack(states, dim=1)

    def _cfl_dt(self, speed: Tensor) -> float:
        vmax = float(speed.max())
        if not math.isfinite(vmax):
            raise FloatingPointError("the Navier-Stokes solution blew up (non-finite velocity).")
        return min(self.dt_max, self.cfl * self.dx / max(vmax, 1e-12))

    def _lawson_rk4(self, w: Tensor, g1: Tensor, f_hat: Tensor, lin: Tensor, dt: float) -> Tensor:
        """One integrating-factor RK4 step for ``w' = L w + g(w)``, ``g = N + f``.

        ``g1 = g(w)`` is passed in (it is shared with the CFL estimate).
        """
        e_half = torch.exp(lin * (0.5 * dt))
        e_full = e_half * e_half
        g2 = self._nonlinear_hat(e_half * (w + 0.5 * dt * g1))[0] + f_hat
        g3 = self._nonlinear_hat(e_half * w + 0.5 * dt * g2)[0] + f_hat
        g4 = self._nonlinear_hat(e_full * w + dt * e_half * g3)[0] + f_hat
        return e_full * w + (dt / 6.0) * (e_full * g1 + 2.0 * e_half * (g2 + g3) + g4)


def resample(omega: Tensor, size: int) -> Tensor:
    """Spectral interpolation of ``[B, n, n]`` fields to ``[B, size, size]``.

    Keeps the Fourier modes with ``|k_x|, |k_y| < min(n, size) / 2`` (Nyquist dropped) and
    zero-pads or truncates the rest; the box average and the retained modes are preserved.
    """
    n = omega.shape[-1]
    omega_hat = torch.fft.rfft2(omega, norm="forward")
    keep = (min(n, size) - 1) // 2
    out = torch.zeros(omega.shape[:-2] + (size, size // 2 + 1), dtype=omega_hat.dtype,
                      device=omega.device)
    out[..., : keep + 1, : keep + 1] = omega_hat[..., : keep + 1, : keep + 1]
    if keep > 0:
        out[..., -keep:, : keep + 1] = omega_hat[..., -keep:, : keep + 1]
    return torch.fft.irfft2(out, s=(size, size), norm="forward")
