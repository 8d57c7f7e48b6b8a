r"""Exponential moving average of a model's weights (Polyak averaging).

After optimiser step k (k = 1, 2, ...) with weights theta_k:

    ema_k = theta_k                                  if k <= start
    ema_k = d ema_{k-1} + (1 - d) theta_k            otherwise,

so for k > start, ema_k = d^(k - start) theta_start + (1 - d) sum_{j = start+1}^{k} d^(k - j) theta_j.
Buffers (e.g. normalisation statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA weights of ``model``, held in a frozen deep copy (``ema.module``).

    Args:
        model: the module being trained (its current weights initialise the average).
        decay: d in [0, 1).
        start: number of initial steps during which the average copies the weights.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, start: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1); got {decay!r}")
        if start < 0:
            raise ValueError(f"EMA start must be >= 0; got {start!r}")
        self.decay = float(decay)
        self.start = int(start)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimiser step ``step`` (1-based) by the recursion above."""
        params = [p.detach() for p in model.parameters()]
        shadow = list(self.module.parameters())
        if len(params) != len(shadow):
            raise ValueError(f"EMA holds {len(shadow)} parameter tensors but the model has {len(params)}")
        if step <= self.start:
            torch._foreach_copy_(shadow, params)
        else:
            torch._foreach_lerp_(shadow, params, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers (keys as in ``module.state_dict()``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load averaged weights saved by :meth:`state_dict`."""
        self.module.load_state_dict(state)
