"""Few-step sampling: quality against network evaluations (NFE 5 / 10 / 20 / 50) for every sampler and grid.

Two problems, every row from the same prior draws x_1:

``trained``  the model of ``scidiff demo`` (16 x 16 Gaussian random fields with P(k) ~ k^-3,
             v-predicting UNet, linear VP), ``--samples`` fields per row (default 256).
             Figure: ``scidiff.metrics.spectrum_error`` of the samples (in data units)
             against all training fields; the floor is the same statistic between
             ``--samples`` training fields and the rest.
``grf``      the same Gaussian random field in closed form, with its exact score, so the
             error is the sampler's alone: ``--grf-samples`` fields (default 2048), error per
             Fourier mode of the sample variance, mean_k |ln(var_k / lambda_k)|, and the exact
             density measure: the mean exact log p of the samples minus its expectation under
             the data, -1/2 sum_k (1 + ln(2 pi lambda_k)), in bits/dim (0 for a perfect
             sampler, negative when the samples are too wide, positive when too narrow).

Peers: diffusers' DDIM (clip_sample=False), DPM-Solver++ 2M and 3M, UniPC and Heun schedulers on
the same network (or score), with betas chosen so that their alphas_cumprod[k] equals scidiff's
alpha(t)^2 at t = (k + 1) / 1000 (the network is called at that t).  They need the benchmarks'
peer environment (see ``bench_peer.py``; a ``.pth`` file naming the project's site-packages
works when the system python has no torch); without diffusers the peer rows are skipped.

    benchmarks/.venv-peer/bin/python benchmarks/bench_fewstep.py --run /path/to/scidiff-demo \\
        --json benchmarks/results/fewstep_cpu.json
    python benchmarks/bench_fewstep.py --quick                # tiny, no trained model needed

These are measurements, not tests.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Section, load_average, parse_script_args, report, script_parser  # noqa: E402

sys.path.insert(0, str(REPO))
import scidiff as sd  # noqa: E402
from scidiff.metrics import spectrum_error  # noqa: E402
from scidiff.sampling import make_sampler  # noqa: E402
from scidiff.simulators import GaussianRandomField  # noqa: E402

NFES = (5, 10, 20, 50)
GRIDS = ("uniform", "logsnr", "karras")
FEW_STEP = ("auto", "unipc_2", "unipc_3", "dpmpp_2m", "dpmpp_3m", "ddim", "heun", "ancestral")


def steps_for(method: str, nfe: int) -> int:
    """The ``steps`` giving at most ``nfe`` evaluations (Heun: 2 steps - 1; Euler-Maruyama: steps + 1)."""
    if method == "heun":
        return max(2, (nfe + 1) // 2)
    if method == "euler_maruyama":
        return max(1, nfe - 1)
    return nfe


def scidiff_configs(nfes: tuple[int, ...]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) for every scidiff sampler, grid and NFE."""
    out = []
    for method in FEW_STEP:
        for grid in GRIDS if method in ("dpmpp_2m", "dpmpp_3m", "ddim", "heun", "ancestral") else GRIDS[1:]:
            for nfe in nfes:
                out.append((f"{method} / {grid}", method, {"steps": steps_for(method, nfe), "grid": grid}))
    for nfe in nfes:
        out.append(("euler_maruyama / uniform", "euler_maruyama", {"steps": steps_for("euler_maruyama", nfe)}))
    for tol in (1e-3, 1e-5):
        out.append((f"ode dopri5 tol {tol:g}", "ode", {"rtol": tol, "atol": tol}))
    return out


