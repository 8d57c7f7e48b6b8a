"""Sampler trade-offs on a closed-form Gaussian mixture: NFE against error, tolerances, time variables, t_min.

The data distribution is a 3-component Gaussian mixture in d = 8 dimensions with one
narrow component (std 0.05 along some axes), so the score is stiff near t = 0.  Its
diffused marginals, scores and log-densities are exact (``scidiff.analytic.GaussianMixture``),
so every figure below measures the sampler or the solver alone, never a network.

Tables printed (and written with ``--json FILE``):

1. ``samplers``  -- each sampler at several step counts: NFE and the sliced Wasserstein-1
   distance between its samples and an exact mixture sample of the same size (mean over 32
   random unit directions of the 1-D W1; mean and sd over 3 seeds), with the noise floor of
   independent exact sample sets; also the error of the mixture weights recovered by
   assigning samples to their most likely component.
2. ``ode_tolerance`` -- the PF-ODE sampler (dopri5) per rtol = atol and time variable
   ("t", "logsnr", "sigma"): NFE and the RMS distance of x_0 to a reference solve of the
   same x_1 (dopri5, rtol = atol = 1e-10, log-SNR).
3. ``likelihood_tolerance`` -- ``log_likelihood`` per tolerance and time variable: NFE and
   the mean absolute error of log p(x) against the exact mixture density (nats).
4. ``t_min`` -- the likelihood's bias, mean of log p_model - log p_exact at tight tolerance,
   and the ODE sampler's sliced W1, per t_min.

Run:  python benchmarks/bench_samplers_tradeoffs.py [--quick] [--json results.json]
Everything is float64 on the CPU; wall times are not reported (they measure the mixture,
not a network: NFE is the cost that carries over to a real model).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

import scidiff as sd
from scidiff.analytic import GaussianMixture

F64 = torch.float64


def make_mixture(sde: sd.VPSDE, d: int = 8) -> GaussianMixture:
    """Three components: two broad ones and a narrow one (std 0.05 in half of the axes)."""
    g = torch.Generator().manual_seed(0)
    means = torch.stack([torch.full((d,), -1.0), torch.full((d,), 1.0), torch.zeros(d)])
    means = means + 0.3 * torch.randn(3, d, generator=g, dtype=F64)
    diag = torch.stack([
        torch.full((d,), 0.30**2),
        torch.full((d,), 0.20**2),
        torch.cat([torch.full((d // 2,), 0.05**2), torch.full((d - d // 2,), 0.4**2)]),
    ])
    return GaussianMixture([0.4, 0.35, 0.25], means, diag, sde=sde)


def sliced_w1(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over unit directions of the 1-D Wasserstein-1 distance of the projections (equal sizes)."""
    pa = torch.sort(a @ directions.T, dim=0).values
    pb = torch.sort(b @ directions.T, dim=0).values
    return float((pa - pb).abs().mean())


def weight_error(mix: GaussianMixture, x: torch.Tensor) -> float:
    """Max over components of |fraction of samples whose most likely component is k - w_k|."""
    logw, _ = mix._component_terms(x, torch.zeros(x.shape[0], dtype=F64))
    counts = torch.bincount(logw.argmax(1), minlength=mix.weights.numel()).to(F64) / x.shape[0]
    # the fraction an exact sample gives (components overlap a little): same rule on exact draws
    return float((counts - mix._exact_assign).abs().max())


