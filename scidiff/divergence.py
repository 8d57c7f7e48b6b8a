r"""Estimators of the divergence tr(J), J = ds/dx, of a score, from vector-Jacobian products.

The likelihood integrates div s along the probability-flow ODE (:mod:`scidiff.likelihood`).
Every estimator here writes tr(J) per sample as a combination of S *terms*, each a sum of
products v^T J v with cotangents v fixed over the whole solve, so that the terms can be
integrated in time as components of the ODE state and combined only at the end:

* :class:`Exact` -- the trace itself from the D basis vectors e_i (S = 1, standard error 0).
* :class:`Hutchinson` -- K probes v_k with E[v v^T] = I (Rademacher or Gaussian; Hutchinson
  1989, Grathwohl et al. 2019).  Each probe's term T_k = v_k^T J v_k is unbiased; the estimate
  is their mean and its standard error the sample standard deviation over k divided by sqrt(K).
* :class:`Lattice` -- Rademacher signs r restricted to the classes c of a periodic lattice of
  the grid (every ``spacing``-th point along each spatial axis, each channel its own class):
  v_c = r * 1[class = c] and T_c = v_c^T J v_c.  Since E[r_i r_j] = delta_ij the sum over
  classes is unbiased for any partition, and its variance,

      Var(sum_c T_c) = sum_c sum_{i != j in c} (J_ij^2 + J_ij J_ji),

  keeps only pairs of points in the same class, at least ``spacing`` apart (Rademacher
  Hutchinson's variance is the same sum over *all* pairs i != j).  The Jacobian of a score of
  spatially correlated fields is concentrated near the diagonal (for a Gaussian random field
  it is the stationary kernel -(alpha^2 C + sigma^2 I)^{-1}), so removing the near pairs
  removes most of the variance for S = C spacing^dims products instead of one ("probing",
  Tang & Saad 2012, with random signs inside each colour class; Stathopoulos et al. 2013).
  Its standard error comes from the spread of the S class terms of one replicate:
  S var_c(T_c) estimates Var(sum_c T_c) plus the spread of the classes' mean diagonals, so it
  is conservative (exact when the fields are statistically homogeneous).

Costs are counted in vector-Jacobian products (VJPs) per score evaluation: D for the exact
trace, K for Hutchinson, S x replicates for the lattice.  The products are batched: a VJP
callable takes a stack of cotangents [K, B, *event] at once: on a GPU ``torch.func.vmap`` over
``torch.func.vjp`` (one batched backward pass), on the CPU a loop of ``torch.autograd.grad``
over one retained graph, which measured 1.7-2.8x faster per product there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DivergenceEstimator",
    "Exact",
    "Hutchinson",
    "Lattice",
    "VJP",
    "make_estimator",
    "ESTIMATORS",
    "default_chunk_size",
    "linearize",
]

VJP = Callable[[Tensor], Tensor]
ProbeDist = Literal["rademacher", "gaussian"]

# cotangent elements per batched VJP: larger stacks were slower per product on a 2-core CPU
# (cache), smaller ones pay more per-call overhead
_CHUNK_ELEMENTS = 1 << 17


def default_chunk_size(bsz: int, d: int) -> int:
    """Cotangents per batched VJP when none is given: about 2^17 elements per product, >= 1."""
    return max(1, _CHUNK_ELEMENTS // max(1, bsz * d))


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------------------------- VJPs
def _autograd_vjp(s: Tensor, x_in: Tensor) -> VJP:
    """V^T ds/dx for stacks V [K, B, *event] by autograd on a graph built once."""

    def vjp(vs: Tensor) -> Tensor:
        return torch.stack([torch.autograd.grad(s, x_in, v, retain_graph=True)[0] for v in vs])

    return vjp


def linearize(score: Callable[[Tensor], Tensor], x: Tensor, *, functional: bool = True) -> tuple[Tensor, VJP]:
    """s = score(x) and a batched VJP ``vjp(V) = V^T ds/dx`` for V [K, B, *event].

    ``functional=True`` uses ``torch.func.vjp`` and ``torch.func.vmap`` over the cotangents
    (one backward pass for the whole stack, with the layers' batching rules); otherwise the
    graph is built with autograd and the products are taken one at a time.  The score is
    evaluated once either way.  ``s`` is returned detached.
    """
    if functional:
        s, pullback = torch.func.vjp(score, x)
        batched = torch.func.vmap(pullback)

        def vjp(vs: Tensor) -> Tensor:
            return batched(vs)[0]

        return s.detach(), vjp
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        s = score(x_in)
    return s.detach(), _autograd_vjp(s, x_in)


# ---------------------------------------------------------------------------- estimators
class DivergenceEstimator(ABC):
    """tr(ds/dx) per sample as ``combine(terms)``, the terms linear in J and integrated in time.

    Call :meth:`prepare` once per solve (it draws the cotangents, which stay fixed), then
    :meth:`terms` at every score evaluation, and :meth:`combine` on the time integrals of the
    terms.  Subclasses are small: they choose the cotangents and how to combine.
    """

    name: str = ""
    chunk_size: int | None = None

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Draw what is fixed over one solve for fields like ``x`` [B, *event]."""

    @abstractmethod
    def num_terms(self, x: Tensor) -> int:
        """S, the number of terms per sample."""

    @abstractmethod
    def vjps_per_evaluation(self, x: Tensor) -> int:
        """Vector-Jacobian products per score evaluation, for fields like ``x``."""

    @abstractmethod
    def terms(self, vjp: VJP, x: Tensor) -> Tensor:
        """The terms [S, B] at the current point, from ``vjp(V) = V^T ds/dx``."""

    @abstractmethod
    def combine(self, terms: Tensor) -> tuple[Tensor, Tensor]:
        """(estimate [B], standard error [B]) from the (integrated) terms [S, B]."""

    def _chunk(self, x: Tensor) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return default_chunk_size(x.shape[0], x[0].numel())

    def _quadratic_forms(self, vjp: VJP, vs: Callable[[int, int], Tensor], count: int, x: Tensor) -> Tensor:
        """v_m^T J v_m for m < count, [count, B]; ``vs(m0, m1)`` builds cotangents [m1 - m0, B, *event]."""
        chunk = self._chunk(x)
        out = []
        for m0 in range(0, count, chunk):
            m1 = min(count, m0 + chunk)
            v = vs(m0, m1)
            out.append((vjp(v) * v).flatten(2).sum(2))
        return torch.cat(out)


class Exact(DivergenceEstimator):
    """tr(J) = sum_i e_i^T J e_i from the D basis vectors, ``chunk_size`` per batched VJP.

    The Jacobian of a batch is block-diagonal over samples, so basis vector e_i placed in
    every sample gives row i of every sample's Jacobian in one product.
    """

    name = "exact"

    def __init__(self, *, chunk_size: int | None = None) -> None:
        self.chunk_size = None if chunk_size is None else _check_positive_int("chunk_size", chunk_size)

    def num_terms(self, x: Tensor) -> int:
        return 1

    def vjps_per_evaluation(self, x: Tensor) -> int:
        return x[0].numel()

    def terms(self, vjp: VJP, x: Tensor) -> Tensor:
        bsz, d = x.shape[0], x[0].numel()
        chunk = self._chunk(x)
        trace = torch.zeros(bsz, dtype=x.dtype, device=x.device)
        for i0 in range(0, d, chunk):
            i1 = min(d, i0 + chunk)
            idx = torch.arange(i0, i1, device=x.device)
            vs = torch.zeros(i1 - i0, bsz, d, dtype=x.dtype, device=x.device)
            vs[torch.arange(i1 - i0, device=x.device), :, idx] = 1.0
            g = vjp(vs.reshape(i1 - i0, *x.shape)).reshape(i1 - i0, bsz, d)
            trace = trace + g[torch.arange(i1 - i0, device=x.device), :, idx].sum(0)
        return trace[None]

    def combine(self, terms: Tensor) -> tuple[Tensor, Tensor]:
        return terms[0], torch.zeros_like(terms[0])


class Hutchinson(DivergenceEstimator):
    """Hutchinson's estimate (1/K) sum_k v_k^T J v_k with K probes fixed over the solve.

    Args:
        probes: K >= 1.  With K = 1 the standard error cannot be estimated and is NaN.
        dist: "rademacher" (v_i = +-1, the smaller variance: 2 sum_{i != j} J_ij^2 for a
            symmetric J) or "gaussian".
        chunk_size: probes per batched VJP.
    """

    name = "hutchinson"

    def __init__(self, probes: int = 1, *, dist: ProbeDist = "rademacher", chunk_size: int | None = None) -> None:
        self.probes = _check_positive_int("probes", probes)
        if dist not in ("rademacher", "gaussian"):
            raise ValueError(f"unknown probe_dist {dist!r}; expected 'rademacher' or 'gaussian'")
        self.dist = dist
        self.chunk_size = None if chunk_size is None else _check_positive_int("chunk_size", chunk_size)
        self.v: Tensor | None = None

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        self.v = _draw(self.dist, (self.probes, *x.shape), x, generator)

    def num_terms(self, x: Tensor) -> int:
        return self.probes

    def vjps_per_evaluation(self, x: Tensor) -> int:
        return self.probes

    def terms(self, vjp: VJP, x: Tensor) -> Tensor:
        v = self.v
        if v is None or v.shape[1:] != x.shape:
            raise RuntimeError("Hutchinson.prepare(x) must be called before terms()")
        return self._quadratic_forms(vjp, lambda m0, m1: v[m0:m1], self.probes, x)

    def combine(self, terms: Tensor) -> tuple[Tensor, Tensor]:
        k = terms.shape[0]
        if k == 1:
            return terms[0], torch.full_like(terms[0], math.nan)
        return terms.mean(0), terms.std(0) / math.sqrt(k)


class Lattice(DivergenceEstimator):
    """Rademacher probes on the classes of a periodic lattice of the grid (see the module text).

    For fields [B, C, *spatial] the classes are (channel, i_1 mod s_1, ..., i_n mod s_n), with
    s_a the divisor of the axis length n_a nearest to ``spacing`` (a divisor, so that on a
    periodic grid two points of one class are s_a apart across the boundary too); S = C prod s_a
    terms per replicate.  Fields [B, D] are one axis without channels.  A spacing at least the
    grid size gives one point per class: the exact trace, with standard error 0.

    Args:
        spacing: the lattice spacing, one int for every spatial axis or one per axis.
        replicates: independent sign draws R, averaged (cost R S VJPs per evaluation).
        chunk_size: cotangents per batched VJP.
    """

    name = "lattice"

    def __init__(self, spacing: int | Sequence[int] = 4, *, replicates: int = 1, chunk_size: int | None = None) -> None:
        if isinstance(spacing, int) and not isinstance(spacing, bool):
            self.spacing: int | tuple[int, ...] = _check_positive_int("spacing", spacing)
        else:
            self.spacing = tuple(_check_positive_int("spacing", s) for s in spacing)
            if not self.spacing:
                raise ValueError("spacing must be a positive integer or a non-empty sequence of them")
        self.replicates = _check_positive_int("replicates", replicates)
        self.chunk_size = None if chunk_size is None else _check_positive_int("chunk_size", chunk_size)
        self.labels: Tensor | None = None
        self.signs: Tensor | None = None
        self.classes = 0
        self.max_class_size = 0

    def steps(self, event_shape: Sequence[int]) -> tuple[int, ...]:
        """The spacing s_a used along each spatial axis of fields of this event shape."""
        spatial = tuple(event_shape[1:]) if len(event_shape) > 1 else tuple(event_shape)
        req = self.spacing if isinstance(self.spacing, tuple) else (self.spacing,) * len(spatial)
        if len(req) != len(spatial):
            raise ValueError(
                f"spacing {list(req)} has {len(req)} entries for fields with {len(spatial)} spatial axes "
                f"(event shape {list(event_shape)})"
            )
        return tuple(_nearest_divisor(n, s) for n, s in zip(spatial, req))

    def _labels(self, x: Tensor) -> Tensor:
        event = tuple(x.shape[1:])
        steps = self.steps(event)
        if len(event) > 1:
            channels, spatial = event[0], event[1:]
        else:
            channels, spatial = 1, event
        label = torch.zeros(spatial, dtype=torch.long, device=x.device)
        for axis, (n, s) in enumerate(zip(spatial, steps)):
            shape = [1] * len(spatial)
            shape[axis] = n
            label = label * s + (torch.arange(n, device=x.device) % s).reshape(shape)
        per_channel = math.prod(steps)
        if len(event) > 1:
            label = label[None] + per_channel * torch.arange(channels, device=x.device).reshape(-1, *[1] * len(spatial))
        self.classes = channels * per_channel
        self.max_class_size = math.prod(n // s for n, s in zip(spatial, steps))
        return label.reshape(event)

    def prepare(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        self.labels = self._labels(x)
        self.signs = _draw("rademacher", (self.replicates, *x.shape), x, generator)

    def num_terms(self, x: Tensor) -> int:
        if self.labels is None or self.labels.shape != x.shape[1:]:
            self.labels = self._labels(x)
        return self.replicates * self.classes

    def vjps_per_evaluation(self, x: Tensor) -> int:
        return self.num_terms(x)

    def terms(self, vjp: VJP, x: Tensor) -> Tensor:
        labels, signs = self.labels, self.signs
        if labels is None or signs is None or signs.shape[1:] != x.shape:
            raise RuntimeError("Lattice.prepare(x) must be called before terms()")
        s = self.classes

        def cotangents(m0: int, m1: int) -> Tensor:
            m = torch.arange(m0, m1, device=x.device)
            masks = (labels[None] == (m % s).reshape(-1, *[1] * labels.ndim)).to(x.dtype)  # [M, *event]
            return signs[m // s] * masks[:, None]

        return self._quadratic_forms(vjp, cotangents, self.replicates * s, x)

    def combine(self, terms: Tensor) -> tuple[Tensor, Tensor]:
        s = self.classes
        per = terms.reshape(self.replicates, s, -1)  # [R, S, B]
        totals = per.sum(1)
        estimate = totals.mean(0)
        if self.max_class_size <= 1:  # one point per class: the exact trace
            return estimate, torch.zeros_like(estimate)
        if s > 1:
            var_total = s * per.var(1)  # [R, B], conservative estimate of Var(sum_c T_c)
            se = (var_total.mean(0) / self.replicates).sqrt()
        elif self.replicates > 1:
            se = totals.std(0) / math.sqrt(self.replicates)
        else:
            se = torch.full_like(estimate, math.nan)
        return estimate, se


def _nearest_divisor(n: int, s: int) -> int:
    """The divisor of n nearest to s (the larger one on a tie); n itself when s >= n."""
    if s >= n:
        return n
    divisors = [q for q in range(1, n + 1) if n % q == 0]
    return min(divisors, key=lambda q: (abs(q - s), -q))


def _draw(dist: str, shape: tuple[int, ...], x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    if dist == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    else:
        v = torch.randn(shape, generator=generator, device=device, dtype=x.dtype)
    return v.to(x.device)


ESTIMATORS: dict[str, type[DivergenceEstimator]] = {"exact": Exact, "hutchinson": Hutchinson, "lattice": Lattice}


def make_estimator(
    divergence: str | DivergenceEstimator,
    *,
    probes: int = 1,
    probe_dist: ProbeDist = "rademacher",
    spacing: int | Sequence[int] = 4,
    chunk_size: int | None = None,
) -> DivergenceEstimator:
    """The estimator called ``divergence`` ("exact", "hutchinson", "lattice") or the one given.

    ``probes`` is the number of Hutchinson probes, or of lattice replicates.
    """
    if isinstance(divergence, DivergenceEstimator):
        return divergence
    if divergence == "exact":
        return Exact(chunk_size=chunk_size)
    if divergence == "hutchinson":
        return Hutchinson(probes, dist=probe_dist, chunk_size=chunk_size)
    if divergence == "lattice":
        return Lattice(spacing, replicates=probes, chunk_size=chunk_size)
    raise ValueError(f"unknown divergence {divergence!r}; expected one of {sorted(ESTIMATORS)}")
