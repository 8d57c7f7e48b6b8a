r"""Diffusion in an autoencoder's latent space, and a lower bound on log p(x) in the data's units.

A score model is trained on the scaled latents u = (z - m) / s of the fields (z the mean of
q(z | x), m and s one shift and scale per latent channel so that u has unit variance, as in
Rombach et al. 2022).  Its probability-flow ODE gives an exact density p(u) of its own
(:func:`scidiff.likelihood.log_likelihood`); with the Gaussian decoder p(x | z) of the
autoencoder the model of fields is p(x) = integral p(x | z) p(z) dz, and for any q(z | x)

    log p(x) >= E_q[ log p(x | z) + log p(z) - log q(z | x) ]
              = E_q[ log p(x | z) ] - KL( q(z | x) || p(z) )                       (the ELBO).

The shift and scale cancel in log p(z) - log q(z | x), so both are evaluated in u.  The bound
is estimated per field from K draws z_k ~ q(z | x) (all K B latents in one likelihood solve):

    L-hat(x) = (1/K) sum_k f_k,   f_k = log p(x | z_k) + log p(u_k) - log q(u_k | x),

with standard error sd_k(f_k) / sqrt(K), which holds the spread of the draws and that of a
stochastic divergence estimator (its probes are drawn afresh for every latent).  It is a bound,
not a likelihood: the gap is E_q[log q(z | x) - log p(z | x)] >= 0.

Sampling draws u from the latent model with any sampler of :mod:`scidiff.sampling` and decodes
D(m + s u).  Posterior sampling for y = A(x) + noise runs DPS guidance on u with the operator
u -> A(D(m + s u)): the guidance gradient goes through the decoder (Chung et al. 2023).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scidiff.guidance.dps import DPSGuidance
from scidiff.likelihood import log_likelihood
from scidiff.models import ScoreModel
from scidiff.sampling import sample as _sample
from scidiff.sde import VPSDE

__all__ = ["LatentDiffusion", "LatentBound", "latent_statistics"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LatentBound:
    """The result of :meth:`LatentDiffusion.log_likelihood_bound` (a lower bound, not log p(x)).

    Attributes:
        log_prob: the bound L(x) <= log p(x), nats per field [B], in the units of x (plus the
            given log-Jacobian).
        log_prob_se: its standard error per field [B], from the spread of the K draws (NaN
            when ``samples`` = 1: one draw gives no estimate of it).
        bits_per_dim, bits_per_dim_se: -L / (D ln 2) and its standard error, D the values per field.
        reconstruction: E_q[log p(x | z)] per field [B], nats (with the log-Jacobian).
        kl: E_q[log q(z | x) - log p(z)] per field [B], nats: the estimate of KL(q || p).
        latent_log_prob_se: the latent likelihood's own standard error, averaged over draws [B].
        samples: K, draws of z per field.
        nfe: score evaluations of the latent likelihood solve.
        is_bound: always True: this is E_q[...] <= log p(x), never log p(x) itself.
    """

    log_prob: Tensor
    log_prob_se: Tensor
    bits_per_dim: Tensor
    bits_per_dim_se: Tensor
    reconstruction: Tensor
    kl: Tensor
    latent_log_prob_se: Tensor
    samples: int
    nfe: int
    is_bound: bool = True


@torch.no_grad()
def latent_statistics(autoencoder: nn.Module, x: Tensor, *, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Shift m and scale s per latent channel [C_z]: the mean and sd of the latent means mu(x) of x."""
    means = torch.cat([autoencoder.encode(x[i:i + batch_size]).mean for i in range(0, x.shape[0], batch_size)])
    flat = means.transpose(0, 1).flatten(1).double()
    return flat.mean(1).to(x.dtype), flat.std(1).clamp_min(1e-8).to(x.dtype)


