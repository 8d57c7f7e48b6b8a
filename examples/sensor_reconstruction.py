"""Reconstruct a 2-D field from 5 % noisy point sensors with a trained diffusion model.

A diffusion model is trained on periodic Gaussian random fields (n x n, spectrum |k|^-slope).
A held-out field is observed at a random 5 % of the grid points with Gaussian noise,
y = A x + N(0, s^2 I); posterior fields are drawn with DPS guidance on the trained model's
score (with the variance-inflated likelihood of Rozet & Louppe 2023 by default).  Because the
field is Gaussian the exact posterior is known too, and is shown beside the model's.

    python examples/sensor_reconstruction.py --minutes 10 --out runs/sensors

Writes ``posterior.png`` (truth, observations, posterior mean, posterior std), ``exact_posterior.png``,
``calibration.png`` (coverage of the truth by central posterior intervals against their nominal
level) and ``results.json`` to ``--out``; the trained model goes to ``--out/model.pt`` (``--reuse``
loads it; ``benchmarks/bench_posterior.py --model`` takes it too).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import scidiff as sd
from scidiff.guidance import DPSGuidance
from scidiff.metrics import coverage, coverage_min_members
from scidiff.operators import SparseSensors
from scidiff.sampling import SAMPLERS
from scidiff.simulators.grf import GaussianRandomField

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--slope", type=float, default=3.0)
    p.add_argument("--fraction", type=float, default=0.05, help="fraction of grid points with a sensor")
    p.add_argument("--noise", type=float, default=0.1, help="sensor noise std relative to the field's pointwise std")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (wall-clock minutes)")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--samples", type=int, default=32, help="posterior samples")
    p.add_argument("--method", default="dpmpp_2m", choices=sorted(SAMPLERS),
                   help="sampler (docs/samplers.md); DPM-Solver++ 2M keeps the DPS posterior's coverage at 20-50 "
                        "evaluations where ancestral steps need 100-300")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (network evaluations for dpmpp_2m)")
    p.add_argument("--gamma", type=float, default=1.0, help="variance inflation gamma (0: plain DPS)")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--reuse", action="store_true", help="load --out/model.pt if it exists")
    p.add_argument("--out", type=Path, default=Path("runs/sensors"))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args()


def train_model(grf: GaussianRandomField, scale: float, args) -> tuple[sd.ScoreModel, dict]:
    """An unconditional UNet on fields / scale, trained for ``args.minutes`` with the training module."""
    from scidiff.training import TrainConfig, Trainer

    gen = torch.Generator().manual_seed(args.seed)
    fields = (grf.sample(args.n_train, generator=gen)[:, None] / scale).float()
    net = sd.UNet(1, 2, periodic=True, base_channels=args.base_channels, channel_mults=(1, 2, 2), attention_levels=())
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="v")  # v: usable in few steps (docs/cli.md)
    config = TrainConfig(steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=200,
                         ema_decay=args.ema_decay, log_every=100, checkpoint_every=0, seed=args.seed)
    trainer = Trainer(model, config)
    start = time.perf_counter()
    while trainer.step < args.max_steps and time.perf_counter() - start < 60 * args.minutes:
        trainer.fit(fields, until=trainer.step + 100, progress=not args.no_progress)
    info = {"train_steps": trainer.step, "train_wall_s": time.perf_counter() - start, "batch_size": args.batch_size,
            "parameters": sum(p.numel() for p in net.parameters()),
            "final_loss": trainer.history[-1]["loss"] if trainer.history else math.nan}
    return trainer.ema_model, info


def exact_posterior(grf, op, y, noise):
    """Mean [D] and pointwise std [D] of x | y, y = A x + N(0, noise^2 I), with the exact GRF prior."""
    cov = grf.covariance()
    idx = op.flat_indices
    gain = torch.linalg.solve(cov[idx][:, idx] + noise**2 * torch.eye(idx.numel(), dtype=torch.float64), cov[idx]).T
    mean = gain @ y
    var = torch.diagonal(cov) - (gain * cov[:, idx]).sum(1)
    return mean, var.clamp_min(0).sqrt(), cov - gain @ cov[idx]


def main() -> None:
    args = parse_args()
    need = coverage_min_members(max(LEVELS))
    if args.samples < need:
        raise SystemExit(f"--samples {args.samples}: the {max(LEVELS):.0%} posterior interval needs at least "
                         f"{need} samples")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    n = args.size
    grf = GaussianRandomField(n, 2, slope=args.slope)
    point_sd = math.sqrt(float(grf.spectrum(half=False).mean()))  # pointwise std of the field
    scale = point_sd  # the model sees x / scale, of unit pointwise variance

    path = args.out / "model.pt"
    if args.reuse and path.exists():
        saved = torch.load(path, weights_only=True)
        net = sd.UNet(**saved["config"])
        net.load_state_dict(saved["state"])
        model, info = sd.ScoreModel(net, sd.VPSDE(), prediction="v"), saved["info"]
        print(f"loaded the model trained for {info['train_steps']} steps ({info['train_wall_s'] / 60:.1f} min)")
    else:
        model, info = train_model(grf, scale, args)
        torch.save({"config": model.net.config, "state": model.net.state_dict(), "scale": scale, "info": info}, path)
        print(f"trained {info['train_steps']} steps in {info['train_wall_s'] / 60:.1f} min "
              f"({info['parameters']} parameters, batch {args.batch_size}), final loss {info['final_loss']:.4f}")
    model.eval()

    # ---- the truth and its sensors
    gen = torch.Generator().manual_seed(args.seed + 1000)
    truth = grf.sample(1, generator=gen)[0]  # [n, n]
    op = SparseSensors.random((1, n, n), args.fraction, seed=args.seed)
    noise = args.noise * point_sd
    y = op(truth[None, None])[0] + noise * torch.randn(op.num_sensors, generator=gen, dtype=torch.float64)

    # ---- posterior samples by guidance on the trained model
    guided = DPSGuidance(model.score, model.sde, op, (y / scale).float(), noise / scale, scale=args.scale,
                         inflation=args.gamma if args.gamma > 0 else None)
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = sd.sample(guided, model.sde, (args.samples, 1, n, n), args.method, steps=args.steps,
                        generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress,
                        return_result=True)
    wall = time.perf_counter() - t0
    samples = (res.x.double() * scale)[:, 0]  # [M, n, n]
    mean, std = samples.mean(0), samples.std(0)

    ex_mean, ex_sd, ex_cov = exact_posterior(grf, op, y, noise)
    chol = torch.linalg.cholesky(0.5 * (ex_cov + ex_cov.T) + 1e-10 * torch.eye(n * n, dtype=torch.float64))
    ex_samples = (ex_mean + torch.randn(args.samples, n * n, generator=gen, dtype=torch.float64) @ chol.T).reshape(-1, n, n)

    cov_model = coverage(samples.numpy(), truth.numpy(), LEVELS)
    cov_exact = coverage(ex_samples.numpy(), truth.numpy(), LEVELS)
    rmse = float((mean - truth).pow(2).mean().sqrt())
    rmse_exact = float((ex_mean.reshape(n, n) - truth).pow(2).mean().sqrt())
    print(f"\n{op.num_sensors} sensors ({args.fraction:.0%} of {n}x{n}), noise std {noise:.4f} "
          f"({args.noise:g} x pointwise sd {point_sd:.4f}); {args.samples} posterior samples, {args.method} "
          f"{args.steps} steps, {res.nfe} guided evaluations in {wall:.0f} s; inflation gamma = {args.gamma:g}")
    print(f"{'':<22}{'RMSE of mean':>13}{'mean std':>10}  coverage at " + " ".join(f"{lv:.1f}" for lv in LEVELS))
    print(f"{'model + guidance':<22}{rmse:13.4f}{float(std.mean()):10.4f}  {'':12}" + " ".join(f"{c:.2f}" for c in cov_model))
    print(f"{'exact posterior':<22}{rmse_exact:13.4f}{float(ex_sd.mean()):10.4f}  {'':12}" + " ".join(f"{c:.2f}" for c in cov_exact))
    print(f"{'prior (no data)':<22}{float(truth.pow(2).mean().sqrt()):13.4f}{point_sd:10.4f}")

    from scidiff import plots

    points = op.indices[:, 1:]  # [P, 2] grid indices (row, column)
    plots.posterior_panel(truth, points, mean, std, observed_values=y, path=args.out / "posterior.png")
    plots.posterior_panel(truth, points, ex_mean.reshape(n, n), ex_sd.reshape(n, n), observed_values=y,
                          path=args.out / "exact_posterior.png")
    plots.calibration(LEVELS, cov_model, n_points=n * n, label="model + guidance", path=args.out / "calibration.png")
    results = {
        "size": n, "sensors": op.num_sensors, "noise_std": noise, "gamma": args.gamma, "scale": args.scale,
        "samples": args.samples, "method": args.method, "steps": args.steps, "sampling_wall_s": wall, **info,
        "levels": list(LEVELS), "coverage_model": cov_model.tolist(), "coverage_exact": cov_exact.tolist(),
        "rmse_model": rmse, "rmse_exact": rmse_exact, "mean_std_model": float(std.mean()),
        "mean_std_exact": float(ex_sd.mean()),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}/posterior.png, exact_posterior.png, calibration.png, results.json")


if __name__ == "__main__":
    main()
