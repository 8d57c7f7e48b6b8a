"""PF-ODE likelihood cost (NFE, wall time) against a score_sde-style loop, and the cost of the
exact Jacobian trace against Hutchinson's estimate.

Section "likelihood": ``sd.log_likelihood`` (dopri5 in t, one forward and
one VJP per evaluation, state kept in torch) against a loop written here in the manner of
the score_sde reference code (Song et al. 2021): ``scipy.integrate.solve_ivp`` RK45 in t on the
flattened float64 numpy state, converting to torch and back at every evaluation, one
no-grad forward for the drift and a second forward with grad plus a VJP for the Hutchinson
trace.  Both use the same Rademacher probe and the same rtol = atol, at 1e-5 and 1e-3; a third
row takes the divergence on the path (``nodes=16`` refined up to 128 intervals to
``quadrature_tol`` = tol bits/dim, x solved at rtol / 10).

Section "trace": the cost of tr(ds/dx) per score evaluation through ``sd.log_likelihood`` at
batch 16 -- the exact trace (D vector-Jacobian products), Hutchinson with 8 probes and the
lattice estimator (16 products) -- in units of one one-probe Hutchinson evaluation at the same
batch, from 16x16 to 64x64; and the whole exact log-likelihood with the divergence on the path
(``nodes=16``) against the joint solve's evaluations.

Section "products": one basis product of the exact trace at 32x32, batch 16, taken each way
(autograd over the retained graph, ``torch.func.vmap`` over ``vjp`` or over ``jvp`` with
stacks of 4-64 basis vectors), in one-probe Hutchinson evaluations: the floor of the exact
trace's cost per evaluation on this device.

Section "quadrature": the divergence by the trapezoid rule on the path (``nodes=``) against
the joint solve, on a GRF with its exact score and trace and on a Gaussian mixture: error
against the closed-form density, evaluations, and the reported quadrature error.

Section "estimators": per-field error against the exact density of Gaussian random fields
with their exact score (FFT), for exact, Hutchinson (1, 8, 16 probes), the lattice estimator
and ``target_se``, from 16x16 to 64x64: RMS error, mean reported standard error, coverage of
+-2 SE, and the lattice's variance ratio against Hutchinson at equal cost.

Section "demo": the user's path, ``scidiff.runs.loglik`` (what ``scidiff loglik`` calls) on a
``scidiff demo`` run's held-out fields, each estimator against the same model's exact trace
and the exact density (``--demo-run scidiff-demo``).

Section "flow": the demo run's network against the exact score of the same field (FFT): NFE of
the joint solve per tolerance, in t and in log-SNR, and each one's log p error against its own
float64 solve at 1e-8, so that equal tolerance and equal accuracy can both be read off
(``--demo-run scidiff-demo``).

Section "tolerance": the ODE solver's own per-field error (exact score, exact trace, exact p_1)
against the tolerance, on a Gaussian random field.

    python benchmarks/bench_likelihood.py [--quick] [--only likelihood,trace,products,tolerance,estimators,quadrature,demo,flow]
        [--demo-run scidiff-demo] [--json out.json]
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
from _common import (  # noqa: E402
    Section, clock_name, make_unet, median, parse_script_args, report, script_parser, timed,
)

SPEEDUP_GOAL = 4.0
TRACE_GOAL = 0.3


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
        beta = sde.coefficients(t).beta.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
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

    if checkpoint is not None and checkpoint.is_dir():
        # a `scidiff demo` (or `scidiff train`) run folder: its EMA model on its held-out fields,
        # normalised as the model sees them
        import xarray as xr

        from scidiff import runs

        loaded = runs.as_loaded(checkpoint, device=device)
        with xr.open_dataset(checkpoint / "data" / "heldout.nc") as ds:
            var = [v for v in ds.data_vars if ds[v].ndim >= 3][0]
            fields = torch.as_tensor(ds[var].values[:batch]).float()
        x = loaded.normalizer.forward(fields.unsqueeze(1) if fields.ndim == 3 else fields).to(device)
        what = f"the demo run's model ({checkpoint}) at {x.shape[-1]}x{x.shape[-1]}"
        return loaded.model.score, loaded.model.sde, x, what
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
                   batch: int | None = None, tolerances: tuple[float, ...] = (1e-5, 1e-4, 1e-3)) -> Section:
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
                 "max_dbpd", "rms_err_bpd", "pass"],
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
    # the reference for the accuracy columns: the same probe, float64, rtol = atol = 1e-8
    model = getattr(score, "__self__", None)
    if isinstance(model, torch.nn.Module):
        import copy

        score64 = copy.deepcopy(model).double().score
        ref = sd.log_likelihood(score64, sde, x.double(), divergence="hutchinson", rtol=1e-8, atol=1e-8,
                                generator=torch.Generator(device=device).manual_seed(seed)).log_prob.double().cpu()
    else:
        ref = None

    def rms_bpd(lp: Tensor) -> float | None:
        if ref is None:
            return None
        return float(((lp.double().cpu() - ref) / (d * math.log(2))).square().mean().sqrt())
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
        section.rows.append({"tol": tol, "impl": "scidiff dopri5", "time_var": "t", "nfe": res.nfe,
                             "time_s": w_ours, "s_per_nfe": w_ours / res.nfe,
                             "bpd_mean": float(res.bits_per_dim.mean()), "speedup": speedup,
                             "max_dlogp_nats": diff, "max_dbpd": diff / (d * math.log(2)),
                             "rms_err_bpd": rms_bpd(lp_ours), "pass": speedup >= SPEEDUP_GOAL and diff <= bound})
        # the divergence on the path (from 17 trace evaluations, refined to quadrature_tol = tol
        # bits/dim), x solved ten times tighter
        w_path, res_p = timed(lambda: sd.log_likelihood(
            score, sde, x, divergence="hutchinson", rtol=tol / 10, atol=tol / 10, nodes=16, max_nodes=128,
            quadrature_tol=tol, generator=torch.Generator(device=device).manual_seed(seed)), device)
        diff_p = (res_p.log_prob.double().cpu() - lp_base.double()).abs().max().item()
        section.rows.append({"tol": tol, "impl": "scidiff path, rtol tol/10", "time_var": "t",
                             "nfe": res_p.nfe, "time_s": w_path, "s_per_nfe": w_path / res_p.nfe,
                             "bpd_mean": float(res_p.bits_per_dim.mean()), "speedup": w_base / w_path,
                             "max_dlogp_nats": diff_p, "max_dbpd": diff_p / (d * math.log(2)),
                             "rms_err_bpd": rms_bpd(res_p.log_prob),
                             "pass": w_base / w_path >= SPEEDUP_GOAL and diff_p <= bound})
        section.rows.append({"tol": tol, "impl": "score_sde RK45", "time_var": "t", "nfe": nfe_base,
                             "time_s": w_base, "s_per_nfe": w_base / nfe_base,
                             "bpd_mean": float((-lp_base / (d * math.log(2))).mean()), "speedup": 1.0,
                             "max_dlogp_nats": diff, "max_dbpd": diff / (d * math.log(2)),
                             "rms_err_bpd": rms_bpd(lp_base), "pass": None})
    section.notes.append(
        f"{what}, batch {batch}, D = {d}; same Rademacher probe in both; t_min = 1e-5; speedup = baseline wall / "
        "scidiff wall; agreement bound |d log p| <= 10 tol max(|log p|, D); rms_err_bpd = per-field RMS against "
        "the same probe's float64 solve at rtol = atol = 1e-8 (the solver's error; for a model's score only); "
        f"torch threads {torch.get_num_threads()}"
    )
    section.seconds = time.perf_counter() - started
    return section


# ---- exact trace versus Hutchinson --------------------------------------------------------------
def _solve_seconds(score, sde, x: Tensor, device: torch.device, repeats: int, **kw) -> float:
    """Median wall time of ``sd.log_likelihood`` with two Euler steps (two evaluations) per solve."""
    import scidiff as sd

    def run() -> Tensor:
        return sd.log_likelihood(score, sde, x, method="euler", steps=2, **kw).log_prob

    run()  # warm-up
    return median([timed(run, device)[0] for _ in range(repeats)]) / 2


def run_trace(*, quick: bool = False, device: torch.device | str = "cpu", sizes: tuple[int, ...] | None = None,
              batch: int = 16, repeats: int | None = None, cap_seconds: float | None = None) -> Section:
    """Cost per score evaluation of each divergence estimator through ``sd.log_likelihood``, in
    units of one Hutchinson evaluation (one probe) at the same batch."""
    import scidiff as sd
    from scidiff.divergence import Exact

    device = torch.device(device)
    sizes = sizes or ((8, 16) if quick else (16, 32, 64))
    repeats = repeats or (1 if quick else 2)
    cap_seconds = cap_seconds or (5.0 if quick else 120.0)
    section = Section(
        name="trace",
        title=f"divergence cost per evaluation through sd.log_likelihood at batch {batch}, "
              "in one-probe Hutchinson evaluations",
        columns=["grid", "D", "hutch1_ms", "hutch8", "lattice4", "lattice4_vjps", "exact_evals", "exact_per_D",
                 "extrapolated", "goal", "pass", "joint_nfe", "path_nfe", "forward", "exact_nodes_solve",
                 "exact_nodes_per_D"],
        goal=f"exact trace <= {TRACE_GOAL} D one-probe Hutchinson evaluations per field at batch {batch}",
    )
    started = time.perf_counter()
    sde = sd.VPSDE()
    for size in sizes:
        d = size * size
        net = make_unet(quick, device=device, attention_levels=())
        score = sd.ScoreModel(net, sde, prediction="v").score
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, 1, size, size, generator=gen, device=device)
        h1 = _solve_seconds(score, sde, x, device, repeats + 1, divergence="hutchinson", probes=1)
        h8 = _solve_seconds(score, sde, x, device, repeats, divergence="hutchinson", probes=8)
        lat = _solve_seconds(score, sde, x, device, repeats, divergence="lattice", spacing=4)
        extrapolated = d * h1 * 0.3 > cap_seconds
        if not extrapolated:
            ex = _solve_seconds(score, sde, x, device, 1, divergence="exact")
        else:
            # the exact trace's chunks are all alike: time the evaluation with the first few chunks
            # of the default size only and scale by the number of chunks
            from scidiff.divergence import default_chunk_size, linearize

            chunk = default_chunk_size(batch, d)
            est = Exact()
            basis_chunks = math.ceil(d / chunk)
            t = torch.full((batch,), 0.5, device=device)

            def part(k: int) -> None:
                with torch.no_grad():
                    s, vjp = linearize(lambda z: score(z, t), x)
                    for _ in range(k):
                        vs = torch.zeros(chunk, *x.shape, device=device)
                        vjp(vs)

            part(1)
            one = median([timed(lambda: part(1), device)[0] for _ in range(repeats)])
            two = median([timed(lambda: part(2), device)[0] for _ in range(repeats)])
            per_chunk = max(two - one, 1e-9)
            ex = (one - per_chunk) + per_chunk * basis_chunks
            del est
        # the whole exact log-likelihood on the path (nodes=16: 17 exact evaluations plus the
        # forwards of the solve of x alone) against the joint solve's evaluations, both adaptive
        kw = dict(rtol=1e-3, atol=1e-3) if quick else dict(rtol=1e-4, atol=1e-4)
        joint_nfe = sd.log_likelihood(score, sde, x, divergence="hutchinson", probes=1, rtol=1e-3, atol=1e-3).nfe
        path_nfe = sd.log_likelihood(score, sde, x, divergence="hutchinson", probes=1, nodes=16, max_nodes=16,
                                     **kw).nfe - 17
        tt = torch.full((batch,), 0.5, device=device)
        with torch.no_grad():
            fwd = median([timed(lambda: score(x, tt), device)[0] for _ in range(repeats + 1)]) / h1
        solve = 17 * ex / h1 + path_nfe * fwd  # in one-probe Hutchinson evaluations
        section.rows.append({
            "grid": f"{size}x{size}", "D": d, "hutch1_ms": 1e3 * h1, "hutch8": h8 / h1, "lattice4": lat / h1,
            "lattice4_vjps": 16, "exact_evals": ex / h1, "exact_per_D": ex / (h1 * d),
            "extrapolated": "yes" if extrapolated else "no", "goal": TRACE_GOAL, "pass": ex / (h1 * d) <= TRACE_GOAL,
            "joint_nfe": joint_nfe, "path_nfe": path_nfe, "forward": fwd, "exact_nodes_solve": solve,
            "exact_nodes_per_D": solve / (joint_nfe * d),
        })
    section.notes.append(
        f"the unit is one evaluation of sd.log_likelihood(divergence='hutchinson', probes=1) at batch {batch}: "
        "score forward + one VJP, measured as the wall time of a two-step Euler solve / 2; every estimator "
        "through the same call with its default chunk size (one product at a time over the retained graph on "
        "the CPU, torch.func.vmap over torch.func.vjp on CUDA); "
        "extrapolated rows time one evaluation with one and with two chunks of basis vectors and scale the "
        f"difference by the number of chunks; UNet {'tiny' if quick else 'small'} without attention, "
        f"torch threads {torch.get_num_threads()}; the last columns are the whole exact log-likelihood with "
        "nodes=16 (17 exact evaluations and the path_nfe forwards, in one-probe evaluations, 'forward' being one "
        "score forward in that unit), and exact_nodes_per_D = that cost / (joint_nfe D): per field and per "
        "evaluation of the joint one-probe solve (rtol 1e-3) it replaces, in D one-probe evaluations"
    )
    section.seconds = time.perf_counter() - started
    return section


def run_products(*, quick: bool = False, device: torch.device | str = "cpu", size: int | None = None,
                 batch: int = 16, repeats: int | None = None) -> Section:
    """What one basis product of the exact trace costs, by each way of taking it, against one
    one-probe Hutchinson evaluation (a forward and one VJP) at the same batch: the floor of the
    exact trace's cost per evaluation on this device."""
    device = torch.device(device)
    size = size or (8 if quick else 32)
    repeats = repeats or (1 if quick else 3)
    stacks = (2, 4) if quick else (4, 16, 64)
    net = make_unet(quick, device=device, attention_levels=())
    for p in net.parameters():
        p.requires_grad_(False)
    import scidiff as sd

    score = sd.ScoreModel(net, sd.VPSDE(), prediction="v").score
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=gen, device=device)
    t = torch.full((batch,), 0.5, device=device)

    def f(z: Tensor) -> Tensor:
        return score(z, t)

    def clock(fn: Callable[[], object]) -> float:
        fn()
        return median([timed(fn, device)[0] for _ in range(repeats)])

    def hutchinson() -> None:
        xi = x.detach().requires_grad_(True)
        with torch.enable_grad():
            torch.autograd.grad(f(xi), xi, torch.ones_like(x))

    with torch.no_grad():
        forward = clock(lambda: f(x))
    unit = clock(hutchinson)
    section = Section(
        name="products",
        title=f"one basis product of the exact trace at {size}x{size}, batch {batch}, in one-probe Hutchinson "
              "evaluations (= the exact trace's cost per evaluation in D such evaluations)",
        columns=["way", "stack", "ms_per_product", "per_D"],
        goal=f"<= {TRACE_GOAL} (the exact trace's goal per evaluation)",
    )
    started = time.perf_counter()

    def add(way: str, stack: int, k_small: int, k_large: int, run: Callable[[int], None]) -> None:
        # the difference of two runs with k_small and k_large stacks removes the shared forward
        a, b = clock(lambda: run(k_small)), clock(lambda: run(k_large))
        per = (b - a) / ((k_large - k_small) * stack)
        section.rows.append({"way": way, "stack": stack, "ms_per_product": 1e3 * per, "per_D": per / unit})

    def retained(k: int) -> None:
        xi = x.detach().requires_grad_(True)
        with torch.enable_grad():
            s = f(xi)
        for _ in range(k):
            torch.autograd.grad(s, xi, torch.zeros_like(x), retain_graph=True)

    add("autograd, one product at a time over the retained graph (the CPU default)", 1, 2, 6, retained)
    for k in stacks:
        def pullback(n: int, k: int = k) -> None:
            _, pb = torch.func.vjp(f, x)
            batched = torch.func.vmap(pb)
            for _ in range(n):
                batched(torch.zeros(k, *x.shape, device=device))

        def forward_mode(n: int, k: int = k) -> None:
            batched = torch.func.vmap(lambda v: torch.func.jvp(f, (x,), (v,))[1])
            for _ in range(n):
                batched(torch.zeros(k, *x.shape, device=device))

        add("torch.func.vmap over vjp (reverse mode; the CUDA default)", k, 1, 3, pullback)
        add("torch.func.vmap over jvp (forward mode)", k, 1, 3, forward_mode)
    section.notes += [
        f"one-probe Hutchinson evaluation {1e3 * unit:.1f} ms, one score forward {1e3 * forward:.1f} ms "
        f"({forward / unit:.2f} evaluations); small UNet without attention at random weights; clock: "
        f"{clock_name()}; torch threads {torch.get_num_threads()}",
        "a basis product is at least a backward (or a tangent pass) through the network, about one forward, "
        "while an evaluation is a forward and a backward: D products cost about D/2 evaluations unless stacking "
        "products makes each one cheaper, which needs spare parallel width at this batch (a GPU)",
    ]
    section.seconds = time.perf_counter() - started
    return section