class LatentDiffusion(nn.Module):
    """An autoencoder and a score model on its scaled latents, read as a model of fields.

    Args:
        autoencoder: an :class:`~scidiff.latent.Autoencoder` (or any module with ``encode(x)`` ->
            a :class:`~scidiff.latent.DiagonalGaussian`, ``decode(z)``, ``decoder_log_prob(x, x_hat)``
            and ``latent_shape(spatial)``).
        model: a :class:`~scidiff.models.ScoreModel` on u, or a score callable ``score(u, t)``
            (then ``sde`` is needed).
        field_shape: [C, *N] of the fields.
        sde: the VP-SDE of a score callable (default: ``model.sde``).
        latent_shift, latent_scale: m and s, a number or one per latent channel [C_z]
            (:func:`latent_statistics` fits them).
    """

    def __init__(self, autoencoder: nn.Module, model: ScoreModel | ScoreFn, field_shape: Sequence[int], *,
                 sde: VPSDE | None = None, latent_shift: float | Tensor = 0.0,
                 latent_scale: float | Tensor = 1.0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        if isinstance(model, ScoreModel):
            self.model: nn.Module | None = model
            self._score: ScoreFn = model.score
            sde = model.sde if sde is None else sde
        elif callable(model):
            self.model = model if isinstance(model, nn.Module) else None
            self._score = model
        else:
            raise TypeError(f"model must be a scidiff.ScoreModel or a score callable, got {type(model).__name__}")
        if not isinstance(sde, VPSDE):
            raise TypeError("LatentDiffusion needs sde= (a scidiff.VPSDE) when model is a plain score callable")
        self.sde = sde
        self.field_shape = tuple(int(n) for n in field_shape)
        self.latent_shape = tuple(autoencoder.latent_shape(self.field_shape[1:]))
        c_z = self.latent_shape[0]
        shift = torch.as_tensor(latent_shift, dtype=torch.get_default_dtype()).flatten()
        scale = torch.as_tensor(latent_scale, dtype=torch.get_default_dtype()).flatten()
        for name, v in (("latent_shift", shift), ("latent_scale", scale)):
            if v.numel() not in (1, c_z) or not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} must be a finite number or {c_z} numbers (one per latent channel); "
                                 f"got {v.numel()} values")
        if not bool((scale > 0).all()):
            raise ValueError(f"latent_scale must be positive; got {scale.tolist()}")
        self.register_buffer("latent_shift", shift.expand(c_z).clone())
        self.register_buffer("latent_scale", scale.expand(c_z).clone())

    # ---- maps between z and u ------------------------------------------------------------------
    def _view(self, v: Tensor, like: Tensor) -> Tensor:
        return v.to(like).reshape(1, -1, *([1] * (like.ndim - 2)))

    def to_u(self, z: Tensor) -> Tensor:
        """u = (z - m) / s per latent channel; z [B, C_z, *M]."""
        return (z - self._view(self.latent_shift, z)) / self._view(self.latent_scale, z)

    def to_z(self, u: Tensor) -> Tensor:
        """z = m + s u per latent channel; u [B, C_z, *M]."""
        return self._view(self.latent_shift, u) + self._view(self.latent_scale, u) * u

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """u of fields x [B, C, *N]: of the mean of q(z | x), or of a draw from it; [B, C_z, *M]."""
        q = self.autoencoder.encode(x)
        return self.to_u(q.sample(generator) if sample else q.mean)

    def decode(self, u: Tensor) -> Tensor:
        """The field D(m + s u) [B, C, *N] of latents u [B, C_z, *M]."""
        return self.autoencoder.decode(self.to_z(u))

    def score(self, u: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The latent model's score s(u_t, t [, cond]), [B, C_z, *M]."""
        return self._score(u, t) if cond is None else self._score(u, t, cond=cond)

    def _score_fn(self, cond: Tensor | None) -> ScoreFn:
        return self._score if cond is None else functools.partial(self._score, cond=cond)

    # ---- sampling --------------------------------------------------------------------------------
    def sample(self, n: int, method: str = "ode", *, cond: Tensor | None = None,
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, progress: bool = True, return_latent: bool = False,
               **options: Any) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` fields [n, C, *N]: u from the latent model by ``method`` (any sampler of
        :func:`scidiff.sample`, with its ``options``, e.g. ``steps``), then x = D(m + s u).

        With ``return_latent`` the pair (x, u) is returned.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of fields; got {n!r}")
        device, dtype = self._device_dtype(device, dtype)
        u = _sample(self._score_fn(cond), self.sde, (n, *self.latent_shape), method, generator=generator,
                    device=device, dtype=dtype, progress=progress, **options)
        with torch.no_grad():
            x = self.decode(u)
        return (x, u) if return_latent else x

    def posterior_sample(self, operator: Callable[[Tensor], Tensor], y: Tensor, noise_std: float | Tensor, n: int,
                         method: str = "euler_maruyama", *, cond: Tensor | None = None, scale: float = 1.0,
                         inflation: float | None = None,
                         generator: torch.Generator | None = None, progress: bool = True,
                         return_latent: bool = False, **options: Any) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` fields drawn from p(x | y) for y = A(x) + N(0, noise_std^2), A acting on decoded fields.

        DPS guidance (:class:`~scidiff.guidance.DPSGuidance`) on u with the operator
        u -> A(D(m + s u)); ``scale`` and ``inflation`` as there; ``cond`` [n, P] conditions the
        latent model.  Returns [n, C, *N].
        """
        device, dtype = self._device_dtype(None, y.dtype)
        guided = DPSGuidance(self._score_fn(cond), self.sde, lambda u: operator(self.decode(u)), y, noise_std,
                             scale=scale, inflation=inflation)
        u = _sample(guided, self.sde, (n, *self.latent_shape), method, generator=generator, device=device,
                    dtype=dtype, progress=progress, **options)
        with torch.no_grad():
            x = self.decode(u)
        return (x, u) if return_latent else x

    def _device_dtype(self, device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
        p = next(self.autoencoder.parameters(), None)
        if device is None:
            device = p.device if p is not None else torch.device("cpu")
        if dtype is None:
            dtype = p.dtype if p is not None else torch.get_default_dtype()
        return torch.device(device), dtype

    # ---- the bound ---------------------------------------------------------------------------------
    def log_likelihood_bound(self, x: Tensor, *, samples: int = 4, cond: Tensor | None = None,
                             generator: torch.Generator | None = None,
                             log_abs_det_jacobian: Tensor | float | None = None, progress: bool = False,
                             **likelihood_options: Any) -> LatentBound:
        """The evidence lower bound L(x) <= log p(x) of fields x [B, C, *N], in nats (module docstring).

        Args:
            x: the fields, in the units the autoencoder was trained on (normalised).
            samples: K draws z ~ q(z | x) per field (K >= 2 gives a standard error over draws).
            cond: the latent model's conditioning per field [B, P] (the encoder and decoder are
                unconditional), for a bound on log p(x | cond).
            generator: for the draws (and the divergence probes).
            log_abs_det_jacobian: log|dx/dx_data| per field [B] or a number, added to the bound,
                when x = T(x_data) and the bound is wanted in the data's own units.
            progress: a progress bar of the latent likelihood solve.
            **likelihood_options: passed to :func:`scidiff.log_likelihood` (``divergence``,
                ``rtol``, ``atol``, ``method``, ``probes``, ...).
        """
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer (draws of z per field); got {samples!r}")
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.field_shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be shaped [B, {', '.join(map(str, self.field_shape))}]; got {shape}")
        bsz, k = x.shape[0], samples
        with torch.no_grad():
            q = self.autoencoder.encode(x)
            z = torch.cat([q.sample(generator) for _ in range(k)])                  # [K B, C_z, *M]
            q_rep = type(q)(q.mean.repeat(k, *([1] * (q.mean.ndim - 1))),
                            q.log_var.repeat(k, *([1] * (q.log_var.ndim - 1))))
            log_det_s = self.latent_scale.to(z).log().sum() * math.prod(self.latent_shape[1:])
            log_q = q_rep.log_prob(z) + log_det_s                                   # log q(u | x)
            x_rep = x.repeat(k, *([1] * (x.ndim - 1)))
            log_px_z = self.autoencoder.decoder_log_prob(x_rep, self.autoencoder.decode(z))
        u = self.to_u(z)
        if cond is not None and (not isinstance(cond, Tensor) or cond.ndim != 2 or cond.shape[0] != bsz):
            raise ValueError(f"cond must be a tensor [B, P] with B = {bsz} (one row per field); got "
                             f"{tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__}")
        score = self._score_fn(None if cond is None else cond.repeat(k, 1))
        res = log_likelihood(score, self.sde, u, generator=generator, progress=progress, **likelihood_options)
        log_pz = res.log_prob.detach()
        f = (log_px_z + log_pz - log_q).reshape(k, bsz).double()
        jac = 0.0 if log_abs_det_jacobian is None else torch.as_tensor(log_abs_det_jacobian, dtype=torch.float64,
                                                                         device=x.device)
        bound = f.mean(0) + jac
        latent_se = (res.log_prob_se if res.log_prob_se is not None else torch.zeros_like(log_pz))
        latent_se = latent_se.detach().reshape(k, bsz).double()
        se = f.std(0) / math.sqrt(k) if k > 1 else torch.full_like(bound, math.nan)
        d = math.prod(self.field_shape)
        nats_per_bpd = d * math.log(2.0)
        rec = log_px_z.reshape(k, bsz).double().mean(0) + jac
        kl = (log_q - log_pz).reshape(k, bsz).double().mean(0)
        return LatentBound(
            log_prob=bound, log_prob_se=se, bits_per_dim=-bound / nats_per_bpd, bits_per_dim_se=se / nats_per_bpd,
            reconstruction=rec, kl=kl, latent_log_prob_se=latent_se.mean(0), samples=k, nfe=res.nfe,
        )
