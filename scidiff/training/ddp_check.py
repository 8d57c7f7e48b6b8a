"""A self-check of distributed training: every rank must end with the same weights.

Run it the way a real job is run::

    torchrun --nproc_per_node=2 -m scidiff.training.ddp_check --out /tmp/ddp_check

Each rank trains a small 1-D UNet on the same synthetic fields for a few steps (through
``scidiff.training.train``, so DDP, the DistributedSampler and rank-0 checkpointing are all
exercised) and writes ``rank<r>.json`` with the sha256 of its final raw and EMA weights; the
run directory ``<out>/run`` receives rank 0's checkpoint.  Identical hashes on all ranks mean
the gradient all-reduce worked.  Without torchrun it runs as a single process.  The latent
autoencoder's trainer has its own check, :mod:`scidiff.latent.ddp_check`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def weights_sha256(module: nn.Module, *, buffers: bool = True) -> str:
    """sha256 of every tensor of ``module.state_dict()`` in key order (bytes of the CPU copy).

    With ``buffers=False`` only the parameters (``module.named_parameters()``) are hashed.
    """
    h = hashlib.sha256()
    tensors = module.state_dict().items() if buffers else module.named_parameters()
    for key, value in tensors:
        h.update(key.encode())
        h.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    run_check(_check_score_model, __doc__, argv)


def run_check(check: Callable[[Path, int, int], dict[str, object]], doc: str | None,
              argv: list[str] | None = None) -> None:
    """Parse ``--out`` and ``--steps``, run ``check(out, steps, rank)`` on this rank and write its
    report, with the rank and world size, to ``<out>/rank<r>.json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--out", required=True, help="directory for rank<r>.json and what the check writes")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer; got {args.steps}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    report = check(out, args.steps, rank)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": world, **report}))


def _check_score_model(out: Path, steps: int, rank: int) -> dict[str, object]:
    from scidiff.models import ScoreModel
    from scidiff.nets import UNet
    from scidiff.sde import VPSDE
    from scidiff.training import TrainConfig, train

    # every rank builds its own initial weights (different seeds): DDP must broadcast rank 0's
    torch.manual_seed(1234 + rank)
    net = UNet(1, 1, base_channels=8, channel_mults=(1, 2), groups=4)
    model = ScoreModel(net, VPSDE())
    initial = weights_sha256(model) if rank == 0 else None
    fields = torch.randn(32, 1, 16, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, ema_decay=0.9, log_every=2,
                         val_every=0, checkpoint_every=0, seed=7)
    result = train(model, fields, config, run_dir=out / "run", progress=False)
    return {
        "step": result.step,
        "raw": weights_sha256(result.raw_model),
        "ema": weights_sha256(result.model),
        "initial_rank0": initial,
        "loss": result.history[-1]["loss"],
    }


if __name__ == "__main__":
    main()
