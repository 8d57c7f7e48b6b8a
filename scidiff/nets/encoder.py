"""A time-dependent encoder of noisy fields: the backbone of noise-conditional
classifiers and regressors used for guidance (Dhariwal & Nichol 2021, sec. 4).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scidiff.nets import _checks
from scidiff.nets.backbone import Architecture, DownPath, middle
from scidiff.nets.embedding import Embedding, mlp
from scidiff.nets.layers import group_norm
from scidiff.nets.unet import check_dtype


class NoisyEncoder(nn.Module):
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
        super().__init__()
        self.channels = _checks.positive_int("channels", channels)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.cond_dim = _checks.positive_int("cond_dim", cond_dim, minimum=0)
        self.extra_channels = _checks.positive_int("extra_channels", extra_channels, minimum=0)
        self.arch = arch = Architecture.for_network(type(self).__name__, dims=dims, periodic=periodic, options=architecture)
        self.embedding = Embedding(
            arch.emb_dim, feature_dim=arch.base_channels, time_embedding=arch.time_embedding, cond_dim=self.cond_dim
        )
        self.down = DownPath(self.channels + self.extra_channels, arch)
        self.mid = middle(arch)
        width = arch.widths[-1]
        self.out_norm = group_norm(width, arch.groups)
        self.head = mlp(width, arch.emb_dim, self.out_features)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``NoisyEncoder(**enc.config)`` builds the same architecture."""
        options = self.arch.options()
        return {
            "channels": self.channels,
            "dims": options.pop("dims"),
            "out_features": self.out_features,
            "periodic": options.pop("periodic"),
            "cond_dim": self.cond_dim,
            "extra_channels": self.extra_channels,
            **options,
        }

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, extra: Tensor | None = None) -> Tensor:
        """f [B, out_features] from x [B, C, *spatial], t [B] (see the class docstring)."""
        name = type(self).__name__
        x = _checks.field(name, x, dims=self.arch.dims, channels=self.channels)
        check_dtype(name, self, x)
        batch = x.shape[0]
        t = _checks.time(name, t, batch, like=x)
        cond = _checks.cond(name, cond, batch, cond_dim=self.cond_dim, like=x)
        extra = _checks.extra(name, extra, extra_channels=self.extra_channels, like=x)
        if self.arch.periodic:
            _checks.periodic_sizes(name, x.shape[2:], downsamples=self.arch.downsamples)

        h = x if extra is None else torch.cat([x, extra], dim=1)
        e = self.embedding(t, cond)
        h, _ = self.down(h, e)
        h = self.mid(h, e)
        pooled = F.silu(self.out_norm(h)).flatten(2).mean(dim=2)  # [B, width]
        return self.head(pooled)
