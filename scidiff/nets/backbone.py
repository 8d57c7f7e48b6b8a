"""The pieces the UNet and the NoisyEncoder share: their options, embedding, down path and input checks.

A network has ``levels = len(channel_mults)`` resolution levels; level i has
width ``base_channels * channel_mults[i]`` and spatial size N / 2**i.  Between
consecutive levels a stride-2 convolution halves the size, so the coarsest
level is reached after ``levels - 1`` downsamplings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from scidiff.nets import _checks
from scidiff.nets.blocks import ResBlock, SelfAttention
from scidiff.nets.embedding import TIME_EMBEDDINGS, Embedding
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
        time_embedding: str = "log",
        groups: int = 8,
        fused_attention: bool = False,
    ) -> Architecture:
        """Validate every option, raising ValueError naming the bad one.

        The defaults here are those of ``UNet`` and ``NoisyEncoder``: both take these options
        as keyword arguments and forward them unchanged (:meth:`for_network`)."""
        mults = _checks.channel_mults(channel_mults)
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {list(TIME_EMBEDDINGS)}; got {time_embedding!r}")
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


def check_dtype(net: str, module: nn.Module, x: Tensor) -> None:
    """Raise TypeError when x's dtype differs from the network's parameters (outside autocast)."""
    param = next(module.parameters(), None)
    if param is None or param.dtype == x.dtype:
        return
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4 takes no device type
        autocast = torch.is_autocast_enabled()
    if autocast:
        return
    raise TypeError(
        f"{net} parameters are {param.dtype} but x is {x.dtype}: convert the network with "
        f"net.to({x.dtype}) or pass x as {param.dtype}"
    )


class FieldNetwork(nn.Module):
    """The trunk the UNet and the NoisyEncoder share: a validated :class:`Architecture`, the
    embedding e = MLP(phi(t)) + MLP(c), the down path and the bottleneck, and the checks of a call.

    Subclasses add their own head (the UNet's up path, the encoder's pooling MLP) after calling
    ``super().__init__`` and start ``forward`` with :meth:`_inputs`.
    """

    def __init__(
        self, channels: int, dims: int, *, periodic: bool, cond_dim: int, extra_channels: int,
        architecture: dict[str, Any],
    ) -> None:
        super().__init__()
        self.channels = _checks.positive_int("channels", channels)
        self.cond_dim = _checks.positive_int("cond_dim", cond_dim, minimum=0)
        self.extra_channels = _checks.positive_int("extra_channels", extra_channels, minimum=0)
        self.arch = arch = Architecture.for_network(type(self).__name__, dims=dims, periodic=periodic, options=architecture)
        self.embedding = Embedding(
            arch.emb_dim, feature_dim=arch.base_channels, time_embedding=arch.time_embedding, cond_dim=self.cond_dim
        )
        self.down = DownPath(self.channels + self.extra_channels, arch)
        self.mid = middle(arch)

    @property
    def dims(self) -> int:
        """Number of spatial dimensions."""
        return self.arch.dims

    @property
    def periodic(self) -> bool:
        """Whether every layer pads circularly."""
        return self.arch.periodic

    @property
    def factor(self) -> int:
        """Spatial sizes are handled in multiples of this, 2**(levels - 1) pixels."""
        return self.arch.factor

    def _config(self, **own: Any) -> dict[str, Any]:
        """The constructor arguments: channels, dims, ``own`` (the subclass's), then the shared options."""
        options = self.arch.options()
        return {
            "channels": self.channels,
            "dims": options.pop("dims"),
            **own,
            "periodic": options.pop("periodic"),
            "cond_dim": self.cond_dim,
            "extra_channels": self.extra_channels,
            **options,
        }

    def _inputs(self, x: Tensor, t: Tensor | float, cond: Tensor | None, extra: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check a call and return (h, e): x with the extra channels [B, C + E, *spatial] and the embedding [B, emb]."""
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
        return h, self.embedding(t, cond)
