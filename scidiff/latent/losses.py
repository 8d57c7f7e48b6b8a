r"""The autoencoder's training loss, per field, in normalised data units.

For a field x [C, *N] with D = C prod(N) values and one draw z ~ q(z | x) (reparameterised),

    L(x) = (1/D) ||x - D(z)||^2  +  w_spec S(x, D(z))  +  w_KL KL(q(z | x) || N(0, I)) / D,

where the spectral term compares the radially binned power of the two fields, per channel,

    S(x, x_hat) = mean over channels c and integer shells k of (ln P_c(x_hat; k) - ln P_c(x; k))^2,
    P_c(x; k) = mean over the modes m with round(|m|) = k (k >= 1) of |FFT(x_c)_m|^2 + eps,

so that the small scales, which the squared error weighs little, are not blurred away.  The
KL weight is small (default 1e-6 per value), as in Rombach et al. (2022): it keeps the latent
smooth and its scale bounded, not the bound tight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scidiff._validate import check_number

__all__ = ["AutoencoderLoss", "autoencoder_loss", "shell_power", "spectral_distance"]


@dataclass(frozen=True)
class AutoencoderLoss:
    """Weights of the autoencoder loss: ``kl_weight`` on KL / D, ``spectral_weight`` on S."""

    kl_weight: float = 1e-6
    spectral_weight: float = 0.0

    def __post_init__(self) -> None:
        check_number("kl_weight", self.kl_weight, low=0.0)
        check_number("spectral_weight", self.spectral_weight, low=0.0)


def _shell_index(spatial: tuple[int, ...], device: torch.device) -> tuple[Tensor, int]:
    """round(|m|) of every rfftn mode of a grid ``spatial`` (integer wavenumbers), and the shell count."""
    axes = [torch.fft.fftfreq(n, d=1.0 / n, device=device) for n in spatial[:-1]]
    axes.append(torch.fft.rfftfreq(spatial[-1], d=1.0 / spatial[-1], device=device))
    grids = torch.meshgrid(*axes, indexing="ij")
    k = torch.sqrt(sum(g.double() ** 2 for g in grids)).round().long()
    return k, int(k.max()) + 1


def shell_power(x: Tensor) -> Tensor:
    """P_c(x; k) of fields x [B, C, *N]: mean |FFT|^2 per integer shell k = 0..K-1, [B, C, K].

    The rfftn half spectrum is used with its modes counted once each, which for a real field
    is the full-spectrum shell mean up to the Hermitian pairs' double counting (the same on
    both sides of any comparison).
    """
    spatial = tuple(x.shape[2:])
    k, n_shells = _shell_index(spatial, x.device)
    dims = tuple(range(2, x.ndim))
    power = torch.fft.rfftn(x, dim=dims, norm="ortho").abs().square().flatten(2)
    index = k.flatten().expand(*power.shape[:2], -1)
    total = power.new_zeros(*power.shape[:2], n_shells).scatter_add_(2, index, power)
    count = torch.bincount(k.flatten(), minlength=n_shells).to(power)
    return total / count.clamp_min(1)


def spectral_distance(x_hat: Tensor, x: Tensor, *, eps: float = 1e-8) -> Tensor:
    """S(x, x_hat) per sample [B]: mean over channels and shells k >= 1 of the squared log-ratio."""
    p_hat = shell_power(x_hat)[..., 1:] + eps
    p = shell_power(x)[..., 1:] + eps
    return (p_hat.log() - p.log()).square().flatten(1).mean(1)


def autoencoder_loss(autoencoder, x: Tensor, loss: AutoencoderLoss = AutoencoderLoss(), *,
                     generator: torch.Generator | None = None) -> Tensor:
    """L(x) per sample [B] for fields x [B, C, *N] (see the module docstring)."""
    q = autoencoder.encode(x)
    x_hat = autoencoder.decode(q.sample(generator))
    d = x[0].numel()
    out = (x_hat - x).square().flatten(1).mean(1)
    if loss.spectral_weight:
        out = out + loss.spectral_weight * spectral_distance(x_hat, x)
    if loss.kl_weight:
        out = out + loss.kl_weight * q.kl_standard_normal() / d
    return out
