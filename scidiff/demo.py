"""``scidiff demo``: the user's whole path on a built-in dataset, on a CPU, in a few minutes.

1. data: Gaussian random fields on a periodic 16 x 16 grid with power spectrum
   P(k) = A |k|^(-s) and unit pointwise variance (``scidiff.simulators.make("grf")``), a
   training file and a held-out file;
2. training: a small periodic UNet by denoising score matching with EMA (:func:`scidiff.runs.train`,
   as ``scidiff train``), with the likelihood weighting and t drawn uniformly in log-SNR;
3. sampling: the probability-flow ODE (:func:`scidiff.runs.sample`) -> ``samples.nc``;
4. likelihood: log p(x) of held-out fields through the PF-ODE with the lattice trace
   estimator and its per-field standard error (:func:`scidiff.runs.loglik`, as ``scidiff
   loglik``), beside each field's exact log-density, computed through the FFT; the gap
   model - exact, the per-field RMS error and the rank correlation are the report's key numbers;
5. evaluation: power spectra, histograms, moments and figures (:func:`scidiff.runs.evaluate_fields`);
6. ``report.md`` with every number and the wall time of each stage.

The run folder can then be used with every other command, e.g.
``scidiff sample scidiff-demo --n 8 --out more.nc``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scidiff import plots, simulators
from scidiff.data import write_netcdf
from scidiff.runs import DataOptions, ModelOptions, Run, evaluate_fields, loglik, open_like_run, read_fields, sample, train
from scidiff.training import TrainConfig

__all__ = ["DemoConfig", "DemoResult", "run_demo", "demo_config"]


@dataclass
class DemoConfig:
    """Sizes of the demo (the defaults fit in well under 10 minutes on 2 CPU cores).

    Attributes:
        size: grid points per side of the 2-D periodic fields.
        slope, variance: the spectrum P(k) = A |k|^(-slope), A set so that the pointwise
            variance of the fields is ``variance``.
        n_train: fields in the training file (10 % of them held out for the validation loss).
        n_heldout: fields in the held-out file, whose log-likelihoods are evaluated.
        n_samples: fields drawn from the model.
        steps, batch_size, lr, warmup_steps, ema_decay, grad_clip: training (grad_clip 0: none).
        weighting, time_sampling: the denoising loss's weighting ("simple" or "likelihood") and
            its draw of t ("uniform" or "importance"); :class:`scidiff.training.TrainConfig`.
            The default, "likelihood" with "importance", trains the small-t end that uniform t
            leaves out (t < 3e-3, where log p's divergence integral still counts), at the same cost.
        base_channels, channel_mults: the UNet.
        prediction: what the network predicts ("eps", "x0" or "v"; :class:`scidiff.runs.ModelOptions`).
        rtol: tolerance of the sampling ODE solve.
        loglik_rtol: tolerance of the likelihood's ODE solve of x (rtol = atol).
        loglik_nodes: log-SNR intervals of the divergence's quadrature on the path (0: the
            divergence integrated in the ODE instead; docs/likelihood.md).
        divergence: the trace estimator of the likelihood ("lattice", "exact", "hutchinson").
        spacing: the lattice spacing.
        probes: Hutchinson probes, or lattice replicates, per field.
    """

    size: int = 16
    slope: float = 3.0
    variance: float = 1.0
    n_train: int = 2048
    n_heldout: int = 64
    n_samples: int = 64
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    weighting: str = "likelihood"
    time_sampling: str = "importance"
    base_channels: int = 16
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    prediction: str = "v"
    rtol: float = 1e-4
    loglik_rtol: float = 1e-4
    loglik_nodes: int = 0
    divergence: str = "lattice"
    spacing: int = 4
    probes: int = 1


def demo_config(*, fast: bool = False, steps: int | None = None) -> DemoConfig:
    """The default demo, or with ``fast`` a tiny one (8 x 8 fields, 60 steps) for smoke tests."""
    cfg = DemoConfig()
    if fast:
        cfg = DemoConfig(
            size=8, n_train=128, n_heldout=8, n_samples=8, steps=60, batch_size=16, warmup_steps=5,
            ema_decay=0.9, base_channels=8, rtol=1e-3,
        )
    if steps is not None:
        cfg.steps = int(steps)
    return cfg


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and its key numbers."""

    folder: Path
    report: Path
    numbers: dict[str, Any]
    files: dict[str, Path]


