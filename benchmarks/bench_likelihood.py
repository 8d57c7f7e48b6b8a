"""PF-ODE likelihood cost (NFE, wall time) against a score_sde-style loop, and the cost of the
exact Jacobian trace against Hutchinson's estimate.

Section "likelihood": ``sd.log_likelihood`` (dopri5 in the log-SNR variable, one forward and
one VJP per evaluation, state kept in torch) against a loop written here in the manner of
the score_sde reference code (Song et al. 2021): ``scipy.integrate.solve_ivp`` RK45 in t on the
flattened float64 numpy state, converting to torch and back at every evaluation, one
no-grad forward for the drift and a second forward with grad plus a VJP for the Hutchinson
trace.  Both use the same Rademacher probe and the same rtol = atol, at 1e-5 and 1e-3.

Section "trace": the cost of tr(ds/dx) per field, exactly (``divergence_exact``: D
vector-Jacobian products, batched) and by Hutchinson with 1 and 8 probes, in units of one
Hutchinson evaluation (a forward with grad plus one VJP), from 16x16 to 64x64, for the UNet
with written-out attention and with ``fused_attention=True``.

    python benchmarks/bench_likelihood.py [--quick] [--only likelihood|trace] [--json out.json]
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Section, make_unet, median, parse_script_args, report, script_parser, timed  # noqa: E402

SPEEDUP_GOAL = 4.0
TRACE_GOAL = 0.8


# ---- the score_sde-style baseline -------------------------------------------------------------
def scoresde_log_likelihood(
    score: Callable[[Tensor, Tensor], Tensor],
    sde,
    x: Tensor,
    probe: Tensor,
    *,
    rtol: float,
    atol: float,
    t_min: float = 1e-5,
) -> tuple[Tensor, int]:
    """log p(x) [B] and the number of ODE evaluations, as the score_sde reference computes it.

    solve_ivp(RK45) integrates d(x, Delta)/dt = (f~(x, t), div f~(x, t)) from t_min to 1 in t,
    f~ = -beta(t) (x + s(x, t)) / 2, on a flat float64 numpy vector; every evaluation converts
    the state to a torch tensor in x's dtype, evaluates f~ once without grad (the drift) and
    once more with grad for v^T (df~/dx) v (the Hutchinson trace), and converts back.
    log p(x) = log N(x_1; 0, I) + Delta(1).
    """
    from scipy.integrate import solve_ivp

    shape, bsz = x.shape, x.shape[0]
    n_x = x.numel()
    nfe = 0

    def drift(x_t: Tensor, t: Tensor) -> Tensor:
        beta = sde.schedule._beta(t.double()).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return -0.5 * beta * (x_t + score(x_t, t))

    def ode_func(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        x_t = torch.from_numpy(y[:n_x]).reshape(shape).to(dtype=x.dtype, device=x.device)
        t_vec = torch.full((bsz,), t, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            f = drift(x_t, t_vec)
        with torch.enable_grad():
            x_in = x_t.clone().requires_grad_(True)
            (g,) = torch.autograd.grad((drift(x_in, t_vec) * probe).sum(), x_in)
        div = (g * probe).flatten(1).sum(1)
        return np.concatenate([f.detach().cpu().numpy().reshape(-1), div.detach().cpu().numpy()]).astype(np.float64)

    y0 = np.concatenate([x.detach().cpu().numpy().reshape(-1), np.zeros(bsz)]).astype(np.float64)
    sol = solve_ivp(ode_func, (t_min, 1.0), y0, rtol=rtol, atol=atol, method="RK45")
    y1 = torch.from_numpy(sol.y[:, -1])
    x1 = y1[:n_x].reshape(shape)
    delta = y1[n_x:]
    return sde.prior_log_prob(x1) + delta, nfe


def rademacher_like_library(x: Tensor, seed: int) -> Tensor:
    """The single probe ``sd.log_likelihood`` draws from a generator seeded with ``seed`` [B, *event]."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    v = torch.randint(0, 2, (1, *x.shape), generator=gen, device=x.device).to(x.dtype) * 2 - 1
    return v[0]


def likelihood_problem(quick: bool, checkpoint: Path | None, device: torch.device, batch: int):
    """(score, sde, x, description): a trained GRF model and held-out fields when ``checkpoint``
    exists, else a random-output UNet on GRF fields (or white noise)."""
    import scidiff as sd

    if checkpoint is not None and checkpoint.is_file():
        from bench_accuracy import load_model

        model, data = load_model(checkpoint, device=device)
        x = data.held_out(batch)
        return model.score, model.sde, x, f"trained GRF model {checkpoint.name} at {x.shape[-1]}x{x.shape[-1]}"
    size = 8 if quick else 16
    net = make_unet(quick, device=device)
    sde = sd.VPSDE()
    model = sd.ScoreModel(net, sde)
    try:
        from scidiff.simulators.grf import GaussianRandomField

        grf = GaussianRandomField(size, 2, slope=3.0)
        x = grf.sample(batch, seed=123, dtype=torch.float32, device=device)[:, None]
        x = x / x.std()
        kind = "GRF fields"
    except ImportError:
        x = torch.randn(batch, 1, size, size, generator=torch.Generator(device=device).manual_seed(123), device=device)
        kind = "white-noise fields"
    return model.score, sde, x, f"untrained UNet (random output layer) on {kind} at {size}x{size}"


