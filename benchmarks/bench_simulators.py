"""Wall time of generating fields with each built-in simulator (default: 1,000 at 64x64).

    python3 benchmarks/bench_simulators.py                      # all simulators
    python3 benchmarks/bench_simulators.py --only grf heat --n 200
    python3 benchmarks/bench_simulators.py --json benchmarks/results/simulators.json
    python3 benchmarks/bench_simulators.py --only navier_stokes --ns-resolution 200

Prints one row per simulator: wall seconds, CPU seconds of this process (all threads),
fields per second, torch threads and the machine load average at the start.  On a
shared machine the wall time depends on the load; the CPU time much less so, and on an
idle machine with T threads the wall time is about CPU time / T (or more).
``--ns-resolution M`` also generates M Navier-Stokes fields solved at 64x64 and at
128x128 (then spectrally truncated to 64x64) from the same seeds and parameters and
compares their enstrophy spectra per |k| shell, to judge the 64x64 solve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Any

import numpy as np
import torch

import scidiff.simulators as sims


def time_one(name: str, n: int, size: int, seed: int) -> dict[str, Any]:
    """Generate ``n`` fields of side ``size``; returns the timing row."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start, cpu_start = time.perf_counter(), time.process_time()
    ds = sims.make(name, n, size=size, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    field = next(v for v in ds.data_vars if ds[v].ndim > 1)
    return {
        "simulator": name, "n": n, "size": size, "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "fields_per_second": round(n / seconds, 1), "threads": torch.get_num_threads(),
        "load_avg_1min": round(load, 2), "field": field,
        "field_mean": float(ds[field].mean()), "field_std": float(ds[field].std()),
    }


def enstrophy_spectrum(omega: np.ndarray) -> np.ndarray:
    """Mean over samples of ``sum_{shell} |omega_hat_k|^2 / 2`` per integer |k| shell (``[K]``)."""
    n = omega.shape[-1]
    w_hat = np.fft.fft2(omega) / n**2
    m = np.fft.fftfreq(n, d=1.0 / n)
    shell = np.rint(np.sqrt(m[:, None] ** 2 + m[None, :] ** 2)).astype(int)
    power = 0.5 * (np.abs(w_hat) ** 2).mean(0)
    return np.bincount(shell.ravel(), weights=power.ravel())[: n // 2]


def ns_resolution_check(n: int, seed: int) -> dict[str, Any]:
    """Compare 64x64 solves with 128x128 solves truncated to 64x64 (same seeds/parameters)."""
    rows: dict[str, Any] = {}
    spectra = {}
    for solver_size in (64, 128):
        start = time.perf_counter()
        ds = sims.make("navier_stokes", n, size=64, seed=seed, progress=False,
                       solver_size=solver_size)
        rows[f"seconds_solver_{solver_size}"] = round(time.perf_counter() - start, 2)
        omega = ds["vorticity"].values.astype(np.float64)
        spectra[solver_size] = enstrophy_spectrum(omega)
        rows[f"enstrophy_solver_{solver_size}"] = float(0.5 * (omega**2).mean())
    ratio = spectra[64] / spectra[128]
    rows["n"] = n
    rows["shell_ratio_64_over_128"] = {int(k): round(float(r), 3) for k, r in enumerate(ratio)
                                       if k > 0}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="fields per simulator")
    parser.add_argument("--size", type=int, default=64, help="grid side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, choices=sims.available())
    parser.add_argument("--ns-resolution", type=int, default=0, metavar="M",
                        help="also compare Navier-Stokes solved at 64 and 128 on M fields")
    parser.add_argument("--json", type=str, default=None, metavar="PATH",
                        help="write the results as JSON to PATH")
    args = parser.parse_args()

    names = args.only if args.only else sims.available()
    rows = []
    header = f"{'simulator':<14} {'n':>6} {'size':>5} {'seconds':>9} {'cpu s':>9} " \
             f"{'fields/s':>9} {'threads':>7} {'load':>5}"
    print(header)
    print("-" * len(header))
    for name in names:
        row = time_one(name, args.n, args.size, args.seed)
        rows.append(row)
        print(f"{name:<14} {row['n']:>6} {row['size']:>5} {row['seconds']:>9.1f} "
              f"{row['cpu_seconds']:>9.1f} {row['fields_per_second']:>9.1f} "
              f"{row['threads']:>7} {row['load_avg_1min']:>5.1f}",
              flush=True)
    result: dict[str, Any] = {
        "benchmark": "simulators", "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "rows": rows,
    }
    if args.ns_resolution > 0:
        check = ns_resolution_check(args.ns_resolution, args.seed)
        result["navier_stokes_resolution"] = check
        print(f"\nNavier-Stokes, {check['n']} fields: solver 64 {check['seconds_solver_64']} s, "
              f"solver 128 {check['seconds_solver_128']} s; mean enstrophy "
              f"{check['enstrophy_solver_64']:.3f} vs {check['enstrophy_solver_128']:.3f}")
        print("enstrophy spectrum ratio (64 / 128) per |k| shell:")
        ratios = check["shell_ratio_64_over_128"]
        print("  " + " ".join(f"{k}:{r:.2f}" for k, r in ratios.items() if k <= 21))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2, default=lambda o: None if isinstance(o, float)
                      and math.isnan(o) else o)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
