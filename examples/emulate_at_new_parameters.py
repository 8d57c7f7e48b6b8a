"""Emulate a simulator at parameters it was never run at, and check the result against the truth.

The "simulator" draws Gaussian random fields on a periodic 16 x 16 grid with power spectrum
P(k) = |k|^-slope.  It is run only at slopes in [2.0, 2.6] and [3.4, 4.0]; a diffusion model
conditioned on the slope (``scidiff.conditional``: the network sees c = [slope, 1]) is trained
on those runs and then asked for fields at slope 3.0, inside the gap, and at 2.3 and 3.7,
inside the training ranges.  Because the true spectrum is known, the emulator is checked
exactly: the spectral slope fitted to the emulated fields, and the mean |ln P_model - ln P_true|
over wavenumbers, against fresh fields of the simulator at the same slope.

    python examples/emulate_at_new_parameters.py --out runs/emulate        # ~4 min of one CPU core

Measured (seed 0, 1500 steps in 207 s of one CPU thread): at the unseen slope 3.0 the fitted
spectral slope of the emulated fields was 3.13 against 3.05 for the simulator's (the binned
estimator is the same for both), with a spectrum error of 0.11 against a sampling floor of
0.03; at the seen slopes 2.3 and 3.7 the errors were 0.05 and 0.08 (floors 0.04, 0.05).

Writes ``emulated_spectra.png`` (spectra at the three slopes: emulated, true, and the
simulator's 5-95 % band), ``emulated_fields.png`` (emulated fields at slope 3 above true
ones) and ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import scidiff as sd
from scidiff import metrics, plots
from scidiff.conditional import condition, conditional_score
from scidiff.simulators.grf import GaussianRandomField
from scidiff.training import TrainConfig, Trainer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16, help="grid side n (fields are n x n)")
    p.add_argument("--n-train", type=int, default=4096, help="simulator runs to train on")
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop training earlier after this many minutes (0: no limit)")
    p.add_argument("--sampler-steps", type=int, default=250, help="steps of the ancestral sampler")
    p.add_argument("--n-samples", type=int, default=64, help="emulated fields per slope")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/emulate"))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args()


def training_slopes(n: int, generator: torch.Generator) -> torch.Tensor:
    """Slopes uniform on [2.0, 2.6] u [3.4, 4.0]: the simulator is never run near 3."""
    u = torch.rand(n, generator=generator, dtype=torch.float64) * 1.2
    return torch.where(u < 0.6, 2.0 + u, 3.4 + (u - 0.6))


def fitted_slope(k: np.ndarray, p: np.ndarray) -> float:
    """-d ln P / d ln k by least squares over the bins with power (P ~ k^-slope)."""
    ok = np.isfinite(p) & (p > 0) & (k > 0)
    return float(-np.polyfit(np.log(k[ok]), np.log(p[ok]), 1)[0])


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    grf = GaussianRandomField(args.size, 2)

    # 1. the simulator's runs: fields x [N, 1, n, n] and their parameter [N]
    slopes = training_slopes(args.n_train, gen)
    x = grf.sample(args.n_train, slope=slopes, generator=gen)[:, None]
    scale = float(x.std())  # one scalar standardisation keeps the spectra's ratios intact
    z = (x / scale).float()
    slope_mean, slope_std = float(slopes.mean()), float(slopes.std())

    def cond_of(s: torch.Tensor) -> torch.Tensor:
        return condition(((s - slope_mean) / slope_std)[:, None].float())

    # 2. a conditioned UNet trained with the library's Trainer (EMA) for a wall-clock budget
    net = sd.UNet(channels=1, dims=2, periodic=True, cond_dim=2, base_channels=16, channel_mults=(1, 2),
                  attention_levels=())
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="v")  # v: usable in few steps (docs/cli.md)
    config = TrainConfig(steps=args.steps, batch_size=32, lr=2e-3, warmup_steps=100, lr_decay="cosine",
                         ema_decay=0.995, log_every=100, checkpoint_every=0, seed=args.seed)
    trainer = Trainer(model, config)
    start = time.perf_counter()
    while trainer.step < args.steps and (args.minutes <= 0 or time.perf_counter() - start < 60 * args.minutes):
        trainer.fit(z, cond_of(slopes), until=trainer.step + 100, progress=not args.no_progress)
    train_seconds = time.perf_counter() - start
    ema = trainer.ema_model

    # 3. emulate at new and at seen parameters; compare with fresh simulator runs
    targets = {"2.3 (seen range)": 2.3, "3.0 (never run)": 3.0, "3.7 (seen range)": 3.7}
    results: dict[str, dict[str, float]] = {}
    k_model, curves, bands = None, {}, {}
    for label, slope in targets.items():
        theta = torch.full((args.n_samples,), slope, dtype=torch.float64)
        score = conditional_score(ema, ((theta - slope_mean) / slope_std)[:, None].float())
        # ancestral steps: robust to the errors of a briefly trained score (see docs/samplers.md)
        z_model = sd.sample(score, ema.sde, (args.n_samples, 1, args.size, args.size), "ancestral",
                            steps=args.sampler_steps, generator=torch.Generator().manual_seed(args.seed + 1),
                            progress=not args.no_progress)
        x_model = z_model.double() * scale
        x_true = grf.sample(4 * args.n_samples, slope=slope, generator=gen)[:, None]
        k, p_model = metrics.power_spectrum(x_model, channel=0)
        _, p_true_each = metrics.power_spectrum(x_true, channel=0, reduce=False)
        p_true = p_true_each.mean(0)
        results[label] = {
            "slope": slope,
            "fitted_slope_model": fitted_slope(k, p_model),
            "fitted_slope_true": fitted_slope(k, p_true),
            "spectrum_error_model": metrics.spectrum_error(x_model, x_true, channel=0),
            # the same statistic between two independent simulator sets of these sizes: the noise floor
            "spectrum_error_floor": metrics.spectrum_error(
                grf.sample(args.n_samples, slope=slope, generator=gen)[:, None], x_true, channel=0
            ),
            "std_model": float(x_model.std()),
            "std_true": float(x_true.std()),
        }
        k_model, curves[label], bands[label] = k, (p_model, p_true), p_true_each
        if slope == 3.0:
            plots.sample_grid(x_model, x_true, n=8, channel=0, titles=("emulated", "simulator"),
                              path=args.out / "emulated_fields.png")

    # 4. one figure: the three slopes, emulated (dashed) vs true (solid) with the simulator's band
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (label, (p_model, p_true)) in enumerate(curves.items()):
        lo, hi = np.nanpercentile(bands[label], [5, 95], axis=0)
        ax.fill_between(k_model, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
        ax.plot(k_model, p_true, color=f"C{i}", lw=1.5, label=f"slope {label}: simulator")
        ax.plot(k_model, p_model, color=f"C{i}", lw=1.5, ls="--", label="emulated")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("P(k)")
    ax.set_title("emulator at parameters inside and outside its training range", fontsize="small")
    ax.legend(fontsize="x-small")
    fig.savefig(args.out / "emulated_spectra.png", dpi=120)

    summary = {"train_steps": trainer.step, "train_seconds": round(train_seconds, 1),
               "final_loss": trainer.history[-1]["loss"] if trainer.history else math.nan, "slopes": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"trained {trainer.step} steps in {train_seconds:.0f} s")
    for label, r in results.items():
        print(f"slope {label:>17}: fitted slope emulated {r['fitted_slope_model']:.3f} vs simulator "
              f"{r['fitted_slope_true']:.3f}; spectrum error {r['spectrum_error_model']:.3f} "
              f"(floor {r['spectrum_error_floor']:.3f})")
    print(f"figures: {args.out / 'emulated_spectra.png'}, {args.out / 'emulated_fields.png'}")


if __name__ == "__main__":
    main()