def _grf_setup(size: int, count: int, seed: int = 1):
    import scidiff as sd
    from scidiff.simulators import GaussianRandomField

    grf = GaussianRandomField(size, 2, slope=3.0)
    sde = sd.VPSDE()

    def score(x: Tensor, t: Tensor) -> Tensor:
        c = sde.coefficients(t)
        return grf.marginal_score(x, c.alpha, c.sigma)

    x = grf.sample(count, generator=torch.Generator().manual_seed(seed)).reshape(count, 1, size, size).double()
    c1 = sde.coefficients(torch.tensor(1.0, dtype=torch.float64))
    return grf, sde, score, x, (lambda z: grf.marginal_log_prob(z, c1.alpha, c1.sigma))


def run_estimators(*, quick: bool = False, sizes: tuple[int, ...] | None = None, count: int | None = None,
                   rtol: float = 1e-6) -> Section:
    """Per-field error of each estimator on Gaussian random fields with their exact score (FFT).

    With the exact score and the exact p_1 as the prior, the only errors left are the
    estimator's and the solver's; the exact trace row shows the solver's alone.
    """
    import scidiff as sd

    sizes = sizes or ((8,) if quick else (16, 32, 64))
    count = count or (8 if quick else 32)
    section = Section(
        name="estimators",
        title=f"per-field error against the exact density, GRF k^-3 with its exact score, {count} fields, "
              f"dopri5 rtol = atol = {rtol:g}",
        columns=["grid", "estimator", "vjps_per_eval", "rms_err_bpd", "mean_se_bpd", "cover_2se", "var_ratio",
                 "nfe", "seconds"],
        goal="lattice: per-field RMS error <= 0.005 bits/dim; variance below plain Hutchinson's at equal products",
    )
    started = time.perf_counter()
    for size in sizes:
        grf, sde, score, x, p1 = _grf_setup(size, count)
        d = size * size
        exact = grf.log_prob(x)
        configs = [("hutchinson, 1 probe", dict(divergence="hutchinson", probes=1)),
                   ("hutchinson, 8 probes", dict(divergence="hutchinson", probes=8)),
                   ("hutchinson, 16 probes", dict(divergence="hutchinson", probes=16)),
                   ("lattice, spacing 4", dict(divergence="lattice", spacing=4)),
                   ("lattice 4, target_se 0.002", dict(divergence="lattice", spacing=4, target_se=0.002))]
        if d <= 1024:
            configs.insert(0, ("exact", dict(divergence="exact")))
        plain16 = None
        for name, kw in configs:
            t0 = time.perf_counter()
            res = sd.log_likelihood(score, sde, x, prior_log_prob=p1, rtol=rtol, atol=rtol,
                                    generator=torch.Generator().manual_seed(3), **kw)
            seconds = time.perf_counter() - t0
            err = (res.log_prob - exact) / (d * math.log(2.0))
            se = res.bits_per_dim_se
            mse = float(err.square().mean())
            if name == "hutchinson, 16 probes":
                plain16 = mse
            vjps = {"exact": d, "hutchinson": kw.get("probes", 1), "lattice": 16}[kw["divergence"]]
            section.rows.append({
                "grid": f"{size}x{size}", "estimator": name, "vjps_per_eval": vjps, "rms_err_bpd": math.sqrt(mse),
                "mean_se_bpd": float(se.nanmean()) if not bool(torch.isnan(se).all()) else float("nan"),
                "cover_2se": float((err.abs() <= 2 * se).double()[se > 0].mean()) if bool((se > 0).any()) else None,
                "var_ratio": (plain16 / mse) if (plain16 is not None and name == "lattice, spacing 4") else None,
                "nfe": res.nfe, "seconds": seconds,
            })
    section.notes.append(
        "errors in bits/dim against GaussianRandomField.log_prob; the prior is the exact marginal p_1 so the N(0, I) "
        "mismatch does not enter; var_ratio = plain Hutchinson's mean squared error with 16 probes over the "
        "lattice's with its 16 products (equal cost); cover_2se = fraction of fields with |error| <= 2 SE "
        "(the exact row's error is the solver's alone)"
    )
    section.seconds = time.perf_counter() - started
    return section


