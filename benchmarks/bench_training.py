"""Training-step throughput and peak memory of a ~2M-parameter 2-D UNet at 32x32 and 64x64.

One "step" is everything ``Trainer.train_step`` does: draw t and eps, the DSM loss, backward,
gradient clipping, AdamW and the EMA update.  Each configuration runs in its own
subprocess so that the CPU peak-memory figure (the growth of the process's maximum resident
set size, ``resource.getrusage``, from just after the model and the batch were built to the
end of the run: the EMA copy, the optimiser state, gradients and activations) is not polluted by the previous one; on CUDA the figure is
``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_training.py                    # full table
    python benchmarks/bench_training.py --quick            # tiny, a few seconds
    python benchmarks/bench_training.py --json out.json    # also write the rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

NET = {"base_channels": 40, "channel_mults": (1, 2, 2), "num_res_blocks": 1, "groups": 8}
QUICK_NET = {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "groups": 4}


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(size: int, batch: int, steps: int, warmup: int, device: str, precision: str, quick: bool) -> dict:
    """Measure one configuration in this process; returns a row of the table."""
    import torch

    import scidiff as sd
    from scidiff.nets import count_parameters
    from scidiff.training import TrainConfig, Trainer

    torch.manual_seed(0)
    net = sd.UNet(1, 2, periodic=True, **(QUICK_NET if quick else NET))
    model = sd.ScoreModel(net, sd.VPSDE())
    x = torch.randn(batch, 1, size, size, device=device)
    rss0 = _rss_mib()
    cfg = TrainConfig(steps=steps + warmup, batch_size=batch, warmup_steps=0, precision=precision,
                      val_every=0, checkpoint_every=0, log_every=max(1, steps + warmup))
    trainer = Trainer(model, cfg, device=device)
    for _ in range(warmup):
        trainer.train_step(x)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = trainer.train_step(x)
    float(loss)  # wait for the device
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mib() - rss0
    return {
        "size": f"{size}x{size}",
        "batch": batch,
        "params": count_parameters(net),
        "device": str(trainer.device),
        "precision": precision if cuda else "fp32",
        "threads": torch.get_num_threads(),
        "steps": steps,
        "s_per_step": elapsed / steps,
        "fields_per_s": batch * steps / elapsed,
        "peak_mib": peak,
        "peak_kind": "cuda max_memory_allocated" if cuda else "max RSS growth over training (EMA copy, optimiser state, activations)",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny network, 16x16 and 32x32, 2 steps")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 10, quick 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch32", type=int, default=32, help="batch size at 32x32")
    p.add_argument("--batch64", type=int, default=8, help="batch size at 64x64")
    p.add_argument("--json", type=Path, default=None, help="write the rows to this JSON file")
    p.add_argument("--_one", nargs=2, type=int, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    steps = args.steps or (2 if args.quick else 10)

    if args._one:
        row = run_one(args._one[0], args._one[1], steps, args.warmup, args.device, args.precision, args.quick)
        print(json.dumps(row))
        return

    configs = [(16, 4), (32, 4)] if args.quick else [(32, args.batch32), (64, args.batch64)]
    rows = []
    for size, batch in configs:
        cmd = [sys.executable, __file__, "--_one", str(size), str(batch), "--steps", str(steps),
               "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision]
        if args.quick:
            cmd.append("--quick")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    head = f"{'grid':>7} {'batch':>5} {'params':>9} {'device':>6} {'prec':>5} {'thr':>3} {'s/step':>8} {'fields/s':>9} {'peak MiB':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:>7} {r['batch']:>5} {r['params']:>9,d} {r['device']:>6} {r['precision']:>5} {r['threads']:>3} "
              f"{r['s_per_step']:>8.3f} {r['fields_per_s']:>9.1f} {r['peak_mib']:>9.1f}")
    print(f"peak memory: {rows[0]['peak_kind']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    main()
