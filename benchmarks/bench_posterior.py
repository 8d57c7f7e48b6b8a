"""Posterior calibration and accuracy of DPS guidance, with and without variance inflation.

Problem: a periodic Gaussian random field x (n x n, spectrum |k|^-slope) observed at a random
``--fraction`` of the grid points with Gaussian noise, y = A x + N(0, s^2 I).  Its posterior is
Gaussian and known exactly, so the benchmark reports, over ``--fields`` truths:

* coverage of the true field by the central 50 % and 90 % posterior intervals (a calibrated
  posterior gives 0.50 and 0.90), pooled over all grid points;
* RMSE of the posterior mean against the truth, and against the exact posterior mean;
* the mean posterior standard deviation (spread) against the exact one;

for the exact posterior (reference), DPS (Chung et al. 2023) and DPS with the variance-inflated
likelihood of Rozet & Louppe (2023) at several gamma.  The prior score is the exact score of the
field's distribution (so only the guidance approximation is measured), or a trained model
with ``--model`` (a state dict saved by examples/sensor_reconstruction.py).

It also measures the cost of guidance with a UNet: the wall time of a DPS-guided score
evaluation over that of a plain score evaluation (one forward + one backward vs one forward).

    python benchmarks/bench_posterior.py [--size 32] [--fields 8] [--samples 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

import scidiff as sd
from scidiff.guidance import DPSGuidance
from scidiff.metrics import coverage
from scidiff.operators import SparseSensors
from scidiff.simulators.grf import GaussianRandomField


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--slope", type=float, default=3.0)
    p.add_argument("--fraction", type=float, default=0.05, help="fraction of grid points observed")
    p.add_argument("--noise", type=float, default=0.1, help="noise std relative to the field's pointwise std")
    p.add_argument("--fields", type=int, default=8, help="number of truths")
    p.add_argument("--samples", type=int, default=64, help="posterior samples per truth")
    p.add_argument("--steps", type=int, default=300, help="ancestral sampler steps")
    p.add_argument("--gammas", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    p.add_argument("--scales", type=float, nargs="*", default=[1.0])
    p.add_argument("--model", type=str, default=None, help="trained model (examples/sensor_reconstruction.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args()


class ExactGRFScore:
    """grad log p_t of the GRF diffused by the VP-SDE, exact (FFT), differentiable in x."""

    def __init__(self, grf: GaussianRandomField, sde: sd.VPSDE, scale: float) -> None:
        self.grf, self.sde, self.scale = grf, sde, scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the model sees z = x / scale: p_z has spectrum lambda / scale^2
        coef = self.sde.coefficients(t).like(x)
        alpha, sigma = coef.alpha, coef.sigma
        a, s = alpha.flatten(), sigma.flatten()
        # alpha^2 lambda / c^2 + sigma^2 = (alpha^2 lambda + (c sigma)^2) / c^2
        return self.grf.marginal_score(x, a, s * self.scale) * self.scale**2


def exact_posterior(grf: GaussianRandomField, op: SparseSensors, y: torch.Tensor, noise: float):
    """Mean [B, D] and covariance [D, D] of x | y for y = A x + N(0, noise^2 I) (dense, float64)."""
    cov = grf.covariance()
    idx = op.flat_indices
    c_ay = cov[:, idx]  # C A^T [D, P]
    s_yy = cov[idx][:, idx] + noise**2 * torch.eye(idx.numel(), dtype=torch.float64)
    gain = torch.linalg.solve(s_yy, c_ay.T).T  # C A^T (A C A^T + s^2)^-1 [D, P]
    mean = y @ gain.T
    post = cov - gain @ c_ay.T
    return mean, 0.5 * (post + post.T)


def summarise(samples: np.ndarray, truth: np.ndarray, exact_mean: np.ndarray, exact_sd: np.ndarray) -> dict:
    """samples [F, M, D], truth [F, D] -> coverage, errors and spread."""
    cov = np.mean([coverage(samples[f], truth[f], (0.5, 0.9)) for f in range(truth.shape[0])], axis=0)
    mean = samples.mean(1)
    return {
        "coverage_50": float(cov[0]),
        "coverage_90": float(cov[1]),
        "rmse_truth": float(np.sqrt(np.mean((mean - truth) ** 2))),
        "rmse_exact_mean": float(np.sqrt(np.mean((mean - exact_mean) ** 2))),
        "spread": float(np.mean(samples.std(1, ddof=1))),
        "spread_exact": float(np.mean(exact_sd)),
    }


def guidance_cost(size: int, reps: int = 5) -> dict:
    """Wall time of a DPS-guided score evaluation over a plain one, small UNet, batch 16."""
    torch.manual_seed(0)
    net = sd.UNet(1, 2, periodic=True, base_channels=32, channel_mults=(1, 2, 2), attention_levels=())
    model = sd.ScoreModel(net, sd.VPSDE()).eval()
    op = SparseSensors.random((1, size, size), 0.05, seed=0)
    dps = DPSGuidance(model.score, model.sde, op, torch.zeros(op.num_sensors), 0.1, inflation=1.0)
    x = torch.randn(16, 1, size, size)
    t = torch.full((16,), 0.5)

    def timed(fn) -> float:
        fn()
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    with torch.no_grad():
        plain = timed(lambda: model.score(x, t))
        guided = timed(lambda: dps(x, t))
    return {"score_ms": 1e3 * plain, "dps_score_ms": 1e3 * guided, "ratio": guided / plain}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grf = GaussianRandomField(args.size, 2, slope=args.slope)
    sde = sd.VPSDE()
    d = grf.num_pixels
    point_sd = math.sqrt(float(grf.spectrum(half=False).mean()))
    noise = args.noise * point_sd
    scale = point_sd  # the model sees x / scale
    op = SparseSensors.random((1, args.size, args.size), args.fraction, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    truth = grf.sample(args.fields, generator=gen)[:, None]  # [F, 1, n, n]
    y = op(truth) + noise * torch.randn(args.fields, op.num_sensors, generator=gen, dtype=torch.float64)
    exact_mean, exact_cov = exact_posterior(grf, op, y, noise)
    exact_sd = torch.sqrt(torch.diagonal(exact_cov).clamp_min(0))
    chol = torch.linalg.cholesky(exact_cov + 1e-10 * torch.eye(d, dtype=torch.float64))

    prior_score = ExactGRFScore(grf, sde, scale)
    if args.model:
        state = torch.load(args.model, weights_only=True)
        net = sd.UNet(**state["config"])
        net.load_state_dict(state["state"])
        model = sd.ScoreModel(net, sde).eval()
        prior_score = model.score
        scale = state["scale"]
    truth_np = truth.flatten(1).numpy()
    rows = {}
    z = torch.randn(args.fields, args.samples, d, generator=gen, dtype=torch.float64)
    exact_samples = exact_mean[:, None] + z @ chol.T
    rows["exact posterior"] = summarise(exact_samples.numpy(), truth_np, exact_mean.numpy(), exact_sd.numpy())
    settings = [("DPS", None, s) for s in args.scales] + [("DPS + inflation", g, 1.0) for g in args.gammas]
    for name, gamma, s in settings:
        label = f"{name} (scale {s:g})" if gamma is None else f"{name} (gamma {gamma:g})"
        t0 = time.perf_counter()
        all_samples = []
        for f in range(args.fields):
            dps = DPSGuidance(prior_score, sde, op, (y[f] / scale).float() if args.model else y[f] / scale,
                              noise / scale, scale=s, inflation=gamma)
            dtype = torch.float32 if args.model else torch.float64
            xs = sd.sample(dps, sde, (args.samples, 1, args.size, args.size), "ancestral", steps=args.steps,
                           generator=torch.Generator().manual_seed(args.seed + f), dtype=dtype, progress=False)
            all_samples.append(xs.double().flatten(1) * scale)
        samples = torch.stack(all_samples).numpy()
        rows[label] = {**summarise(samples, truth_np, exact_mean.numpy(), exact_sd.numpy()),
                       "wall_s": time.perf_counter() - t0}
    cost = guidance_cost(args.size)

    print(f"GRF {args.size}x{args.size}, slope {args.slope}, {op.num_sensors} sensors ({args.fraction:.0%}), "
          f"noise {args.noise:g} x pointwise sd, {args.fields} truths x {args.samples} samples, "
          f"ancestral {args.steps} steps, prior score: {'model ' + args.model if args.model else 'exact'}")
    head = f"{'method':<28} {'cov50':>6} {'cov90':>6} {'RMSE truth':>10} {'RMSE vs exact mean':>18} {'spread':>7} {'exact spread':>12}"
    print(head)
    for label, r in rows.items():
        if not r["rmse_truth"] < 100 * point_sd:  # blown up (or NaN): explicit-step instability
            print(f"{label:<28} diverged (posterior mean error {r['rmse_truth']:.3g})")
            continue
        print(f"{label:<28} {r['coverage_50']:6.3f} {r['coverage_90']:6.3f} {r['rmse_truth']:10.4f} "
              f"{r['rmse_exact_mean']:18.4f} {r['spread']:7.4f} {r['spread_exact']:12.4f}")
    print(f"\nguidance cost (UNet 32 ch, batch 16, {args.size}x{args.size}): plain score {cost['score_ms']:.1f} ms, "
          f"DPS-guided {cost['dps_score_ms']:.1f} ms, ratio {cost['ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": rows, "guidance_cost": cost}, fh, indent=2)


if __name__ == "__main__":
    main()
