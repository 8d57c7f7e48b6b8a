"""Fourier helpers shared by the periodic-grid simulators.

Conventions used everywhere in :mod:`scidiff.simulators`:

* a field on a periodic grid of side ``n`` in ``d`` dimensions has ``D = n**d`` values and
  spatial shape ``(n,) * d``, ordered ``(z, y, x)``; the last axis is ``x``;
* ``x_hat = rfftn(x, norm="ortho")`` over the spatial axes (unitary DFT, half spectrum along
  the last axis), so Parseval reads ``sum_r x_r**2 = sum_k |x_hat_k|**2`` over the *full*
  spectrum;
* integer wavenumbers ``m`` (``k = 2 pi m / L`` in physical units) are ``fftfreq(n) * n`` on the
  leading axes and ``rfftfreq(n) * n`` on the last one;
* a sum over the full spectrum of a quantity symmetric under ``m -> -m`` equals the sum over
  the half spectrum weighted by :func:`half_weights` (2 for modes whose conjugate partner is
  not stored, 1 for the self-conjugate columns ``m_x = 0`` and ``m_x = n/2``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def spatial_axes(dims: int) -> tuple[int, ...]:
    """The last ``dims`` axes of a tensor, as negative indices ``(-dims, ..., -1)``."""
    return tuple(range(-dims, 0))


def rfft(x: Tensor, dims: int) -> Tensor:
    """Unitary real FFT over the last ``dims`` axes: ``[..., *spatial] -> [..., *half]``."""
    return torch.fft.rfftn(x, dim=spatial_axes(dims), norm="ortho")


def irfft(x_hat: Tensor, size: int, dims: int) -> Tensor:
    """Inverse of :func:`rfft`: ``[..., *half] -> [..., *spatial]`` with side ``size``."""
    return torch.fft.irfftn(x_hat, s=(size,) * dims, dim=spatial_axes(dims), norm="ortho")


def integer_wavenumbers(
    size: int, dims: int, *, half: bool, dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Integer wavenumber components ``m_i`` broadcast to the (half or full) spectral grid.

    Returns a list of ``dims`` tensors ordered like the axes ``(z, y, x)``, each of shape
    ``[*grid]`` where ``grid = (n,) * dims`` or ``(n,) * (dims - 1) + (n // 2 + 1,)``.
    """
    axes = []
    for i in range(dims):
        last = i == dims - 1
        if last and half:
            m = torch.fft.rfftfreq(size, d=1.0 / size, dtype=dtype, device=device)
        else:
            m = torch.fft.fftfreq(size, d=1.0 / size, dtype=dtype, device=device)
        axes.append(m)
    return list(torch.meshgrid(*axes, indexing="ij"))


def wavenumber_norm(
    size: int, dims: int, *, half: bool, dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """``|m| = sqrt(sum_i m_i**2)`` on the spectral grid, shape ``[*grid]`` (see above)."""
    comps = integer_wavenumbers(size, dims, half=half, dtype=dtype, device=device)
    return torch.sqrt(sum(m * m for m in comps))


def half_weights(
    size: int, dims: int, *, dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Multiplicity of each half-spectrum mode in the full spectrum, shape ``[*half]``.

    ``sum_{full} f(m) = sum_{half} w(m) f(m)`` for any ``f`` with ``f(m) = f(-m)``.
    """
    n_last = size // 2 + 1
    w_last = torch.full((n_last,), 2.0, dtype=dtype, device=device)
    w_last[0] = 1.0
    if size % 2 == 0:
        w_last[-1] = 1.0
    shape = (size,) * (dims - 1) + (n_last,)
    return w_last.expand(shape).clone()


def grid_coordinates(size: int, length: float) -> Tensor:
    """Cell positions ``x_j = j L / n`` for ``j = 0..n-1`` (float64, shape ``[n]``)."""
    return torch.arange(size, dtype=torch.float64) * (length / size)
