r"""A KL-regularised convolutional autoencoder for 1-, 2- and 3-D fields (Rombach et al. 2022).

The encoder maps a field x [B, C, *N] to a diagonal Gaussian over latents z [B, C_z, *N / f]

    q(z | x) = N(z; mu(x), diag(exp(log_var(x)))),

with a downsampling factor f_a in {1, 2, 4, 8} per spatial axis a; the decoder maps z back to
the mean of a Gaussian over fields,

    p(x | z) = N(x; D(z), diag(sigma_c^2)),      one variance sigma_c^2 per channel c,

whose variance is a buffer fitted on held-out fields (:meth:`Autoencoder.fit_decoder_variance`:
the maximum-likelihood sigma_c^2, the mean squared residual of channel c).  Both networks are
made of residual convolution blocks; every convolution is circular when ``periodic=True``, so
the autoencoder of a periodic field commutes with a cyclic shift by a multiple of f.  The
resolution is halved (doubled in the decoder) log2(max f) times, an axis taking part in the
first log2(f_a) of those levels.

Fields are in normalised units (each channel of order one), as the score models see them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scidiff.nets.layers import check_dims, circular_pad, conv, group_norm

__all__ = ["Autoencoder", "DiagonalGaussian", "check_factor"]

_LOG_2PI = math.log(2.0 * math.pi)
_FACTORS = (1, 2, 4, 8)
_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@dataclass
class DiagonalGaussian:
    """N(mean, diag(exp(log_var))) per sample; ``mean`` and ``log_var`` [B, *event]."""

    mean: Tensor
    log_var: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (reparameterised: gradients flow to both)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) per sample [B], nats: -1/2 sum[(z - mean)^2 / var + log_var + log 2 pi]."""
        r = (z - self.mean) ** 2 * torch.exp(-self.log_var)
        return -0.5 * (r + self.log_var + _LOG_2PI).flatten(1).sum(1)

    def kl_standard_normal(self) -> Tensor:
        """KL(q || N(0, I)) per sample [B], nats: 1/2 sum[mean^2 + var - 1 - log_var]."""
        return 0.5 * (self.mean**2 + torch.exp(self.log_var) - 1.0 - self.log_var).flatten(1).sum(1)


def check_factor(factor: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """The per-axis downsampling factors, each 1, 2, 4 or 8; one int means every axis."""
    if isinstance(factor, int) and not isinstance(factor, bool):
        factors = (factor,) * dims
    else:
        factors = tuple(factor)
    if len(factors) != dims or any(isinstance(f, bool) or not isinstance(f, int) or f not in _FACTORS
                                   for f in factors):
        raise ValueError(f"factor must be one of {_FACTORS} or a sequence of {dims} of them (one per "
                         f"spatial axis); got {factor!r}")
    return factors


class _StridedConv(nn.Module):
    """A 3-wide convolution with a stride per axis (1 or 2) and circular or zero padding."""

    def __init__(self, in_channels: int, out_channels: int, dims: int, stride: tuple[int, ...], periodic: bool) -> None:
        super().__init__()
        self.periodic = periodic
        self.conv = _CONV[dims](in_channels, out_channels, 3, stride=stride, padding=0 if periodic else 1)

    def forward(self, h: Tensor) -> Tensor:
        if self.periodic:
            h = circular_pad(h, (1,) * (2 * (h.ndim - 2)))
        return self.conv(h)


class _Upsample(nn.Module):
    """Nearest-neighbour repeat by a scale per axis (1 or 2), then a 3-wide convolution."""

    def __init__(self, channels: int, dims: int, scale: tuple[int, ...], periodic: bool) -> None:
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.conv = conv(channels, channels, dims, periodic=periodic)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=self.scale, mode="nearest"))


