r"""The discrete denoising diffusion probabilistic model (Ho, Jain & Abbeel, NeurIPS 2020).

Forward chain, n = 1..N:  q(x_n | x_{n-1}) = N(sqrt(1 - b_n) x_{n-1}, b_n I), so that

    q(x_n | x_0) = N(sqrt(abar_n) x_0, (1 - abar_n) I),   abar_n = prod_{i <= n} (1 - b_i),

and the posterior q(x_{n-1} | x_n, x_0) = N(mu~_n, b~_n I) with

    mu~_n = sqrt(abar_{n-1}) b_n / (1 - abar_n) x_0 + sqrt(1 - b_n) (1 - abar_{n-1}) / (1 - abar_n) x_n,
    b~_n  = (1 - abar_{n-1}) / (1 - abar_n) b_n.

A model eps-hat(x, t) (the same callable the continuous samplers use, evaluated at step n
placed at t = n / N) defines p(x_{n-1} | x_n) = N(mu~_n(x0-hat, x_n), b~_n I) for n >= 2 and a
Gaussian decoder p(x_0 | x_1) = N(mu~_1, b_1 I) for continuous data, so the variational bound

    L_vlb = KL(q(x_N | x_0) || N(0, I)) + sum_{n >= 2} E KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n))
            - E log p(x_0 | x_1)   >=   -log p(x_0)

is a bound on a density, in nats, comparable with the ODE likelihood.  As N -> infinity with
b_n = beta(n / N) / N the chain tends to the VP-SDE: ``DDPM.linear(N, b_1, b_N).sde`` is the
linear VP-SDE with beta_min = N b_1 and beta_max = N b_N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scidiff.sde import VPSDE, expand_like
from scidiff._validate import check_int
from scidiff._progress import progress as iterate

__all__ = ["DDPM", "EpsFn"]

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""eps_fn(x_n, t) -> eps-hat shaped like x_n, with t = n / N of shape [B]."""


