"""scidiff's ancestral sampler against diffusers' DDPMScheduler loop: same network, steps, batch.

diffusers is a peer, never a dependency: it lives in the benchmark's own virtual environment,

    python3 -m venv --system-site-packages benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install diffusers --no-deps
    benchmarks/.venv-peer/bin/pip install huggingface_hub importlib_metadata -c <(echo torch==$(python3 -c 'import torch; print(torch.__version__)'))

and this script is run with that interpreter (``benchmarks/run.py`` does so when the
environment exists; without diffusers the section is skipped with a note).

The network is scidiff's small periodic UNet; diffusers' loop calls it with its integer
timestep k in 0..999 mapped to t = (k + 1) / 1000 (step n = k + 1 of the 1000-step linear
DDPM sits at t = n / N, and ``DDPM.linear(1000).sde`` is scidiff's default VP-SDE).  Both
loops take ``steps`` evaluations: ``scheduler.set_timesteps(steps)`` and
``sd.sample(..., method="ancestral", steps=steps)``.  They are timed interleaved with blocks
of bare forwards in one process; the table gives the median wall times, their ratio and
each loop's overhead ratio against the network.

    benchmarks/.venv-peer/bin/python benchmarks/bench_peer.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Section, make_unet, median, parse_script_args, report, script_parser, timed  # noqa: E402

sys.path.insert(0, str(REPO))


def diffusers_loop(scheduler, net: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The loop of diffusers' DDPMPipeline: eps = net(x, t(k)); x = scheduler.step(eps, k, x).prev_sample."""
    n_train = scheduler.config.num_train_timesteps
    with torch.no_grad():
        for k in scheduler.timesteps:
            t = torch.full((x.shape[0],), (int(k) + 1) / n_train, dtype=x.dtype, device=x.device)
            eps = net(x, t)
            x = scheduler.step(eps, k, x, generator=generator).prev_sample
    return x


def skipped(reason: str) -> Section:
    return Section(name="peer", title="scidiff ancestral vs diffusers DDPMScheduler loop", columns=[],
                   status="skipped", notes=[reason])


def run(*, quick: bool = False, device: torch.device | str = "cpu", sizes: tuple[int, ...] | None = None,
        batch: int = 4, steps: int | None = None, repeats: int | None = None) -> Section:
    """Time both loops at each grid size; returns the section (skipped without diffusers)."""
    try:
        import diffusers
        from diffusers import DDPMScheduler
    except ImportError as err:
        return skipped(f"diffusers is not importable here ({err}); create benchmarks/.venv-peer as described in "
                       "benchmarks/README.md to run this comparison")
    import scidiff as sd

    from bench_overhead import forward_time

    device = torch.device(device)
    sizes = sizes or ((8, 16) if quick else (32, 64))
    steps = steps or (8 if quick else 100)
    repeats = repeats or (1 if quick else 3)
    forwards = 4 if quick else 10
    section = Section(
        name="peer",
        title="scidiff ancestral vs diffusers DDPMScheduler loop (same UNet, steps, batch)",
        columns=["grid", "batch", "steps", "fwd_ms", "scidiff_s", "diffusers_s", "scidiff/diffusers",
                 "scidiff_ratio", "diffusers_ratio", "pass"],
        goal="scidiff no slower: scidiff/diffusers <= 1 (ratios: wall / (steps x forward))",
    )
    started = time.perf_counter()
    sde = sd.VPSDE()
    for size in sizes:
        net = make_unet(quick, device=device)
        model = sd.ScoreModel(net, sde)
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                  clip_sample=False)
        scheduler.set_timesteps(steps)
        gen = torch.Generator(device=device)
        x_fwd = torch.randn(batch, 1, size, size, generator=gen.manual_seed(1), device=device)
        x1 = torch.randn(batch, 1, size, size, generator=gen.manual_seed(2), device=device)

        def ours() -> None:
            sd.sample(model.score, sde, x1.shape, x1=x1, method="ancestral", steps=steps,
                      generator=gen.manual_seed(3), progress=False)

        def theirs() -> None:
            diffusers_loop(scheduler, net, x1, gen.manual_seed(3))

        ours(), theirs()  # warm-up
        t_ours, t_theirs, f_all, r_ours, r_theirs = [], [], [], [], []
        for _ in range(repeats):
            f0 = forward_time(net, x_fwd, forwards, device)
            w_ours, _ = timed(ours, device)
            f1 = forward_time(net, x_fwd, forwards, device)
            w_theirs, _ = timed(theirs, device)
            f2 = forward_time(net, x_fwd, forwards, device)
            t_ours.append(w_ours)
            t_theirs.append(w_theirs)
            f_all.extend([f0, f1, f2])
            r_ours.append(w_ours / (steps * 0.5 * (f0 + f1)))
            r_theirs.append(w_theirs / (steps * 0.5 * (f1 + f2)))
        rel = median([a / b for a, b in zip(t_ours, t_theirs)])
        section.rows.append({
            "grid": f"{size}x{size}", "batch": batch, "steps": steps, "fwd_ms": 1e3 * median(f_all),
            "scidiff_s": median(t_ours), "diffusers_s": median(t_theirs), "scidiff/diffusers": rel,
            "scidiff_ratio": median(r_ours), "diffusers_ratio": median(r_theirs), "pass": rel <= 1.0,
        })
    section.notes.append(
        f"diffusers {diffusers.__version__}, DDPMScheduler(linear 1e-4..0.02, 1000 train steps, clip_sample=False, "
        f"timestep_spacing='leading') with set_timesteps({steps}); {repeats} interleaved repeats, medians; "
        f"torch threads {torch.get_num_threads()}"
    )
    section.seconds = time.perf_counter() - started
    return section


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = parse_script_args(p)
    section = run(quick=args.quick, device=args.device, steps=args.steps, repeats=args.repeats)
    report([section], args.json, single=True)


if __name__ == "__main__":
    main()