class _Res(nn.Module):
    """h + conv(SiLU(GN(conv(SiLU(GN(h)))))), with a 1x1 skip where the width changes."""

    def __init__(self, c_in: int, c_out: int, dims: int, periodic: bool, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = conv(c_in, c_out, dims, periodic=periodic)
        self.norm2 = group_norm(c_out, groups)
        self.conv2 = conv(c_out, c_out, dims, periodic=periodic)
        self.skip = nn.Identity() if c_in == c_out else conv(c_in, c_out, dims, kernel_size=1)

    def forward(self, h: Tensor) -> Tensor:
        r = self.conv1(F.silu(self.norm1(h)))
        return self.skip(h) + self.conv2(F.silu(self.norm2(r)))


class Autoencoder(nn.Module):
    """Encoder q(z | x), decoder mean D(z) and decoder variance sigma_c^2 of fields [B, C, *N].

    Args:
        channels: C, the field's channels.
        dims: spatial dimensions, 1, 2 or 3.
        factor: downsampling per axis, 1, 2, 4 or 8 (one int for every axis, or one per axis);
            the latent grid is N_a / f_a.
        latent_channels: C_z, channels of the latent.
        base_channels: width of the first level (doubled once, at the second level).
        blocks: residual blocks per level.
        periodic: circular padding everywhere (for fields on a periodic domain).
        groups: GroupNorm groups (must divide every width).

    Shapes: ``encode(x)`` with x [B, C, *N] gives a :class:`DiagonalGaussian` over
    [B, C_z, *N/f]; ``decode(z)`` gives [B, C, *N].  ``config`` holds the constructor's
    arguments, which rebuild the same architecture.
    """

    def __init__(
        self,
        channels: int,
        dims: int,
        *,
        factor: int | Sequence[int] = 4,
        latent_channels: int = 4,
        base_channels: int = 32,
        blocks: int = 1,
        periodic: bool = True,
        groups: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("latent_channels", latent_channels),
                            ("base_channels", base_channels), ("blocks", blocks), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Autoencoder: {name} must be a positive integer; got {value!r}")
        self.dims = check_dims(dims)
        self.factor = check_factor(factor, self.dims)
        self.channels = channels
        self.latent_channels = latent_channels
        self.periodic = bool(periodic)
        self.config: dict[str, Any] = {
            "channels": channels, "dims": dims, "factor": list(self.factor), "latent_channels": latent_channels,
            "base_channels": base_channels, "blocks": blocks, "periodic": self.periodic, "groups": groups,
        }
        levels = int(math.log2(max(self.factor)))
        strides = [tuple(2 if f > 2**lv else 1 for f in self.factor) for lv in range(levels)]
        widths = [base_channels * min(2, 2**lv) for lv in range(levels + 1)]
        p, g = self.periodic, groups

        enc: list[nn.Module] = [conv(channels, widths[0], dims, periodic=p)]
        for lv in range(levels + 1):
            c_in = widths[max(lv - 1, 0)] if lv else widths[0]
            for b in range(blocks):
                enc.append(_Res(c_in if b == 0 else widths[lv], widths[lv], dims, p, g))
            if lv < levels:
                enc.append(_StridedConv(widths[lv], widths[lv], dims, strides[lv], p))
        enc += [group_norm(widths[-1], g), nn.SiLU(), conv(widths[-1], 2 * latent_channels, dims, periodic=p)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [conv(latent_channels, widths[-1], dims, periodic=p)]
        for lv in reversed(range(levels + 1)):
            c_in = widths[min(lv + 1, levels)]
            for b in range(blocks):
                dec.append(_Res(c_in if b == 0 else widths[lv], widths[lv], dims, p, g))
            if lv > 0:
                dec.append(_Upsample(widths[lv], dims, strides[lv - 1], p))
        dec += [group_norm(widths[0], g), nn.SiLU(), conv(widths[0], channels, dims, periodic=p)]
        self.decoder = nn.Sequential(*dec)
        # log sigma_c^2 of the Gaussian decoder, per channel (fitted, not trained by gradient)
        self.register_buffer("decoder_log_var", torch.zeros(channels))

    # ---- shapes ------------------------------------------------------------------------------
    def check_grid(self, spatial: Sequence[int], *, source: str = "x") -> None:
        """Raise ValueError (one line) if a spatial size is not a multiple of its axis' factor."""
        spatial = tuple(int(n) for n in spatial)
        if len(spatial) != self.dims:
            raise ValueError(f"{source}: the autoencoder is {self.dims}-D but the field has spatial shape {spatial}")
        for axis, (n, f) in enumerate(zip(spatial, self.factor)):
            if n % f:
                raise ValueError(
                    f"{source}: spatial axis {axis} has size {n}, which the downsampling factor {f} does not "
                    f"divide; use a factor dividing {n} on that axis, or crop or pad the grid to a multiple of {f}"
                )

    def latent_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """[C_z, *N/f] of the latent of a field with spatial shape N."""
        self.check_grid(spatial)
        return (self.latent_channels, *(int(n) // f for n, f in zip(spatial, self.factor)))

    def _check_input(self, x: Tensor, channels: int, name: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != self.dims + 2 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be shaped [B, {channels}, *spatial] with {self.dims} spatial axes; "
                             f"got {shape}")

    # ---- the two maps ------------------------------------------------------------------------
    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z | x) for fields x [B, C, *N]: mean and log-variance [B, C_z, *N/f]."""
        self._check_input(x, self.channels, "x")
        self.check_grid(x.shape[2:])
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, log_var.clamp(-30.0, 20.0))

    def decode(self, z: Tensor) -> Tensor:
        """D(z), the mean of p(x | z), for latents z [B, C_z, *M]: fields [B, C, *M f]."""
        self._check_input(z, self.latent_channels, "z")
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """D(mean of q(z | x)): the deterministic reconstruction of x, [B, C, *N]."""
        return self.decode(self.encode(x).mean)

    # ---- the Gaussian decoder -----------------------------------------------------------------
    def decoder_log_prob(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """log N(x; x_hat, diag(sigma_c^2)) per sample [B], nats, in the units of x."""
        log_var = self.decoder_log_var.to(x).reshape(1, -1, *([1] * self.dims))
        r = (x - x_hat) ** 2 * torch.exp(-log_var)
        return -0.5 * (r + log_var + _LOG_2PI).flatten(1).sum(1)

    @torch.no_grad()
    def fit_decoder_variance(self, x: Tensor, *, batch_size: int = 64, generator: torch.Generator | None = None,
                             minimum: float = 1e-8) -> Tensor:
        """Set sigma_c^2 to its maximum-likelihood value on held-out fields x [N, C, *N].

        sigma_c^2 = mean over fields, draws z ~ q(z | x) (one each) and positions of
        (x_c - D(z)_c)^2, floored at ``minimum``.  Returns sigma_c^2 [C].
        """
        self._check_input(x, self.channels, "x")
        total = torch.zeros(self.channels, dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            r = xb - self.decode(self.encode(xb).sample(generator))
            total += (r.double() ** 2).transpose(0, 1).flatten(1).sum(1)
        var = (total / (x.shape[0] * math.prod(x.shape[2:]))).clamp_min(minimum)
        self.decoder_log_var.copy_(var.log().to(self.decoder_log_var))
        return var
