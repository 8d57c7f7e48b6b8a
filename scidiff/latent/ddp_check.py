"""A self-check of the latent autoencoder's distributed training: every rank must end alike.

Run it the way a real job is run::

    torchrun --nproc_per_node=2 -m scidiff.latent.ddp_check --out /tmp/ae_check

Each rank trains a small 1-D :class:`~scidiff.latent.Autoencoder` from its own initial weights
on the same synthetic fields for a few steps (through :class:`~scidiff.latent.AutoencoderTrainer`,
with a checkpoint every 2 steps and the decoder variance fitted on held-out fields) and writes
``rank<r>.json`` with the sha256 of its final raw and EMA weights, the logged losses, the decoder
variance and the number of checkpoint writes it made; ``<out>/autoencoder`` receives rank 0's
checkpoint.  Without torchrun it runs as a single process.  The score model's trainer has its
own check, :mod:`scidiff.training.ddp_check`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scidiff.training.ddp_check import run_check, weights_sha256


def main(argv: list[str] | None = None) -> None:
    run_check(_check_autoencoder, __doc__, argv)


def _check_autoencoder(out: Path, steps: int, rank: int) -> dict[str, object]:
    from scidiff.latent import Autoencoder, AutoencoderTrainer
    from scidiff.training import TrainConfig

    # different initial weights on every rank: the trainer must broadcast rank 0's
    torch.manual_seed(4321 + rank)
    ae = Autoencoder(1, 1, factor=2, latent_channels=2, base_channels=8, groups=4)
    initial = weights_sha256(ae, buffers=False)
    fields = torch.randn(32, 1, 16, generator=torch.Generator().manual_seed(0))
    held_out = torch.randn(8, 1, 16, generator=torch.Generator().manual_seed(1))
    config = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, ema_decay=0.9, log_every=2,
                         val_every=0, checkpoint_every=2, seed=7)
    trainer = AutoencoderTrainer(ae, config, checkpoint=out / "autoencoder")
    writes: list[str] = []
    trainer.on_save = lambda path: writes.append(str(path))
    try:
        history = trainer.fit(fields, val_data=held_out, progress=False)
    finally:
        trainer.dist.close()
    return {
        "step": trainer.step,
        "raw": weights_sha256(trainer.model),
        "ema": weights_sha256(trainer.ema_model),
        "raw_parameters": weights_sha256(trainer.model, buffers=False),
        "initial_parameters": initial,
        "losses": [entry["loss"] for entry in history],
        "decoder_log_var": trainer.model.decoder_log_var.tolist(),
        "ema_decoder_log_var": trainer.ema_model.decoder_log_var.tolist(),
        "checkpoint_writes": len(writes),
    }


if __name__ == "__main__":
    main()
