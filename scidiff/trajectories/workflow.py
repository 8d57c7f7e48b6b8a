r"""The file-to-file path of trajectory models: train a window model, sample, assimilate.

A *window run* is a folder written by :func:`train_window_model`: the trainer's checkpoints
(``checkpoints/``, ``latest``) of a UNet over ``W`` states stacked as channels, plus
``trajectory.json`` with the window, the variables and units, the per-channel standardisation
``z = (x - mean_c) / std_c`` the model works in, the spatial coordinates and the time axis
(interval and units of the training trajectories).

* :func:`sample_window_run` -- trajectories of any length ``L >= W`` drawn jointly from the
  composed score :class:`~scidiff.trajectories.MarkovBlanketScore`;
* :func:`assimilate_window_run` -- posterior trajectories given an observation file:
  a netCDF file with dim ``obs`` and variables ``value``, ``time``, one position variable per
  spatial dim (named like the run's coordinates, in their units, on grid points), and the
  noise standard deviation ``noise_std`` (a variable along ``obs``, or an attribute of
  ``value`` or of the file); optionally ``variable`` (names) when the run has several.  The
  observations become one :class:`~scidiff.guidance.operators.SparseSensors` on the whole
  trajectory ``[L, C, *spatial]`` and guide the composed score through
  :class:`~scidiff.trajectories.MMPSGuidance` (default) or :class:`~scidiff.DPSGuidance`.
  States after the last observation are forecasts from the posterior.

Outputs are :class:`xarray.Dataset` s laid out as the training file (dims
``(sample, time, *spatial)``, the time coordinate ``start + j * interval`` with the training
time units), with provenance attributes.
"""

from __future__ import annotations

import json
import math
import time as _time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff.trajectories.io import open_trajectories, trajectories_to_dataset
from scidiff.trajectories.score import MarkovBlanketScore, StackedWindowScore
from scidiff.trajectories.windows import check_window

__all__ = ["WindowRunInfo", "WindowRun", "train_window_model", "load_window_run", "sample_window_run",
           "read_observations", "assimilate_window_run", "TRAJECTORY_FILE"]

TRAJECTORY_FILE = "trajectory.json"


@dataclass
class WindowRunInfo:
    """What ``trajectory.json`` holds (see the module docstring)."""

    window: int
    variables: list[str]
    units: list[str]
    mean: list[float]
    std: list[float]
    state_shape: list[int]
    time_units: str
    interval: float
    spatial: dict[str, list[float]]
    spatial_units: dict[str, str] = field(default_factory=dict)
    time_dim: str = "time"
    source: str = ""
    layout: str = "channels"


@dataclass
class WindowRun:
    """A loaded window run: the :class:`~scidiff.ScoreModel` (EMA weights) and its :class:`WindowRunInfo`."""

    model: Any
    info: WindowRunInfo
    path: Path

    def trajectory_score(self) -> MarkovBlanketScore:
        """The composed score of standardised trajectories ``[B, L, C, *spatial]``."""
        return MarkovBlanketScore(StackedWindowScore(self.model.score), self.info.window)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, 1, len(self.info.mean)) + (1,) * (len(self.info.state_shape) - 1)
        mean = torch.tensor(self.info.mean, dtype=like.dtype, device=like.device).reshape(shape)
        std = torch.tensor(self.info.std, dtype=like.dtype, device=like.device).reshape(shape)
        return mean, std

    def to_data(self, z: Tensor) -> Tensor:
        """Standardised ``z`` back to data units, ``x = mean_c + std_c z``."""
        mean, std = self._stats(z)
        return mean + std * z

    def dataset(self, x: Tensor, start: float, attrs: dict[str, Any]):
        """Trajectories ``x`` [N, L, C, *spatial] (data units) as a Dataset with the run's layout."""
        length = x.shape[1]
        info = self.info
        return trajectories_to_dataset(
            x.float(), time=start + info.interval * np.arange(length), time_units=info.time_units,
            variables=info.variables, units=info.units, spatial={k: np.asarray(v) for k, v in info.spatial.items()},
            spatial_units=info.spatial_units, time_dim=info.time_dim, attrs=attrs)


