"""Shared pieces of the benchmark scripts: the networks, timing, the machine, tables.

A benchmark section returns a :class:`Section`: rows of measured figures, each row with
its goal and whether the goal was met, plus notes.  ``benchmarks/run.py`` prints every
section as a table and writes them all to JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


# ---- results ------------------------------------------------------------------------------
@dataclass
class Section:
    """One section of the benchmark: a titled table of rows.

    Attributes:
        name: short key ("overhead", "peer", ...), the key of the section in the JSON file.
        title: one line describing what is measured.
        columns: the row keys shown in the printed table, in order.
        rows: one dict per measured configuration; numbers are python floats/ints.
        goal: the section's goal, in words.
        notes: how it was measured, caveats, the diagnosis of a missed goal.
        status: "ok", or "skipped" (then ``notes`` says why and ``rows`` may be empty).
        seconds: wall time the section took.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    goal: str = ""
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt(v: Any) -> str:
    """A table cell: floats with 4 significant digits, booleans as pass/MISS."""
    if isinstance(v, bool):
        return "pass" if v else "MISS"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def table(section: Section) -> str:
    """The section as a fixed-width text table (goal and notes below it)."""
    lines = [f"== {section.name}: {section.title}"]
    if section.goal:
        lines.append(f"   goal: {section.goal}")
    if section.status != "ok":
        lines.append(f"   [{section.status}]")
    if section.rows:
        cells = [[fmt(r.get(c)) for c in section.columns] for r in section.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(section.columns)]
        lines.append("  ".join(c.rjust(w) for c, w in zip(section.columns, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)
    lines.extend(f"   note: {n}" for n in section.notes)
    lines.append(f"   ({section.seconds:.1f} s)")
    return "\n".join(lines)


def markdown(section: Section) -> str:
    """The section as a Markdown table."""
    out = [f"### {section.name}: {section.title}", ""]
    if section.goal:
        out += [f"Goal: {section.goal}", ""]
    if section.status != "ok":
        out += [f"**{section.status}**", ""]
    if section.rows:
        out.append("| " + " | ".join(section.columns) + " |")
        out.append("|" + "|".join("---" for _ in section.columns) + "|")
        out.extend("| " + " | ".join(fmt(r.get(c)) for c in section.columns) + " |" for r in section.rows)
        out.append("")
    out.extend(f"- {n}" for n in section.notes)
    out.append(f"- section wall time {section.seconds:.0f} s")
    return "\n".join(out) + "\n"


# ---- the machine ----------------------------------------------------------------------------
def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    """CPU, cores, torch, threads, device, git commit and the load, for the results file."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "clock": clock_name(),
        "git_commit": commit,
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---- command line of a single benchmark script ------------------------------------------------
def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark script shares: ``--quick``, ``--device``, ``--threads``, ``--json``."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test of benchmarks/run.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: timings on the thread's CPU clock)")
    p.add_argument("--json", type=Path, default=None, help="write the sections as JSON to this path")
    return p


def parse_script_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, set the torch threads and choose the clock (see :func:`set_clock`)."""
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    set_clock(args.device)
    return args


def report(sections: Sequence["Section"], json_path: Path | None, *, single: bool = False) -> None:
    """Print each section's table; write them to ``json_path`` (one section's dict when ``single``,
    else a dict keyed by section name)."""
    for s in sections:
        print(table(s))
    if json_path is not None:
        data = sections[0].to_dict() if single else {s.name: s.to_dict() for s in sections}
        json_path.write_text(json.dumps(data, indent=1))


# ---- timing --------------------------------------------------------------------------------
_CLOCK: dict[str, Any] = {"fn": time.perf_counter, "name": "wall (perf_counter)"}


def set_clock(device: torch.device | str) -> str:
    """Choose the clock of :func:`timed`: the calling thread's CPU time on a CPU with one torch
    thread (every operation then runs on this thread, and time the OS gives to other processes
    on a shared machine is not counted), else wall time with device synchronisation."""
    device = torch.device(device)
    if device.type == "cpu" and torch.get_num_threads() == 1:
        _CLOCK.update(fn=time.thread_time, name="thread CPU time (time.thread_time; 1 torch thread)")
    else:
        _CLOCK.update(fn=time.perf_counter, name="wall (perf_counter, device synchronised)")
    return _CLOCK["name"]


def clock_name() -> str:
    return _CLOCK["name"]


def sync(device: torch.device | str) -> None:
    """Wait for the device (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn`` on the clock chosen by :func:`set_clock`, the
    device synchronised before and after."""
    clock = _CLOCK["fn"]
    sync(device)
    start = clock()
    out = fn()
    sync(device)
    return clock() - start, out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---- networks --------------------------------------------------------------------------------
SMALL_NET: dict[str, Any] = {"base_channels": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 1, "groups": 8}
TINY_NET: dict[str, Any] = {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "groups": 4, "num_heads": 2}


def make_unet(quick: bool, *, seed: int = 0, fused_attention: bool = False, device: torch.device | str = "cpu",
              random_output: bool = True, **overrides: Any):
    """A small periodic 2-D UNet (attention at the coarsest level) for one-channel fields.

    The UNet's output convolution is zero at initialisation (output exactly 0, a trivial
    score); with ``random_output`` it is re-drawn N(0, 0.02^2) so that the score depends on x
    and the ODE solvers and traces see a non-trivial field.
    """
    import scidiff as sd

    torch.manual_seed(seed)
    cfg = {**(TINY_NET if quick else SMALL_NET), **overrides}
    net = sd.UNet(1, 2, periodic=True, fused_attention=fused_attention, **cfg)
    if random_output:
        with torch.no_grad():
            net.out_conv.weight.normal_(0.0, 0.02)
            net.out_conv.bias.zero_()
    return net.to(device).eval()


def finite_numbers(obj: Any) -> list[float]:
    """Every int/float inside a nested dict/list (booleans excluded)."""
    out: list[float] = []
    if isinstance(obj, bool) or obj is None:
        return out
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        for v in obj.values():
            out.extend(finite_numbers(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(finite_numbers(v))
    return out
