"""Registry of the built-in simulators: ``available()`` and ``make(name, n, ...)``.

``make`` returns an :class:`xarray.Dataset` laid out as

* one data variable per field with dims ``("sample", "x")`` (1-D), ``("sample", "y", "x")``
  (2-D) or ``("sample", "z", "y", "x")`` (3-D);
* coordinates ``sample`` and the grid positions ``x``, ``y`` (and ``z``) in physical
  units, each with ``units`` and ``long_name`` attributes;
* per-sample parameters as data variables along ``"sample"`` (``slope``, ``reynolds``,
  ``F``, ``k``, ...) with ``units`` and ``long_name``;
* global attributes ``simulator``, ``parameters`` (JSON of every option used), ``seed``
  and ``scidiff_version``.

A parameter given as a number is the same for every sample; one given as a pair
``(low, high)`` is drawn per sample (uniformly, or log-uniformly where the option says
so) from the seeded generator.  The datasets write with
``ds.to_netcdf(path, engine="h5netcdf")`` and read back unchanged.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from scidiff._progress import progress_bar
from scidiff._version import __version__
from scidiff.simulators._checks import check_dims, check_positive, check_size, make_generator
from scidiff.simulators._fourier import grid_coordinates, wavenumber_norm
from scidiff.simulators.gray_scott import GrayScott, seeded_initial_state
from scidiff.simulators.grf import GaussianRandomField
from scidiff.simulators.heat import HeatEquation
from scidiff.simulators.navier_stokes import NavierStokes2D, resample

Range = float | tuple[float, float]
_CHUNK = 256  # fields drawn per batch by the Gaussian generators
_AXES = ("z", "y", "x")


# ---------------------------------------------------------------------- helpers
def _draw(value: Range, name: str, n: int, generator: torch.Generator, *,
          log: bool = False, positive: bool = False, integer: bool = False) -> Tensor:
    """Per-sample values ``[n]`` (float64): a constant, or uniform on ``[low, high]``.

    ``log=True`` draws ``log(value)`` uniformly; ``integer=True`` draws integers in
    ``[low, high]`` inclusive.  A bad value raises ValueError naming ``name``.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
        lo, hi = (_number(v, name) for v in value)
        if lo > hi:
            raise ValueError(f"{name} range must have low <= high, got {value!r}.")
    else:
        lo = hi = _number(value, name)
    if positive and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    if integer and (lo != round(lo) or hi != round(hi)):
        raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}.")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if integer:
        return torch.floor(lo + u * (hi - lo + 1.0)).clamp(max=hi)
    if log:
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return v


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}.")
    return table[name]


def _spatial_coords(size: int, dims: int, length: float, *, units: str) -> dict[str, xr.Variable]:
    axes = _AXES[3 - dims:]
    pos = grid_coordinates(size, length).numpy()
    return {a: xr.Variable((a,), pos, {"units": units, "long_name": f"{a} position"})
            for a in axes}


def _field(values: Tensor, dims: int, units: str, long_name: str) -> xr.Variable:
    return xr.Variable(("sample", *_AXES[3 - dims:]), values.cpu().numpy(),
                       {"units": units, "long_name": long_name})


def _per_sample(values: Tensor, units: str, long_name: str) -> xr.Variable:
    return xr.Variable(("sample",), values.cpu().numpy().astype(np.float64),
                       {"units": units, "long_name": long_name})


