"""Likelihood accuracy after training, and sample quality against the number of evaluations.

A small periodic UNet is trained within a budget of CPU time on the built-in Gaussian random
field (16x16, power-law spectrum P(k) = |k|^-3, fresh fields every step, so the training set
is unlimited and the held-out fields are never seen), by denoising score matching on the
linear VP-SDE (0.1, 20) through ``scidiff.training.Trainer``.  The fields are normalised,
z = x / std with std^2 the field's exact pointwise variance, so log p(x) = log p(z) - D log std.

Section "accuracy": on held-out fields, the model's PF-ODE bits/dim (``sd.log_likelihood``,
exact trace on one field, Hutchinson with 4 probes on 16) and the DDPM variational bound
(``sd.DDPM.linear(1000).vlb`` through the model's eps; ``DDPM.linear(1000).sde`` is the VP-SDE
the model was trained on) against the field's exact bits/dim (``GaussianRandomField.log_prob``).

Section "quality": the power-spectrum error (``scidiff.metrics.spectrum_error``, mean |ln P_model
/ P_data| over k shells) of model samples against held-out fields, for ancestral sampling with
1000, 250 and 50 steps and the PF-ODE (dopri5) at two tolerances, next to the error of as many
true fields (the sampling-noise floor of the estimate).

    python benchmarks/bench_accuracy.py --budget-min 15 --checkpoint /tmp/scidiff-bench/grf16.pt
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Section, parse_script_args, report, script_parser, timed  # noqa: E402

TRAIN_NET: dict[str, Any] = {"base_channels": 16, "channel_mults": (1, 2, 2), "num_res_blocks": 1, "groups": 8}
QUICK_TRAIN_NET: dict[str, Any] = {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "groups": 4,
                                   "num_heads": 2}
DEFAULT_CHECKPOINT = Path("/tmp/scidiff-bench/grf16.pt")


@dataclass
class GRFData:
    """The Gaussian random field of the benchmark and its normalisation z = x / std."""

    size: int
    slope: float = 3.0

    def __post_init__(self) -> None:
        from scidiff.simulators.grf import GaussianRandomField

        self.grf = GaussianRandomField(self.size, 2, slope=self.slope)
        self.std = float(self.grf.spectrum(half=False).mean().sqrt())
        self.d = self.size * self.size

    def fields(self, n: int, seed: int) -> Tensor:
        """n fields x in physical units, [n, 1, size, size] float32."""
        return self.grf.sample(n, seed=seed, dtype=torch.float32)[:, None]

    def train_batch(self, n: int, step: int) -> Tensor:
        """Normalised training fields z of step ``step`` (seeds 10^6 + step, never held out)."""
        return self.fields(n, seed=1_000_000 + step) / self.std

    def held_out(self, n: int, seed: int = 1) -> Tensor:
        """Normalised held-out fields z [n, 1, size, size]."""
        return self.fields(n, seed=seed) / self.std

    @property
    def log_det(self) -> float:
        """log |det dz/dx| = -D log std."""
        return -self.d * math.log(self.std)

    def exact_bpd(self, z: Tensor) -> Tensor:
        """Exact bits/dim of the physical fields x = std z: -log p(x) / (D ln 2), [B] float64."""
        return -self.grf.log_prob((z * self.std).double()) / (self.d * math.log(2.0))


def train_model(*, quick: bool, budget_s: float, checkpoint: Path | None, device: torch.device | str = "cpu",
                size: int | None = None, batch: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Train within ``budget_s`` seconds of CPU time of this process (``time.process_time``, all its
    threads: a budget that another user's load on a shared machine does not eat); save the EMA
    weights to ``checkpoint``."""
    import scidiff as sd
    from scidiff.training import TrainConfig, Trainer

    size = size or (8 if quick else 16)
    batch = batch or (8 if quick else 32)
    data = GRFData(size)
    torch.manual_seed(0)
    net = sd.UNet(1, 2, periodic=True, **(QUICK_TRAIN_NET if quick else TRAIN_NET))
    model = sd.ScoreModel(net, sd.VPSDE(0.1, 20.0))
    cfg = TrainConfig(steps=10**9, batch_size=batch, lr=1e-3 if quick else 5e-4, warmup_steps=10 if quick else 200,
                      ema_decay=0.9 if quick else 0.999, grad_clip=1.0, val_every=0, checkpoint_every=0,
                      log_every=10**9)
    trainer = Trainer(model, cfg, device=device)
    started = time.perf_counter()
    cpu_start = time.process_time()
    losses: list[float] = []
    step = 0
    while time.process_time() - cpu_start < budget_s:
        loss, _ = trainer.train_step(data.train_batch(batch, step).to(trainer.device))
        losses.append(float(loss))
        step += 1
        if progress and step % 100 == 0:
            recent = sum(losses[-100:]) / len(losses[-100:])
            print(f"  step {step}  loss {recent:.4f}  {time.process_time() - cpu_start:.0f} s CPU, "
                  f"{time.perf_counter() - started:.0f} s wall", flush=True)
    seconds = time.perf_counter() - started
    info = {
        "size": size, "batch": batch, "steps": step, "train_seconds": time.process_time() - cpu_start,
        "train_wall_seconds": seconds, "budget_seconds": budget_s,
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "net_config": dict(net.config),
        "train_config": cfg.to_dict(), "threads": torch.get_num_threads(), "std": data.std,
        "params": sum(p.numel() for p in net.parameters()),
    }
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"info": info, "state_dict": trainer.ema_model.net.state_dict()}, checkpoint)
    info["model"] = trainer.ema_model.eval()
    return info