def run_tolerance(*, quick: bool = False, size: int | None = None, count: int | None = None) -> Section:
    """Solver error alone: log p of GRF fields with their exact score, exact trace and exact p_1,
    against the closed-form density, per field, for a range of tolerances (dopri5, t variable)."""
    import scidiff as sd

    size = size or (8 if quick else 16)
    count = count or (8 if quick else 32)
    grf, sde, score, x, p1 = _grf_setup(size, count, seed=4)
    exact = grf.log_prob(x)
    d = size * size
    section = Section(
        name="tolerance",
        title=f"solver error per field against the exact density, GRF k^-3 {size}x{size}, exact score and trace, "
              f"{count} fields",
        columns=["rtol_atol", "nfe", "rms_err_bpd", "max_err_bpd", "mean_err_bpd"],
        goal="the default tolerance keeps the solver's per-field error well below the estimator's (0.005 bits/dim)",
    )
    started = time.perf_counter()
    for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        res = sd.log_likelihood(score, sde, x, prior_log_prob=p1, rtol=tol, atol=tol, divergence="exact")
        err = ((res.log_prob - exact) / (d * math.log(2.0))).numpy()
        section.rows.append({"rtol_atol": tol, "nfe": res.nfe, "rms_err_bpd": float(np.sqrt(np.mean(err**2))),
                             "max_err_bpd": float(np.abs(err).max()), "mean_err_bpd": float(err.mean())})
    section.notes.append("dopri5 in t from t_min = 1e-5; the only error is the ODE solver's (and t_min's)")
    section.seconds = time.perf_counter() - started
    return section


