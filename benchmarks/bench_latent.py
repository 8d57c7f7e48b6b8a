"""Latent against pixel-space diffusion on Gaussian random fields, at an equal training budget.

Section "latent_quality": on the built-in GRF simulator (2-D 64x64 and 3-D 32^3; --quick:
16x16 and 8^3), a pixel-space UNet trained for S steps against an autoencoder (factor 4 per axis,
4 latent channels) trained for S steps followed by a UNet of the same widths on its latents for
S steps (the same batch size and learning rate throughout).  Per model: training time, sampling
time per field (DPM-Solver++ 2M, the same steps for both, including the decoder), NFE, the
spectrum error of the samples against held-out data (``scidiff.metrics.spectrum_error``), the
autoencoder's held-out relative reconstruction error per wavenumber band, and the peak device
memory of sampling (CUDA only).

Section "latent_bound": on a small 2-D GRF with its exact log-density, the per-field gap
exact log p(x) - estimate for the pixel model's PF-ODE likelihood and for the latent model's
evidence lower bound (both in nats per field and bits/dim), with the standard errors.

Section "latent_memory": peak memory of one training step and of one sampling batch of the
pixel UNet, the autoencoder and the latent UNet at 64^2 and 32^3 (--quick: 16^2 and 8^3), each
in a fresh process (resident memory on a CPU, allocated memory on CUDA).

    python benchmarks/bench_latent.py [--quick] [--steps S] [--dims 2,3] [--only quality,bound,memory]
        [--json out.json]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Section, clock_name, parse_script_args, report, script_parser, timed  # noqa: E402

import scidiff as sd  # noqa: E402
from scidiff.latent import (  # noqa: E402
    Autoencoder, AutoencoderLoss, AutoencoderTrainer, LatentDiffusion, latent_statistics, shell_power,
)
from scidiff.metrics import spectrum_error  # noqa: E402
from scidiff.simulators import GaussianRandomField  # noqa: E402
from scidiff.training import TrainConfig, Trainer  # noqa: E402

SPECTRUM_GOAL = 1.5
COST_GOAL = 0.1


def _unet(channels: int, dims: int, quick: bool, base: int = 0) -> sd.ScoreModel:
    cfg = dict(base_channels=8, channel_mults=(1, 2), groups=4) if quick else \
        dict(base_channels=base or 32, channel_mults=(1, 2, 2), groups=8)
    net = sd.UNet(channels, dims, periodic=True, attention_levels=(), **cfg)
    return sd.ScoreModel(net, sd.VPSDE(), prediction="v")


def _config(steps: int, quick: bool) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16 if quick else 32, lr=1e-3, warmup_steps=min(50, steps // 5),
                       ema_decay=0.99 if not quick else 0.9, log_every=max(1, steps // 4), val_every=0,
                       checkpoint_every=0, seed=0)


def _band_errors(ae: Autoencoder, x: torch.Tensor) -> list[float]:
    """Relative reconstruction error per quarter of the wavenumber shells: sum|r_k|^2 / sum|x_k|^2."""
    with torch.no_grad():
        r = shell_power(ae(x) - x).mean(0)[0, 1:]
        p = shell_power(x).mean(0)[0, 1:]
    edges = np.linspace(0, len(p), 5).astype(int)
    return [float(r[a:b].sum() / p[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])]


def _peak(device: torch.device, fn):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = timed(fn, device)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return out, mem


def quality(args, dims: int) -> Section:
    quick, device = args.quick, torch.device(args.device)
    size = (16 if dims == 2 else 8) if quick else (64 if dims == 2 else 32)
    size = args.size or size
    steps = args.steps or (20 if quick else 1000)
    n_train, n_test, n_samples = (64, 32, 8) if quick else (1024, 256, 64 if dims == 2 else 16)
    n_samples = args.samples or n_samples
    sampler = dict(method="dpmpp_2m", steps=10 if quick else 25)
    grf = GaussianRandomField(size, dims=dims, slope=3.0)
    x_train = grf.sample(n_train, seed=0)[:, None]
    x_test = grf.sample(n_test, seed=1)[:, None]
    scale = float(x_train.std())
    z_train, z_test = (x_train / scale).float().to(device), (x_test / scale).float().to(device)
    cfg = _config(steps, quick)
    sec = Section(
        name=f"latent_quality_{dims}d", title=f"pixel vs latent diffusion, GRF {size}^{dims}, {steps} steps each",
        columns=["model", "train_s", "sample_s_per_field", "nfe", "spectrum_error", "peak_sample_MiB",
                 "recon_rel_err_bands"],
        goal=f"latent (factor 4) spectrum error within {SPECTRUM_GOAL}x of pixel space at <= {COST_GOAL}x "
             "its sampling time per field",
    )
    # pixel space
    torch.manual_seed(0)
    pixel = _unet(1, dims, quick, args.base_channels).to(device)
    t_pix, trainer = timed(lambda: _fit(Trainer(pixel, cfg), z_train), device)
    model = trainer.ema_model.eval()
    (t_s, x_pix), mem = _peak(device, lambda: sd.sample(model.score, model.sde, (n_samples, 1, *grf.spatial_shape),
                                                         generator=torch.Generator(device).manual_seed(0),
                                                         device=device, progress=False, return_result=True,
                                                         **sampler))
    sec.rows.append({"model": "pixel", "train_s": t_pix, "sample_s_per_field": t_s / n_samples, "nfe": x_pix.nfe,
                     "spectrum_error": spectrum_error(x_pix.x.cpu()[:, 0], z_test.cpu()[:, 0]),
                     "peak_sample_MiB": mem, "recon_rel_err_bands": ""})
    # latent space
    torch.manual_seed(0)
    ae = Autoencoder(1, dims, factor=4, latent_channels=4, base_channels=8 if quick else (args.base_channels or 32),
                     groups=4 if quick else 8).to(device)
    ae_trainer = AutoencoderTrainer(ae, cfg, loss=AutoencoderLoss(kl_weight=1e-6, spectral_weight=0.1))
    t_ae, _ = timed(lambda: ae_trainer.fit(z_train, val_data=z_test, progress=False), device)
    ae = ae_trainer.ema_model.eval()
    shift, s = latent_statistics(ae, z_train)
    view = (1, -1, *([1] * dims))
    with torch.no_grad():
        u = (ae.encode(z_train).mean - shift.reshape(view)) / s.reshape(view)
    torch.manual_seed(0)
    lat = _unet(4, dims, quick, args.base_channels).to(device)
    t_lat, trainer = timed(lambda: _fit(Trainer(lat, cfg), u), device)
    ld = LatentDiffusion(ae, trainer.ema_model.eval(), (1, *grf.spatial_shape), latent_shift=shift, latent_scale=s)

    def draw():
        x, _ = ld.sample(n_samples, sampler["method"], steps=sampler["steps"], device=device,
                         generator=torch.Generator(device).manual_seed(0), progress=False, return_latent=True)
        return x

    (t_s2, x_lat), mem2 = _peak(device, draw)
    bands = _band_errors(ae, z_test[: min(64, n_test)])
    sec.rows.append({"model": "latent f=4 c=4", "train_s": t_ae + t_lat, "sample_s_per_field": t_s2 / n_samples,
                     "nfe": x_pix.nfe, "spectrum_error": spectrum_error(x_lat.cpu()[:, 0], z_test.cpu()[:, 0]),
                     "peak_sample_MiB": mem2, "recon_rel_err_bands": " ".join(f"{b:.3g}" for b in bands)})
    p, q = sec.rows
    sec.notes += [
        f"clock: {clock_name()}; latent train_s = autoencoder {t_ae:.1f} s + latent UNet {t_lat:.1f} s",
        f"ratios latent/pixel: spectrum error {q['spectrum_error'] / p['spectrum_error']:.2f}, "
        f"sampling time per field {q['sample_s_per_field'] / p['sample_s_per_field']:.3f}",
        "recon_rel_err_bands: held-out sum |FFT(D(mu(x)) - x)|^2 / sum |FFT(x)|^2 over four equal bands of |k| "
        "shells, low to high",
        "both samplers take the same steps (NFE); the latent row's time includes decoding",
    ]
    return sec


def _fit(trainer, data):
    trainer.fit(data, progress=False)
    return trainer


def bound(args) -> Section:
    quick, device = args.quick, torch.device(args.device)
    size = 8 if quick else 16
    steps = args.steps or (20 if quick else 1000)
    grf = GaussianRandomField(size, dims=2, slope=3.0)
    x_train = grf.sample(64 if quick else 1024, seed=0)[:, None]
    x_test = grf.sample(4 if quick else 32, seed=1)[:, None]
    scale = float(x_train.std())
    d = size * size
    jac = -d * math.log(scale)
    z_train, z_test = (x_train / scale).float().to(device), (x_test / scale).float().to(device)
    cfg = _config(steps, quick)
    exact = grf.log_prob(x_test)
    sec = Section(name="latent_bound", title=f"likelihood gap to the exact GRF density, {size}x{size}, {steps} steps",
                  columns=["model", "mean_gap_nats", "mean_gap_bits_per_dim", "mean_se_nats", "nfe"],
                  goal="the latent bound below the exact log p on average (within its SE); its gap reported "
                       "beside the pixel model's")
    torch.manual_seed(0)
    pixel = Trainer(_unet(1, 2, True), cfg)
    pixel.fit(z_train, progress=False)
    m = pixel.ema_model.eval()
    res = sd.log_likelihood(m.score, m.sde, z_test, divergence="hutchinson", probes=4, rtol=1e-3, atol=1e-3,
                            generator=torch.Generator(device).manual_seed(0))
    gap = exact - (res.log_prob.double().cpu() + jac)
    sec.rows.append({"model": "pixel (PF-ODE log p)", "mean_gap_nats": float(gap.mean()),
                     "mean_gap_bits_per_dim": float(gap.mean()) / (d * math.log(2)),
                     "mean_se_nats": float(res.log_prob_se.mean()), "nfe": res.nfe})
    torch.manual_seed(0)
    ae_t = AutoencoderTrainer(Autoencoder(1, 2, factor=2, latent_channels=2, base_channels=8, groups=4).to(device),
                              cfg)
    ae_t.fit(z_train, val_data=z_test, progress=False)
    ae = ae_t.ema_model.eval()
    shift, s = latent_statistics(ae, z_train)
    with torch.no_grad():
        u = (ae.encode(z_train).mean - shift[:, None, None]) / s[:, None, None]
    lat = Trainer(_unet(2, 2, True), cfg)
    lat.fit(u, progress=False)
    ld = LatentDiffusion(ae, lat.ema_model.eval(), (1, size, size), latent_shift=shift, latent_scale=s)
    b = ld.log_likelihood_bound(z_test, samples=4, generator=torch.Generator(device).manual_seed(0),
                                log_abs_det_jacobian=jac, divergence="hutchinson", probes=4, rtol=1e-3, atol=1e-3)
    gap_b = exact - b.log_prob.cpu()
    se_mean = float(b.log_prob_se.square().sum().sqrt()) / len(gap_b)
    sec.rows.append({"model": "latent f=2 c=2 (ELBO)", "mean_gap_nats": float(gap_b.mean()),
                     "mean_gap_bits_per_dim": float(gap_b.mean()) / (d * math.log(2)),
                     "mean_se_nats": float(b.log_prob_se.mean()), "nfe": b.nfe})
    sec.notes += [f"latent bound minus exact, mean over fields: {-float(gap_b.mean()):.3g} nats, its SE {se_mean:.3g}: "
                  + ("below the exact density, as a bound must be" if float(gap_b.mean()) > -3 * se_mean
                     else "ABOVE the exact density beyond 3 SE: a bug"),
                  "the pixel model's figure is an estimate of its own log p (not a bound); its gap is the model's "
                  "misfit plus the estimator's noise",
                  "the bound's gap adds the KL(q(z|x) || p(z|x)) of the encoder and the decoder's Gaussian misfit"]
    return sec


# ---- memory: one training step and one sampling batch of each model, in a fresh process ---------
def _rss_mib() -> float:
    """This process's resident memory now, MiB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _memory_child(job: dict, queue) -> None:
    """Build one model, then run one training step or one sampling batch; put the peak memory
    above the built model's (MiB) on ``queue``: resident memory on a CPU, allocated on CUDA (or
    the error's text)."""
    try:
        queue.put(_memory_of(job))
    except Exception as err:  # reported by the parent
        queue.put(f"{type(err).__name__}: {err}")


