r"""What a denoiser outputs, and how the four readings of it convert into each other.

With x_t = alpha_t x_0 + sigma_t eps (alpha_t^2 + sigma_t^2 = 1) a network output can be read as

    "eps":    the noise eps
    "x0":     the clean field x_0
    "v":      v = alpha_t eps - sigma_t x_0                      (Salimans & Ho, ICLR 2022)
    "score":  s = grad_x log q(x_t | x_0) = -eps / sigma_t

and given x_t any one determines the others:

    eps = (x_t - alpha_t x_0) / sigma_t = sigma_t x_t + alpha_t v = -sigma_t s
    x_0 = (x_t - sigma_t eps) / alpha_t = alpha_t x_t - sigma_t v = (x_t + sigma_t^2 s) / alpha_t

For a learned score the last line is Tweedie's formula, x0-hat = E[x_0 | x_t] (Efron 2011).

Coefficients ``alpha`` and ``sigma`` are tensors that broadcast against x_t, usually
``sde.coefficients(t).like(x_t)`` ([B, 1, ..., 1] in x_t's dtype).  This module imports
only torch: it is the bottom of the house, beside the schedules.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["Parameterisation", "PARAMETERISATIONS", "batch_time", "x0_hat", "convert"]

Parameterisation = Literal["eps", "x0", "v", "score"]
PARAMETERISATIONS: tuple[str, ...] = ("eps", "x0", "v", "score")


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """t as a vector [B] on x's device, B = x.shape[0].

    A python number becomes a float64 tensor; a 0-d or one-element tensor is broadcast over
    the batch; a tensor keeps its dtype.  Any other shape raises a ValueError naming it.
    """
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t), dtype=torch.float64, device=x.device)
    batch = x.shape[0]
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.ndim != 1 or t.shape[0] not in (1, batch):
        raise ValueError(
            f"t must have shape [{batch}] (one time per sample of x, shape {list(x.shape)}) or be a scalar, "
            f"got shape {list(t.shape)}"
        )
    elif t.shape[0] != batch:
        t = t.expand(batch)
    return t.to(x.device)


def x0_hat(x_t: Tensor, score: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's denoiser x0-hat = (x_t + sigma_t^2 s) / alpha_t; shape of ``x_t``."""
    return (x_t + sigma.square() * score) / alpha


def _check(name: str, value: str) -> None:
    if value not in PARAMETERISATIONS:
        raise ValueError(f"{name} must be one of {PARAMETERISATIONS}, got {value!r}")


def _to_eps(value: Tensor, source: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if source == "eps":
        return value
    if source == "x0":
        return (x_t - alpha * value) / sigma
    if source == "v":
        return sigma * x_t + alpha * value
    return -sigma * value


def _to_x0(value: Tensor, source: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if source == "x0":
        return value
    if source == "eps":
        return (x_t - sigma * value) / alpha
    if source == "v":
        return alpha * x_t - sigma * value
    return x0_hat(x_t, value, alpha, sigma)


def convert(
    value: Tensor,
    *,
    source: Parameterisation,
    target: Parameterisation,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
) -> Tensor:
    r"""Re-read ``value`` (a prediction of kind ``source`` at x_t) as a prediction of kind ``target``.

    Each route is the direct formula of the module docstring (no detour through another
    reading where a direct one exists), so conversion costs one or two fused operations.

    Args:
        value: the prediction, shaped like ``x_t`` [B, *event].
        source, target: "eps", "x0", "v" or "score".
        x_t: the noisy field [B, *event].
        alpha, sigma: alpha_t and sigma_t broadcastable against ``x_t``.

    Returns:
        The ``target`` reading, shaped like ``x_t``.
    """
    _check("source", source)
    _check("target", target)
    if source == target:
        return value
    if target == "eps":
        return _to_eps(value, source, x_t, alpha, sigma)
    if target == "x0":
        return _to_x0(value, source, x_t, alpha, sigma)
    if target == "score":
        if source == "x0":
            return (alpha * value - x_t) / sigma.square()
        return _to_eps(value, source, x_t, alpha, sigma).div(sigma).neg()
    # target == "v"
    if source == "x0":
        return (alpha * x_t - value) / sigma
    if source == "eps":
        return (value - sigma * x_t) / alpha
    return alpha * _to_eps(value, source, x_t, alpha, sigma) - sigma * _to_x0(value, source, x_t, alpha, sigma)
