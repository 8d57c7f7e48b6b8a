"""Score-based data assimilation of Kolmogorov flow from coarse sensors every few states.

Vorticity trajectories of 2-D Kolmogorov flow (``navier_stokes_trajectory``, 32x32) train a
window score model (``W`` states stacked as channels).  A held-out trajectory is observed
through 4x4 coarse-graining (an 8x8 grid of block means) every ``--every`` states with
Gaussian noise; posterior trajectories are sampled from the composed window score with MMPS
guidance, and continue past the last observation as a forecast.

    python examples/kolmogorov_assimilation.py --out runs/kolmogorov [--steps 3000] [--quick]

Writes to ``--out``: ``assimilation.png`` (truth / observations / posterior mean / posterior
spread at every state), ``scores.png`` (CRPS and spread-skill ratio against time, beside
climatology and the observations upsampled and interpolated in time) and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import scidiff as sd
from scidiff.guidance.operators import CoarseGrain
from scidiff.metrics import crps_ensemble, spread_skill_ratio
from scidiff.trajectories import MarkovBlanketScore, MMPSGuidance, StackedWindowScore, StateObservation, window_fields


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--trajectories", type=int, default=128, help="training trajectories")
    p.add_argument("--states", type=int, default=24, help="states per training trajectory")
    p.add_argument("--interval", type=float, default=0.5, help="time between states")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--steps", type=int, default=3000, help="training steps")
    p.add_argument("--length", type=int, default=16, help="states of the assimilated trajectory")
    p.add_argument("--every", type=int, default=3, help="observe every n-th state")
    p.add_argument("--last-observed", type=int, default=9, help="no observations after this state (forecast)")
    p.add_argument("--noise", type=float, default=0.2, help="observation noise std, relative to the vorticity std")
    p.add_argument("--members", type=int, default=16, help="posterior members")
    p.add_argument("--sampler-steps", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=Path("runs/kolmogorov"))
    args = p.parse_args()
    if args.quick:
        args.size, args.trajectories, args.states, args.steps = 16, 8, 10, 5
        args.length, args.members, args.sampler_steps, args.last_observed = 8, 4, 4, 5
    return args


def interpolate_in_time(blocks: np.ndarray, times: list[int], length: int) -> np.ndarray:
    """Observed fields ``blocks`` [T, n, n] at states ``times`` linearly interpolated to states
    0..length-1, held at the last observation afterwards; [length, n, n]."""
    out = []
    for k in range(length):
        if k >= times[-1]:
            out.append(blocks[-1])
            continue
        j = int(np.searchsorted(times, k, side="right")) - 1
        w = (k - times[j]) / (times[j + 1] - times[j])
        out.append((1 - w) * blocks[j] + w * blocks[j + 1])
    return np.stack(out)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ds = sd.simulators.make("navier_stokes_trajectory", args.trajectories + 1, size=args.size, seed=args.seed,
                            states=max(args.states, args.length), interval=args.interval, progress=False,
                            **({"spinup_time": 1.0, "spinup_size": 16, "relax_time": 0.0} if args.quick else {}))
    omega = torch.from_numpy(ds["vorticity"].values).double()[:, :, None]           # [N, L, 1, n, n]
    train, truth = omega[:-1, :args.states], omega[-1, :args.length]
    mean, std = float(train.mean()), float(train.std())
    z = ((train - mean) / std).float()
    sim_s = time.perf_counter() - t0

    sde = sd.VPSDE()
    net = sd.UNet(args.window, 2, periodic=True, base_channels=32, channel_mults=(1, 2))
    model = sd.ScoreModel(net, sde, prediction="v")      # v: an accurate x0-hat at high noise, which MMPS needs
    t0 = time.perf_counter()
    windows = window_fields(z, args.window)
    trained = sd.train(model, windows, sd.TrainConfig(steps=args.steps, batch_size=32, lr=1e-3, lr_decay="cosine",
                                                      warmup_steps=min(200, args.steps), ema_decay=0.995,
                                                      seed=args.seed),
                       progress=not (args.quick or args.no_progress)).model          # the EMA weights
    train_s = time.perf_counter() - t0

    times = [k for k in range(0, args.last_observed + 1, args.every)]
    factor = 4 if args.size >= 16 else 2
    obs = StateObservation(CoarseGrain(factor, dims=2), times, args.length, (1, args.size, args.size))
    g = torch.Generator().manual_seed(args.seed + 1)
    y = obs(truth[None])[0]
    y = y + args.noise * std * torch.randn(y.shape, dtype=y.dtype, generator=g)
    prior = MarkovBlanketScore(StackedWindowScore(trained.eval().score), args.window)
    guided = MMPSGuidance(prior, sde, obs, ((y - mean) / std).float(), args.noise, cg_steps=3)
    t0 = time.perf_counter()
    post = sd.sample(guided, sde, (args.members, args.length, 1, args.size, args.size), "dpmpp_2m",
                     steps=args.sampler_steps, generator=torch.Generator().manual_seed(args.seed), progress=False)
    post_s = time.perf_counter() - t0
    ens = (mean + std * post.double()).numpy()[:, :, 0]                              # [M, L, n, n]
    tr = truth[:, 0].numpy()

    # baselines: climatology members, and observations upsampled (block values) and interpolated in time
    clim = train[torch.randint(0, train.shape[0], (args.members,), generator=g),
                 torch.randint(0, train.shape[1], (args.members,), generator=g), 0].numpy()
    blocks = np.kron(y[:, 0].numpy(), np.ones((1, factor, factor)))                    # [T, n, n]
    interp = interpolate_in_time(blocks, times, args.length)
    rows = []
    for k in range(args.length):
        rows.append({"state": k, "time": k * args.interval, "observed": k in times, "forecast": k > times[-1],
                     "crps_model": crps_ensemble(ens[:, k], tr[k]), "ssr_model": spread_skill_ratio(ens[:, k], tr[k]),
                     "crps_climatology": crps_ensemble(clim, tr[k]),
                     "mae_interpolation": float(np.abs(interp[k] - tr[k]).mean())})
    results = {"simulation_s": sim_s, "train_s": train_s, "posterior_s": post_s, "windows": int(windows.shape[0]),
               "steps": args.steps, "observed_states": times, "noise_std": args.noise * std, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(range(0, args.length, max(1, args.length // 8)))
    fig, axes = plt.subplots(4, len(shown), figsize=(1.6 * len(shown), 6.8), squeeze=False)
    lim = float(np.abs(tr).max())
    for j, k in enumerate(shown):
        obs_k = blocks[times.index(k)] if k in times else np.full_like(tr[k], np.nan)
        for i, (img, cmap, vmin, vmax) in enumerate([
                (tr[k], "RdBu_r", -lim, lim), (obs_k, "RdBu_r", -lim, lim),
                (ens[:, k].mean(0), "RdBu_r", -lim, lim), (ens[:, k].std(0), "viridis", 0, 0.5 * lim)]):
            axes[i, j].imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(f"t = {k * args.interval:g}" + ("" if k <= times[-1] else "\n(forecast)"), fontsize=8)
    for i, name in enumerate(["truth", "observations", "posterior mean", "posterior sd"]):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "assimilation.png", dpi=120)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    t = [r["time"] for r in rows]
    a.plot(t, [r["crps_model"] for r in rows], "o-", label="posterior (MMPS)")
    a.plot(t, [r["crps_climatology"] for r in rows], "s--", label="climatology")
    a.plot(t, [r["mae_interpolation"] for r in rows], "^:", label="interpolated observations")
    b.plot(t, [r["ssr_model"] for r in rows], "o-")
    b.axhline(1.0, color="k", lw=0.5)
    for ax in (a, b):
        ax.axvline(times[-1] * args.interval, color="gray", lw=0.5)
        ax.set_xlabel("time")
    a.set_ylabel("CRPS (vorticity units)")
    b.set_ylabel("spread-skill ratio")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "scores.png", dpi=120)
    print(f"simulated in {sim_s:.0f} s, trained {args.steps} steps on {windows.shape[0]} windows in {train_s:.0f} s, "
          f"{args.members} posterior trajectories in {post_s:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