def _memory_of(job: dict) -> float:
    import resource

    torch.set_num_threads(1)
    device = torch.device(job["device"])
    dims, size, base, batch = job["dims"], job["size"], job["base"], job["batch"]
    shape = (size,) * dims
    cfg = TrainConfig(steps=1, batch_size=batch, lr=1e-3, warmup_steps=0, val_every=0, checkpoint_every=0, seed=0)
    x = torch.randn(batch, 1, *shape, device=device)
    if job["model"] == "autoencoder":
        model = Autoencoder(1, dims, factor=4, latent_channels=4, base_channels=base, groups=4 if job["quick"] else 8)
        trainer = AutoencoderTrainer(model.to(device), cfg)
        run = lambda: trainer.train_step(x)  # noqa: E731
    else:
        channels = 4 if job["model"] == "latent" else 1
        grid = tuple(n // 4 for n in shape) if job["model"] == "latent" else shape
        score_model = _unet(channels, dims, job["quick"], base).to(device)
        if job["what"] == "train":
            trainer = Trainer(score_model, cfg)
            z = torch.randn(batch, channels, *grid, device=device)
            run = lambda: trainer.fit(z, progress=False)  # noqa: E731
        else:
            ae = Autoencoder(1, dims, factor=4, latent_channels=4, base_channels=base,
                             groups=4 if job["quick"] else 8).to(device).eval()
            model = score_model.eval()

            def run() -> None:
                u = sd.sample(model.score, model.sde, (batch, channels, *grid), method="dpmpp_2m", steps=25,
                              device=device, progress=False)
                if job["model"] == "latent":
                    with torch.no_grad():
                        ae.decode(u)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base_mem = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20 - base_mem
    base_mem = _rss_mib()
    run()
    # ru_maxrss is the process's peak resident set in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mem


def memory(args) -> Section:
    import multiprocessing as mp

    quick = args.quick
    grids = [(2, 16), (3, 8)] if quick else [(2, 64), (3, 32)]
    base = 8 if quick else (args.base_channels or 32)
    batch = 4 if quick else 16
    sec = Section(name="latent_memory",
                  title=f"peak memory of one training step and of sampling {batch} fields (25 DPM-Solver++ 2M steps), "
                        f"UNets and autoencoder of width {base}, batch {batch}",
                  columns=["grid", "model", "train_step_MiB", "sample_MiB"],
                  goal="reported")
    ctx = mp.get_context("spawn")
    for dims, size in grids:
        grid = f"{size}^{dims}"
        rows = {"pixel": {}, "autoencoder": {}, "latent": {}}
        for model, whats in (("pixel", ("train", "sample")), ("autoencoder", ("train",)),
                             ("latent", ("train", "sample"))):
            for what in whats:
                queue = ctx.Queue()
                job = dict(device=args.device, dims=dims, size=size, base=base, batch=batch, model=model, what=what,
                           quick=quick)
                proc = ctx.Process(target=_memory_child, args=(job, queue))
                proc.start()
                value = queue.get(timeout=3600)
                proc.join()
                if isinstance(value, str):
                    raise RuntimeError(f"memory of {model} {what} at {grid}: {value}")
                rows[model][what] = value
        for model, label in (("pixel", "pixel UNet"), ("autoencoder", "autoencoder f=4 C_z=4"),
                             ("latent", "latent UNet (sampling includes the decoder)")):
            sec.rows.append({"grid": grid, "model": label, "train_step_MiB": rows[model].get("train", float("nan")),
                             "sample_MiB": rows[model].get("sample", float("nan"))})
    sec.notes += ["each figure in a fresh process: on a CPU the peak resident memory (ru_maxrss) above the resident "
                  "memory once the model is built; on CUDA the peak allocated memory above the allocated memory then",
                  "untrained networks: memory does not depend on the weights' values"]
    return sec


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--steps", type=int, default=0, help="training steps of every network (default 1000; quick 20)")
    p.add_argument("--size", type=int, default=0, help="grid side of the quality sections (default 64 in 2-D, 32 in 3-D)")
    p.add_argument("--base-channels", type=int, default=0, help="width of the UNets and the autoencoder (default 32)")
    p.add_argument("--samples", type=int, default=0, help="fields sampled per model (default 64 in 2-D, 16 in 3-D)")
    p.add_argument("--dims", default="2", help="which quality sections: 2, 3 or 2,3 (default 2)")
    p.add_argument("--only", default="quality,bound", help="sections: quality, bound, memory")
    args = parse_script_args(p)
    sections = []
    only = args.only.split(",")
    jobs = [lambda d=d: quality(args, d) for d in (int(v) for v in args.dims.split(","))] if "quality" in only else []
    if "bound" in only:
        jobs.append(lambda: bound(args))
    if "memory" in only:
        jobs.append(lambda: memory(args))
    for job in jobs:
        start = time.perf_counter()
        sec = job()
        sec.seconds = time.perf_counter() - start
        sections.append(sec)
    report(sections, args.json)


if __name__ == "__main__":
    main()