def run_quadrature(*, quick: bool = False, size: int | None = None, count: int | None = None) -> Section:
    """The divergence by quadrature on the path (``nodes=``) against the joint solve, where the
    answer is known: a GRF with its exact score and the exact trace (error = solver + quadrature),
    and a two-component Gaussian mixture in 3-D (its log-det changes faster in log-SNR)."""
    import scidiff as sd
    from scidiff.analytic import GaussianMixture

    size = size or (8 if quick else 16)
    count = count or (8 if quick else 16)
    grf, sde, score, x, p1 = _grf_setup(size, count, seed=4)
    truth = grf.log_prob(x)
    section = Section(
        name="quadrature",
        title=f"divergence on the path (nodes) vs in the joint solve: exact score and exact trace, GRF k^-3 "
              f"{size}x{size} ({count} fields) and a 3-D Gaussian mixture (100 points)",
        columns=["problem", "mode", "rtol_atol", "nodes", "nfe", "trace_evals", "rms_err_bpd", "max_err_bpd",
                 "max_quadrature_error_bpd"],
        goal="the path with 16-24 nodes as accurate as the joint solve, at a third of the trace evaluations",
    )
    started = time.perf_counter()

    def row(problem: str, score_, x_, p1_, truth_, tol: float, nodes: int | None, **kw) -> None:
        quad = {} if nodes is None else dict(nodes=nodes, max_nodes=nodes)
        res = sd.log_likelihood(score_, sde, x_, prior_log_prob=p1_, rtol=tol, atol=tol, **quad, **kw)
        to_bpd = 1.0 / (x_[0].numel() * math.log(2.0))
        err = ((res.log_prob - truth_) * to_bpd).numpy()
        section.rows.append({
            "problem": problem, "mode": "joint" if nodes is None else "path", "rtol_atol": tol,
            "nodes": nodes or "", "nfe": res.nfe, "trace_evals": res.nfe if nodes is None else nodes + 1,
            "rms_err_bpd": float(np.sqrt(np.mean(err**2))), "max_err_bpd": float(np.abs(err).max()),
            "max_quadrature_error_bpd": (float(res.quadrature_error.max()) * to_bpd
                                         if res.quadrature_error is not None else None),
        })

    for tol in ((1e-3,) if quick else (1e-3, 1e-4)):
        for nodes in (None, 8, 12, 16, 24, 32):
            row(f"GRF {size}x{size}", score, x, p1, truth, tol, nodes, divergence="exact")
    gm = GaussianMixture([0.3, 0.7], [[-1.0, 0.5, 0.0], [1.5, -0.5, 0.2]], [[0.2, 0.1, 0.3], [0.3, 0.4, 0.2]], sde=sde)
    xm = gm.sample(100, generator=torch.Generator().manual_seed(3))
    for nodes in (None, 8, 16, 32, 64):
        row("mixture 3-D", gm, xm, lambda z: gm.log_prob(z, 1.0), gm.log_prob(xm), 1e-7, nodes)
    section.notes.append(
        "errors against the closed-form densities with the exact p_1 as the prior; joint = the divergence "
        "integrated with x by dopri5 (every evaluation a trace); path = x solved alone (forwards only), the "
        "trace at nodes + 1 points equally spaced in log-SNR, trapezoid rule, no refinement (max_nodes = nodes); "
        "max_quadrature_error = the largest reported estimate res.quadrature_error (from Q_n, Q_n/2, Q_n/4)"
    )
    section.seconds = time.perf_counter() - started
    return section