# ---- diffusers ---------------------------------------------------------------------------------
def peer_configs(nfes: tuple[int, ...]) -> list[tuple[str, Callable[[], Any], int]]:
    """(label, scheduler factory, num_inference_steps) for each peer configuration and NFE."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return []
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler

    betas = _matching_betas()
    base = {"num_train_timesteps": 1000, "trained_betas": betas.tolist(), "prediction_type": "epsilon"}
    kinds: list[tuple[str, Callable[[], Any], bool]] = [
        ("diffusers DDIM", lambda: DDIMScheduler(**base, clip_sample=False), False),
        ("diffusers DDIM trailing", lambda: DDIMScheduler(**base, clip_sample=False, timestep_spacing="trailing"), False),
        ("diffusers DPM++ 2M", lambda: DPMSolverMultistepScheduler(**base, solver_order=2), False),
        ("diffusers DPM++ 2M karras", lambda: DPMSolverMultistepScheduler(**base, solver_order=2, use_karras_sigmas=True), False),
        ("diffusers DPM++ 2M lu-lambdas", lambda: DPMSolverMultistepScheduler(**base, solver_order=2, use_lu_lambdas=True), False),
        ("diffusers DPM++ 3M", lambda: DPMSolverMultistepScheduler(**base, solver_order=3), False),
        ("diffusers DPM++ 3M karras", lambda: DPMSolverMultistepScheduler(**base, solver_order=3, use_karras_sigmas=True), False),
        ("diffusers DPM++ 3M lu-lambdas", lambda: DPMSolverMultistepScheduler(**base, solver_order=3, use_lu_lambdas=True), False),
        ("diffusers UniPC", lambda: UniPCMultistepScheduler(**base), False),
        ("diffusers UniPC karras", lambda: UniPCMultistepScheduler(**base, use_karras_sigmas=True), False),
        # exponential sigmas: uniform in log(sigma / alpha), i.e. the log-SNR grid
        ("diffusers UniPC exponential", lambda: UniPCMultistepScheduler(**base, use_exponential_sigmas=True), False),
        ("diffusers UniPC-3 exponential",
         lambda: UniPCMultistepScheduler(**base, solver_order=3, use_exponential_sigmas=True), False),
        ("diffusers Heun", lambda: HeunDiscreteScheduler(**base), True),
        ("diffusers Heun karras", lambda: HeunDiscreteScheduler(**base, use_karras_sigmas=True), True),
    ]
    out = []
    for label, factory, heun in kinds:
        for nfe in nfes:
            out.append((label, factory, (nfe + 1) // 2 if heun else nfe))
    return out


def _matching_betas(n: int = 1000) -> np.ndarray:
    """b_k with prod_{j<=k} (1 - b_j) = alpha(t)^2 at t = (k + 1) / n: scidiff's continuous schedule."""
    t = torch.arange(0, n + 1, dtype=torch.float64) / n
    a2 = sd.VPSDE().schedule.coefficients(t).alpha ** 2
    return (1.0 - a2[1:] / a2[:-1]).numpy()


def peer_loop(scheduler: Any, steps: int, eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              x1: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """diffusers' pipeline loop: eps = net(scale(x), t(k)); x = scheduler.step(eps, k, x).prev_sample."""
    scheduler.set_timesteps(steps)
    x = x1 * scheduler.init_noise_sigma
    nfe = 0
    n_train = scheduler.config.num_train_timesteps
    with torch.no_grad():
        for k in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, k)
            t = torch.full((x.shape[0],), (float(k) + 1.0) / n_train, dtype=torch.float64).clamp(max=1.0)
            eps = eps_fn(inp, t)
            nfe += 1
            kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
            x = scheduler.step(eps, k, x, **kwargs).prev_sample
    return x, nfe


# ---- the two problems -----------------------------------------------------------------------
class TrainedProblem:
    """The demo's trained model; error = spectrum error of the samples against the training fields."""

    name = "trained"

    def __init__(self, run: Path, n: int) -> None:
        import xarray as xr

        ckpt = sd.load_checkpoint(run)
        self.model = ckpt.model.eval()
        self.sde = self.model.sde
        self.normalizer = ckpt.normalizer_object()
        with xr.open_dataset(run / "data" / "train.nc") as ds:
            self.train = torch.as_tensor(ds["field"].values, dtype=torch.float32)[:, None]
        self.n = n
        self.shape = (n, *self.train.shape[1:])
        self.floor = spectrum_error(self.train[:n], self.train[n:])

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.score(x, t.to(x.dtype))

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.eps(x.float(), t.float())

    seed = 1  # of the prior draws x_1 (--seed)

    def x1(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(self.seed))

    def measure(self, z: torch.Tensor) -> dict[str, float]:
        x = self.normalizer.inverse(z.float()) if self.normalizer is not None else z.float()
        if not bool(torch.isfinite(x).all()):
            return {"error": float("inf")}
        return {"error": spectrum_error(x, self.train)}


