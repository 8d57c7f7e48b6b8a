"""A UNet noise-prediction network for 1-, 2- and 3-D fields.

The architecture follows Ho et al. (2020), "Denoising Diffusion Probabilistic
Models", with the adaptive GroupNorm conditioning of Dhariwal & Nichol (2021),
"Diffusion Models Beat GANs on Image Synthesis".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scidiff.nets.backbone import Architecture, FieldNetwork, Stage
from scidiff.nets.layers import Upsample, conv, crop_to, group_norm, pad_to_multiple


class UNet(FieldNetwork):
    r"""UNet :math:`\hat\varepsilon_\theta(x_t, t, c)` for fields ``[B, C, *spatial]`` in 1, 2 or 3 D.

    The network predicts a tensor shaped like ``x`` (the noise eps, or x_0 or v
    depending on how the ``ScoreModel`` wrapping it is trained).

    Layout: an input convolution; per level ``num_res_blocks`` residual blocks
    (GroupNorm, SiLU, 3-wide convolutions, FiLM scale and shift from the
    embedding), self-attention over all positions at ``attention_levels`` and a
    stride-2 convolution to the next level; a bottleneck (residual block,
    attention, residual block); the mirror-image up path with skip connections,
    nearest-neighbour upsampling and a convolution; GroupNorm, SiLU and a
    zero-initialised output convolution, so the network outputs exactly 0 at
    initialisation.

    The embedding fed to every residual block is
    :math:`e = \mathrm{MLP}(\phi(t)) + \mathrm{MLP}(c)`, with :math:`\phi` sinusoidal
    features of ln t (``time_embedding="log"``, the default: smooth in t, so the
    probability-flow ODE of the trained model needs about as few evaluations as that of
    the true score), of 1000 t (``"sinusoidal"``, the transformer/DDPM choice) or random
    Fourier features :math:`\sin / \cos(2\pi W t)`, :math:`W \sim N(0, 16^2)` (``"fourier"``).

    Boundaries: with ``periodic=True`` every convolution (the strided and the
    upsampling ones included) pads circularly and attention carries no positional
    embedding, so rolling the input by a whole number of coarsest cells,
    ``2**(len(channel_mults) - 1)`` pixels along any axes, rolls the output the
    same way, exactly.  Periodic fields must then have sizes divisible by that
    number.  With ``periodic=False`` padding is with zeros, and a field of any
    size is zero-padded at the end of each axis to the next multiple and the
    output cropped back.

    Args:
        channels: number of field channels C (input and output).
        dims: number of spatial dimensions, 1, 2 or 3.
        periodic: circular instead of zero padding in every layer.
        cond_dim: length of the conditioning vector (simulator parameters); 0 for none.
        extra_channels: number of extra input fields (forcing, masks, coordinates)
            concatenated to x as channels; they are inputs only, not predicted.
        **architecture: the options below, shared with ``NoisyEncoder`` and validated by
            ``scidiff.nets.backbone.Architecture`` (defaults declared there once).
        base_channels: width of the first level (must be even).
        channel_mults: width multiplier of each level; its length is the number of levels.
        num_res_blocks: residual blocks per level on the down path (one more on the up path).
        attention_levels: levels (0 = finest, negative counts from the coarsest) with
            self-attention; ``None`` means the coarsest level only, ``()`` none.
        num_heads: attention heads (must divide the attention levels' widths).
        dropout: dropout probability inside the residual blocks.
        time_embedding: ``"log"`` (default), ``"sinusoidal"`` or ``"fourier"``.
        groups: GroupNorm groups (must divide every level width).
        fused_attention: use ``torch.nn.functional.scaled_dot_product_attention``
            (fast on a GPU; on the CPU it lacks forward-mode AD and double
            backward); by default the attention is written out and supports every
            autograd mode, ``torch.func`` transforms and batched VJPs.

    Call: ``net(x, t, cond=None, extra=None)`` with x [B, C, *spatial], t [B] in
    [0, 1] (a scalar is broadcast), cond [B, cond_dim] (or [cond_dim], shared by
    the batch), extra [B, extra_channels, *spatial] (batch 1 is broadcast).
    Returns [B, C, *spatial] in x's dtype.
    """

    def __init__(
        self,
        channels: int,
        dims: int = 2,
        *,
        periodic: bool = False,
        cond_dim: int = 0,
        extra_channels: int = 0,
        **architecture: Any,
    ) -> None:
        super().__init__(
            channels, dims, periodic=periodic, cond_dim=cond_dim, extra_channels=extra_channels, architecture=architecture
        )
        arch = self.arch
        self.up = self._up_path(arch, list(self.down.skip_channels))
        self.out_norm = group_norm(arch.base_channels, arch.groups)
        self.out_conv = conv(arch.base_channels, self.channels, arch.dims, periodic=arch.periodic)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @staticmethod
    def _up_path(arch: Architecture, skip_channels: list[int]) -> nn.ModuleList:
        """Per level, coarsest first, ``num_res_blocks + 1`` residual blocks each eating one skip."""
        stages = nn.ModuleList()
        channels = arch.widths[-1]
        for level in reversed(range(arch.levels)):
            width = arch.widths[level]
            for block in range(arch.num_res_blocks + 1):
                layers: list[nn.Module] = [arch.res_block(channels + skip_channels.pop(), width)]
                channels = width
                if level in arch.attention_levels:
                    layers.append(arch.attention(width))
                if level > 0 and block == arch.num_res_blocks:
                    layers.append(Upsample(width, arch.dims, periodic=arch.periodic))
                stages.append(Stage(*layers))
        return stages

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``UNet(**net.config)`` builds the same architecture."""
        return self._config()

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, extra: Tensor | None = None) -> Tensor:
        """eps-hat [B, C, *spatial] from x [B, C, *spatial], t [B] (see the class docstring)."""
        h, e = self._inputs(x, t, cond, extra)
        spatial = h.shape[2:]
        if not self.arch.periodic:
            h = pad_to_multiple(h, self.arch.factor)
        h, skips = self.down(h, e)
        h = self.mid(h, e)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), e)
        h = self.out_conv(F.silu(self.out_norm(h)))
        return crop_to(h, spatial)