class _Stages:
    """Wall time and CPU time (all threads of the process) of each named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    @contextmanager
    def stage(self, name: str, progress: bool) -> Iterator[None]:
        if progress:
            print(f"[scidiff demo] {name} ...", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = time.perf_counter() - t0
        self.cpu_seconds[name] = time.process_time() - c0

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    @property
    def cpu_total(self) -> float:
        return time.process_time() - self.cpu_start


DEMO_MARKER = "demo.json"  # written first into every demo folder: only such folders are replaced
DEMO_LOCK = "demo.lock"    # held for the whole demo, so a second demo cannot empty the folder under it


def _is_demo_folder(folder: Path) -> bool:
    # report.md: the folders of versions that wrote no marker
    return (folder / DEMO_MARKER).is_file() or ((folder / "report.md").is_file() and Run.is_run(folder))


def _check_out(folder: Path) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a previous demo."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"--out {str(folder)!r} is a file, not a folder")
    if any(folder.iterdir()) and not _is_demo_folder(folder):
        what = "holds a scidiff training run" if Run.is_run(folder) else "is not a scidiff demo folder"
        raise ValueError(
            f"--out {str(folder)!r} exists and {what}; the demo replaces only its own folders: choose another "
            "--out or remove it"
        )


@contextmanager
def _claim(folder: Path) -> Iterator[None]:
    """Hold the demo's lock on ``folder`` and empty it of the previous demo, for the ``with`` body."""
    _check_out(folder)
    with Run.lock(folder, name=DEMO_LOCK):
        holder = Run.lock_holder(folder)
        if holder is not None:
            raise ValueError(f"--out {str(folder)!r} is being trained into by process {holder[0]} on "
                             f"{holder[1]!r}; wait for it to finish or choose another --out")
        for entry in folder.iterdir():
            if entry.name == DEMO_LOCK:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (folder / DEMO_MARKER).write_text(json.dumps({"format": "scidiff-demo", "version": 1}) + "\n")
        yield


def _field_variable(ds: Any) -> str:
    names = [n for n, v in ds.data_vars.items() if v.ndim >= 3]
    if not names:
        raise ValueError("the built-in dataset holds no field variable")
    return names[0]


