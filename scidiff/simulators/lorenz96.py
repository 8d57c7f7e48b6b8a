r"""The Lorenz-96 system: a 1-D periodic chaotic model, the standard of data assimilation.

For ``N`` variables on a ring (indices mod ``N``),

    dx_i / dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F.

The advection term ``N_i(x) = (x_{i+1} - x_{i-2}) x_{i-1}`` conserves the energy
``E = 1/2 sum_i x_i^2`` exactly (``sum_i x_i N_i(x) = 0``, the terms telescope), so
``dE/dt = -2 E + F sum_i x_i``: forcing and damping balance on the attractor.  For ``F = 8``
and ``N = 40`` the motion is chaotic (leading Lyapunov exponent about 1.7 per time unit) with
per-variable climatological mean about 2.3 and standard deviation about 3.6.

Time stepping: classical fourth-order Runge-Kutta with a fixed step ``dt`` (default 0.01);
trajectories are recorded every ``interval`` time units after a spin-up from a perturbed rest
state ``x_i = F + 0.01 noise``.  The model's time unit corresponds to about 5 days of
atmospheric time (Lorenz 1996), so ``interval = 0.05`` is the usual "6 hours".

Shapes: states are ``[B, N]``; trajectories ``[B, L, N]``.  The dtype and device are those
of the initial state.

Reference: E. N. Lorenz, "Predictability -- a problem partly solved", ECMWF Seminar on
Predictability (1996); Lorenz & Emanuel, J. Atmos. Sci. 55 (1998).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scidiff.simulators._checks import check_finite, check_positive, check_size, make_generator

__all__ = ["Lorenz96"]


class Lorenz96:
    """Lorenz-96 with ``N`` variables and forcing ``F``, integrated by RK4 with step ``dt``.

    Args:
        size: number of variables ``N`` (>= 4).
        forcing: ``F`` (a number, or a tensor ``[B]`` given to the methods; 8 is chaotic).
        dt: RK4 step in model time units.
    """

    def __init__(self, size: int = 40, *, forcing: float = 8.0, dt: float = 0.01) -> None:
        self.size = check_size(size, minimum=4)
        self.forcing = check_finite(forcing, "forcing")
        self.dt = check_positive(dt, "dt")

    def _forcing(self, x: Tensor, forcing: float | Tensor | None) -> Tensor | float:
        if forcing is None:
            return self.forcing
        f = torch.as_tensor(forcing, dtype=x.dtype, device=x.device)
        if f.ndim == 1:
            if f.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"forcing must be a number or a tensor [{x.shape[0]}], got shape "
                                 f"{tuple(f.shape)}.")
            f = f[:, None]
        return f

    def advection(self, x: Tensor) -> Tensor:
        """``N_i(x) = (x_{i+1} - x_{i-2}) x_{i-1}``, shape of ``x`` [..., N]."""
        return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1)

    def tendency(self, x: Tensor, forcing: float | Tensor | None = None) -> Tensor:
        """``dx/dt = N(x) - x + F``, shape of ``x`` [B, N]."""
        return self.advection(x) - x + self._forcing(x, forcing)

    def energy(self, x: Tensor) -> Tensor:
        """``E = 1/2 sum_i x_i^2`` over the last axis."""
        return 0.5 * (x * x).sum(-1)

    def step(self, x: Tensor, forcing: float | Tensor | None = None, dt: float | None = None) -> Tensor:
        """One RK4 step of length ``dt`` (default ``self.dt``)."""
        h = self.dt if dt is None else dt
        f = self._forcing(x, forcing)
        k1 = self.advection(x) - x + f
        k2 = self.tendency(x + 0.5 * h * k1, forcing)
        k3 = self.tendency(x + 0.5 * h * k2, forcing)
        k4 = self.tendency(x + h * k3, forcing)
        return x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)

    def solve(self, x0: Tensor, time: float, forcing: float | Tensor | None = None, *,
              on_step: Callable[[float], None] | None = None) -> Tensor:
        """Integrate ``x0`` [B, N] over ``time`` (a whole number of RK4 steps, the last shortened)."""
        self._check_state(x0)
        time = check_positive(time, "time", allow_zero=True)
        x, t = x0, 0.0
        while t < time * (1.0 - 1e-12):
            h = min(self.dt, time - t)
            x = self.step(x, forcing, h)
            t += h
            if on_step is not None:
                on_step(h)
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError("the Lorenz-96 solution blew up (non-finite state); reduce dt.")
        return x

    def initial_state(self, n: int, *, generator: torch.Generator | None = None, seed: int | None = None,
                      dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """``x_i = F + 0.01 z_i``, ``z ~ N(0, 1)``: the rest state, perturbed; ``[n, N]``."""
        gen = make_generator(generator, seed, device)
        z = torch.randn((n, self.size), generator=gen, dtype=dtype, device=device)
        return self.forcing + 0.01 * z

    def trajectory(self, x0: Tensor, length: int, interval: float,
                   forcing: float | Tensor | None = None, *,
                   on_step: Callable[[float], None] | None = None) -> Tensor:
        """States ``x(j * interval)`` for ``j = 0..length-1`` from ``x0`` [B, N]; ``[B, length, N]``."""
        self._check_state(x0)
        check_size(length, name="length", minimum=1)
        interval = check_positive(interval, "interval")
        states = [x0]
        for _ in range(length - 1):
            states.append(self.solve(states[-1], interval, forcing, on_step=on_step))
        return torch.stack(states, dim=1)

    def _check_state(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.size:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"the Lorenz-96 state must have shape [B, {self.size}], got {shape}.")

    def __repr__(self) -> str:
        return f"Lorenz96(size={self.size}, forcing={self.forcing}, dt={self.dt})"