def _dataset(name: str, n: int, seed: int, options: dict[str, Any],
             data: dict[str, xr.Variable], coords: dict[str, xr.Variable],
             description: str) -> xr.Dataset:
    coords = {"sample": xr.Variable(("sample",), np.arange(n),
                                    {"long_name": "sample index"}), **coords}
    attrs = {
        "simulator": name,
        "description": description,
        "parameters": json.dumps(options, sort_keys=True),
        "seed": int(seed),
        "scidiff_version": __version__,
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _bar(progress: bool, total: float, desc: str, unit: str) -> Any:
    return progress_bar(total, desc, enabled=progress, unit=unit)


def _amplitude_for_variance(variance: float, slope: Tensor, size: int, dims: int) -> Tensor:
    """``amplitude`` making the pointwise variance ``(1/D) sum_k lambda_k`` equal ``variance``.

    With ``P(0) = P(1) = amplitude`` this is ``variance D / (1 + sum_{k != 0} |k|^(-slope))``.
    """
    k = wavenumber_norm(size, dims, half=False).flatten()
    k = torch.where(k > 0, k, torch.ones_like(k))           # the k = 0 mode counts as |k| = 1
    total = (k[None, :] ** (-slope[:, None])).sum(-1)
    return variance * size**dims / total


# ---------------------------------------------------------------------- simulators
def _gaussian_fields(n: int, size: int, dims: int, slope: Tensor, amplitude: Tensor,
                     p0: float | None, gen: torch.Generator, progress: bool, desc: str) -> Tensor:
    grf = GaussianRandomField(size, dims, p0=p0)
    out = []
    with _bar(progress, n, desc, "field") as bar:
        for start in range(0, n, _CHUNK):
            sl = slice(start, min(n, start + _CHUNK))
            m = sl.stop - sl.start
            out.append(grf.sample(m, slope=slope[sl], amplitude=amplitude[sl], generator=gen))
            bar.update(m)
    return torch.cat(out)


def _make_grf(n: int, size: int, seed: int, progress: bool, *, dims: int = 2,
              slope: Range = (2.0, 4.0), variance: float = 1.0, p0: float | None = None,
              length: float = 1.0, dtype: str = "float32") -> xr.Dataset:
    """Gaussian random fields, ``P(k) = amplitude |k|^(-slope)``, slope drawn per sample.

    ``amplitude`` is set per sample so that the pointwise variance is ``variance`` (with
    ``p0=None``: ``P(0) = amplitude``); it is stored, so ``GaussianRandomField(size, dims,
    slope=slope_i, amplitude=amplitude_i, p0=p0)`` gives the exact density of field ``i``.
    """
    dims = check_dims(dims)
    variance = check_positive(variance, "variance")
    length = check_positive(length, "length")
    if p0 is not None:
        p0 = check_positive(p0, "p0")
    torch_dtype = _dtype(dtype)
    gen = make_generator(None, seed)
    slopes = _draw(slope, "slope", n, gen)
    amplitude = _amplitude_for_variance(variance, slopes, size, dims)
    x = _gaussian_fields(n, size, dims, slopes, amplitude, p0, gen, progress, "grf")
    options = dict(dims=dims, slope=slope, variance=variance, p0=p0, length=length, dtype=dtype)
    return _dataset(
        "grf", n, seed, options,
        {"field": _field(x.to(torch_dtype), dims, "1", "Gaussian random field"),
         "slope": _per_sample(slopes, "1", "spectral slope s of P(k) = A |k|^-s"),
         "amplitude": _per_sample(amplitude, "1", "spectral amplitude A = P(k=1)")},
        _spatial_coords(size, dims, length, units="box length"),
        "Zero-mean periodic Gaussian random fields with power-law spectrum; exact "
        "log-density via scidiff.simulators.GaussianRandomField.",
    )


def _make_lognormal(n: int, size: int, seed: int, progress: bool, *, dims: int = 2,
                    slope: Range = (2.0, 4.0), variance: float = 1.0,
                    p0: float | None = None, mu: float = 0.0, length: float = 1.0,
                    dtype: str = "float32") -> xr.Dataset:
    """Lognormal fields ``exp(mu + g)``, ``g`` as in ``_make_grf``."""
    mu = _number(mu, "mu")
    ds = _make_grf(n, size, seed, progress, dims=dims, slope=slope, variance=variance, p0=p0,
                   length=length, dtype="float64")
    np_dtype = np.float32 if _dtype(dtype) is torch.float32 else np.float64
    field = np.exp(mu + ds["field"].values).astype(np_dtype)
    options = dict(dims=dims, slope=slope, variance=variance, p0=p0, mu=mu, length=length,
                   dtype=dtype)
    out = ds.assign(field=(ds["field"].dims, field,
                           {"units": "1", "long_name": "lognormal field exp(mu + g)"}))
    out.attrs.update(simulator="lognormal", parameters=json.dumps(options, sort_keys=True),
                     description="Lognormal fields exp(mu + g) of periodic power-law Gaussian "
                     "random fields g; exact log-density via scidiff.simulators.LognormalField.")
    out["mu"] = _per_sample(torch.full((n,), mu), "1", "mean shift mu of log(field)")
    return out


def _make_heat(n: int, size: int, seed: int, progress: bool, *, dims: int = 2,
               slope: Range = (2.0, 4.0), variance: float = 1.0, kappa: float = 0.01,
               tau: float = 0.1, length: float = 1.0, dtype: str = "float32") -> xr.Dataset:
    """Pairs ``(u0, u(tau))`` of the periodic heat equation, ``u0`` a GRF drawn as in grf."""
    dims = check_dims(dims)
    variance = check_positive(variance, "variance")
    length = check_positive(length, "length")
    heat = HeatEquation(size, dims, kappa=kappa, tau=tau,
                        grf=GaussianRandomField(size, dims, length=length))
    torch_dtype = _dtype(dtype)
    gen = make_generator(None, seed)
    slopes = _draw(slope, "slope", n, gen)
    amplitude = _amplitude_for_variance(variance, slopes, size, dims)
    u0 = _gaussian_fields(n, size, dims, slopes, amplitude, None, gen, progress, "heat")
    u_tau = heat.forward(u0)
    options = dict(dims=dims, slope=slope, variance=variance, kappa=heat.kappa, tau=heat.tau,
                   length=length, dtype=dtype)
    return _dataset(
        "heat", n, seed, options,
        {"u0": _field(u0.to(torch_dtype), dims, "1", "initial temperature u(0)"),
         "u_tau": _field(u_tau.to(torch_dtype), dims, "1", "temperature u(tau)"),
         "slope": _per_sample(slopes, "1", "spectral slope s of the prior of u(0)"),
         "amplitude": _per_sample(amplitude, "1", "spectral amplitude A = P(k=1) of u(0)")},
        _spatial_coords(size, dims, length, units="box length"),
        "Periodic heat equation du/dt = kappa Laplacian(u); u(tau)_k = exp(-kappa |k|^2 tau) "
        "u(0)_k per Fourier mode; exact posterior via scidiff.simulators.HeatEquation.",
    )


def _make_navier_stokes(
    n: int, size: int, seed: int, progress: bool, *,
    reynolds: Range = (100.0, 1000.0), forcing_amplitude: Range = 1.0,
    forcing_wavenumber: Range = 4, drag: Range = 0.1, spinup_time: float = 10.0,
    spinup_size: int = 32, relax_time: float = 1.0, solver_size: int | None = None,
    cfl: float = 1.0, batch_size: int = 250, dtype: str = "float32",
) -> xr.Dataset:
    """Kolmogorov-forced 2-D turbulence: vorticity snapshots in statistical steady state.

    Each sample starts from its own random vorticity (a smooth Gaussian field of rms 3),
    is spun up for ``spinup_time`` on a ``spinup_size`` grid, spectrally interpolated to
    ``solver_size`` (default ``size``), run for ``relax_time`` more (to refill the small
    scales) and resampled to ``size``.  ``reynolds`` is drawn log-uniformly.
    """
    spinup_size = check_size(spinup_size, name="spinup_size", minimum=8)
    solver_size = size if solver_size is None else check_size(solver_size, name="solver_size",
                                                              minimum=8)
    spinup_time = check_positive(spinup_time, "spinup_time", allow_zero=True)
    relax_time = check_positive(relax_time, "relax_time", allow_zero=True)
    batch_size = check_size(batch_size, name="batch_size", minimum=1)
    torch_dtype = _dtype(dtype)
    gen = make_generator(None, seed)
    re = _draw(reynolds, "reynolds", n, gen, log=True, positive=True)
    amp = _draw(forcing_amplitude, "forcing_amplitude", n, gen)
    kf = _draw(forcing_wavenumber, "forcing_wavenumber", n, gen, integer=True)
    mu = _draw(drag, "drag", n, gen)
    coarse = NavierStokes2D(spinup_size, cfl=cfl)
    fine = NavierStokes2D(solver_size, cfl=cfl)
    for solver in (coarse, fine):
        solver.parameters(n, reynolds=re, drag=mu, forcing_amplitude=amp, forcing_wavenumber=kf)
    init = GaussianRandomField(spinup_size, 2, slope=5.0)
    out = []
    total = n * (spinup_time + relax_time)
    with _bar(progress, total, "navier_stokes", "sample*t") as bar:
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            m = sl.stop - sl.start
            w0 = init.sample(m, generator=gen)
            w0 = w0 - w0.mean(dim=(-2, -1), keepdim=True)
            w0 = (3.0 * w0 / w0.std(dim=(-2, -1), keepdim=True)).to(torch_dtype)

            def tick(dt: float, m: int = m) -> None:
                bar.update(m * dt)

            w = w0
            for solver, t_run in ((coarse, spinup_time), (fine, relax_time)):
                w = resample(w, solver.size)
                params = solver.parameters(m, reynolds=re[sl], drag=mu[sl],
                                           forcing_amplitude=amp[sl], forcing_wavenumber=kf[sl])
                if t_run > 0:
                    w = solver.solve(w, t_run, params, on_step=tick)
            out.append(resample(w, size))
    omega = torch.cat(out)
    options = dict(reynolds=reynolds, forcing_amplitude=forcing_amplitude,
                   forcing_wavenumber=forcing_wavenumber, drag=drag, spinup_time=spinup_time,
                   spinup_size=spinup_size, relax_time=relax_time, solver_size=solver_size,
                   cfl=cfl, batch_size=batch_size, dtype=dtype)
    return _dataset(
        "navier_stokes", n, seed, options,
        {"vorticity": _field(omega.to(torch_dtype), 2, "1/time", "vorticity omega"),
         "reynolds": _per_sample(re, "1", "Reynolds number Re = 1/nu"),
         "forcing_amplitude": _per_sample(amp, "length/time^2",
                                          "Kolmogorov forcing amplitude A"),
         "forcing_wavenumber": _per_sample(kf, "1", "Kolmogorov forcing wavenumber k_f"),
         "drag": _per_sample(mu, "1/time", "linear drag coefficient mu")},
        _spatial_coords(size, 2, 2.0 * math.pi, units="length (box [0, 2 pi))"),
        "2-D incompressible Navier-Stokes, vorticity form, Kolmogorov forcing "
        "f = -A k_f cos(k_f y) (curl of A sin(k_f y) e_x), drag mu, viscosity 1/Re; "
        "pseudo-spectral with 2/3 de-aliasing, integrating-factor RK4.",
    )


def _make_gray_scott(
    n: int, size: int, seed: int, progress: bool, *, F: Range = (0.025, 0.040),
    k: Range = (0.055, 0.062), diffusion_u: float = 0.16, diffusion_v: float = 0.08,
    length: float = 64.0, time: float = 1000.0, dt: float = 2.0, seeds: int = 8,
    patch_size: float = 4.0, noise: float = 0.01, batch_size: int = 250,
    dtype: str = "float32",
) -> xr.Dataset:
    """Gray-Scott patterns at ``time`` from a seeded perturbed ``(1, 0)`` state, F and k per sample."""
    batch_size = check_size(batch_size, name="batch_size", minimum=1)
    seeds = check_size(seeds, name="seeds", minimum=0)
    patch_size = check_positive(patch_size, "patch_size")
    noise = check_positive(noise, "noise", allow_zero=True)
    time = check_positive(time, "time", allow_zero=True)
    solver = GrayScott(size, length=length, diffusion_u=diffusion_u, diffusion_v=diffusion_v,
                       dt=dt)
    torch_dtype = _dtype(dtype)
    gen = make_generator(None, seed)
    feed = _draw(F, "F", n, gen)
    kill = _draw(k, "k", n, gen)
    solver.rates(n, feed, kill)
    patch = max(1, int(round(patch_size * size / solver.length)))
    steps = int(round(time / solver.dt))
    us, vs = [], []
    with _bar(progress, n * steps * solver.dt, "gray_scott", "sample*t") as bar:
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            m = sl.stop - sl.start
            u0, v0 = seeded_initial_state(m, size, seeds=seeds, patch=patch, noise=noise,
                                          generator=gen, dtype=torch_dtype)

            def tick(dt_: float, m: int = m) -> None:
                bar.update(m * dt_)

            u, v = solver.solve(u0, v0, time, feed=feed[sl], kill=kill[sl], on_step=tick)
            us.append(u)
            vs.append(v)
    options = dict(F=F, k=k, diffusion_u=solver.diffusion_u, diffusion_v=solver.diffusion_v,
                   length=solver.length, time=time, dt=solver.dt, seeds=seeds,
                   patch_size=patch_size, noise=noise, batch_size=batch_size, dtype=dtype)
    return _dataset(
        "gray_scott", n, seed, options,
        {"u": _field(torch.cat(us).to(torch_dtype), 2, "1", "concentration u"),
         "v": _field(torch.cat(vs).to(torch_dtype), 2, "1", "concentration v"),
         "F": _per_sample(feed, "1/time", "feed rate F"),
         "k": _per_sample(kill, "1/time", "kill rate k")},
        _spatial_coords(size, 2, solver.length, units="length"),
        "Gray-Scott reaction-diffusion du/dt = Du Lap u - u v^2 + F(1-u), dv/dt = Dv Lap v + "
        "u v^2 - (F+k) v, periodic, ETDRK2 pseudo-spectral.",
    )


_REGISTRY: dict[str, Callable[..., xr.Dataset]] = {
    "grf": _make_grf,
    "lognormal": _make_lognormal,
    "heat": _make_heat,
    "navier_stokes": _make_navier_stokes,
    "gray_scott": _make_gray_scott,
}


def available() -> list[str]:
    """Names accepted by :func:`make`, sorted."""
    return sorted(_REGISTRY)


def options(name: str) -> dict[str, Any]:
    """The keyword options of simulator ``name`` and their defaults."""
    fn = _lookup(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make(name: str, n: int, *, size: int = 64, seed: int = 0, progress: bool = True,
         **params: Any) -> xr.Dataset:
    """Generate ``n`` fields of side ``size`` with simulator ``name`` as an xarray Dataset.

    ``params`` are the simulator's options (see :func:`options` and ``datasets/<name>.md``);
    a pair ``(low, high)`` draws that parameter per sample.  Raises ValueError for an
    unknown simulator, an unknown option or a bad value, naming it.
    """
    fn = _lookup(name)
    n = check_size(n, name="n", minimum=1)
    size = check_size(size, name="size", minimum=4)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    accepted = options(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for simulator {name!r}; accepted: "
                         f"{sorted(accepted)}.")
    return fn(n, size, seed, progress, **params)


def _lookup(name: str) -> Callable[..., xr.Dataset]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown simulator {name!r}; available: {available()}.")
    return _REGISTRY[name]



def register(makers: dict[str, Callable[..., xr.Dataset]]) -> None:
    """Add named generators to :func:`make` (the package adds the trajectory simulators of
    ``trajectory_makers``, which build on the helpers here, so this module need not import them)."""
    _REGISTRY.update(makers)