def run_demo(run_dir: Path, *, n: int = 64, batch_size: int = 64, exact_n: int | None = None,
             configs: list[tuple[str, dict]] | None = None) -> Section:
    """The user's path: ``scidiff.runs.loglik`` (what ``scidiff loglik`` calls) on the demo run's
    held-out fields, each estimator against the same model's exact trace and the exact density."""
    from scipy import stats

    import scidiff as sd
    from scidiff import runs
    from scidiff.simulators import GaussianRandomField

    run_dir = Path(run_dir)
    heldout = run_dir / "data" / "heldout.nc"
    import xarray as xr

    with xr.open_dataset(heldout) as ds:
        var = [v for v in ds.data_vars if ds[v].ndim >= 3][0]
        x = torch.as_tensor(ds[var].values[:n]).double()
        slope = float(ds["slope"].values.reshape(-1)[0])
        amplitude = float(ds["amplitude"].values.reshape(-1)[0])
    size = x.shape[-1]
    cfg = {"size": size}
    section = Section(
        name="demo",
        title=f"scidiff loglik on the demo run ({size}x{size}), {n} held-out fields, batch {batch_size}",
        columns=["estimator", "rtol", "seconds", "nfe", "rms_vs_exact_trace", "rms_vs_density", "spearman",
                 "pearson", "mean_se_bpd", "cover_2se"],
        goal="default: RMS <= 0.005 bits/dim against the exact trace, <= 0.01 against the exact density, "
             "Spearman >= 0.95, <= 120 s on an idle 2-core CPU",
    )
    started = time.perf_counter()
    loaded = runs.Run.open(run_dir).load()
    grf = GaussianRandomField(size, 2, slope=slope, amplitude=amplitude)
    exact_density = grf.log_prob(x.reshape(-1, size, size)).numpy()
    d = cfg["size"] ** 2
    to_bpd = 1.0 / (d * math.log(2.0))
    configs = configs or [
        ("exact", dict(divergence="exact", rtol=1e-4)),
        ("hutchinson, 1 probe", dict(divergence="hutchinson", probes=1, rtol=1e-4)),
        ("hutchinson, 16 probes", dict(divergence="hutchinson", probes=16, rtol=1e-4)),
        ("lattice, spacing 4 (default)", dict(divergence="lattice", rtol=1e-4)),
        ("lattice, spacing 4, rtol 1e-3", dict(divergence="lattice", rtol=1e-3)),
    ]
    reference = None
    for name, kw in configs:
        kw = dict(kw)
        rtol = kw.pop("rtol")
        m = exact_n if (kw["divergence"] == "exact" and exact_n) else n
        t0 = time.perf_counter()
        out = runs.loglik(loaded, heldout, n=m, batch_size=batch_size, rtol=rtol, atol=rtol, progress=False, **kw)
        seconds = time.perf_counter() - t0
        lp = out["log_prob"].values
        se = out["bits_per_dim_se"].values
        if kw["divergence"] == "exact":
            reference = lp
        k = min(len(lp), len(reference)) if reference is not None else 0
        err_ref = (lp[:k] - reference[:k]) * to_bpd if k else None
        err_den = (lp - exact_density[: len(lp)]) * to_bpd
        section.rows.append({
            "estimator": name, "rtol": rtol, "seconds": seconds, "nfe": int(out.attrs["nfe"]),
            "rms_vs_exact_trace": float(np.sqrt(np.mean(err_ref**2))) if k and kw["divergence"] != "exact" else None,
            "rms_vs_density": float(np.sqrt(np.mean(err_den**2))),
            "spearman": float(stats.spearmanr(lp, exact_density[: len(lp)])[0]),
            "pearson": float(stats.pearsonr(lp, exact_density[: len(lp)])[0]),
            "mean_se_bpd": float(np.nanmean(se)) if not np.isnan(se).all() else float("nan"),
            "cover_2se": float(np.mean(np.abs(err_ref) <= 2 * se[:k])) if k and kw["divergence"] != "exact" else None,
        })
    section.notes.append(
        "scidiff.runs.loglik is what `scidiff loglik` runs; rms_vs_exact_trace = the estimator's own error "
        "(against the same model's exact-trace value at the same tolerance); rms_vs_density = estimator + model "
        f"+ solver error against GaussianRandomField.log_prob; torch threads {torch.get_num_threads()}"
    )
    section.seconds = time.perf_counter() - started
    return section


