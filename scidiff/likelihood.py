r"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021; Chen et al. 2018).

Along the PF-ODE dx/dt = f~(x, t) = -beta(t) (x + s(x, t)) / 2 the instantaneous change of
variables gives d log p_t(x_t) / dt = -div f~(x_t, t), so

    log p_0(x_0) = log p_1(x_1) + integral_0^1 div f~(x_t, t) dt,

integrated from t_min (default 1e-5) to 1 jointly with x by ``torchdiffeq.odeint``, in t or
in another time variable (log-SNR, sigma/alpha; see :mod:`scidiff._ode`).
With dx/du = c(u) (x + s), div(dx/du) = c(u) (D + div s).  The first part integrates in
closed form, since c(u) du = d log alpha: D (log alpha(1) - log alpha(t_min)).  The divergence
of the score, tr(ds/dx), comes from an estimator of :mod:`scidiff.divergence`:

* ``"exact"``: the trace from the D basis vectors (batched vector-Jacobian products);
* ``"hutchinson"``: K Rademacher or Gaussian probes held fixed over the solve;
* ``"lattice"``: Rademacher probes restricted to the classes of a periodic lattice of the grid,
  which removes the near-diagonal pairs that make most of Hutchinson's variance.

Each estimator's terms are integrated as separate components of the ODE state, so the
result carries a standard error per field (``log_prob_se``, nats; 0 for the exact trace), and
``target_se`` adds probes per field until it is met (or takes the exact trace where that is
cheaper).  Each evaluation costs one score evaluation (a network forward) plus the
vector-Jacobian products, never a second forward.  Physical fields are continuous: there is
no dequantisation.  If the data were normalised by an invertible map z = T(x), pass
``log_abs_det_jacobian`` = log|det dT/dx| per sample and the result is log p(x) in x's units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scidiff._ode import NFECounter, ODESolve, PFODEDrift, TimeLogSNR, TimeVariable, TimeVariableName
from scidiff._progress import progress_bar
from scidiff.divergence import (
    DivergenceEstimator,
    Exact,
    Hutchinson,
    Lattice,
    ProbeDist,
    default_chunk_size,
    linearize,
    make_estimator,
)
from scidiff.sde import VPSDE

