"""The pieces the UNet and the NoisyEncoder share: their options and the down path.

A network has ``levels = len(channel_mults)`` resolution levels; level i has
width ``base_channels * channel_mults[i]`` and spatial size N / 2**i.  Between
consecutive levels a stride-2 convolution halves the size, so the coarsest
level is reached after ``levels - 1`` downsamplings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn

from scidiff.nets import _checks
from scidiff.nets.blocks import ResBlock, SelfAttention
from scidiff.nets.layers import Downsample, check_dims, conv


@dataclass(frozen=True)
class Architecture:
    """Validated options common to the UNet and the NoisyEncoder (see ``UNet`` for each)."""

    dims: int
    periodic: bool
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[int, ...]
    num_heads: int
    dropout: float
    time_embedding: str
    groups: int
    fused_attention: bool

    @classmethod
    def build(
        cls,
        *,
        dims: int = 2,
        periodic: bool = False,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] | None = None,
        num_heads: int = 4,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        groups: int = 8,
        fused_attention: bool = False,
    ) -> Architecture:
        """Validate every option, raising ValueError naming the bad one.

        The defaults here are those of ``UNet`` and ``NoisyEncoder``: both take these options
        as keyword arguments and forward them unchanged (:meth:`for_network`)."""
        mults = _checks.channel_mults(channel_mults)
        if time_embedding not in ("sinusoidal", "fourier"):
            raise ValueError(f"time_embedding must be 'sinusoidal' or 'fourier'; got {time_embedding!r}")
        arch = cls(
            dims=check_dims(dims),
            periodic=bool(periodic),
            base_channels=_checks.positive_int("base_channels", base_channels),
            channel_mults=mults,
            num_res_blocks=_checks.positive_int("num_res_blocks", num_res_blocks),
            attention_levels=_checks.attention_levels(attention_levels, len(mults)),
            num_heads=_checks.positive_int("num_heads", num_heads),
            dropout=_checks.dropout(dropout),
            time_embedding=time_embedding,
            groups=_checks.positive_int("groups", groups),
            fused_attention=bool(fused_attention),
        )
        if arch.base_channels % 2:
            raise ValueError(f"base_channels must be even (it sets the time-feature width); got {base_channels}")
        for width in arch.widths:
            if width % arch.groups:
                raise ValueError(
                    f"every level width base_channels * channel_mults = {arch.widths} must be a multiple of "
                    f"groups={arch.groups} (GroupNorm)"
                )
        for level in arch.attention_levels:
            if arch.widths[level] % arch.num_heads:
                raise ValueError(
                    f"attention at level {level} has width {arch.widths[level]}, not a multiple of "
                    f"num_heads={arch.num_heads}"
                )
        return arch

    @classmethod
    def for_network(cls, network: str, *, dims: int, periodic: bool, options: dict[str, Any]) -> Architecture:
        """:meth:`build` from a network's keyword options, a ValueError naming unknown ones."""
        known = [f.name for f in fields(cls) if f.name not in ("dims", "periodic")]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{network} got unknown option(s) {unknown}; its architecture options are {known}")
        return cls.build(dims=dims, periodic=periodic, **options)

    def options(self) -> dict[str, Any]:
        """The options as :meth:`build` takes them (``build(**arch.options())`` is ``arch``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def levels(self) -> int:
        """Number of resolution levels."""
        return len(self.channel_mults)

    @property
    def downsamples(self) -> int:
        """Number of stride-2 downsamplings (levels - 1)."""
        return self.levels - 1

    @property
    def factor(self) -> int:
        """Size of one coarsest-level cell in input pixels, 2**(levels - 1)."""
        return 2**self.downsamples

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each level."""
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def emb_dim(self) -> int:
        """Width of the time / conditioning embedding, 4 * base_channels."""
        return 4 * self.base_channels

    def res_block(self, in_channels: int, out_channels: int) -> ResBlock:
        """A residual block with this architecture's options."""
        return ResBlock(
            in_channels,
            out_channels,
            self.dims,
            emb_dim=self.emb_dim,
            periodic=self.periodic,
            groups=self.groups,
            dropout=self.dropout,
        )

    def attention(self, channels: int) -> SelfAttention:
        """A self-attention block with this architecture's options."""
        return SelfAttention(channels, num_heads=self.num_heads, groups=self.groups, fused=self.fused_attention)


class Stage(nn.Module):
    """A sequence of layers; residual blocks also receive the embedding e.

    Shapes: h [B, C_in, *N], e [B, emb_dim] -> [B, C_out, *N'].
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
        return h


class DownPath(nn.Module):
    """Input convolution, then per level ``num_res_blocks`` residual blocks (plus attention
    where configured) and a stride-2 downsampling between levels.

    ``forward`` returns the coarsest features and the output of every stage (the
    input convolution included), finest first, for the UNet's skip connections;
    ``skip_channels`` lists their widths.

    Shapes: x [B, in_channels, *N] -> h [B, widths[-1], *N / 2**(levels-1)].
    """

    def __init__(self, in_channels: int, arch: Architecture) -> None:
        super().__init__()
        self.in_conv = conv(in_channels, arch.base_channels, arch.dims, periodic=arch.periodic)
        self.stages = nn.ModuleList()
        self.skip_channels: list[int] = [arch.base_channels]
        channels = arch.base_channels
        for level, width in enumerate(arch.widths):
            for _ in range(arch.num_res_blocks):
                layers: list[nn.Module] = [arch.res_block(channels, width)]
                if level in arch.attention_levels:
                    layers.append(arch.attention(width))
                self.stages.append(Stage(*layers))
                channels = width
                self.skip_channels.append(channels)
            if level < arch.levels - 1:
                self.stages.append(Stage(Downsample(channels, arch.dims, periodic=arch.periodic)))
                self.skip_channels.append(channels)
        self.out_channels = channels

    def forward(self, x: Tensor, e: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = self.in_conv(x)
        skips = [h]
        for stage in self.stages:
            h = stage(h, e)
            skips.append(h)
        return h, skips


def middle(arch: Architecture) -> Stage:
    """The bottleneck: residual block, attention (if the coarsest level has attention), residual block."""
    width = arch.widths[-1]
    layers: list[nn.Module] = [arch.res_block(width, width)]
    if arch.levels - 1 in arch.attention_levels:
        layers.append(arch.attention(width))
    layers.append(arch.res_block(width, width))
    return Stage(*layers)