def load_model(checkpoint: Path, *, device: torch.device | str = "cpu"):
    """(ScoreModel, GRFData) from a checkpoint written by :func:`train_model`."""
    import scidiff as sd

    blob = torch.load(checkpoint, map_location=device, weights_only=True)
    info = blob["info"]
    net = sd.UNet(**info["net_config"])
    net.load_state_dict(blob["state_dict"])
    model = sd.ScoreModel(net.to(device).eval(), sd.VPSDE(0.1, 20.0))
    return model, GRFData(info["size"])


def run_accuracy(model, data: GRFData, info: dict[str, Any], *, quick: bool, device: torch.device | str = "cpu",
                 n_hutch: int | None = None, n_exact: int | None = None, tol: float = 1e-4,
                 probes: int = 4) -> Section:
    """ODE and DDPM-ELBO bits/dim of held-out fields against the exact bits/dim."""
    import scidiff as sd

    n_hutch = n_hutch or (2 if quick else 16)
    n_exact = n_exact if n_exact is not None else 1
    tol = 1e-2 if quick else tol
    section = Section(
        name="accuracy",
        title=f"bits/dim on held-out {data.size}x{data.size} GRF fields after training "
              f"({info['train_seconds'] / 60:.1f} CPU-minutes)",
        columns=["estimator", "fields", "nfe", "time_s", "model_bpd", "exact_bpd", "gap_bpd", "gap_se", "pass"],
        goal="the ODE bits/dim approaches the exact bits/dim (gap reported; the ELBO is an upper bound: gap >= 0)",
    )
    started = time.perf_counter()
    z = data.held_out(n_hutch).to(device)
    exact = data.exact_bpd(z.cpu())
    sde = model.sde

    def add(label: str, bpd: Tensor, nfe: int, wall: float, zz: Tensor, ok: bool | None) -> None:
        ex = data.exact_bpd(zz.cpu())
        gap = bpd.double().cpu() - ex
        se = float(gap.std() / math.sqrt(gap.numel())) if gap.numel() > 1 else None
        section.rows.append({"estimator": label, "fields": zz.shape[0], "nfe": nfe, "time_s": wall,
                             "model_bpd": float(bpd.mean()), "exact_bpd": float(ex.mean()),
                             "gap_bpd": float(gap.mean()), "gap_se": se, "pass": ok})

    with torch.no_grad():
        w, res = timed(lambda: sd.log_likelihood(model.score, sde, z, divergence="hutchinson", probes=probes,
                                                 rtol=tol, atol=tol, log_abs_det_jacobian=data.log_det,
                                                 generator=torch.Generator(device=device).manual_seed(0)), device)
    add(f"ODE, Hutchinson x{probes}, tol {tol:g}", res.bits_per_dim, res.nfe, w, z, None)
    if n_exact:
        ze = z[:n_exact]
        w, res = timed(lambda: sd.log_likelihood(model.score, sde, ze, divergence="exact", rtol=tol, atol=tol,
                                                 log_abs_det_jacobian=data.log_det), device)
        add(f"ODE, exact trace, tol {tol:g}", res.bits_per_dim, res.nfe, w, ze, None)
    if quick:
        from scidiff.training import ddpm_for

        ddpm = ddpm_for(sde, 100)
    else:
        ddpm = sd.DDPM.linear(1000)  # its .sde is VPSDE(0.1, 20), the model's
    w, vlb = timed(lambda: ddpm.vlb(model.eps, z, generator=torch.Generator(device=device).manual_seed(0),
                                    progress=False), device)
    bpd_vlb = (vlb.double().cpu() - data.log_det) / (data.d * math.log(2.0))
    add(f"DDPM ELBO ({ddpm.steps} steps)", bpd_vlb, ddpm.steps, w, z, None)
    section.notes.append(
        f"model: {info['params']:,} parameters, trained {info['steps']} steps of batch {info['batch']} in "
        f"{info['train_seconds']:.0f} s CPU time ({info.get('train_wall_seconds', float('nan')):.0f} s wall on the shared "
        f"machine; budget {info['budget_seconds']:.0f} CPU s, torch threads {info['threads']}), "
        f"DSM uniform-t simple weighting, AdamW lr {info['train_config']['lr']}, EMA {info['train_config']['ema_decay']}; "
        f"final training loss {info['final_loss']:.4f}"
    )
    section.notes.append(
        "gap = model bits/dim - exact bits/dim per held-out field, mean and standard error over fields; bits/dim "
        f"of the physical fields x = std z (log-Jacobian -D log std, std = {data.std:.4g}); exact mean over the "
        f"{n_hutch} fields {float(exact.mean()):.4f}"
    )
    section.seconds = time.perf_counter() - started
    return section


