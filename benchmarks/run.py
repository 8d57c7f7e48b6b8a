"""Run scidiff's benchmarks: print one table per section and write every figure to JSON.

Sections (``--only`` takes a comma-separated subset):

  overhead    sampler wall / (NFE x network forward) for every sampler, 32x32 and 64x64
  peer        scidiff ancestral vs diffusers' DDPMScheduler loop (benchmarks/.venv-peer)
  likelihood  PF-ODE likelihood NFE and wall time vs a score_sde-style scipy loop, tol 1e-5, 1e-3
  trace       exact trace vs Hutchinson (1, 8 probes) per field, 16x16 to 64x64
  accuracy    ODE and DDPM-ELBO bits/dim after training on the GRF vs its exact bits/dim
  quality     power-spectrum error vs NFE (ancestral 1000/250/50, PF-ODE at two tolerances)
  throughput  training fields/s and peak memory (benchmarks/bench_training.py)

    python benchmarks/run.py --quick                       # every section, tiny, < 3 minutes
    python benchmarks/run.py --results                     # full run -> benchmarks/results/cpu-<date>.{json,md}
    python benchmarks/run.py --only overhead,peer --json out.json

The trained GRF model of "accuracy" (also used by "likelihood" and "quality") is saved to
``--checkpoint`` (outside the repository) and reused by later runs unless ``--retrain``.
These are measurements, not tests: on a shared machine compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Section, clock_name, set_clock, finite_numbers, load_average, machine, markdown, table  # noqa: E402

SECTIONS = ("overhead", "peer", "likelihood", "trace", "accuracy", "quality", "throughput")
PEER_PYTHON = HERE / ".venv-peer" / "bin" / "python"


def _subprocess_section(name: str, cmd: list[str], threads: int, timeout: float) -> dict[str, Any]:
    """Run a benchmark script that writes JSON to the path given last in ``cmd``; its stdout is echoed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(Path(cmd[-1]).read_text())


def run_peer(args: argparse.Namespace, tmp: Path) -> Section:
    """The diffusers comparison, in the peer environment's interpreter when it exists."""
    python = str(PEER_PYTHON) if PEER_PYTHON.exists() else sys.executable
    path = tmp / "peer.json"
    cmd = [python, str(HERE / "bench_peer.py"), "--device", args.device, "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    d = _subprocess_section("peer", cmd + ["--json", str(path)], args.threads, timeout=3600)
    section = Section(**{k: d[k] for k in ("name", "title", "columns", "rows", "goal", "notes", "status", "seconds")})
    section.notes.append(f"interpreter: {python}")
    return section


def run_throughput(args: argparse.Namespace, tmp: Path) -> Section:
    """Training throughput from benchmarks/bench_training.py, run as a subprocess."""
    path = tmp / "training.json"
    started = time.perf_counter()
    cmd = [sys.executable, str(HERE / "bench_training.py"), "--device", args.device]
    if args.quick:
        cmd.append("--quick")
    rows = _subprocess_section("throughput", cmd + ["--json", str(path)], args.threads, timeout=3600)
    kind = rows[0].pop("peak_kind", "") if rows else ""
    for r in rows[1:]:
        r.pop("peak_kind", None)
    section = Section(
        name="throughput",
        title="training throughput and peak memory (benchmarks/bench_training.py)",
        columns=["size", "batch", "params", "device", "threads", "s_per_step", "fields_per_s", "peak_mib"],
        rows=rows,
        goal="reported (no numeric goal)",
        notes=[f"one step = Trainer.train_step (DSM loss, backward, clipping, AdamW, EMA); peak memory: {kind}",
               "clock: wall time (bench_training.py's own), so on a loaded machine fields/s is a lower bound",
               f"OMP_NUM_THREADS={args.threads}"],
    )
    section.seconds = time.perf_counter() - started
    return section


def trained_model(args: argparse.Namespace, tmp: Path):
    """(model, data, info): load ``--checkpoint`` or train within ``--budget-min``."""
    import bench_accuracy

    ckpt = (tmp / "quick.pt") if args.quick else args.checkpoint
    if ckpt.is_file() and not args.retrain:
        model, data = bench_accuracy.load_model(ckpt, device=args.device)
        info = torch.load(ckpt, weights_only=True)["info"]
        info["reused_checkpoint"] = str(ckpt)
        return model, data, info, ckpt
    budget = 10.0 if args.quick else 60.0 * args.budget_min
    print(f"training the GRF model for {budget:.0f} s -> {ckpt}", flush=True)
    info = bench_accuracy.train_model(quick=args.quick, budget_s=budget, checkpoint=ckpt, device=args.device,
                                      progress=not args.quick)
    return info.pop("model"), bench_accuracy.GRFData(info["size"]), info, ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes, every section, under 3 minutes on a CPU")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    p.add_argument("--results", action="store_true",
                   help="write benchmarks/results/<device>-<date>.json and .md (the committed results)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    p.add_argument("--checkpoint", type=Path, default=Path(tempfile.gettempdir()) / "scidiff-bench" / "grf16.pt",
                   help="where the trained GRF model is saved and reused")
    p.add_argument("--budget-min", type=float, default=15.0, help="training budget of 'accuracy', minutes of CPU time")
    p.add_argument("--retrain", action="store_true", help="train the GRF model even if --checkpoint exists")
    p.add_argument("--combine", type=Path, nargs="+", default=None, metavar="JSON",
                   help="instead of measuring, merge the sections of earlier --json outputs (later files win) and "
                        "write them with --json / --results")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    set_clock(device)
    info = machine(device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    sections: dict[str, Section] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = data = train_info = ckpt = None
        if {"accuracy", "quality"} & set(only) or ("likelihood" in only and not args.quick):
            model, data, train_info, ckpt = trained_model(args, tmp)
        for name in SECTIONS:
            if name not in only:
                continue
            print(f"\n-- running {name} ...", flush=True)
            if name == "overhead":
                import bench_overhead

                s = bench_overhead.run(quick=args.quick, device=device)
            elif name == "peer":
                s = run_peer(args, tmp)
            elif name == "likelihood":
                import bench_likelihood

                s = bench_likelihood.run_likelihood(quick=args.quick, device=device,
                                                    checkpoint=None if args.quick else ckpt,
                                                    tolerances=(1e-3,) if args.quick else (1e-5, 1e-3))
            elif name == "trace":
                import bench_likelihood

                s = bench_likelihood.run_trace(quick=args.quick, device=device)
            elif name == "accuracy":
                import bench_accuracy

                s = bench_accuracy.run_accuracy(model, data, train_info, quick=args.quick, device=device)
            elif name == "quality":
                import bench_accuracy

                s = bench_accuracy.run_quality(model, data, quick=args.quick, device=device)
            else:
                s = run_throughput(args, tmp)
            if name != "throughput":
                s.notes.append(f"clock: {clock_name()}")
            sections[name] = s
            print(table(s), flush=True)
            if args.json:  # after every section, so that an interrupted run keeps what it measured
                partial = {"machine": {**info, "load_average_end": load_average(), "total_seconds":
                                       round(time.perf_counter() - started, 1)},
                           "quick": args.quick, "argv": sys.argv[1:] if argv is None else argv,
                           "sections": {k: v.to_dict() for k, v in sections.items()}}
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(partial, indent=1, default=str))
    info["load_average_end"] = load_average()
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    doc = {"machine": info, "quick": args.quick, "argv": sys.argv[1:] if argv is None else argv,
           "sections": {k: v.to_dict() for k, v in sections.items()}}
    bad_numbers = [k for k, v in doc["sections"].items() if any(x != x or x in (float("inf"), float("-inf"))
                                                              for x in finite_numbers(v["rows"]))]
    if bad_numbers:
        print(f"\nnote: sections with non-finite figures (e.g. a standard error of one field): {bad_numbers}")
    paths = []
    if args.json:
        paths.append(args.json)
    if args.results:
        stamp = datetime.date.today().isoformat()
        paths.append(HERE / "results" / f"{device.type}-{stamp}.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {path}")
    if args.results:
        md = HERE / "results" / f"{device.type}-{datetime.date.today().isoformat()}.md"
        md.write_text(results_markdown(doc, sections))
        print(f"wrote {md}")
    print(f"\ntotal {info['total_seconds']:.0f} s; load average {info['load_average_start']} -> "
          f"{info['load_average_end']}")
    return 0


