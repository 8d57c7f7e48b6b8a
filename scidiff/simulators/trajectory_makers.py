"""Registry entries of the trajectory simulators: ``ar1``, ``lorenz96``, ``navier_stokes_trajectory``.

Each returns an :class:`xarray.Dataset` laid out like the snapshot simulators of
:mod:`scidiff.simulators.registry`, with one more dim: the data variables have dims
``("sample", "time", *spatial)``, and the coordinate ``time`` holds the output times
``j * interval`` (``j = 0..states-1``, measured from the end of the spin-up) with ``units``
and ``long_name``.  ``states`` is the number of recorded states per trajectory ``L``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from scidiff.simulators._checks import check_dims, check_positive, check_size, make_generator
from scidiff.simulators.ar1 import AR1Field
from scidiff.simulators.lorenz96 import Lorenz96
from scidiff.simulators.navier_stokes import NavierStokes2D, resample
from scidiff.simulators.registry import (
    Range, _amplitude_for_variance, _bar, _dataset, _draw, _dtype, _make_navier_stokes,
    _per_sample, _spatial_coords,
)

__all__ = ["TRAJECTORY_MAKERS", "time_coordinate"]

_AXES = ("z", "y", "x")


def time_coordinate(states: int, interval: float, units: str) -> xr.Variable:
    """The ``time`` coordinate ``j * interval``, ``j = 0..states-1`` (float64) with its units."""
    values = np.arange(states, dtype=np.float64) * interval
    return xr.Variable(("time",), values, {"units": units, "long_name": "time since the first state"})


def _trajectory_field(values: Tensor, dims: int, units: str, long_name: str) -> xr.Variable:
    return xr.Variable(("sample", "time", *_AXES[3 - dims:]), values.cpu().numpy(),
                       {"units": units, "long_name": long_name})


def _make_ar1(n: int, size: int, seed: int, progress: bool, *, dims: int = 1, states: int = 32,
              slope: float = 2.0, variance: float = 1.0, tau: float = 1.0, kappa: float = 0.0,
              interval: float = 0.1, length: float = 1.0, dtype: str = "float32") -> xr.Dataset:
    """Stationary AR(1)-per-Fourier-mode trajectories (:class:`AR1Field`), exact in law.

    The amplitude is chosen so the pointwise variance is ``variance``; the chain starts in
    its stationary law, so there is no spin-up.
    """
    dims = check_dims(dims)
    states = check_size(states, name="states", minimum=1)
    variance = check_positive(variance, "variance")
    amplitude = float(_amplitude_for_variance(variance, torch.tensor([float(slope)], dtype=torch.float64),
                                              size, dims)[0])
    sim = AR1Field(size, dims, slope=slope, amplitude=amplitude, length=length, tau=tau, kappa=kappa,
                   dt=interval)
    torch_dtype = _dtype(dtype)
    gen = make_generator(None, seed)
    out = []
    with _bar(progress, n, "ar1", "trajectory") as bar:
        for start in range(0, n, 256):
            m = min(n, start + 256) - start
            out.append(sim.sample(m, states, generator=gen))
            bar.update(m)
    x = torch.cat(out)
    options = dict(dims=dims, states=states, slope=float(slope), variance=variance, tau=sim.tau,
                   kappa=sim.kappa, interval=sim.dt, length=float(length), dtype=dtype)
    ds = _dataset(
        "ar1", n, seed, options,
        {"field": _trajectory_field(x.to(torch_dtype), dims, "1", "AR(1) Gaussian random field")},
        {"time": time_coordinate(states, sim.dt, "model time unit"),
         **_spatial_coords(size, dims, length, units="box length")},
        "Stationary linear-Gaussian trajectories: every Fourier mode of a periodic power-law "
        "Gaussian random field is an AR(1) process x_{k+1} = a_m x_k + sqrt(1 - a_m^2) sqrt(lambda_m) w, "
        "a_m = exp(-interval (1/tau + kappa |k|^2)); exact scores and Kalman smoother via "
        "scidiff.simulators.AR1Field.",
    )
    ds.attrs["amplitude"] = amplitude
    return ds


def _make_lorenz96(n: int, size: int, seed: int, progress: bool, *, states: int = 32,
                   forcing: Range = 8.0, dt: float = 0.01, interval: float = 0.05,
                   spinup: float = 10.0, dtype: str = "float32") -> xr.Dataset:
    """Lorenz-96 trajectories of ``size`` variables after ``spinup`` time units from rest + noise."""
    states = check_size(states, name="states", minimum=1)
    interval = check_positive(interval, "interval")
    spinup = check_positive(spinup, "spinup", allow_zero=True)
    torch_dtype = _dtype(dtype)
    gen = make_generator(None, seed)
    f = _draw(forcing, "forcing", n, gen)
    model = Lorenz96(size, forcing=float(f[0]), dt=dt)
    x0 = model.initial_state(n, generator=gen)
    x0 = f[:, None] + (x0 - model.forcing)
    with _bar(progress, n * (spinup + (states - 1) * interval), "lorenz96", "sample*t") as bar:
        def tick(h: float) -> None:
            bar.update(n * h)

        x = model.solve(x0, spinup, f, on_step=tick)
        traj = model.trajectory(x, states, interval, f, on_step=tick)
    options = dict(states=states, forcing=forcing, dt=model.dt, interval=interval, spinup=spinup,
                   dtype=dtype)
    site = xr.Variable(("x",), np.arange(size), {"units": "1", "long_name": "site index i (periodic)"})
    return _dataset(
        "lorenz96", n, seed, options,
        {"state": xr.Variable(("sample", "time", "x"), traj.to(torch_dtype).numpy(),
                          {"units": "1", "long_name": "Lorenz-96 variable x_i"}),
         "forcing": _per_sample(f, "1", "forcing F")},
        {"time": time_coordinate(states, interval, "model time unit (about 5 days)"), "x": site},
        "Lorenz-96 dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F on a ring, RK4 with step dt, "
        "recorded every interval after a spin-up from x_i = F + 0.01 noise.",
    )


def _make_navier_stokes_trajectory(
    n: int, size: int, seed: int, progress: bool, *, states: int = 32, interval: float = 0.5,
    reynolds: Range = 1000.0, forcing_amplitude: Range = 1.0, forcing_wavenumber: Range = 4,
    drag: Range = 0.1, spinup_time: float = 10.0, spinup_size: int = 32, relax_time: float = 1.0,
    solver_size: int | None = None, cfl: float = 1.0, batch_size: int = 250, dtype: str = "float32",
) -> xr.Dataset:
    """Kolmogorov-flow vorticity trajectories: the ``navier_stokes`` spin-up, then ``states``
    states every ``interval`` time units, solved at ``solver_size`` and resampled to ``size``."""
    states = check_size(states, name="states", minimum=1)
    interval = check_positive(interval, "interval")
    start = _make_navier_stokes(
        n, size, seed, progress, reynolds=reynolds, forcing_amplitude=forcing_amplitude,
        forcing_wavenumber=forcing_wavenumber, drag=drag, spinup_time=spinup_time,
        spinup_size=spinup_size, relax_time=relax_time, solver_size=solver_size, cfl=cfl,
        batch_size=batch_size, dtype="float64")
    solver_size = size if solver_size is None else solver_size
    solver = NavierStokes2D(solver_size, cfl=cfl)
    omega0 = torch.from_numpy(start["vorticity"].values)
    per = {k: torch.from_numpy(start[k].values) for k in
           ("reynolds", "forcing_amplitude", "forcing_wavenumber", "drag")}
    torch_dtype = _dtype(dtype)
    out = []
    with _bar(progress, n * (states - 1) * interval, "navier_stokes_trajectory", "sample*t") as bar:
        for lo in range(0, n, batch_size):
            sl = slice(lo, min(n, lo + batch_size))
            m = sl.stop - sl.start

            def tick(h: float, m: int = m) -> None:
                bar.update(m * h)

            params = solver.parameters(m, reynolds=per["reynolds"][sl], drag=per["drag"][sl],
                                       forcing_amplitude=per["forcing_amplitude"][sl],
                                       forcing_wavenumber=per["forcing_wavenumber"][sl])
            w = resample(omega0[sl].to(torch_dtype), solver_size)
            traj = solver.trajectory(w, states, interval, params, on_step=tick)
            out.append(resample(traj.flatten(0, 1), size).reshape(m, states, size, size))
    omega = torch.cat(out)
    options = json.loads(start.attrs["parameters"])
    options.update(states=states, interval=interval, dtype=dtype)
    data = {"vorticity": _trajectory_field(omega.to(torch_dtype), 2, "1/time", "vorticity omega")}
    data.update({k: start[k].variable for k in per})
    coords = {"time": time_coordinate(states, interval, "time (forcing units; box [0, 2 pi))"),
              **_spatial_coords(size, 2, 2.0 * math.pi, units="length (box [0, 2 pi))")}
    return _dataset(
        "navier_stokes_trajectory", n, seed, options, data, coords,
        "2-D incompressible Navier-Stokes, vorticity form, Kolmogorov forcing "
        "f = -A k_f cos(k_f y), drag mu, viscosity 1/Re; statistically steady trajectories "
        "recorded every interval after the navier_stokes spin-up.",
    )


TRAJECTORY_MAKERS = {
    "ar1": _make_ar1,
    "lorenz96": _make_lorenz96,
    "navier_stokes_trajectory": _make_navier_stokes_trajectory,
}
