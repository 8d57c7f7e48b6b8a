"""Streaming a field file larger than the memory it is allowed: fit the normaliser, run one epoch.

Writes an HDF5 file and a netCDF-4 file of ``--size-mb`` MiB each (two variables
``u`` and ``v`` of shape [N, H, W], float32, ``v`` positive and log-normalised),
then, for each file, in a fresh subprocess whose address space is capped at its
size after start-up plus ``--limit-mb`` (``resource.setrlimit(RLIMIT_AS)``):

1. opens the file with ``scidiff.data.open_fields``,
2. fits a ``Normalizer`` on the training split (one streaming pass),
3. iterates one epoch of the training split through ``make_loader`` (batch 64).

It prints the peak resident memory growth over the start-up baseline
(``resource.getrusage``), the wall times and the throughput, and can write them as
JSON.  The files are deleted afterwards unless ``--keep``.

    python3 benchmarks/bench_data_streaming.py --size-mb 1024 --limit-mb 256 --json /tmp/stream.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRID = (128, 128)


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _num_samples(size_mb: float) -> int:
    per_sample = 2 * GRID[0] * GRID[1] * 4
    return max(64, int(size_mb * 2**20 // per_sample))


def _blocks(n: int, step: int = 256):
    rng = np.random.default_rng(0)
    for start in range(0, n, step):
        stop = min(n, start + step)
        u = rng.normal(size=(stop - start, *GRID)).astype(np.float32)
        v = np.exp(0.5 * rng.normal(size=(stop - start, *GRID))).astype(np.float32)
        yield start, stop, u, v


def write_hdf5(path: Path, n: int) -> None:
    """Plain HDF5: datasets /u and /v of shape [n, H, W] and /slope [n], written block by block."""
    import h5py

    with h5py.File(path, "w") as f:
        u = f.create_dataset("u", shape=(n, *GRID), dtype="f4", chunks=(16, *GRID))
        v = f.create_dataset("v", shape=(n, *GRID), dtype="f4", chunks=(16, *GRID))
        f["slope"] = np.linspace(0.0, 1.0, n)
        for start, stop, ub, vb in _blocks(n):
            u[start:stop], v[start:stop] = ub, vb


def write_netcdf4(path: Path, n: int) -> None:
    """netCDF-4 with dims (time, y, x), coordinates and units, written block by block via h5netcdf."""
    import h5netcdf

    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"time": n, "y": GRID[0], "x": GRID[1]}
        for name, size in (("y", GRID[0]), ("x", GRID[1])):
            c = f.create_variable(name, (name,), "f8")
            c[:] = np.arange(size, dtype=np.float64)
            c.attrs["units"] = "m"
        f.create_variable("slope", ("time",), "f8")[:] = np.linspace(0.0, 1.0, n)
        u = f.create_variable("u", ("time", "y", "x"), "f4", chunks=(16, *GRID))
        v = f.create_variable("v", ("time", "y", "x"), "f4", chunks=(16, *GRID))
        u.attrs["units"], v.attrs["units"] = "m s-1", "kg m-3"
        for start, stop, ub, vb in _blocks(n):
            u[start:stop, :, :], v[start:stop, :, :] = ub, vb


def child(path: str, limit_mb: float, batch_size: int, use_rlimit: bool) -> dict:
    """Runs in a fresh process: open, fit, one epoch; returns the measurements."""
    import torch

    from scidiff.data import FieldDataset, Normalizer, make_loader, open_fields

    torch.set_num_threads(1)
    src = open_fields(path, ["u", "v"], cond="slope")
    train = FieldDataset(src, split="train", val_fraction=0.1, seed=0)
    baseline = _rss_mb()
    if use_rlimit:
        cap = _vm_bytes() + int(limit_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    t0 = time.perf_counter()
    norm = Normalizer.fit(train, log=["v"], progress=False)
    t_fit = time.perf_counter() - t0
    train.normalizer = norm
    loader = make_loader(train, batch_size)
    t0 = time.perf_counter()
    seen, total = 0, 0.0
    for x, cond in loader:
        seen += x.shape[0]
        total += float(x.double().sum())
    t_epoch = time.perf_counter() - t0
    sample_mb = 2 * GRID[0] * GRID[1] * 4 / 2**20
    return {
        "samples_train": len(train),
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_growth_mb": _peak_rss_mb() - baseline,
        "fit_s": t_fit,
        "fit_mb_per_s": len(train) * sample_mb / t_fit,
        "epoch_s": t_epoch,
        "epoch_samples_per_s": seen / t_epoch,
        "epoch_mb_per_s": seen * sample_mb / t_epoch,
        "seen": seen,
        "mean_z": total / (seen * 2 * GRID[0] * GRID[1]),
        "rlimit_as": use_rlimit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024.0, help="size of each file (MiB)")
    parser.add_argument("--limit-mb", type=float, default=256.0, help="memory allowance over start-up (MiB)")
    parser.add_argument("--formats", default="hdf5,netcdf", help="comma-separated: hdf5, netcdf")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the files are written")
    parser.add_argument("--no-rlimit", action="store_true", help="measure only, do not cap the address space")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child[0], args.limit_mb, args.batch_size, not args.no_rlimit)))
        return

    n = _num_samples(args.size_mb)
    rows = []
    for fmt in args.formats.split(","):
        fmt = fmt.strip()
        writer = {"hdf5": (write_hdf5, ".h5"), "netcdf": (write_netcdf4, ".nc")}[fmt]
        path = Path(args.dir) / f"scidiff_stream_bench{writer[1]}"
        try:
            t0 = time.perf_counter()
            writer[0](path, n)
            t_write = time.perf_counter() - t0
            size_mb = path.stat().st_size / 2**20
            cmd = [sys.executable, __file__, "--child", str(path), fmt, "--limit-mb", str(args.limit_mb),
                   "--batch-size", str(args.batch_size)] + (["--no-rlimit"] if args.no_rlimit else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{fmt}: streaming run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result.update(format=fmt, file_mb=size_mb, samples=n, write_s=t_write, limit_mb=args.limit_mb,
                          grid=list(GRID), channels=2)
            rows.append(result)
        finally:
            if not args.keep:
                path.unlink(missing_ok=True)

    print(f"{'format':<7} {'file MiB':>9} {'limit MiB':>9} {'peak RSS growth MiB':>20} {'fit MiB/s':>10} "
          f"{'epoch samples/s':>16} {'epoch MiB/s':>12}")
    for r in rows:
        print(f"{r['format']:<7} {r['file_mb']:>9.0f} {r['limit_mb']:>9.0f} {r['peak_growth_mb']:>20.1f} "
              f"{r['fit_mb_per_s']:>10.0f} {r['epoch_samples_per_s']:>16.0f} {r['epoch_mb_per_s']:>12.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