__all__ = ["log_likelihood", "LikelihoodResult", "divergence_exact", "divergence_hutchinson"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LikelihoodResult:
    """The result of :func:`log_likelihood`.

    Attributes:
        log_prob: log p(x) in nats, one per sample [B], in the units of x (plus the given
            log-Jacobian, if any).
        bits_per_dim: -log_prob / (D ln 2), [B].
        nfe: score evaluations used by the solver(s).
        prior_log_prob: log p_1(x_1) at the end of the flow, [B].
        delta_log_p: the integral of div f~ dt, [B].
        x1: the latent x_1 at t = 1, [B, *event].
        log_prob_se: the standard error of ``log_prob`` from the divergence estimator, nats [B]
            (0 for the exact trace; NaN where one probe gives no estimate of it).  The ODE
            solver's own error is not included (see ``docs/likelihood.md``).
        bits_per_dim_se: the same in bits/dim, [B].
        divergence: per sample, the estimator that gave the final value ("exact", ...).
        probes: per sample, the probes (Hutchinson) or replicates (lattice) averaged; 0 for exact.
        quadrature_error: with ``nodes``, the estimated error of the trapezoid rule per sample,
            nats, from the rules on every node, every other and every fourth (an estimate for
            a converging rule, see ``docs/likelihood.md``); None without ``nodes``.
    """

    log_prob: Tensor
    bits_per_dim: Tensor
    nfe: int
    prior_log_prob: Tensor
    delta_log_p: Tensor
    x1: Tensor
    log_prob_se: Tensor | None = None
    bits_per_dim_se: Tensor | None = None
    divergence: list[str] | None = None
    probes: Tensor | None = None
    quadrature_error: Tensor | None = None


# ------------------------------------------------------- the divergence, given s and x
def divergence_exact(s: Tensor, x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """tr(ds/dx) per sample [B] for ``s`` computed from ``x`` (which requires grad), [B, *event]."""
    from scidiff.divergence import _autograd_vjp

    return Exact(chunk_size=chunk_size).terms(_autograd_vjp(s, x), x.detach())[0]


def divergence_hutchinson(s: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson's estimate mean_k v_k^T (ds/dx) v_k per sample [B]; probes [K, B, *event]."""
    from scidiff.divergence import _autograd_vjp

    est = Hutchinson(probes.shape[0], chunk_size=probes.shape[0])
    est.v = probes
    return est.terms(_autograd_vjp(s, x), x.detach()).mean(0)


def _default_chunk_size(bsz: int, d: int) -> int:
    """Cotangents per batched VJP when none is given (see :func:`scidiff.divergence.default_chunk_size`)."""
    return default_chunk_size(bsz, d)


# ------------------------------------------------------------------- the augmented ODE
class _AugmentedDrift(torch.nn.Module):
    """d(x, Gamma)/du = (c (x + s), c T): x and the estimator's terms T [S, B] of div s."""

    def __init__(self, score: NFECounter, var: TimeVariable, t_lo: float, t_hi: float,
                 estimator: DivergenceEstimator, functional: bool) -> None:
        super().__init__()
        self.score = score
        self.var = var
        self.t_lo = t_lo
        self.t_hi = t_hi
        self.estimator = estimator
        self.functional = functional

    def forward(self, u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, _ = state
        u = u.double()
        t = self.var.t_of_u(u).clamp(self.t_lo, self.t_hi)
        c = self.var.coefficient(u, t).to(x.dtype)
        s, terms = self.terms_at(x, t)
        return c * (x + s), c * terms

    def terms_at(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The score and the estimator's terms [S, B] at (x, t)."""
        x = x.detach()
        if self.functional:
            try:
                s, vjp = linearize(lambda z: self.score(z, t), x, functional=True)
                return s, self.estimator.terms(vjp, x).detach()
            except RuntimeError as err:
                if "functorch" not in str(err) and "torch.func" not in str(err) and "vmap" not in str(err):
                    raise
                # a score that takes gradients itself (a guided score): autograd from now on
                self.functional = False
        s, vjp = linearize(lambda z: self.score(z, t), x, functional=False)
        with torch.enable_grad():
            terms = self.estimator.terms(vjp, x)
        return s, terms.detach()


@dataclass
class _Solved:
    x1: Tensor
    delta: Tensor
    se: Tensor
    nfe: int


def _solve(score: ScoreFn, sde: VPSDE, x: Tensor, estimator: DivergenceEstimator, solve: ODESolve,
           t_min: float, generator: torch.Generator | None, progress: bool, desc: str) -> _Solved:
    """One PF-ODE solve of (x, the estimator's terms) from t_min to 1."""
    counter = NFECounter(score)
    var = solve.variable(sde.schedule)
    u = var.u_of_t(torch.tensor([t_min, 1.0], dtype=torch.float64, device=x.device))
    estimator.prepare(x, generator)
    # measured on a 2-core CPU (docs/likelihood.md): one VJP at a time over the retained graph is
    # 1.7-2.8x faster per product than torch.func.vmap over the pullback, which pays off on GPUs
    functional = x.is_cuda and _functional_ok(score)
    drift = _AugmentedDrift(counter, var, t_min, 1.0, estimator, functional)
    bar = progress_bar(None, desc, enabled=progress, unit="NFE", leave=False)
    inner = counter.score

    def with_bar(x_: Tensor, t_: Tensor) -> Tensor:
        bar.update()
        return inner(x_, t_)

    counter.score = with_bar
    s_terms = estimator.num_terms(x)
    # inference_mode tensors cannot take part in autograd: run the solve outside it
    with torch.inference_mode(False), torch.no_grad():
        state0 = (x.detach().clone(), torch.zeros(s_terms, x.shape[0], dtype=x.dtype, device=x.device))
        try:
            x1, gamma = solve(drift, state0, u)
        finally:
            bar.close()
    div_s, se = estimator.combine(gamma)
    return _Solved(x1=x1, delta=_identity_part(sde, x, t_min) + div_s, se=se, nfe=counter.nfe)


def _identity_part(sde: VPSDE, x: Tensor, t_min: float) -> float:
    """The D part of the divergence integral, in closed form: D (log alpha(1) - log alpha(t_min))."""
    log_alpha = sde.schedule.log_alpha(torch.tensor([t_min, 1.0], dtype=torch.float64))
    return x[0].numel() * float(log_alpha[1] - log_alpha[0])


@dataclass
class _Path:
    """The PF-ODE solved for x alone, kept at the finest quadrature nodes."""

    xs: Tensor       # [n + 1, B, *event], x at the nodes, from t_min to 1
    t: Tensor        # [n + 1] float64, the nodes' times
    c: Tensor        # [n + 1] float64, c(lambda) = sigma^2 / 2 at the nodes, dx/dlambda = c (x + s)
    h: float         # the finest node spacing in lambda (negative: lambda falls from t_min to 1)
    nfe: int
    stride: int = 1  # the stride of the nodes the first pass settled on (target_se reuses it)


def _trajectory(score: ScoreFn, sde: VPSDE, x: Tensor, solve: ODESolve, t_min: float, intervals: int,
                progress: bool) -> _Path:
    r"""x(t) at ``intervals`` + 1 times equally spaced in log-SNR from t_min to 1, by one solve of x alone.

    Along the path the divergence part of log p is an integral in the log-SNR lambda,
    integral c(u) div s du = integral sigma^2(lambda) div s dlambda / 2, whose integrand is
    analytic in lambda and, for an exact Gaussian score, a sum of logistic steps of unit width
    in lambda (one per eigenvalue), flat at both ends.  The trapezoid rule converges
    geometrically for such integrands, so a few nodes give it to solver accuracy, and the
    solve of x alone costs only network forwards (dense output puts x at the nodes at no
    extra evaluations).
    """
    counter = NFECounter(score)
    var = solve.variable(sde.schedule)
    quad = TimeLogSNR(sde.schedule)
    ends = torch.tensor([t_min, 1.0], dtype=torch.float64, device=x.device)
    lam = torch.linspace(float(quad.u_of_t(ends[:1])), float(quad.u_of_t(ends[1:])), intervals + 1,
                         dtype=torch.float64, device=x.device)
    t = quad.t_of_u(lam).clamp(t_min, 1.0)
    t[0], t[-1] = t_min, 1.0
    bar = progress_bar(None, "log-likelihood (path, NFE)", enabled=progress, unit="NFE", leave=False)
    inner = counter.score

    def with_bar(x_: Tensor, t_: Tensor) -> Tensor:
        bar.update()
        return inner(x_, t_)

    counter.score = with_bar
    with torch.inference_mode(False), torch.no_grad():
        try:
            xs = solve.path(PFODEDrift(counter, var, t_min, 1.0), x.detach().clone(), var.u_of_t(t))
        finally:
            bar.close()
    return _Path(xs=xs, t=t, c=quad.coefficient(lam, t), h=float(lam[1] - lam[0]), nfe=counter.nfe)


def _on_path(score: ScoreFn, sde: VPSDE, path: _Path, rows: Tensor | None, estimator: DivergenceEstimator,
             generator: torch.Generator | None, progress: bool, desc: str, *, stride: int,
             tol_nats: float | None = None) -> tuple[Tensor, Tensor, Tensor, int]:
    """The divergence integral by the trapezoid rule on every ``stride``-th node of the path.

    With ``tol_nats`` the stride is halved (the rule refined on the midpoints, for the whole
    batch) while some field's estimated quadrature error exceeds it.  The estimate comes from
    the rules on strides s, 2s and 4s: with d1 = |Q_s - Q_2s| and d2 = |Q_2s - Q_4s|, a rule
    converging geometrically has error(Q_s) ~ d1 (d1 / d2), taken at most d1 (which is about
    the error of Q_2s); with only two rules it is d1.  It is an estimate, not a bound: on a
    rule too coarse to resolve the integrand it can be low by a few times (``docs/likelihood.md``).

    Returns (delta log p [B], its standard error [B], the quadrature's error estimate [B], NFE)
    and sets ``path.stride`` to the stride used.
    """
    xs = path.xs if rows is None else path.xs[:, rows]
    x0 = xs[0]
    n = xs.shape[0] - 1
    counter = NFECounter(score)
    estimator.prepare(x0, generator)
    functional = x0.is_cuda and _functional_ok(score)
    at = _AugmentedDrift(counter, TimeLogSNR(sde.schedule), float(path.t[0]), 1.0, estimator, functional)
    terms: dict[int, Tensor] = {}
    bar = progress_bar(None, desc, enabled=progress, unit="node", leave=False)

    def rule(step: int) -> tuple[Tensor, Tensor]:
        gamma = torch.zeros_like(next(iter(terms.values())))
        for j in range(0, n + 1, step):
            w = path.h * step * float(path.c[j]) * (0.5 if j in (0, n) else 1.0)
            gamma += w * terms[j]
        return estimator.combine(gamma)

    def known_error(step: int) -> Tensor:
        q1, q2 = rule(step)[0], rule(2 * step)[0]
        d1 = (q1 - q2).abs()
        if n % (4 * step):
            return d1
        d2 = (q2 - rule(4 * step)[0]).abs()
        return torch.where(d2 > d1, d1 * d1 / d2.clamp_min(torch.finfo(d1.dtype).tiny), d1)

    with torch.inference_mode(False), torch.no_grad():
        try:
            while True:
                for j in range(0, n + 1, stride):
                    if j not in terms:
                        terms[j] = at.terms_at(xs[j], path.t[j])[1]
                        bar.update()
                levels_ok = n % (2 * stride) == 0
                err = known_error(stride) if levels_ok else torch.full((x0.shape[0],), float("nan"), dtype=x0.dtype,
                                                                       device=x0.device)
                if tol_nats is None or stride == 1 or not levels_ok or bool((err <= tol_nats).all()):
                    break
                stride //= 2
        finally:
            bar.close()
    path.stride = stride
    div_s, se = rule(stride)
    return _identity_part(sde, x0, float(path.t[0])) + div_s, se, err, counter.nfe


def _functional_ok(score: ScoreFn) -> bool:
    """Whether the score can go through ``torch.func``: not one that takes gradients itself
    (guided scores say so with ``takes_gradients``; any other such score is caught at its first
    evaluation and falls back to autograd)."""
    inner = getattr(score, "func", score)  # functools.partial
    return not getattr(inner, "takes_gradients", False)


def log_likelihood(
    score: ScoreFn,
    sde: VPSDE,
    x: Tensor,
    *,
    divergence: str | DivergenceEstimator = "exact",
    t_min: float = 1e-5,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int = 100,
    time_variable: TimeVariableName = "t",
    probes: int = 1,
    probe_dist: ProbeDist = "rademacher",
    spacing: int | Sequence[int] = 4,
    chunk_size: int | None = None,
    target_se: float | None = None,
    max_probes: int = 64,
    nodes: int | None = None,
    max_nodes: int | None = None,
    quadrature_tol: float = 1e-3,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    log_abs_det_jacobian: Tensor | float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> LikelihoodResult:
    """log p(x) of fields ``x`` [B, *event] under the model whose score is ``score``, in nats.

    Args:
        score: ``score(x, t) -> Tensor`` like x; t of shape [B].
        sde: the VP-SDE of the score.
        x: the fields, [B, *event], finite.
        divergence: how tr(ds/dx) is computed: "exact" (the full Jacobian trace, D
            vector-Jacobian products per evaluation), "hutchinson" (``probes`` probes), "lattice"
            (Rademacher probes on a lattice of ``spacing``, C spacing^dims products per
            replicate and ``probes`` replicates), or a :class:`~scidiff.divergence.DivergenceEstimator`.
        t_min: where the flow starts, log p_{t_min} ~= log p_0.
        method, rtol, atol, steps: the torchdiffeq solver (``steps`` for fixed-grid methods).
        time_variable: "t" (default), "logsnr" or "sigma".
        probes: Hutchinson probes, or lattice replicates, per field, fixed over the solve.
        probe_dist: "rademacher" or "gaussian" (Hutchinson only).
        spacing: the lattice spacing (one int, or one per spatial axis).
        chunk_size: cotangents per batched vector-Jacobian product (default: about 2^17
            cotangent elements per product).
        target_se: a standard error to reach per field, in bits/dim: fields above it are solved
            again with more probes (their estimates pooled), up to ``max_probes`` per field, or
            with the exact trace where that costs fewer products.
        max_probes: the most probes (replicates) a field gets under ``target_se``.
        nodes: None: the divergence is integrated with x by the ODE solver, at every evaluation.
            An even integer n: x is solved alone (network forwards only) and the
            divergence integral is the trapezoid rule on n + 1 nodes equally spaced in log-SNR
            along that path, refined on the midpoints up to ``max_nodes`` intervals while a
            field's estimated quadrature error exceeds ``quadrature_tol``.  The divergence then
            costs n + 1 evaluations (or the refined count) whatever the solver needs; the
            result's ``quadrature_error`` is the estimate (see ``docs/likelihood.md``).
        max_nodes: the most intervals the rule is refined to (default 4 ``nodes``; ``nodes``
            times a power of 2).  The path is kept at these nodes: (max_nodes + 1) fields' worth
            of memory per field.
        quadrature_tol: the estimated quadrature error per field, in bits/dim, below which the
            rule is not refined (with ``nodes``).  The solve of x alone is controlled by
            ``rtol``/``atol`` as usual; it needs them tighter than the joint solve, since the
            divergence no longer shortens its steps and x's error is not controlled through log p
            (on a GRF with its exact score 1e-4 matches the joint solve at 1e-3; on the trained
            demo model 1e-6 matches it at 1e-4, ``docs/likelihood.md``).
        prior_log_prob: log p_1(x_1) per sample (default ``sde.prior_log_prob``, N(0, I)).
        log_abs_det_jacobian: log|det dz/dx| per sample [B] (or a scalar), added to the result,
            when the model sees z = T(x) and you want log p(x) in x's units.
        generator: for the probes.
        progress: show a progress bar of score evaluations.

    Returns:
        A :class:`LikelihoodResult`: ``log_prob`` [B] (nats) with its standard error
        ``log_prob_se``, ``bits_per_dim`` and ``bits_per_dim_se``, and ``nfe``.
    """
    if not isinstance(sde, VPSDE):
        raise TypeError(f"sde must be a scidiff.VPSDE, got {type(sde).__name__}")
    if not isinstance(x, Tensor) or not torch.is_floating_point(x) or x.ndim < 2:
        raise ValueError("x must be a floating-point tensor shaped [B, *event]")
    finite = torch.isfinite(x.flatten(1)).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"x contains NaN or inf in samples {bad[:20]}{' ...' if len(bad) > 20 else ''}")
    if not (0.0 < t_min < 1.0):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    estimator = make_estimator(divergence, probes=probes, probe_dist=probe_dist, spacing=spacing,
                               chunk_size=chunk_size)
    if target_se is not None and not (isinstance(target_se, (int, float)) and math.isfinite(target_se)
                                      and target_se > 0):
        raise ValueError(f"target_se must be a positive number of bits/dim, got {target_se!r}")
    if not isinstance(max_probes, int) or isinstance(max_probes, bool) or max_probes < 1:
        raise ValueError(f"max_probes must be a positive integer, got {max_probes!r}")
    solve = ODESolve(method=method, rtol=rtol, atol=atol, steps=steps, time_variable=time_variable)  # validates
    bsz = x.shape[0]
    d = x[0].numel()
    nats_per_bpd = d * math.log(2.0)

    if nodes is not None:
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 2 or nodes % 2:
            raise ValueError(f"nodes must be an even number >= 2 (trapezoid intervals in log-SNR), got {nodes!r}")
        if not (isinstance(quadrature_tol, (int, float)) and math.isfinite(quadrature_tol) and quadrature_tol > 0):
            raise ValueError(f"quadrature_tol must be a positive number of bits/dim, got {quadrature_tol!r}")
        max_nodes = 4 * nodes if max_nodes is None else max_nodes
        ratio = max_nodes // nodes if isinstance(max_nodes, int) and not isinstance(max_nodes, bool) else 0
        if ratio < 1 or ratio * nodes != max_nodes or ratio & (ratio - 1):
            raise ValueError(f"max_nodes must be nodes ({nodes}) times a power of 2, got {max_nodes!r}")

    if target_se is not None and isinstance(estimator, Hutchinson) and estimator.probes < 4:
        estimator = _with_probes(estimator, 4)  # a standard error needs a few probes to start from
    quad_err = None
    if nodes is None:
        def solve_rows(rows: Tensor | None, est: DivergenceEstimator, gen: torch.Generator | None,
                       desc: str) -> tuple[Tensor, Tensor, int]:
            res = _solve(score, sde, x if rows is None else x[rows], est, solve, t_min, gen, progress, desc)
            return res.delta, res.se, res.nfe

        first = _solve(score, sde, x, estimator, solve, t_min, generator, progress,
                       f"log-likelihood ({estimator.name}, NFE)")
        x1, delta, se, nfe = first.x1, first.delta, first.se, first.nfe
    else:
        path = _trajectory(score, sde, x, solve, t_min, max_nodes, progress)

        def solve_rows(rows: Tensor | None, est: DivergenceEstimator, gen: torch.Generator | None,
                       desc: str) -> tuple[Tensor, Tensor, int]:
            # more probes on the nodes the first pass settled on
            delta_, se_, _, nfe_ = _on_path(score, sde, path, rows, est, gen, progress, desc, stride=path.stride)
            return delta_, se_, nfe_

        x1 = path.xs[-1]
        delta, se, quad_err, nfe = _on_path(score, sde, path, None, estimator, generator, progress,
                                            f"log-likelihood ({estimator.name}, nodes)", stride=max_nodes // nodes,
                                            tol_nats=quadrature_tol * nats_per_bpd)
        nfe += path.nfe
    used = torch.full((bsz,), _probes_of(estimator), dtype=torch.long)
    names = [estimator.name] * bsz
    if target_se is not None and not isinstance(estimator, Exact):
        delta, se, used, names, extra_nfe = _refine(solve_rows, x, estimator, generator, delta, se, used, names,
                                                    target_se * nats_per_bpd, max_probes)
        nfe += extra_nfe

    prior = sde.prior_log_prob(x1) if prior_log_prob is None else prior_log_prob(x1)
    log_prob = prior + delta
    if log_abs_det_jacobian is not None:
        log_prob = log_prob + torch.as_tensor(log_abs_det_jacobian, dtype=x.dtype, device=x.device)
    return LikelihoodResult(
        log_prob=log_prob, bits_per_dim=-log_prob / nats_per_bpd, nfe=nfe, prior_log_prob=prior,
        delta_log_p=delta, x1=x1, log_prob_se=se, bits_per_dim_se=se / nats_per_bpd, divergence=names,
        probes=used, quadrature_error=quad_err,
    )


def _probes_of(estimator: DivergenceEstimator) -> int:
    if isinstance(estimator, Hutchinson):
        return estimator.probes
    if isinstance(estimator, Lattice):
        return estimator.replicates
    return 0


def _with_probes(estimator: DivergenceEstimator, k: int) -> DivergenceEstimator:
    if isinstance(estimator, Hutchinson):
        return Hutchinson(k, dist=estimator.dist, chunk_size=estimator.chunk_size)
    if isinstance(estimator, Lattice):
        return Lattice(estimator.spacing, replicates=k, chunk_size=estimator.chunk_size)
    raise ValueError(f"target_se needs a Hutchinson or lattice estimator, got {type(estimator).__name__}")


def _refine(solve_rows, x, estimator, generator, delta, se, used, names, target_nats: float, max_probes: int):
    """Solve again, with more probes, the fields whose standard error exceeds the target.

    Independent estimates of one field are pooled by their probe counts n_a:
    mean = sum n_a m_a / N and SE^2 = sum n_a^2 SE_a^2 / N^2.  Fields whose needed probe count
    costs at least as many products per evaluation as the exact trace get the exact trace.
    """
    nfe = 0
    per_probe = max(1, estimator.vjps_per_evaluation(x[:1]) // max(1, _probes_of(estimator)))
    exact_cost = x[0].numel()
    delta, se, used = delta.clone(), se.clone(), used.clone()
    for _ in range(4):
        # probes each field needs, from its current SE (SE ~ 1 / sqrt(probes)); NaN: double them
        need = torch.where(torch.isnan(se), 2.0 * used.double(),
                           torch.ceil(used.double() * (se.double() / target_nats) ** 2))
        todo = (se > target_nats) | torch.isnan(se)
        todo &= torch.tensor([n != "exact" for n in names])
        if not bool(todo.any()):
            break
        exact_rows = todo & (need * per_probe >= exact_cost)
        more_rows = todo & ~exact_rows & (used < max_probes)
        if bool(exact_rows.any()):
            idx = exact_rows.nonzero().flatten()
            d_, s_, n_ = solve_rows(idx, Exact(chunk_size=estimator.chunk_size), None, "log-likelihood (exact)")
            nfe += n_
            delta[idx], se[idx] = d_, s_
            used[idx] = 0
            for i in idx.tolist():
                names[i] = "exact"
        if not bool(more_rows.any()):
            break
        idx = more_rows.nonzero().flatten()
        extra = int((need[idx].clamp(max=max_probes) - used[idx].double()).clamp(min=1).max())
        extra = min(extra, max_probes - int(used[idx].min()))
        d_, s_, n_ = solve_rows(idx, _with_probes(estimator, extra), generator,
                                f"log-likelihood ({estimator.name}, +{extra} probes)")
        nfe += n_
        n_old = used[idx].to(delta.dtype)
        n_tot = n_old + extra
        delta[idx] = (n_old * delta[idx] + extra * d_) / n_tot
        se[idx] = ((n_old * se[idx]) ** 2 + (extra * s_) ** 2).sqrt() / n_tot
        used[idx] = used[idx] + extra
    return delta, se, used, names, nfe