def run_quality(model, data: GRFData, *, quick: bool, device: torch.device | str = "cpu",
                n_samples: int | None = None) -> Section:
    """Power-spectrum error of model samples against held-out fields, per sampler and NFE."""
    import scidiff as sd
    from scidiff.metrics import spectrum_error

    n_samples = n_samples or (4 if quick else 32)
    configs: list[tuple[str, dict[str, Any]]] = (
        [("ancestral 20", {"method": "ancestral", "steps": 20}),
         ("ode dopri5 1e-2", {"method": "ode", "rtol": 1e-2, "atol": 1e-2})]
        if quick else
        [("ancestral 1000", {"method": "ancestral", "steps": 1000}),
         ("ancestral 250", {"method": "ancestral", "steps": 250}),
         ("ancestral 50", {"method": "ancestral", "steps": 50}),
         ("ode dopri5 1e-3", {"method": "ode", "rtol": 1e-3, "atol": 1e-3}),
         ("ode dopri5 1e-5", {"method": "ode", "rtol": 1e-5, "atol": 1e-5})]
    )
    section = Section(
        name="quality",
        title=f"power-spectrum error of {n_samples} samples vs held-out {data.size}x{data.size} GRF fields",
        columns=["sampler", "nfe", "time_s", "spectrum_error", "floor", "excess", "pass"],
        goal="error near the floor of as many true fields; reported against NFE",
    )
    started = time.perf_counter()
    sde = model.sde
    reference = data.held_out(max(256, n_samples), seed=2) * data.std
    floors = [spectrum_error(data.held_out(n_samples, seed=100 + k) * data.std, reference) for k in range(8)]
    floor = sorted(floors)[len(floors) // 2]
    for label, opts in configs:
        gen = torch.Generator(device=device).manual_seed(5)
        w, res = timed(lambda: sd.sample(model.score, sde, (n_samples, 1, data.size, data.size), generator=gen,
                                         device=device, progress=False, return_result=True, **opts), device)
        err = spectrum_error((res.x.cpu() * data.std).double(), reference)
        section.rows.append({"sampler": label, "nfe": res.nfe, "time_s": w, "spectrum_error": err, "floor": floor,
                             "excess": err - floor, "pass": None})
    section.notes.append(
        "spectrum_error = mean over |k| shells of |ln P_samples(k) - ln P_data(k)|; data: 256 held-out fields; "
        f"floor: median over 8 draws of the error of {n_samples} true fields (sampling noise of the estimate)"
    )
    section.seconds = time.perf_counter() - started
    return section


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--budget-min", type=float, default=15.0, help="training budget in minutes of CPU time")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--retrain", action="store_true", help="train even if the checkpoint exists")
    p.add_argument("--train-only", action="store_true")
    args = parse_script_args(p)
    if args.checkpoint.is_file() and not args.retrain and not args.quick:
        model, data = load_model(args.checkpoint, device=args.device)
        info = torch.load(args.checkpoint, weights_only=True)["info"]
    else:
        info = train_model(quick=args.quick, budget_s=60 * args.budget_min, checkpoint=args.checkpoint,
                           device=args.device, progress=True)
        model, data = info["model"], GRFData(info["size"])
    if args.train_only:
        return
    report([run_accuracy(model, data, info, quick=args.quick, device=args.device),
            run_quality(model, data, quick=args.quick, device=args.device)], args.json)


if __name__ == "__main__":
    main()
