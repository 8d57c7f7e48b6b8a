"""Residual and self-attention blocks shared by the UNet and the NoisyEncoder.

Both blocks act on fields ``[B, C, *spatial]`` of any dimension and commute with
cyclic shifts when their convolutions are periodic: the residual block is made
of convolutions, GroupNorm (statistics over all positions) and pointwise maps;
the attention block attends over all positions with no positional embedding,
so it is equivariant to every permutation of the positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scidiff.nets.layers import conv, group_norm


class ResBlock(nn.Module):
    r"""Residual block with adaptive GroupNorm (FiLM) conditioning (Dhariwal & Nichol 2021).

    .. math::
        h &= \mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}_1(x))) \\
        (\gamma, \beta) &= \mathrm{Linear}(\mathrm{SiLU}(e)) \\
        h &= \mathrm{conv}_2(\mathrm{Dropout}(\mathrm{SiLU}(\mathrm{GN}_2(h)\,(1 + \gamma) + \beta))) \\
        y &= \mathrm{skip}(x) + h

    ``skip`` is the identity when the channel count is unchanged and a 1x1
    convolution otherwise.  ``e`` is the joint time / conditioning embedding.

    Shapes: x [B, in_channels, *N], e [B, emb_dim] -> [B, out_channels, *N].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dims: int,
        *,
        emb_dim: int,
        periodic: bool = False,
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = conv(in_channels, out_channels, dims, periodic=periodic)
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels, dims, periodic=periodic)
        self.skip = (
            nn.Identity() if in_channels == out_channels else conv(in_channels, out_channels, dims, kernel_size=1)
        )

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        gamma, beta = self.film(F.silu(e)).chunk(2, dim=1)
        expand = (...,) + (None,) * (h.ndim - 2)
        h = self.norm2(h) * (1.0 + gamma[expand]) + beta[expand]
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    r"""Multi-head self-attention over all spatial positions, with a residual connection.

    With tokens :math:`z = \mathrm{GN}(x)` reshaped to [B, L, C] (L = prod(N)) and
    per head :math:`Q = z W_Q, K = z W_K, V = z W_V` of width d = C / heads,

    .. math:: y = x + \mathrm{reshape}(\mathrm{softmax}(Q K^\top / \sqrt{d})\, V\, W_O).

    There is no positional embedding: the block is equivariant to any permutation
    of the positions, in particular to cyclic shifts.

    ``fused=False`` (the default) writes the softmax and the two matmuls out, which
    supports every autograd mode (forward-mode AD, double backward, ``vmap`` and
    batched VJPs at full speed).  ``fused=True`` calls
    ``torch.nn.functional.scaled_dot_product_attention``, faster and lighter on a
    GPU; on the CPU that kernel has no forward-mode AD, no double backward, and its
    backward is vmapped by a slow per-sample loop.

    Shapes: x [B, C, *N] -> [B, C, *N].
    """

    def __init__(self, channels: int, *, num_heads: int = 4, groups: int = 8, fused: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(
                f"attention needs the channel count to be a multiple of num_heads: {channels} channels "
                f"cannot be split into num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.fused = fused
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]
        z = self.norm(x).flatten(2).transpose(1, 2)  # [B, L, C]
        L = z.shape[1]
        q, k, v = self.qkv(z).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B, heads, L, L]
            a = w @ v  # [B, heads, L, d]
        a = self.out(a.transpose(1, 2).reshape(B, L, C))  # [B, L, C]
        return x + a.transpose(1, 2).reshape(x.shape)
