"""Infer the spectral slope of a Gaussian random field from one field, by the model's likelihood.

A parameter-conditioned diffusion model is trained on periodic Gaussian random fields whose
power spectrum P(k) = |k|^-slope has a slope drawn from U[slope_min, slope_max].  For held-out
fields, log p(x | slope) is computed through the probability-flow ODE on a grid of slopes and
compared with the exact log-density of the field (known through the FFT), and the
maximum-likelihood slope of the model is compared with the exact one: the criterion is that
they differ by less than the exact posterior's standard deviation (flat prior).

    python examples/parameter_inference.py --steps 6000 --out runs/parameter_inference

``--minutes`` stops the training early on a wall-clock budget.

Writes ``likelihood_curves.png``, ``posteriors.png`` and ``results.json`` in ``--out`` and the
trained model in ``--out/model`` (reused by a later run with ``--reuse``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import scidiff as sd
from scidiff.conditional import condition, conditional_score
from scidiff.inference import grid_posterior, log_likelihood_grid, parabolic_maximum
from scidiff.simulators.grf import GaussianRandomField


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16, help="grid side n (fields are n x n)")
    p.add_argument("--slope-min", type=float, default=2.0)
    p.add_argument("--slope-max", type=float, default=4.0)
    p.add_argument("--n-train", type=int, default=20000, help="training fields")
    p.add_argument("--steps", type=int, default=6000, help="training steps (cosine learning-rate decay over them)")
    p.add_argument("--minutes", type=float, default=0.0, help="stop training early after this many wall-clock minutes (0: no limit)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2], help="UNet width multipliers per level")
    p.add_argument("--prediction", choices=("eps", "x0", "v"), default="v",
                   help="network parameterisation (v trains fastest on a CPU budget)")
    p.add_argument("--time-sampling", choices=("uniform", "importance"), default="importance",
                   help="t ~ beta / sigma^2 (importance) puts the training where the likelihood is decided")
    p.add_argument("--weighting", choices=("simple", "likelihood"), default="likelihood",
                   help="likelihood: the loss bounds -log p (with importance sampling, an unweighted estimator)")
    p.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the weights (short runs: < 0.999)")
    p.add_argument("--n-test", type=int, default=10, help="held-out fields")
    p.add_argument("--grid-step", type=float, default=0.1, help="spacing of the slope grid for the model")
    p.add_argument("--probes", type=int, default=2, help="Hutchinson probes (0: exact divergence)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="load the model from --out/model if it exists")
    p.add_argument("--out", type=Path, default=Path("runs/parameter_inference"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if not args.slope_min < args.slope_max:
        p.error(f"--slope-min {args.slope_min} must be below --slope-max {args.slope_max}")
    for name in ("size", "n_train", "steps", "batch_size", "n_test"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.grid_step <= args.slope_max - args.slope_min:
        p.error(f"--grid-step must be in (0, {args.slope_max - args.slope_min:g}], got {args.grid_step}")
    if args.probes < 0:
        p.error(f"--probes must be >= 0 (0: exact divergence), got {args.probes}")
    return args


def build_model(args: argparse.Namespace) -> sd.ScoreModel:
    """UNet on periodic n x n fields, conditioned on [s, 1] (cond_dim = 2), s the slope scaled to [-1, 1]."""
    net = sd.UNet(1, 2, periodic=True, cond_dim=2, base_channels=args.base_channels,
                  channel_mults=tuple(args.channel_mults), attention_levels=())
    return sd.ScoreModel(net, sd.VPSDE(), prediction=args.prediction)


def scaled(slope: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """The slope mapped from [slope_min, slope_max] to [-1, 1]: the network's conditioning input."""
    mid, half = 0.5 * (args.slope_max + args.slope_min), 0.5 * (args.slope_max - args.slope_min)
    return (slope - mid) / half


