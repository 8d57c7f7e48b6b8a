"""A time-dependent encoder of noisy fields: the backbone of noise-conditional
classifiers and regressors used for guidance (Dhariwal & Nichol 2021, sec. 4).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from scidiff.nets import _checks
from scidiff.nets.backbone import FieldNetwork
from scidiff.nets.embedding import mlp
from scidiff.nets.layers import group_norm


class NoisyEncoder(FieldNetwork):
    r"""Map a noisy field and its time, :math:`(x_t, t[, c])`, to a vector :math:`f_\theta(x_t, t, c)`.

    Layout: the UNet's down path (same residual, attention and downsampling
    blocks, same options) and bottleneck, then GroupNorm, SiLU, global average
    pooling over all positions and an MLP head,

    .. math:: f = \mathrm{MLP}\big(\tfrac{1}{|\Omega|}\textstyle\sum_{p \in \Omega} h_p\big).

    With ``periodic=True`` the pooled output is invariant, exactly, to rolling the
    input by any whole number of coarsest cells (``2**(len(channel_mults) - 1)``
    pixels), and sizes must be multiples of that number.  With ``periodic=False``
    any size works: the stride-2 convolutions round odd sizes up.

    Use it as ``log p(y | x_t)`` (classifier logits, ``out_features`` classes) or
    as the mean of a Gaussian regressor of simulator parameters.

    Args:
        channels, dims: as for ``UNet``.
        out_features: length of the output vector.
        periodic, cond_dim, extra_channels: as for ``UNet``.
        **architecture: base_channels, channel_mults, num_res_blocks, attention_levels,
            num_heads, dropout, time_embedding, groups, fused_attention, as for ``UNet``
            (one ``scidiff.nets.backbone.Architecture`` describes both networks).

    Call: ``enc(x, t, cond=None, extra=None)`` with x [B, C, *spatial], t [B] (or a
    scalar); returns [B, out_features] in x's dtype.
    """

    def __init__(
        self,
        channels: int,
        dims: int,
        out_features: int,
        *,
        periodic: bool = False,
        cond_dim: int = 0,
        extra_channels: int = 0,
        **architecture: Any,
    ) -> None:
        out_features = _checks.positive_int("out_features", out_features)
        super().__init__(
            channels, dims, periodic=periodic, cond_dim=cond_dim, extra_channels=extra_channels, architecture=architecture
        )
        self.out_features = out_features
        arch = self.arch
        width = arch.widths[-1]
        self.out_norm = group_norm(width, arch.groups)
        self.head = mlp(width, arch.emb_dim, self.out_features)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``NoisyEncoder(**enc.config)`` builds the same architecture."""
        return self._config(out_features=self.out_features)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, extra: Tensor | None = None) -> Tensor:
        """f [B, out_features] from x [B, C, *spatial], t [B] (see the class docstring)."""
        h, e = self._inputs(x, t, cond, extra)
        h, _ = self.down(h, e)
        h = self.mid(h, e)
        pooled = F.silu(self.out_norm(h)).flatten(2).mean(dim=2)  # [B, width]
        return self.head(pooled)