def run_likelihood(*, quick: bool = False, device: torch.device | str = "cpu", checkpoint: Path | None = None,
                   batch: int | None = None, tolerances: tuple[float, ...] = (1e-5, 1e-3)) -> Section:
    """NFE and wall time of sd.log_likelihood vs the score_sde-style loop at each tolerance."""
    import scidiff as sd

    device = torch.device(device)
    batch = batch or (2 if quick else 4)
    score, sde, x, what = likelihood_problem(quick, checkpoint, device, batch)
    d = x[0].numel()
    section = Section(
        name="likelihood",
        title="PF-ODE log-likelihood (Hutchinson, 1 probe): scidiff vs a score_sde-style loop",
        columns=["tol", "impl", "time_var", "nfe", "time_s", "s_per_nfe", "bpd_mean", "speedup", "max_dlogp_nats",
                 "max_dbpd", "pass"],
        goal=f"scidiff >= {SPEEDUP_GOAL}x faster at equal tolerance, log-likelihoods agreeing",
    )
    started = time.perf_counter()
    seed = 7
    probe = rademacher_like_library(x, seed)

    def ours(tol: float):
        return sd.log_likelihood(score, sde, x, divergence="hutchinson", rtol=tol, atol=tol,
                                 generator=torch.Generator(device=device).manual_seed(seed))

    # warm-up (allocator, imports)
    sd.log_likelihood(score, sde, x, divergence="hutchinson", rtol=1e-2, atol=1e-2)
    for tol in tolerances:
        w_ours, res = timed(lambda: ours(tol), device)
        w_base, (lp_base, nfe_base) = timed(lambda: scoresde_log_likelihood(score, sde, x, probe, rtol=tol, atol=tol),
                                            device)
        lp_ours = res.log_prob.double().cpu()
        diff = (lp_ours - lp_base.double()).abs().max().item()
        speedup = w_base / w_ours
        # agreement: the two solvers' answers differ by less than the larger of the two
        # solutions' own change between this tolerance and ten times tighter is not measured
        # here; we use |d log p| <= max(10 tol |log p|, 10 tol D) as the tolerance-level bound
        bound = 10 * tol * max(float(lp_ours.abs().max()), d)
        section.rows.append({"tol": tol, "impl": "scidiff dopri5", "time_var": "logsnr", "nfe": res.nfe,
                             "time_s": w_ours, "s_per_nfe": w_ours / res.nfe,
                             "bpd_mean": float(res.bits_per_dim.mean()), "speedup": speedup,
                             "max_dlogp_nats": diff, "max_dbpd": diff / (d * math.log(2)),
                             "pass": speedup >= SPEEDUP_GOAL and diff <= bound})
        section.rows.append({"tol": tol, "impl": "score_sde RK45", "time_var": "t", "nfe": nfe_base,
                             "time_s": w_base, "s_per_nfe": w_base / nfe_base,
                             "bpd_mean": float((-lp_base / (d * math.log(2))).mean()), "speedup": 1.0,
                             "max_dlogp_nats": diff, "max_dbpd": diff / (d * math.log(2)), "pass": None})
    section.notes.append(
        f"{what}, batch {batch}, D = {d}; same Rademacher probe in both; t_min = 1e-5; speedup = baseline wall / "
        "scidiff wall; agreement bound |d log p| <= 10 tol max(|log p|, D); "
        f"torch threads {torch.get_num_threads()}"
    )
    section.seconds = time.perf_counter() - started
    return section