def combine(args: argparse.Namespace) -> int:
    """Merge the sections of several JSON outputs of this script into one results document."""
    docs = [json.loads(Path(f).read_text()) for f in args.combine]
    sections: dict[str, Section] = {}
    for d in docs:
        for name, sec in d["sections"].items():
            sections[name] = Section(**sec)
    sections = {k: sections[k] for k in SECTIONS if k in sections}
    first, last = docs[0]["machine"], docs[-1]["machine"]
    info = {**first, "load_average_end": last["load_average_end"],
            "total_seconds": sum(d["machine"]["total_seconds"] for d in docs),
            "runs": [{"argv": d["argv"], "date": d["machine"]["date"], "load_average_start": d["machine"]["load_average_start"],
                      "load_average_end": d["machine"]["load_average_end"], "git_commit": d["machine"]["git_commit"]}
                     for d in docs]}
    doc = {"machine": info, "quick": any(d["quick"] for d in docs),
           "argv": [" ; ".join(" ".join(d["argv"]) for d in docs)],
           "sections": {k: v.to_dict() for k, v in sections.items()}}
    stamp = datetime.date.today().isoformat()
    device = info["device"].split(":")[0]
    targets = [args.json] if args.json else []
    if args.results:
        targets.append(HERE / "results" / f"{device}-{stamp}.json")
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {path}")
    if args.results:
        md = HERE / "results" / f"{device}-{stamp}.md"
        md.write_text(results_markdown(doc, sections))
        print(f"wrote {md}")
    for s in sections.values():
        print(table(s))
    return 0


def results_markdown(doc: dict[str, Any], sections: dict[str, Section]) -> str:
    """The committed results page: the machine, then one table per section."""
    m = doc["machine"]
    head = [
        f"# scidiff benchmarks, {m['date']}",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cores']} logical cores; device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else ""),
        f"- torch {m['torch']}, {m['torch_threads']} intra-op thread(s); Python {m['python']}; {m['platform']}",
        f"- git commit {m['git_commit']}; command: `python benchmarks/run.py {' '.join(doc['argv'])}`",
        f"- load average (1, 5, 15 min) at start {m['load_average_start']}, at end {m['load_average_end']}; "
        f"total {m['total_seconds']:.0f} s",
    ]
    for r in m.get("runs", []):
        head.append(f"  - run `{' '.join(r['argv'])}` at {r['date']} (commit {r['git_commit']}): load "
                    f"{r['load_average_start']} -> {r['load_average_end']}")
    head.append("")
    return "\n".join(head) + "\n".join(markdown(s) for s in sections.values())


if __name__ == "__main__":
    raise SystemExit(main())