def train(model, fields, slopes, args) -> tuple[sd.ScoreModel, dict]:
    """Train for ``args.steps`` steps (or until ``args.minutes`` of wall time) with the training module."""
    from scidiff.training import TrainConfig, Trainer

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=200,
                         lr_decay="cosine", ema_decay=args.ema_decay, log_every=100, checkpoint_every=0,
                         val_every=0, seed=args.seed, grad_clip=1.0, time_sampling=args.time_sampling,
                         weighting=args.weighting)
    trainer = Trainer(model, config)
    cond = condition(scaled(slopes, args)[:, None].float())
    start = time.perf_counter()
    limit = 60 * args.minutes if args.minutes > 0 else math.inf
    chunk = 100 if math.isfinite(limit) else args.steps  # check the wall clock every 100 steps
    while trainer.step < args.steps and time.perf_counter() - start < limit:
        trainer.fit(fields, cond, until=min(args.steps, trainer.step + chunk), progress=not args.no_progress)
    wall = time.perf_counter() - start
    info = {"prediction": args.prediction, "time_sampling": args.time_sampling, "weighting": args.weighting,
            "base_channels": args.base_channels, "channel_mults": list(args.channel_mults),
            "lr": args.lr, "train_steps": trainer.step, "train_wall_s": wall, "batch_size": args.batch_size,
            "final_loss": trainer.history[-1]["loss"] if trainer.history else math.nan,
            "parameters": sum(p.numel() for p in model.parameters())}
    return trainer.ema_model, info


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    grf = GaussianRandomField(args.size, 2)
    d = grf.num_pixels

    # ---- data: fields at slopes ~ U[slope_min, slope_max], scaled by one global constant c
    gen = torch.Generator().manual_seed(args.seed)
    slopes = args.slope_min + (args.slope_max - args.slope_min) * torch.rand(args.n_train, generator=gen, dtype=torch.float64)
    fields = grf.sample(args.n_train, slope=slopes, generator=gen)[:, None]  # [N, 1, n, n] float64
    c = float(fields.std())
    x_train = (fields / c).float()

    # ---- the conditional model
    model = build_model(args)
    model_dir = args.out / "model"
    info: dict = {}
    if args.reuse and (model_dir / "model.pt").exists():
        saved = torch.load(model_dir / "model.pt", weights_only=True)
        try:
            model.load_state_dict(saved["state"])
        except RuntimeError:
            raise SystemExit(f"{model_dir / 'model.pt'} was trained with another network (saved: "
                             f"{saved['info'].get('base_channels')} base channels, levels "
                             f"{saved['info'].get('channel_mults')}); pass the same --base-channels and "
                             "--channel-mults, or drop --reuse to train anew") from None
        info = saved["info"]
        print(f"loaded the model trained for {info['train_steps']} steps ({info['train_wall_s'] / 60:.1f} min)")
    else:
        model, info = train(model, x_train, slopes, args)
        model_dir.mkdir(exist_ok=True)
        torch.save({"state": model.state_dict(), "info": info}, model_dir / "model.pt")
        print(f"trained {info['train_steps']} steps in {info['train_wall_s'] / 60:.1f} min "
              f"({info['parameters']} parameters, batch {args.batch_size}), final loss {info['final_loss']:.4f}")
    model.eval()

    # ---- held-out fields, slopes away from the prior's edges
    gen_test = torch.Generator().manual_seed(args.seed + 1000)
    lo, hi = args.slope_min + 0.3, args.slope_max - 0.3
    true_slopes = lo + (hi - lo) * torch.rand(args.n_test, generator=gen_test, dtype=torch.float64)
    x_test = grf.sample(args.n_test, slope=true_slopes, generator=gen_test)[:, None]

    # ---- exact: log p(x | slope) on a fine grid, posterior (flat prior on the training range)
    fine = torch.arange(args.slope_min, args.slope_max + 1e-9, 0.002, dtype=torch.float64)
    exact_fine = grf.log_prob_grid(x_test, fine).T  # [G, B]
    post_exact = grid_posterior(exact_fine, fine)
    ml_exact = post_exact.max_likelihood[:, 0]
    std_exact = post_exact.std[:, 0]

    # ---- the model: log p(x | slope) = log p_model(x / c | slope) - D log c, on a coarser grid
    grid = torch.arange(args.slope_min, args.slope_max + 1e-9, args.grid_step, dtype=torch.float64)
    opts = {"divergence": "exact"} if args.probes == 0 else {"divergence": "hutchinson", "probes": args.probes}
    t0 = time.perf_counter()
    with torch.no_grad():
        ll_model = log_likelihood_grid(
            lambda th: conditional_score(model, scaled(th, args).reshape(1)), model.sde, (x_test / c).float(), grid,
            seed=args.seed, progress=not args.no_progress, rtol=1e-4, atol=1e-4, **opts,
        ).double() - d * math.log(c)
    lik_wall = time.perf_counter() - t0
    ll_exact = grf.log_prob_grid(x_test, grid).T
    ml_model = parabolic_maximum(grid, ll_model)
    post_model = grid_posterior(ll_model, grid)
    ok = (ml_model - ml_exact).abs() < std_exact
    # per field, at the grid slope nearest the exact ML: the model's log-likelihood minus the exact one
    near = (grid[:, None] - ml_exact[None, :]).abs().argmin(0)
    gap = (ll_model - ll_exact).gather(0, near[None, :])[0]
    # the model's posterior sd from its curve interpolated onto the fine grid (the coarse grid under-resolves it)
    ll_model_fine = torch.from_numpy(_interp(fine, grid, ll_model))  # [F, B]
    sd_model = grid_posterior(ll_model_fine, fine).std[:, 0]

    print(f"\nlog p(x | slope) on {grid.numel()} slopes for {args.n_test} fields: {lik_wall:.0f} s "
          f"({opts['divergence']}{'' if args.probes == 0 else f', {args.probes} probes'})")
    print(f"{'field':>5} {'true':>6} {'ML exact':>9} {'post sd':>8} {'ML model':>9} {'|diff|/sd':>9} "
          f"{'post sd model':>13} {'gap at ML [nats]':>16}  ok")
    for b in range(args.n_test):
        print(f"{b:>5} {true_slopes[b]:6.3f} {ml_exact[b]:9.3f} {std_exact[b]:8.3f} {ml_model[b]:9.3f} "
              f"{abs(ml_model[b] - ml_exact[b]) / std_exact[b]:9.2f} {sd_model[b]:13.3f} {gap[b]:16.1f}  "
              f"{'yes' if ok[b] else 'no'}")
    print(f"\nmedian posterior sd: model {float(sd_model.median()):.3f}, exact {float(std_exact.median()):.3f}; "
          f"median |gap| at the ML slope {float(gap.abs().median()):.1f} nats ({float(gap.abs().median()) / (d * math.log(2)):.3f} bits/dim)")
    print(f"{int(ok.sum())} of {args.n_test} held-out fields: |ML_model - ML_exact| < exact posterior sd "
          f"(training: {info['train_steps']} steps, {info['train_wall_s'] / 60:.1f} min)")

    results = {
        "size": args.size, "n_train": args.n_train, **info, "grid_step": args.grid_step, "divergence": opts,
        "likelihood_wall_s": lik_wall, "n_ok": int(ok.sum()), "n_test": args.n_test,
        "fields": [
            {"true": float(true_slopes[b]), "ml_exact": float(ml_exact[b]), "posterior_sd_exact": float(std_exact[b]),
             "ml_model": float(ml_model[b]), "posterior_mean_model": float(post_model.mean[b, 0]),
             "posterior_sd_model": float(sd_model[b]), "loglik_gap_at_ml_nats": float(gap[b]),
             "ok": bool(ok[b])}
            for b in range(args.n_test)
        ],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    figures(args, grid, ll_model, ll_exact, fine, exact_fine, ll_model_fine, post_model, true_slopes, ml_exact, ml_model)
    print(f"wrote {args.out}/likelihood_curves.png, posteriors.png, results.json")


def figures(args, grid, ll_model, ll_exact, fine, exact_fine, ll_model_fine, post_model, true_slopes, ml_exact,
            ml_model) -> None:
    """Likelihood curves (each shifted to its maximum) and posteriors over the slope, model vs exact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(4, ll_model.shape[1])
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.2), squeeze=False)
    for b, ax in enumerate(axes[0]):
        ax.plot(grid, ll_exact[:, b] - ll_exact[:, b].max(), color="k", lw=1.5, label="exact")
        ax.plot(grid, ll_model[:, b] - ll_model[:, b].max(), "o--", ms=3, color="C0", label="model (PF-ODE)")
        ax.axvline(float(true_slopes[b]), color="0.5", ls=":", label="true slope")
        ax.set_ylim(-60, 5)
        ax.set_xlabel("spectral slope")
        ax.set_title(f"field {b}")
    axes[0, 0].set_ylabel("log p(x | slope) - max  [nats]")
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(args.out / "likelihood_curves.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.0), squeeze=False)
    h_fine = float(fine[1] - fine[0])
    h = float(grid[1] - grid[0])
    for b, ax in enumerate(axes[0]):
        dens_exact = torch.softmax(exact_fine[:, b], 0) / h_fine
        fine_model = torch.softmax(ll_model_fine[:, b], 0) / h_fine
        ax.plot(fine, dens_exact, color="k", lw=1.5, label="exact")
        ax.plot(fine, fine_model, color="C0", lw=1.2, label="model")
        ax.plot(grid, post_model.weights[:, b] / h, "o", ms=3, color="C0")
        ax.axvline(float(true_slopes[b]), color="0.5", ls=":")
        centre = float(ml_exact[b])
        ax.set_xlim(centre - 0.4, centre + 0.4)
        ax.set_xlabel("spectral slope")
        ax.set_title(f"field {b}: ML {float(ml_model[b]):.2f} vs {centre:.2f}")
    axes[0, 0].set_ylabel("p(slope | x)")
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(args.out / "posteriors.png", dpi=120)
    plt.close(fig)


def _interp(xq, x, y):
    """Cubic-spline interpolation of curves ``y`` [G, B] sampled at ``x`` [G] onto ``xq`` [F]: [F, B]."""
    from scipy.interpolate import CubicSpline

    return CubicSpline(x.numpy(), y.numpy(), axis=0)(xq.numpy())


if __name__ == "__main__":
    main()