# ---- exact trace versus Hutchinson --------------------------------------------------------------
def _with_grad_score(score, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    x_in = x.detach().clone().requires_grad_(True)
    return score(x_in, t), x_in


def run_trace(*, quick: bool = False, device: torch.device | str = "cpu", sizes: tuple[int, ...] | None = None,
              repeats: int | None = None, cap_seconds: float | None = None) -> Section:
    """Cost of the exact trace and of Hutchinson (1, 8 probes) per field, in Hutchinson evaluations."""
    import scidiff as sd
    import scidiff.likelihood as lik

    device = torch.device(device)
    sizes = sizes or ((8, 16) if quick else (16, 32, 64))
    repeats = repeats or (2 if quick else 3)
    cap_seconds = cap_seconds or (5.0 if quick else 60.0)
    section = Section(
        name="trace",
        title="exact trace vs Hutchinson per field, cost in Hutchinson evaluations (forward + 1 VJP)",
        columns=["grid", "attention", "D", "hutch_ms", "hutch8_evals", "exact_evals", "exact_per_D", "batched",
                 "extrapolated", "goal", "pass"],
        goal=f"exact trace <= {TRACE_GOAL} D Hutchinson evaluations, attention layers included",
    )
    started = time.perf_counter()
    sde = sd.VPSDE()
    for size in sizes:
        d = size * size
        for fused in (False, True):
            net = make_unet(quick, device=device, fused_attention=fused)
            score = sd.ScoreModel(net, sde).score
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(1, 1, size, size, generator=gen, device=device)
            t = torch.full((1,), 0.5, device=device)
            v1 = (torch.randint(0, 2, (1, *x.shape), generator=gen, device=device).float() * 2 - 1)
            v8 = (torch.randint(0, 2, (8, *x.shape), generator=gen, device=device).float() * 2 - 1)

            def hutch(v: Tensor) -> Tensor:
                s, x_in = _with_grad_score(score, x, t)
                return lik.divergence_hutchinson(s, x_in, v)

            lik._batched_vjp_ok.clear()  # the library remembers a failed batched VJP per process
            hutch(v1), hutch(v8)  # warm-up
            h = median([timed(lambda: hutch(v1), device)[0] for _ in range(repeats + 2)])
            h8 = median([timed(lambda: hutch(v8), device)[0] for _ in range(repeats)])
            chunk = None  # the library's default chunk size, what a user gets
            est = d * h
            extrapolated = est > cap_seconds
            lik._batched_vjp_ok.clear()
            if not extrapolated:
                s, x_in = _with_grad_score(score, x, t)
                lik.divergence_exact(s, x_in, chunk_size=chunk)  # warm-up, and learns whether batching works
                batched = lik._batched_vjp_ok.get("batched", True)

                def exact() -> Tensor:
                    s, x_in = _with_grad_score(score, x, t)
                    return lik.divergence_exact(s, x_in, chunk_size=chunk)

                w = median([timed(exact, device)[0] for _ in range(max(1, repeats - 1))])
            else:
                w, batched = _extrapolated_exact(score, x, t, lik._default_chunk_size(1, d), cap_seconds, device)
            section.rows.append({
                "grid": f"{size}x{size}", "attention": "fused (sdpa)" if fused else "written out", "D": d,
                "hutch_ms": 1e3 * h, "hutch8_evals": h8 / h, "exact_evals": w / h, "exact_per_D": w / (h * d),
                "batched": "yes" if batched else "loop", "extrapolated": "yes" if extrapolated else "no", "goal": TRACE_GOAL,
                "pass": w / (h * d) <= TRACE_GOAL,
            })
    lik._batched_vjp_ok.clear()
    section.notes.append(
        "batch 1; the unit is one Hutchinson evaluation: score forward with grad + one VJP + the dot product; "
        "exact = the same forward + divergence_exact with its default chunk size; rows marked extrapolated time "
        "a few chunks of the library's default size (the same batched VJP) and scale by D / chunk "
        f"(cap {cap_seconds:.0f} s per measurement); batched = whether the library's batched VJP "
        f"(is_grads_batched) worked or it fell back to a loop; torch threads {torch.get_num_threads()}"
    )
    section.seconds = time.perf_counter() - started
    return section


def _extrapolated_exact(score, x: Tensor, t: Tensor, chunk: int, cap_seconds: float,
                        device: torch.device) -> tuple[float, bool]:
    """Wall time of the exact trace from a few chunks: forward + (D / chunk) x (one chunk's VJPs).

    Each chunk is what ``divergence_exact`` does: ``autograd.grad(s, x, basis_chunk,
    is_grads_batched=True)`` (or a loop of single VJPs where batching has no rule).
    """
    import scidiff.likelihood as lik

    d = x[0].numel()
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    f, (s, x_in) = timed(lambda: _with_grad_score(score, x, t), device)
    vs = eye[:chunk].reshape(chunk, *x.shape)
    lik._vjp_batched(s, x_in, vs[: min(chunk, 4)])  # warm-up, learns whether batching works
    batched = lik._batched_vjp_ok.get("batched", True)
    times = []
    budget = time.perf_counter() + cap_seconds
    while not times or (time.perf_counter() < budget and len(times) < 3):
        times.append(timed(lambda: lik._vjp_batched(s, x_in, vs), device)[0])
    return f + median(times) * d / chunk, batched


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--only", default="likelihood,trace")
    p.add_argument("--checkpoint", type=Path, default=None, help="trained GRF model from bench_accuracy.py")
    args = parse_script_args(p)
    sections = []
    if "likelihood" in args.only:
        sections.append(run_likelihood(quick=args.quick, device=args.device, checkpoint=args.checkpoint))
    if "trace" in args.only:
        sections.append(run_trace(quick=args.quick, device=args.device))
    report(sections, args.json)


if __name__ == "__main__":
    main()