class GRFProblem:
    """The closed-form k^-3 field with its exact score; per-mode variance error and exact log p gap."""

    name = "grf"

    def __init__(self, size: int, n: int) -> None:
        k_spec = GaussianRandomField(size, 2, slope=3.0).spectrum()
        amplitude = size**2 / float(k_spec.sum())  # pointwise variance 1, as the demo's fields
        self.grf = GaussianRandomField(size, 2, slope=3.0, amplitude=amplitude)
        self.sde = sd.VPSDE()
        self.lam = self.grf.spectrum()  # [n, n] full grid, fftn order, float64
        self.shape = (n, 1, size, size)
        self.d = size * size
        self.expected_log_p = float(-0.5 * (1.0 + torch.log(2 * math.pi * self.lam)).sum())
        exact = self.grf.sample(n, generator=torch.Generator().manual_seed(5))[:, None]
        self.floor = self._mode_error(exact.double())
        self.floor_bpd_se = math.sqrt(self.d / 2.0) / math.sqrt(n) / (self.d * math.log(2.0))

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.sde.schedule.coefficients(t[:1].double())
        return self.grf.marginal_score(x[:, 0], float(c.alpha), float(c.sigma))[:, None]

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.sde.schedule.coefficients(t[:1].double())
        return -float(c.sigma) * self.score(x.double(), t)

    def x1(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def _mode_error(self, x: torch.Tensor) -> float:
        var = (torch.fft.fftn(x[:, 0], norm="ortho").abs() ** 2).mean(0)
        return float((torch.log(var) - torch.log(self.lam)).abs().mean())

    def measure(self, x: torch.Tensor) -> dict[str, float]:
        x = x.double()
        if not bool(torch.isfinite(x).all()):
            return {"error": float("inf"), "log_p_gap_bpd": float("inf")}
        log_p = self.grf.log_prob(x[:, 0])
        gap = (float(log_p.mean()) - self.expected_log_p) / (self.d * math.log(2.0))
        return {"error": self._mode_error(x), "log_p_gap_bpd": gap}


def _kept(label: str, keep: str | None) -> bool:
    """Whether a row label is kept by ``--keep`` (comma-separated exact labels; None keeps all)."""
    return keep is None or label in {k.strip() for k in keep.split(",")}


def run_problem(problem: Any, nfes: tuple[int, ...], *, peers: bool, keep: str | None = None) -> Section:
    x1 = problem.x1()
    rows = []
    t0 = time.perf_counter()
    for label, method, options in scidiff_configs(nfes):
        if not _kept(label, keep):
            continue
        sampler = make_sampler(method, **options)
        res = sampler.sample(problem.score, problem.sde, x1.clone(), generator=torch.Generator().manual_seed(2))
        rows.append({"sampler": label, "library": "scidiff", "nfe": res.nfe, **problem.measure(res.x)})
    peer_rows = [r for r in peer_configs(nfes) if _kept(r[0], keep)] if peers else []
    for label, factory, steps in peer_rows:
        x, nfe = peer_loop(factory(), steps, problem.eps, x1.clone(), torch.Generator().manual_seed(2))
        rows.append({"sampler": label, "library": "diffusers", "nfe": nfe, **problem.measure(x)})
    cols = ["sampler", "library", "nfe", "error"] + (["log_p_gap_bpd"] if problem.name == "grf" else [])
    notes = [f"floor (exact or data samples against the reference): {problem.floor:.4f}",
             f"load average at the end: {load_average()}"]
    if problem.name == "grf":
        notes.append(f"log p gap standard error of exact samples: {problem.floor_bpd_se:.2g} bits/dim")
    if peers and not peer_rows:
        notes.append("diffusers is not importable here: peer rows skipped (run with benchmarks/.venv-peer/bin/python)")
    title = ("spectrum error vs NFE, demo's trained 16x16 GRF model" if problem.name == "trained"
             else "per-mode variance error and exact log p gap vs NFE, closed-form k^-3 GRF")
    return Section(name=f"fewstep_{problem.name}", title=title, columns=cols, rows=rows, notes=notes,
                   goal="default few-step sampler (auto) <= 0.06 at 10 NFE (trained), better than the best diffusers "
                        "configuration at 5 NFE, no worse than it at any NFE 5-50", seconds=time.perf_counter() - t0)


# ---- the same field, infinitely many samples: every NFE from 5 to 50 ----------------------------
EXACT_NFES = tuple(range(5, 21)) + (25, 30, 40, 50)
EXACT_METHODS = ("auto", "unipc_2", "unipc_3", "dpmpp_2m", "dpmpp_3m")


def run_exact_modes(size: int = 16) -> Section:
    """The grf problem's per-mode error with no sampling noise, at every NFE from 5 to 20 (and 25-50).

    Every sampler here is linear and diagonal in the field's Fourier basis (the exact score is),
    so x_0 = g_k x_1 per mode and the sample variance of mode k is exactly g_k^2: run on x_1 = 1 with
    one coordinate per mode of variance lambda_k, and the error
    mean_k |ln(g_k^2 / lambda_k)| is the ``grf`` figure for infinitely many samples.
    """
    spec = GaussianRandomField(size, 2, slope=3.0).spectrum()
    lam = GaussianRandomField(size, 2, slope=3.0, amplitude=size**2 / float(spec.sum())).spectrum().flatten()
    sde = sd.VPSDE()

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = sde.schedule.coefficients(t[:1].double())
        return -x / (c.alpha**2 * lam + c.sigma**2)

    rows = []
    t0 = time.perf_counter()
    for grid in ("logsnr", "karras"):
        for method in EXACT_METHODS:
            if method == "auto" and grid == "karras":
                continue
            for nfe in EXACT_NFES:
                res = make_sampler(method, steps=nfe, grid=grid).sample(score, sde, torch.ones(1, lam.numel(),
                                                                                          dtype=torch.float64))
                g2 = res.x[0] ** 2
                rows.append({"sampler": f"{method} / {grid}", "nfe": res.nfe,
                             "error": float((torch.log(g2) - torch.log(lam)).abs().mean()),
                             "log_p_gap_bpd": float(-0.5 * (g2 / lam - 1).sum()) / (lam.numel() * math.log(2.0))})
    return Section(name="fewstep_grf_exact", title=f"per-mode variance error with infinitely many samples, "
                   f"closed-form k^-3 GRF {size}x{size}, every NFE", columns=["sampler", "nfe", "error", "log_p_gap_bpd"],
                   rows=rows, notes=["diffusers' DPM++ 2M / 3M lu-lambdas and UniPC karras match dpmpp_2m, dpmpp_3m "
                                     "/ logsnr and unipc_2 / karras to about 0.005 in the grf section"],
                   seconds=time.perf_counter() - t0)


# ---- posterior sampling with DPS on the closed-form field ------------------------------------
POSTERIOR_SAMPLERS: list[tuple[str, str, dict[str, Any]]] = [
    ("ancestral 300", "ancestral", {"steps": 300}),
    ("ancestral 100", "ancestral", {"steps": 100}),
    ("ddim eta=1 100", "ddim", {"steps": 100, "eta": 1.0}),
    ("ddim 50", "ddim", {"steps": 50}),
    ("dpmpp_2m 20", "dpmpp_2m", {"steps": 20}),
    ("dpmpp_2m 50", "dpmpp_2m", {"steps": 50}),
    ("dpmpp_3m 20", "dpmpp_3m", {"steps": 20}),
    ("auto 20", "auto", {"steps": 20}),
    ("auto 50", "auto", {"steps": 50}),
    ("unipc_2 20", "unipc_2", {"steps": 20}),
    ("heun 25 (49 NFE)", "heun", {"steps": 25}),
    ("heun 50 churn 20 (99 NFE)", "heun", {"steps": 50, "s_churn": 20.0}),
]


def run_posterior(quick: bool, size: int = 32, fields: int = 8, samples: int = 64) -> Section:
    """Coverage of DPS posteriors (inflation gamma = 1, exact prior score) by sampler, as in bench_posterior.py."""
    from bench_posterior import ExactGRFScore, exact_posterior, summarise

    from scidiff.guidance import DPSGuidance
    from scidiff.operators import SparseSensors

    if quick:
        size, fields, samples = 8, 2, 20
    grf = GaussianRandomField(size, 2, slope=3.0)
    sde = sd.VPSDE()
    point_sd = math.sqrt(float(grf.spectrum(half=False).mean()))
    noise = 0.1 * point_sd
    op = SparseSensors.random((1, size, size), 0.05, seed=0)
    gen = torch.Generator().manual_seed(0)
    truth = grf.sample(fields, generator=gen)[:, None]
    y = op(truth) + noise * torch.randn(fields, op.num_sensors, generator=gen, dtype=torch.float64)
    exact_mean, exact_cov = exact_posterior(grf, op, y, noise)
    exact_sd = torch.sqrt(torch.diagonal(exact_cov).clamp_min(0))
    prior = ExactGRFScore(grf, sde, point_sd)
    rows = []
    t0 = time.perf_counter()
    for label, method, options in POSTERIOR_SAMPLERS:
        xs, nfe = [], 0
        for f in range(fields):
            dps = DPSGuidance(prior, sde, op, y[f] / point_sd, noise / point_sd, inflation=1.0)
            res = sd.sample(dps, sde, (samples, 1, size, size), method, generator=torch.Generator().manual_seed(f),
                            dtype=torch.float64, progress=False, return_result=True, **options)
            xs.append(res.x.flatten(1) * point_sd)
            nfe = res.nfe
        r = summarise(torch.stack(xs).numpy(), truth.flatten(1).numpy(), exact_mean.numpy(), exact_sd.numpy())
        rows.append({"sampler": label, "nfe": nfe, **r})
    return Section(name="fewstep_posterior", title=f"DPS (gamma 1) posterior coverage by sampler, {size}x{size} GRF, "
                   f"{op.num_sensors} sensors, exact prior score",
                   columns=["sampler", "nfe", "coverage_50", "coverage_90", "rmse_exact_mean", "spread", "spread_exact"],
                   rows=rows, notes=[f"{fields} truths x {samples} samples; noise 0.1 x pointwise sd"],
                   seconds=time.perf_counter() - t0)


# ---- the loop's overhead ------------------------------------------------------------------------
def run_overhead(quick: bool, steps: int = 20) -> Section:
    """bench_overhead.py's measurement (sampler wall / (NFE x forward)) for the few-step samplers at 32x32."""
    import bench_overhead

    steps = 8 if quick else steps

    def few(steps: int) -> list[tuple[str, dict[str, Any]]]:
        return [
            ("ddim", {"method": "ddim", "steps": steps}),
            ("ddim eta=1", {"method": "ddim", "steps": steps, "eta": 1.0}),
            ("dpmpp_2m", {"method": "dpmpp_2m", "steps": steps}),
            ("dpmpp_3m", {"method": "dpmpp_3m", "steps": steps}),
            ("unipc_2", {"method": "unipc_2", "steps": steps}),
            ("unipc_3", {"method": "unipc_3", "steps": steps}),
            ("auto", {"method": "auto", "steps": steps}),
            ("auto 5", {"method": "auto", "steps": 5}),
            ("heun", {"method": "heun", "steps": (steps + 1) // 2}),
            ("heun churn", {"method": "heun", "steps": (steps + 1) // 2, "s_churn": 10.0}),
            ("ancestral", {"method": "ancestral", "steps": steps}),
        ]

    bench_overhead.samplers = few
    section = bench_overhead.run(quick=quick, sizes=(8,) if quick else (32,), steps=steps)
    section.name = "fewstep_overhead"
    section.notes.append(f"load average: {load_average()}")
    return section


def pivot(section: Section) -> str:
    """A markdown table: one line per sampler configuration, one column per NFE."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in section.rows:
        by.setdefault(r["sampler"], {})[r["nfe"]] = r
    lines = ["| sampler | " + " | ".join(f"NFE ~{n}" for n in NFES) + " |", "|---" * (len(NFES) + 1) + "|"]
    for name, cells in by.items():
        vals = []
        for n in NFES:
            hit = [c for k, c in cells.items() if k in (n, n - 1)]
            if hit:
                c = hit[0]
                extra = f" / {c['log_p_gap_bpd']:+.3f}" if "log_p_gap_bpd" in c else ""
                vals.append(f"{c['error']:.3f}{extra}" + ("" if c["nfe"] == n else f" ({c['nfe']})"))
            else:
                vals.append("")
        if not any(vals):
            vals = [f"{c['error']:.3f} ({k})" for k, c in cells.items()] + [""] * (len(NFES) - len(cells))
        lines.append(f"| {name} | " + " | ".join(vals[: len(NFES)]) + " |")
    return "\n".join(lines)


def pivot_all(section: Section) -> str:
    """A markdown table of errors: one line per NFE, one column per sampler."""
    names = list(dict.fromkeys(r["sampler"] for r in section.rows))
    by = {(r["sampler"], r["nfe"]): r["error"] for r in section.rows}
    lines = ["| NFE | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for n in EXACT_NFES:
        lines.append(f"| {n} | " + " | ".join(f"{by[(m, n)]:.3f}" for m in names) + " |")
    return "\n".join(lines)


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--run", type=Path, default=None, help="the demo's run folder (scidiff demo); omit to skip")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--grf-samples", type=int, default=2048)
    p.add_argument("--grf-size", type=int, default=16)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--only", default="trained,grf,exact,posterior,overhead")
    p.add_argument("--seed", type=int, default=1, help="trained model: the seed of the prior draws x_1 (default 1)")
    p.add_argument("--nfes", default=",".join(map(str, NFES)), help="the NFE columns (default 5,10,20,50)")
    p.add_argument("--keep", default=None,
                   help="trained model only: comma-separated row labels to run (e.g. 'auto / logsnr,diffusers UniPC "
                        "exponential'); default all")
    args = parse_script_args(p)
    nfes = (5, 10) if args.quick else tuple(int(n) for n in args.nfes.split(","))
    sections = []
    load0 = load_average()
    if "grf" in args.only:
        n = 64 if args.quick else args.grf_samples
        sections.append(run_problem(GRFProblem(8 if args.quick else args.grf_size, n), nfes, peers=not args.no_peers))
    if "trained" in args.only and args.run is not None:
        TrainedProblem.seed = args.seed
        sections.append(run_problem(TrainedProblem(args.run, 32 if args.quick else args.samples), nfes,
                                    peers=not args.no_peers, keep=args.keep))
    if "exact" in args.only:
        sections.append(run_exact_modes())
    if "posterior" in args.only:
        sections.append(run_posterior(args.quick))
    if "overhead" in args.only:
        sections.append(run_overhead(args.quick))
    for s in sections:
        s.notes.append(f"load average at the start: {load0}")
    report(sections, args.json)
    for s in sections:
        if s.name in ("fewstep_trained", "fewstep_grf"):
            print(f"\n### {s.title}\n")
            print(pivot(s))
        if s.name == "fewstep_grf_exact":
            print(f"\n### {s.title}\n")
            print(pivot_all(s))


if __name__ == "__main__":
    main()