def run_demo(
    out: str | os.PathLike[str] = "scidiff-demo",
    *,
    fast: bool = False,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Run the demo into the folder ``out`` and return where everything is.

    Args:
        out: the run folder: new, empty, or a previous demo's (which is replaced); a folder holding
            anything else (a training run included) is refused with nothing touched.
        fast: a tiny configuration for smoke tests (about a minute on a CPU).
        steps: training steps, overriding the configuration's.
        seed: seeds the data, the training, the samples and the Hutchinson probes.
        device: torch device.
        progress: progress bars and stage messages.
        config: a :class:`DemoConfig` (default: :func:`demo_config`).
    """
    cfg = config or demo_config(fast=fast, steps=steps)
    if steps is not None:
        cfg.steps = int(steps)
    folder = Path(out)
    with _claim(folder):
        return _run(folder, cfg, seed=seed, device=device, progress=progress, fast=fast)


def _run(folder: Path, cfg: DemoConfig, *, seed: int, device: str | torch.device, progress: bool,
         fast: bool) -> DemoResult:
    timer = _Stages()
    data_dir = folder / "data"
    fig_dir = folder / "figures"
    data_dir.mkdir()
    fig_dir.mkdir()
    params = {"slope": cfg.slope, "variance": cfg.variance}

    with timer.stage("generating Gaussian random fields", progress):
        train_ds = simulators.make("grf", cfg.n_train, size=cfg.size, seed=seed, progress=progress, **params)
        heldout_ds = simulators.make("grf", cfg.n_heldout, size=cfg.size, seed=seed + 10_000, progress=progress,
                                     **params)
        amplitude = float(heldout_ds["amplitude"].values[0])  # A of P(k) = A |k|^-slope, from the variance
        var = _field_variable(train_ds)
        train_file = write_netcdf(train_ds, data_dir / "train.nc")
        heldout_file = write_netcdf(heldout_ds, data_dir / "heldout.nc")

    with timer.stage(f"training a UNet for {cfg.steps} steps", progress):
        data = DataOptions(file=str(train_file), variables=[var], val_fraction=0.1, split_seed=seed)
        model = ModelOptions(
            base_channels=cfg.base_channels, channel_mults=list(cfg.channel_mults), attention=False, periodic=True,
            prediction=cfg.prediction,
        )
        train_config = TrainConfig(
            steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
            lr_decay="cosine", ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip, weighting=cfg.weighting,
            time_sampling=cfg.time_sampling, seed=seed, log_every=max(1, min(100, cfg.steps // 5)), val_every=cfg.steps,
            checkpoint_every=0,
        )
        summary = train(folder, data, model, train_config, overwrite=True, device=device, progress=progress)
        run = summary.run
        loaded = run.load(device=device)

    with timer.stage(f"sampling {cfg.n_samples} fields (probability-flow ODE)", progress):
        samples_ds, x_model = sample(
            loaded, cfg.n_samples, method="ode", seed=seed, batch_size=64, progress=progress, rtol=cfg.rtol,
            atol=cfg.rtol,
        )
        samples_file = write_netcdf(samples_ds, folder / "samples.nc")

    with timer.stage(f"log-likelihoods of {cfg.n_heldout} held-out fields (PF-ODE, {cfg.divergence})", progress):
        ll = loglik(
            loaded, heldout_file, divergence=cfg.divergence, probes=cfg.probes, spacing=cfg.spacing, batch_size=64,
            rtol=cfg.loglik_rtol, atol=cfg.loglik_rtol, nodes=cfg.loglik_nodes or None, seed=seed, progress=progress,
        )
        loglik_file = write_netcdf(ll, folder / "loglik.nc")
        source = open_like_run(run, heldout_file, cond=False)
        try:
            x_heldout = torch.cat([c.x for c in read_fields(source)])
        finally:
            source.close()
        grf = simulators.GaussianRandomField(cfg.size, 2, slope=cfg.slope, amplitude=amplitude)
        exact = grf.log_prob(x_heldout[:, 0].double()).numpy()
        model_lp = ll["log_prob"].values
        d = cfg.size**2
        gap = exact - model_lp  # nats per field; = D ln 2 (bpd_model - bpd_exact)
        bpd_model = -model_lp / (d * math.log(2.0))
        bpd_exact = -exact / (d * math.log(2.0))
        bpd_se = ll["bits_per_dim_se"].values

    with timer.stage("metrics and figures", progress):
        source = open_like_run(run, train_file, cond=False)
        try:
            x_train = torch.cat([c.x for c in read_fields(source, 1024)])
        finally:
            source.close()
        evaluation = evaluate_fields(x_model, x_train, run.template, out_dir=fig_dir)
        lik_png = fig_dir / "likelihood.png"
        plots.likelihood_histogram(bpd_model, bpd_exact, units="bits/dim", model_se=bpd_se, path=lik_png)
        evaluation["figures"].append(str(lik_png))

    n = gap.size
    from scipy import stats

    se = lambda v: float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")  # noqa: E731
    numbers: dict[str, Any] = {
        "grid": f"{cfg.size}x{cfg.size}",
        "dims": d,
        "n_train": summary.num_train,
        "n_val": summary.num_val,
        "n_heldout": int(n),
        "parameters": summary.parameters,
        "steps": summary.step,
        "final_loss": next((h["loss"] for h in reversed(summary.history) if "loss" in h), float("nan")),
        "val_loss": next((h["val_loss"] for h in reversed(summary.history) if "val_loss" in h), float("nan")),
        "sample_nfe": int(samples_ds.attrs["nfe"]),
        "loglik_nfe": int(ll.attrs["nfe"]),
        "bpd_model": float(bpd_model.mean()),
        "bpd_model_se": se(bpd_model),
        "bpd_exact": float(bpd_exact.mean()),
        "bpd_exact_se": se(bpd_exact),
        "gap_bpd": float((bpd_model - bpd_exact).mean()),
        "gap_bpd_se": se(bpd_model - bpd_exact),
        "gap_nats": float(gap.mean()),
        "gap_nats_se": se(gap),
        "field_rms_bpd": float(np.sqrt(np.mean((bpd_model - bpd_exact) ** 2))),
        "field_sd_exact_bpd": float(np.std(bpd_exact, ddof=1)) if n > 1 else float("nan"),
        "spearman": float(stats.spearmanr(model_lp, exact)[0]) if n > 2 else float("nan"),
        "pearson": float(stats.pearsonr(model_lp, exact)[0]) if n > 2 else float("nan"),
        "estimator_se_bpd": float(np.nanmean(bpd_se)) if np.isfinite(bpd_se).any() else float("nan"),
        "spectrum_error": evaluation["channels"][run.template.channels[0]]["spectrum_error"],
        "histogram_w1": evaluation["channels"][run.template.channels[0]]["histogram_w1"],
        "moments_model": evaluation["channels"][run.template.channels[0]]["moments_model"],
        "moments_data": evaluation["channels"][run.template.channels[0]]["moments_data"],
        "seconds": {k: round(v, 1) for k, v in timer.seconds.items()},
        "cpu_seconds": {k: round(v, 1) for k, v in timer.cpu_seconds.items()},
        "total_seconds": round(timer.total, 1),
        "total_cpu_seconds": round(timer.cpu_total, 1),
        "threads": torch.get_num_threads(),
        "fast": bool(fast),
        "config": asdict(cfg),
        "seed": seed,
        "amplitude": amplitude,
        "prediction": model.prediction,
        "time_variable": str(ll.attrs["time_variable"]),
    }
    files = {
        "checkpoint": loaded.checkpoint.path,
        "config": folder / "config.toml",
        "train_data": train_file,
        "heldout_data": heldout_file,
        "samples": samples_file,
        "loglik": loglik_file,
        **{f"figure_{Path(p).stem}": Path(p) for p in evaluation["figures"]},
    }
    (folder / "metrics.json").write_text(json.dumps(numbers, indent=1, default=float))
    report = folder / "report.md"
    numbers["total_seconds"] = round(timer.total, 1)
    numbers["total_cpu_seconds"] = round(timer.cpu_total, 1)
    report.write_text(_report(numbers, files, folder, var))
    if progress:
        print(flush=True)
        print(f"model {numbers['bpd_model']:.4f} bits/dim vs exact {numbers['bpd_exact']:.4f} bits/dim: "
              f"gap {numbers['gap_bpd']:+.4f} +- {numbers['gap_bpd_se']:.4f} bits/dim; per field RMS "
              f"{numbers['field_rms_bpd']:.4f} bits/dim, Spearman {numbers['spearman']:.3f}; "
              f"total {numbers['total_seconds']:.0f} s", flush=True)
    print(f"outputs in {folder.resolve()}", flush=True)
    print(f"report: {report.resolve()}", flush=True)
    return DemoResult(folder=folder, report=report, numbers=numbers, files=files)


def _rel(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def _report(v: dict[str, Any], files: dict[str, Path], folder: Path, var: str) -> str:
    cfg = v["config"]
    mm, md = v["moments_model"], v["moments_data"]
    stages = "\n".join(
        f"| {name} | {sec:.1f} | {v['cpu_seconds'][name]:.1f} |" for name, sec in v["seconds"].items()
    )
    figs = [p for k, p in files.items() if str(p).endswith(".png")]
    fig_md = "\n\n".join(f"![{Path(p).stem}]({_rel(p, folder)})" for p in figs)
    mode = " (fast smoke-test mode: too little training for meaningful numbers)" if v["fast"] else ""
    loss_units = " (a bound on -log p per field, in nats, up to a constant)" if cfg["weighting"] == "likelihood" else ""
    return f"""# scidiff demo report{mode}

**Data.** Gaussian random fields `{var}` on a periodic {v['grid']} grid (D = {v['dims']}), power
spectrum P(k) = {v['amplitude']:.4g} |k|^-{cfg['slope']} (pointwise variance {cfg['variance']});
{v['n_train']} training fields, {v['n_val']}
validation fields, {v['n_heldout']} held-out fields drawn with another seed.  This density is known
exactly (diagonal in Fourier space), so the model's likelihood can be checked against the truth.

**Model.** A periodic UNet with {v['parameters']:,} parameters (base width {cfg['base_channels']},
levels {cfg['channel_mults']}), {v['prediction']}-prediction on the linear VP-SDE, trained for {v['steps']} steps
(batch {cfg['batch_size']}, AdamW, lr {cfg['lr']}, cosine decay, EMA {cfg['ema_decay']}), "{cfg['weighting']}" weighting of
the denoising loss{loss_units}, t drawn "{cfg['time_sampling']}";
final training loss {v['final_loss']:.4f}, validation loss {v['val_loss']:.4f}.

## Likelihood of held-out fields

log p(x) through the probability-flow ODE (dopri5, rtol = atol = {cfg['loglik_rtol']}, t_min = 1e-5,
integrated in the time variable "{v['time_variable']}"; the divergence {_nodes_text(cfg)}), by the "{cfg['divergence']}" estimator
(spacing {cfg['spacing']}, {cfg['probes']} replicate(s); docs/likelihood.md), in the units of the data (the
normalisation's Jacobian included).  Mean over {v['n_heldout']} fields, +- one standard error:

| | bits/dim |
|---|---|
| model | {v['bpd_model']:.4f} +- {v['bpd_model_se']:.4f} |
| exact (FFT) | {v['bpd_exact']:.4f} +- {v['bpd_exact_se']:.4f} |
| **gap (model - exact)** | **{v['gap_bpd']:+.4f} +- {v['gap_bpd_se']:.4f}** |

**Per field.** RMS of (model - exact) over the fields: **{v['field_rms_bpd']:.4f} bits/dim** (the
exact values themselves spread by {v['field_sd_exact_bpd']:.4f}); rank correlation with the exact
density (Spearman) **{v['spearman']:.3f}**, Pearson {v['pearson']:.3f}; the estimator's own mean
standard error per field {v['estimator_se_bpd']:.4f} bits/dim (the rest of the per-field error is the
model's and the solver's).

In nats per field the gap, log p_exact(x) - log p_model(x), is {v['gap_nats']:+.2f} +- {v['gap_nats_se']:.2f}.  The PF-ODE used
{v['loglik_nfe']} score evaluations in all.  A positive gap means the model puts less density on
held-out fields than the truth (a model can only do that on average: the expected gap is
KL(p_data || p_model) / (D ln 2) >= 0 up to solver and estimator error).

## Samples

{cfg['n_samples']} fields by the probability-flow ODE ({v['sample_nfe']} score evaluations), compared with the training fields:

| | model | data |
|---|---|---|
| mean | {mm['mean']:.4f} | {md['mean']:.4f} |
| std | {mm['std']:.4f} | {md['std']:.4f} |
| skewness | {mm['skewness']:.4f} | {md['skewness']:.4f} |
| excess kurtosis | {mm['kurtosis']:.4f} | {md['kurtosis']:.4f} |

Power-spectrum error (mean |ln P_model - ln P_data| over k bins): {v['spectrum_error']:.4f};
Wasserstein-1 distance of the value histograms: {v['histogram_w1']:.4f} (data units).

## Wall time

{v['threads']} torch thread(s); CPU seconds count every thread of the process (on a machine
shared with other jobs the wall time exceeds the CPU time divided by the threads).

| stage | wall seconds | CPU seconds |
|---|---|---|
{stages}
| **total** | **{v['total_seconds']:.1f}** | **{v['total_cpu_seconds']:.1f}** |

## Files

""" + "\n".join(f"- {k}: `{_rel(p, folder)}`" for k, p in files.items()) + f"""

Reuse the run: `scidiff sample {folder} --n 8 --out more.nc`,
`scidiff loglik {folder} --data {folder / 'data' / 'heldout.nc'} --out ll.csv`.

## Figures

{fig_md}
"""


def _nodes_text(cfg: dict) -> str:
    nodes = int(cfg.get("loglik_nodes", 0) or 0)
    if not nodes:
        return "integrated with x by the solver"
    return f"by the trapezoid rule on {nodes} + 1 log-SNR nodes of the path, refined to at most {4 * nodes}"