class DDPM:
    """A discrete DDPM given by its betas b_1..b_N (float64).

    Build it with :meth:`linear` or :meth:`cosine`; ``DDPM(betas, sde=...)`` for any other
    sequence.  Arrays are indexed by the step n: ``alphas_bar[n]`` is abar_n with
    ``alphas_bar[0] = 1``; ``betas[n - 1]`` is b_n.
    """

    def __init__(self, betas: Tensor | Sequence[float], *, sde: VPSDE | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a DDPM needs at least one step (betas is empty)")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.betas = betas
        self.steps = int(betas.numel())
        log_alphas = torch.log1p(-betas)
        self.log_alphas_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(log_alphas, 0)])
        self.alphas_bar = self.log_alphas_bar.exp()
        if sde is None:
            sde = VPSDE(self.steps * float(betas[0]), max(self.steps * float(betas[-1]), self.steps * float(betas[0])))
        self.sde = sde

    # ---- constructors --------------------------------------------------------------
    @classmethod
    def linear(cls, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DDPM":
        """b_n linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020); its SDE has
        beta_min = N beta_start, beta_max = N beta_end."""
        steps = _check_steps(steps)
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return cls(betas, sde=VPSDE(steps * beta_start, steps * beta_end))

    @classmethod
    def cosine(cls, steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DDPM":
        """abar_n = alpha(n / N)^2 of the cosine schedule (Nichol & Dhariwal 2021), b_n clipped
        at ``max_beta``; its SDE is ``VPSDE.cosine(s)``, equal at every step n = t N."""
        return cls.from_sde(VPSDE.cosine(s=s), steps, max_beta=max_beta)

    @classmethod
    def from_sde(cls, sde: VPSDE, steps: int, *, max_beta: float = 0.999) -> "DDPM":
        """The N-step chain whose marginals equal the SDE's at t = n / N: abar_n = alpha(n / N)^2,
        so b_n = 1 - abar_n / abar_{n-1} = -expm1(2 log alpha(n/N) - 2 log alpha((n-1)/N)),
        clipped at ``max_beta``."""
        steps = _check_steps(steps)
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        log_abar = 2.0 * sde.schedule.log_alpha(t)
        betas = (-torch.expm1(log_abar[1:] - log_abar[:-1])).clamp(max=max_beta)
        return cls(betas, sde=sde)

    # ---- indexing helpers ------------------------------------------------------------
    def time(self, n: Tensor) -> Tensor:
        """The continuous time t = n / N of step n (float64)."""
        return n.to(torch.float64) / self.steps

    def _check_n(self, n: Tensor, lo: int = 1) -> Tensor:
        if not isinstance(n, Tensor):
            n = torch.as_tensor(n)
        if n.dtype.is_floating_point:
            raise TypeError(f"step index n must be an integer tensor, got dtype {n.dtype}")
        if bool(((n < lo) | (n > self.steps)).any()):
            raise ValueError(f"step index n must lie in [{lo}, {self.steps}], got {n.flatten()[:5].tolist()}")
        return n

    def _at(self, table: Tensor, n: Tensor, x: Tensor) -> Tensor:
        return expand_like(table.to(n.device)[n], x)

    # ---- the forward chain ---------------------------------------------------------
    def q_sample(
        self, x0: Tensor, n: Tensor, *, eps: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps ~ q(x_n | x_0); returns (x_n, eps). n: [B] in 0..N."""
        n = self._check_n(n, lo=0)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a = self._at(self.alphas_bar.sqrt(), n, x0)
        s = self._at(torch.sqrt(-torch.expm1(self.log_alphas_bar)), n, x0)
        return a * x0 + s * eps, eps

    def q_step(self, x_prev: Tensor, n: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """One forward step x_n ~ q(x_n | x_{n-1}) = N(sqrt(1 - b_n) x_{n-1}, b_n I). n: [B] in 1..N."""
        n = self._check_n(n)
        b = self._at(self.betas, n - 1, x_prev)
        z = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype, device=x_prev.device)
        return torch.sqrt(1.0 - b) * x_prev + torch.sqrt(b) * z

    def q_posterior(self, x0: Tensor, x_n: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """Mean mu~_n [B, *event] and variance b~_n [B, 1, ...] of q(x_{n-1} | x_n, x_0). n in 1..N."""
        n = self._check_n(n)
        c0, cn, var = self._posterior_coefs(n, x0)
        return c0 * x0 + cn * x_n, var

    def _posterior_coefs(self, n: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        abar = self.alphas_bar.to(n.device)
        one_m_abar = -torch.expm1(self.log_alphas_bar).to(n.device)
        b = self.betas.to(n.device)[n - 1]
        c0 = abar[n - 1].sqrt() * b / one_m_abar[n]
        cn = torch.sqrt(1.0 - b) * one_m_abar[n - 1] / one_m_abar[n]
        var = one_m_abar[n - 1] / one_m_abar[n] * b
        return expand_like(c0, x), expand_like(cn, x), expand_like(var, x)

    # ---- the model's reverse chain ---------------------------------------------------
    def predict_x0(self, eps_fn: EpsFn, x_n: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """(x0-hat, eps-hat) with x0-hat = (x_n - sqrt(1 - abar_n) eps-hat) / sqrt(abar_n)."""
        eps_hat = eps_fn(x_n, self.time(n).to(x_n.dtype))
        a = self._at(self.alphas_bar.sqrt(), n, x_n)
        s = self._at(torch.sqrt(-torch.expm1(self.log_alphas_bar)), n, x_n)
        return (x_n - s * eps_hat) / a, eps_hat

    def l_simple(self, eps_fn: EpsFn, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """L_simple = E_{n, eps} |eps - eps-hat(x_n, n / N)|^2 (mean over elements), n ~ U{1..N}; a scalar."""
        n = torch.randint(1, self.steps + 1, (x0.shape[0],), generator=generator, device=x0.device)
        x_n, eps = self.q_sample(x0, n, generator=generator)
        eps_hat = eps_fn(x_n, self.time(n).to(x0.dtype))
        return (eps_hat - eps).pow(2).mean()

    @torch.no_grad()
    def vlb(
        self,
        eps_fn: EpsFn,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        return_terms: bool = False,
        progress: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The variational bound L_vlb(x_0) in nats, one value per sample [B] (>= -log p(x_0)).

        Each KL term is estimated with one draw x_n ~ q(x_n | x_0), so the result is an unbiased
        estimate of the bound; N network evaluations of the batch.  With ``return_terms`` also
        returns the terms [N + 1, B]: row 0 is -log p(x_0 | x_1), row n-1 (n = 2..N) the KL of
        step n, row N the prior term KL(q(x_N | x_0) || N(0, I)).
        """
        if not torch.isfinite(x0).all():
            bad = (~torch.isfinite(x0.flatten(1))).any(1).nonzero().flatten().tolist()
            raise ValueError(f"x0 contains NaN or inf in samples {bad[:10]}")
        bsz = x0.shape[0]
        d = x0[0].numel()
        terms = torch.zeros(self.steps + 1, bsz, dtype=x0.dtype, device=x0.device)
        # prior matching: KL(N(sqrt(abar_N) x0, 1 - abar_N) || N(0, 1)), per element, summed
        abar_n = float(self.alphas_bar[-1])
        one_m = float(-math.expm1(float(self.log_alphas_bar[-1])))
        terms[-1] = 0.5 * (abar_n * x0.flatten(1).pow(2).sum(1) + d * (one_m - 1.0 - math.log(one_m)))
        for n_int in iterate(range(1, self.steps + 1), total=self.steps, desc="L_vlb", enabled=progress, leave=False):
            n = torch.full((bsz,), n_int, dtype=torch.long, device=x0.device)
            x_n, _ = self.q_sample(x0, n, generator=generator)
            x0_hat, _ = self.predict_x0(eps_fn, x_n, n)
            c0, cn, var = self._posterior_coefs(n, x0)
            if n_int == 1:
                # Gaussian decoder N(x_0; mu~_1(x0-hat, x_1), b_1 I); mu~_1 = x0-hat since abar_0 = 1
                b1 = float(self.betas[0])
                mean = c0 * x0_hat + cn * x_n
                sq = (x0 - mean).flatten(1).pow(2).sum(1)
                terms[0] = 0.5 * sq / b1 + 0.5 * d * math.log(2.0 * math.pi * b1)
            else:
                sq = (c0 * (x0 - x0_hat)).flatten(1).pow(2).sum(1)
                terms[n_int - 1] = 0.5 * sq / var.flatten()[0]
        total = terms.sum(0)
        return (total, terms) if return_terms else total

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Ancestral sampling x_N ~ N(0, I), x_{n-1} ~ p(x_{n-1} | x_n), returning the decoder mean.

        Uses the discrete betas exactly; ``sd.sample(..., method="ancestral")`` is the same
        algorithm on any grid of the continuous schedule.
        """
        if generator is not None and device is None:
            device = generator.device
        x = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        for n_int in iterate(range(self.steps, 0, -1), total=self.steps, desc="DDPM", enabled=progress, leave=False):
            n = torch.full((x.shape[0],), n_int, dtype=torch.long, device=x.device)
            x0_hat, _ = self.predict_x0(eps_fn, x, n)
            c0, cn, var = self._posterior_coefs(n, x)
            mean = c0 * x0_hat + cn * x
            if n_int > 1:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                x = mean + var.sqrt() * z
            else:
                x = mean
        return x

    def __repr__(self) -> str:
        return f"DDPM(steps={self.steps}, beta_1={float(self.betas[0]):.3g}, beta_N={float(self.betas[-1]):.3g})"


def _check_steps(steps: int) -> int:
    return check_int("steps", steps)