def _short(err: Exception) -> str:
    return type(err).__name__


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
        return str(v)

    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns]
    lines = [title, "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell(r[c]).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _w1_stats(draw, exact: torch.Tensor, directions: torch.Tensor, seeds: tuple[int, ...]) -> tuple[float, float]:
    values = torch.tensor([sliced_w1(draw(seed), exact, directions) for seed in seeds], dtype=F64)
    return float(values.mean()), float(values.std()) if len(seeds) > 1 else 0.0


def bench_samplers(mix: GaussianMixture, sde: sd.VPSDE, n: int, quick: bool) -> list[dict[str, Any]]:
    """Sliced W1 to an exact sample of the same size, mean and sd over independent seeds."""
    g = torch.Generator().manual_seed(1)
    directions = torch.randn(32, mix.d, generator=g, dtype=F64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    exact = mix.sample(n, generator=torch.Generator().manual_seed(2))
    seeds = (4, 5, 6)
    floor, floor_sd = _w1_stats(lambda s: mix.sample(n, generator=torch.Generator().manual_seed(100 + s)),
                                exact, directions, seeds)
    rows: list[dict[str, Any]] = []
    grid = [10, 30, 100, 300] if quick else [10, 30, 100, 300, 1000]

    def run(method: str, **opts: Any):
        def draw(seed: int) -> torch.Tensor:
            res = sd.sample(mix, sde, (n, mix.d), method, generator=torch.Generator().manual_seed(seed), dtype=F64,
                            progress=False, return_result=True, **opts)
            draw.nfe = res.nfe  # type: ignore[attr-defined]
            draw.last = res.x  # type: ignore[attr-defined]
            return res.x
        return draw

    configs: list[tuple[str, str, dict[str, Any]]] = []
    for method in ("ancestral", "euler_maruyama", "pc"):
        for steps in grid:
            k = steps if method != "pc" else max(1, steps // 2)
            configs.append((method, str(k), {"steps": k}))
    for rtol in (1e-2, 1e-3, 1e-5):
        configs.append(("ode", f"rtol={rtol:g}", {"rtol": rtol, "atol": rtol}))
    # the few-step samplers on their default grids, at 5 to 50 evaluations
    for method in ("ddim", "dpmpp_2m", "dpmpp_3m", "heun"):
        for nfe in ((10, 20) if quick else (5, 10, 20, 50)):
            k = (nfe + 1) // 2 if method == "heun" else nfe
            configs.append((method, str(k), {"steps": k}))
    for method, label, opts in configs:
        draw = run(method, **opts)
        mean, sd_ = _w1_stats(draw, exact, directions, seeds)
        rows.append({"method": method, "setting": label, "nfe": draw.nfe, "sliced_w1": mean, "w1_sd": sd_,  # type: ignore[attr-defined]
                     "noise_floor": floor, "weight_err": weight_error(mix, draw.last)})  # type: ignore[attr-defined]

    return rows


def bench_ode_tolerance(mix: GaussianMixture, sde: sd.VPSDE, n: int) -> list[dict[str, Any]]:
    x1 = torch.randn(n, mix.d, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = sd.sample(mix, sde, (n, mix.d), "ode", x1=x1, rtol=1e-10, atol=1e-10, progress=False)
    rows = []
    for var in ("t", "logsnr", "sigma"):
        for rtol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
            try:
                res = sd.sample(mix, sde, (n, mix.d), "ode", x1=x1, rtol=rtol, atol=rtol, time_variable=var,
                                progress=False, return_result=True)
            except Exception as err:  # noqa: BLE001 - a failed solve is a measured outcome
                rows.append({"time_variable": var, "rtol": rtol, "nfe": "failed", "rms_error": _short(err)})
                continue
            err = float((res.x - ref).pow(2).sum(1).mean().sqrt())
            rows.append({"time_variable": var, "rtol": rtol, "nfe": res.nfe, "rms_error": err})
    return rows


def bench_likelihood_tolerance(mix: GaussianMixture, sde: sd.VPSDE, n: int) -> list[dict[str, Any]]:
    x = mix.sample(n, generator=torch.Generator().manual_seed(6))
    exact = mix.log_prob(x)
    rows = []
    for var in ("t", "logsnr", "sigma"):
        for rtol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
            try:
                res = sd.log_likelihood(mix, sde, x, divergence="exact", rtol=rtol, atol=rtol, time_variable=var)
            except Exception as err:  # noqa: BLE001 - a failed solve is a measured outcome
                rows.append({"time_variable": var, "rtol": rtol, "nfe": "failed", "mean_abs_err_nats": _short(err),
                             "bias_nats": ""})
                continue
            rows.append({"time_variable": var, "rtol": rtol, "nfe": res.nfe,
                         "mean_abs_err_nats": float((res.log_prob - exact).abs().mean()),
                         "bias_nats": float((res.log_prob - exact).mean())})
    return rows


def bench_t_min(mix: GaussianMixture, sde: sd.VPSDE, n_lik: int, n: int) -> list[dict[str, Any]]:
    x = mix.sample(n_lik, generator=torch.Generator().manual_seed(7))
    exact = mix.log_prob(x)
    g = torch.Generator().manual_seed(1)
    directions = torch.randn(32, mix.d, generator=g, dtype=F64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    ref = mix.sample(n, generator=torch.Generator().manual_seed(8))
    floor = sliced_w1(ref, mix.sample(n, generator=torch.Generator().manual_seed(11)), directions)
    rows = []
    for t_min in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        res = sd.log_likelihood(mix, sde, x, divergence="exact", rtol=1e-8, atol=1e-8, t_min=t_min)
        bias = res.log_prob - exact
        samples = sd.sample(mix, sde, (n, mix.d), "ode", rtol=1e-6, atol=1e-6, t_min=t_min, progress=False,
                            generator=torch.Generator().manual_seed(9), dtype=F64, return_result=True)
        rows.append({"t_min": t_min, "loglik_nfe": res.nfe,
                     "bias_nats": float(bias.mean()),
                     "bias_bits_per_dim": float(-bias.mean() / (mix.d * math.log(2.0))),
                     "bias_se": float(bias.std() / math.sqrt(n_lik)),
                     "sample_nfe": samples.nfe, "sample_sliced_w1": sliced_w1(samples.x, ref, directions),
                     "noise_floor": floor})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and step counts (about a minute)")
    parser.add_argument("--json", help="write the tables to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sde = sd.VPSDE()
    mix = make_mixture(sde)
    n = 1000 if args.quick else 4000
    big = mix.sample(200_000, generator=torch.Generator().manual_seed(10))
    logw, _ = mix._component_terms(big, torch.zeros(big.shape[0], dtype=F64))
    mix._exact_assign = torch.bincount(logw.argmax(1), minlength=3).to(F64) / big.shape[0]  # type: ignore[attr-defined]
    start = time.perf_counter()
    results = {
        "setup": {"d": mix.d, "components": 3, "n_samples": n, "sde": repr(sde), "torch": torch.__version__},
        "samplers": bench_samplers(mix, sde, 4 * n, args.quick),
        "ode_tolerance": bench_ode_tolerance(mix, sde, min(n, 500)),
        "likelihood_tolerance": bench_likelihood_tolerance(mix, sde, 100 if args.quick else 200),
        "t_min": bench_t_min(mix, sde, 100 if args.quick else 400, n),
    }
    results["setup"]["seconds"] = round(time.perf_counter() - start, 1)
    print(table("1. samplers: NFE vs sliced W1 to exact samples (mean, sd over 3 seeds)", results["samplers"],
                ["method", "setting", "nfe", "sliced_w1", "w1_sd", "noise_floor", "weight_err"]))
    print()
    print(table("2. PF-ODE sampler: NFE and RMS error of x_0 vs a reference solve", results["ode_tolerance"],
                ["time_variable", "rtol", "nfe", "rms_error"]))
    print()
    print(table("3. PF-ODE likelihood (exact trace): NFE and |log p - exact| (nats)", results["likelihood_tolerance"],
                ["time_variable", "rtol", "nfe", "mean_abs_err_nats", "bias_nats"]))
    print()
    print(table("4. t_min: likelihood bias (rtol 1e-8) and ODE-sample quality", results["t_min"],
                ["t_min", "loglik_nfe", "bias_nats", "bias_se", "bias_bits_per_dim", "sample_nfe", "sample_sliced_w1",
                 "noise_floor"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