def train_window_model(
    path: str | PathLike[str],
    variables: str | list[str],
    out: str | PathLike[str],
    *,
    window: int = 5,
    time_dim: str = "time",
    sample_dim: str | None = None,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2),
    periodic: bool = True,
    prediction: str = "v",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Train a window score model on all windows of ``W`` states of the trajectories in ``path``.

    The states are standardised per channel (mean and std over samples, times and space),
    stacked as channels (``[W C, *spatial]``) and fed to :func:`scidiff.train` with a
    ``UNet(W C, dims)``; checkpoints go to ``out``, and ``out/trajectory.json`` records the rest.
    Returns ``out``.

    ``prediction`` is what the network outputs (``"v"``, ``"x0"`` or ``"eps"``).  The default ``"v"``
    matters for assimilation: MMPS and DPS read ``x0-hat = (x_t - sigma_t eps-hat) / alpha_t``, which
    for an eps-network multiplies its error by ``sigma_t / alpha_t`` (150 at t = 1 for the default
    VP-SDE), so the Tweedie covariance of an eps-model is indefinite and huge at high noise and
    posterior members blow up (docs/trajectories.md, "Lorenz-96").
    """
    if prediction not in ("eps", "x0", "v"):
        raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    from scidiff.models import ScoreModel
    from scidiff.nets import UNet
    from scidiff.sde import VPSDE
    from scidiff.training import TrainConfig, train
    from scidiff.trajectories.data import window_fields

    tr = open_trajectories(path, variables, time_dim=time_dim, sample_dim=sample_dim)
    check_window(window, tr.x.shape[1])
    x = tr.x
    axes = (0, 1) + tuple(range(3, x.ndim))
    mean = x.mean(dim=axes)
    std = x.std(dim=axes).clamp_min(1e-12)
    shape = (1, 1, -1) + (1,) * (x.ndim - 3)
    z = ((x - mean.reshape(shape)) / std.reshape(shape)).float()
    data = window_fields(z, window)
    dims = x.ndim - 3
    net = UNet(window * x.shape[2], dims, periodic=periodic, base_channels=base_channels,
               channel_mults=tuple(channel_mults))
    model = ScoreModel(net, VPSDE(), prediction=prediction)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(500, max(1, steps // 10)),
                         lr_decay="cosine", ema_decay=0.995, seed=seed, checkpoint_every=steps,
                         log_every=max(1, steps // 20), val_every=0)
    out = Path(out)
    train(model, data, config, run_dir=out, device=device, progress=progress)
    info = WindowRunInfo(
        window=window, variables=list(tr.variables), units=list(tr.units), mean=mean.tolist(), std=std.tolist(),
        state_shape=list(x.shape[2:]), time_units=tr.time_units, interval=tr.interval,
        spatial={k: np.asarray(v, dtype=np.float64).tolist() for k, v in tr.spatial.items()},
        spatial_units=dict(tr.spatial_units), time_dim=tr.time_dim, source=str(path))
    (out / TRAJECTORY_FILE).write_text(json.dumps(asdict(info), indent=1))
    return out


def load_window_run(path: str | PathLike[str], *, device: str = "cpu") -> WindowRun:
    """The model (EMA weights, eval mode) and ``trajectory.json`` of a window run."""
    from scidiff.checkpoint import load_model

    path = Path(path)
    meta = path / TRAJECTORY_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not a window run: it has no {TRAJECTORY_FILE} "
                                f"(train one with `scidiff trajectory train`)")
    info = WindowRunInfo(**json.loads(meta.read_text()))
    return WindowRun(load_model(path, device=device), info, path)


def _sample(score: Any, sde: Any, shape: tuple[int, ...], method: str, seed: int, batch_size: int,
            progress: bool, options: dict[str, Any], device: str) -> tuple[Tensor, int]:
    from scidiff.sampling import sample

    gen = torch.Generator(device=device).manual_seed(seed)
    out, nfe = [], 0
    for lo in range(0, shape[0], batch_size):
        m = min(shape[0], lo + batch_size) - lo
        res = sample(score, sde, (m, *shape[1:]), method, generator=gen, device=device, progress=progress,
                     return_result=True, **options)
        out.append(res.x)
        nfe = max(nfe, res.nfe)
    return torch.cat(out), nfe


def _check_length(run: WindowRun, length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if run.info.window > length:
        raise ValueError(f"the model's window W = {run.info.window} is longer than the trajectory "
                         f"(L = {length} states); use --length >= {run.info.window}")


def sample_window_run(run: WindowRun, n: int, length: int, *, method: str = "ode", seed: int = 0,
                      batch_size: int = 16, start: float = 0.0, progress: bool = False,
                      device: str = "cpu", **options: Any):
    """``n`` trajectories of ``length`` states sampled jointly; a Dataset in data units."""
    from scidiff._version import __version__

    _check_length(run, length)
    shape = (n, length, *run.info.state_shape)
    t0 = _time.perf_counter()
    z, nfe = _sample(run.trajectory_score(), run.model.sde, shape, method, seed, batch_size, progress, options, device)
    attrs = {"model": str(run.path), "method": method, "seed": seed, "nfe": nfe, "window": run.info.window,
             "window_evaluations_per_trajectory": nfe * (length - run.info.window + 1),
             "seconds": round(_time.perf_counter() - t0, 3), "scidiff_version": __version__,
             "description": "trajectories sampled jointly from the Markov-blanket composition of a window score"}
    return run.dataset(run.to_data(z.double()), start, attrs)


def read_observations(path: str | PathLike[str], run: WindowRun, length: int, *, start: float = 0.0):
    """An observation file as (SparseSensors on [L, C, *spatial], y [P], noise_std [P]) in data units.

    Raises ValueError (one line) for observations off the time grid or outside the trajectory,
    positions off the model's grid, unknown variables or a missing noise level.
    """
    import xarray as xr

    from scidiff.guidance.operators import SparseSensors

    info = run.info
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"observation file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        engine = "h5netcdf" if fh.read(4) == b"\x89HDF" else "scipy"
    with xr.open_dataset(path, engine=engine) as ds:
        for name in ("value", "time"):
            if name not in ds.variables:
                raise ValueError(f"{path.name}: no variable {name!r}; an observation file has value (obs), "
                                 f"time (obs), the positions {list(info.spatial)} (obs) and noise_std")
        value = np.asarray(ds["value"].values, dtype=np.float64).reshape(-1)
        p = value.size
        times = np.asarray(ds["time"].values, dtype=np.float64).reshape(-1)
        units = ds["time"].attrs.get("units")
        if units is not None and str(units) != info.time_units:
            raise ValueError(f"{path.name}: observation times are in {units!r} but the model's time is in "
                             f"{info.time_units!r}")
        if "noise_std" in ds.variables:
            noise = np.broadcast_to(np.asarray(ds["noise_std"].values, dtype=np.float64), (p,)).copy()
        elif "noise_std" in ds["value"].attrs or "noise_std" in ds.attrs:
            noise = np.full(p, float(ds["value"].attrs.get("noise_std", ds.attrs.get("noise_std"))))
        else:
            raise ValueError(f"{path.name}: no noise level; give noise_std as a variable along obs or an attribute")
        if not np.all(np.isfinite(noise) & (noise > 0)):
            raise ValueError(f"{path.name}: noise_std must be positive and finite")
        if "variable" in ds.variables:
            names = [str(v) for v in np.asarray(ds["variable"].values).reshape(-1)]
            unknown = sorted(set(names) - set(info.variables))
            if unknown:
                raise ValueError(f"{path.name}: unknown variable(s) {unknown}; the model has {info.variables}")
            channel = np.array([info.variables.index(v) for v in names])
        elif len(info.variables) == 1:
            channel = np.zeros(p, dtype=np.int64)
        else:
            raise ValueError(f"{path.name}: the model has variables {info.variables}; say which one each "
                             f"observation is with a variable (obs) of names")
        index = [np.round((times - start) / info.interval).astype(np.int64)]
        off = ~np.isclose(start + index[0] * info.interval, times, rtol=0, atol=1e-6 * abs(info.interval))
        outside = (index[0] < 0) | (index[0] >= length)
        if off.any() or outside.any():
            bad = sorted(set(times[off | outside].tolist()))[:5]
            raise ValueError(f"observation times {bad} lie outside the trajectory of {length} states at times "
                             f"{start:g}, {start + info.interval:g}, ..., {start + (length - 1) * info.interval:g} "
                             f"({info.time_units})")
        index.append(channel)
        for dim, coord in info.spatial.items():
            if dim not in ds.variables:
                raise ValueError(f"{path.name}: no position variable {dim!r} (the model's grid has {list(info.spatial)})")
            pos = np.asarray(ds[dim].values, dtype=np.float64).reshape(-1)
            grid = np.asarray(coord)
            j = np.abs(pos[:, None] - grid[None, :]).argmin(1)
            step = float(np.min(np.diff(grid))) if grid.size > 1 else 1.0
            bad = ~np.isclose(grid[j], pos, rtol=0, atol=1e-6 * step)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{path.name}: observation {k} has {dim} = {pos[k]:g}, not a grid point of the "
                                 f"model (nearest {grid[j[k]]:g}); positions must lie on the grid")
            index.append(j)
    event = (length, *info.state_shape)
    idx = torch.from_numpy(np.stack(index, axis=1))
    return SparseSensors(idx, event), torch.from_numpy(value), torch.from_numpy(noise), channel


def assimilate_window_run(run: WindowRun, observations: str | PathLike[str], length: int, n: int, *,
                          guidance: str = "mmps", inflation: float | None = None, cg_steps: int = 3,
                          method: str = "ode", seed: int = 0, batch_size: int = 16, start: float = 0.0,
                          progress: bool = False, device: str = "cpu", **options: Any):
    """``n`` posterior trajectories of ``length`` states given the observation file; a Dataset in data units."""
    from scidiff._version import __version__
    from scidiff.guidance import DPSGuidance
    from scidiff.guidance.mmps import MMPSGuidance

    _check_length(run, length)
    if guidance not in ("mmps", "dps"):
        raise ValueError(f"guidance must be 'mmps' or 'dps', got {guidance!r}")
    operator, y, noise, channel = read_observations(observations, run, length, start=start)
    mean = torch.tensor(run.info.mean, dtype=torch.float64)[channel]
    std = torch.tensor(run.info.std, dtype=torch.float64)[channel]
    y_z = ((y - mean) / std).float().to(device)
    noise_z = (noise / std).float().to(device)
    prior = run.trajectory_score()
    sde = run.model.sde
    if guidance == "mmps":
        guided = MMPSGuidance(prior, sde, operator, y_z, noise_z, cg_steps=cg_steps)
    else:
        guided = DPSGuidance(prior, sde, operator, y_z, noise_z, inflation=inflation)
    shape = (n, length, *run.info.state_shape)
    t0 = _time.perf_counter()
    z, nfe = _sample(guided, sde, shape, method, seed, batch_size, progress, options, device)
    times = start + run.info.interval * np.arange(length)
    observed = sorted(set(operator.indices[:, 0].tolist()))
    attrs = {"model": str(run.path), "observations": str(observations), "num_observations": int(y.numel()),
             "guidance": guidance, "cg_steps": cg_steps if guidance == "mmps" else 0,
             "inflation": "none" if inflation is None else float(inflation), "method": method, "seed": seed, "nfe": nfe,
             "last_observed_time": float(times[max(observed)]) if observed else math.nan,
             "seconds": round(_time.perf_counter() - t0, 3), "scidiff_version": __version__,
             "description": "posterior trajectories given the observations (states after last_observed_time are "
                            "forecasts)"}
    return run.dataset(run.to_data(z.double()), start, attrs)