# ---- the network's flow against the truth's: evaluations and accuracy per tolerance --------------
def run_flow(run_dir: Path, *, n: int = 8, tolerances: tuple[float, ...] = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6),
             time_variables: tuple[str, ...] = ("t", "logsnr")) -> Section:
    """NFE of the joint solve (one-probe Hutchinson, dopri5) with the demo run's network and with
    the exact score of the same Gaussian random field (FFT), and the per-field log p error of each
    against its own float64 solve at rtol = atol = 1e-8 (same probe): what the extra evaluations
    of the network buy."""
    import copy

    import xarray as xr

    import scidiff as sd
    from scidiff import runs
    from scidiff.simulators import GaussianRandomField

    run_dir = Path(run_dir)
    loaded = runs.Run.open(run_dir).load()
    with xr.open_dataset(run_dir / "data" / "heldout.nc") as ds:
        var = [v for v in ds.data_vars if ds[v].ndim >= 3][0]
        fields = torch.as_tensor(ds[var].values[:n]).float()
        slope = float(ds["slope"].values.reshape(-1)[0])
        amplitude = float(ds["amplitude"].values.reshape(-1)[0])
    x = loaded.normalizer.forward(fields[:, None])
    shift, scale = float(loaded.normalizer.mean[0]), float(loaded.normalizer.std[0])
    grf = GaussianRandomField(fields.shape[-1], dims=2, slope=slope, amplitude=amplitude)
    sde = loaded.model.sde
    d = x[0].numel()

    def exact(z: Tensor, t: Tensor) -> Tensor:
        # z = (g - shift) / scale with g ~ GRF: scale z_t + alpha shift = alpha g + scale sigma eps
        c = sde.coefficients(t)
        a, sg = c.alpha.double(), c.sigma.double()
        g_t = scale * z[:, 0].double() + a[:, None, None] * shift
        return (scale * grf.marginal_score(g_t, a, scale * sg))[:, None].to(z.dtype)

    def bpd(score, z: Tensor, tol: float, variable: str) -> tuple[int, Tensor]:
        res = sd.log_likelihood(score, sde, z, divergence="hutchinson", rtol=tol, atol=tol, time_variable=variable,
                                generator=torch.Generator().manual_seed(0))
        return res.nfe, res.log_prob.double() / (d * math.log(2.0))

    net64 = copy.deepcopy(loaded.model).double()
    scores = {"network": (loaded.model.score, net64.score), "exact score": (exact, exact)}
    refs = {k: bpd(s64, x.double(), 1e-8, "t")[1] for k, (_, s64) in scores.items()}
    section = Section(
        name="flow",
        title=f"the network's flow against the exact score's: demo run, first {n} held-out fields, one-probe "
              "Hutchinson, dopri5",
        columns=["time_variable", "rtol_atol", "nfe_network", "nfe_exact", "nfe_ratio", "rms_err_network_bpd",
                 "rms_err_exact_bpd"],
        goal="the network within 1.5x of the exact score's NFE at the same tolerance",
    )
    started = time.perf_counter()
    for variable in time_variables:
        for tol in tolerances:
            row: dict = {"time_variable": variable, "rtol_atol": tol}
            for key, label in (("network", "network"), ("exact score", "exact")):
                nfe, lp = bpd(scores[key][0], x, tol, variable)
                row[f"nfe_{label}"] = nfe
                row[f"rms_err_{label}_bpd"] = float((lp - refs[key]).square().mean().sqrt())
            row["nfe_ratio"] = row["nfe_network"] / row["nfe_exact"]
            section.rows.append(row)
    # equal accuracy: the fewest evaluations (in t) that reach each error level
    for level in (3e-4, 1e-4, 3e-5):
        def fewest(label: str) -> int | None:
            ok = [r[f"nfe_{label}"] for r in section.rows
                  if r["time_variable"] == "t" and r[f"rms_err_{label}_bpd"] <= level]
            return min(ok) if ok else None

        a, b = fewest("network"), fewest("exact")
        section.notes.append(f"equal accuracy (t): RMS error <= {level:g} bits/dim takes {a} evaluations with the "
                             f"network, {b} with the exact score" + (f" ({a / b:.2f}x)" if a and b else ""))
    section.notes.append(
        "rms_err = per-field RMS of log p (bits/dim) against the same score's float64 solve at rtol = atol = 1e-8 in "
        "t, with the same probe, so it is the solver's error alone; float32 evaluations put a floor near 1e-5; "
        f"torch threads {torch.get_num_threads()}")
    section.seconds = time.perf_counter() - started
    return section


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--only", default="likelihood,trace,tolerance,estimators,quadrature")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="trained GRF model from bench_accuracy.py, or a run folder (`scidiff demo`)")
    p.add_argument("--demo-run", type=Path, default=None,
                   help="a `scidiff demo` run folder for the section 'demo' (the user's path)")
    args = parse_script_args(p)
    sections = []
    if "likelihood" in args.only:
        sections.append(run_likelihood(quick=args.quick, device=args.device, checkpoint=args.checkpoint))
    if "trace" in args.only:
        sections.append(run_trace(quick=args.quick, device=args.device))
    if "products" in args.only:
        sections.append(run_products(quick=args.quick, device=args.device))
    if "tolerance" in args.only:
        sections.append(run_tolerance(quick=args.quick))
    if "estimators" in args.only:
        sections.append(run_estimators(quick=args.quick))
    if "quadrature" in args.only:
        sections.append(run_quadrature(quick=args.quick))
    if "demo" in args.only:
        if args.demo_run is None:
            p.error("--only demo needs --demo-run FOLDER (made by `scidiff demo`)")
        sections.append(run_demo(args.demo_run))
    if "flow" in args.only:
        if args.demo_run is None:
            p.error("--only flow needs --demo-run FOLDER (made by `scidiff demo`)")
        sections.append(run_flow(args.demo_run))
    report(sections, args.json)


if __name__ == "__main__":
    main()
