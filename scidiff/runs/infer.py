"""Sampling and log-likelihoods of a run, in the data's own units and layout.

:func:`sample` draws fields and returns an ``xarray.Dataset`` shaped like the training
data (variable names, dims, coords, units, attrs) plus provenance; :func:`loglik` returns
log p(x) per field in nats and bits/dim, in the units of the file's variables:

    log p(x) = log p_model(z) + log|det dz/dx|,     z = normaliser(x),
    bits/dim = -log p(x) / (D ln 2),                 D = C * prod(spatial).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scidiff._ode import ODESolve
from scidiff._progress import progress_bar
from scidiff._validate import check_int
from scidiff.data import DataError, FieldChunk, FieldSource, loglik_to_dataset, open_fields, write_csv, write_netcdf
from scidiff.data import fields_to_dataset
from scidiff.divergence import ESTIMATORS
from scidiff.likelihood import log_likelihood
from scidiff.runs.run import LoadedModel, Run
from scidiff.sampling import SAMPLERS, sampler_options
from scidiff.sampling import sample as draw

__all__ = ["sample", "loglik", "as_loaded", "open_like_run", "read_fields", "write_table", "SAMPLER_OPTIONS"]


def as_loaded(run: Run | LoadedModel | str | os.PathLike[str], *, device: torch.device | str | None = None) -> LoadedModel:
    """``run`` ready for inference: a LoadedModel as it is, a Run or run folder loaded (:meth:`Run.load`)."""
    if isinstance(run, LoadedModel):
        return run
    if not isinstance(run, Run):
        run = Run.open(run)
    return run.load(device=device)


def _theta_matrix(run: Run, values: Mapping[str, float], n: int) -> Tensor | None:
    names = list(run.cond_names)
    if not names:
        if values:
            raise ValueError(f"the model of {str(run.path)!r} is unconditional; drop --cond {sorted(values)}")
        return None
    missing = [k for k in names if k not in values]
    unknown = [k for k in values if k not in names]
    if unknown or missing:
        raise ValueError(
            f"the model of {str(run.path)!r} is conditioned on {names}; "
            + (f"unknown parameter(s) {unknown}; " if unknown else "")
            + (f"give {', '.join(f'{k}=VALUE' for k in missing)} with --cond" if missing else "")
        )
    row = torch.tensor([values[k] for k in names], dtype=torch.float64)
    return row[None].expand(n, -1).clone()


SAMPLER_OPTIONS: dict[str, set[str]] = {name: set(sampler_options(name)) for name in SAMPLERS}
"""The options each sampling method of :func:`sample` takes (others are refused by name), from the sampler registry."""


def _sampler_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that apply to ``method`` (None values dropped)."""
    allowed = SAMPLER_OPTIONS
    if method not in allowed:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {sorted(allowed)}")
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in allowed[method]:
            raise ValueError(f"option {key} does not apply to --method {method}; it takes {sorted(allowed[method])}")
        out[key] = value
    if method == "ode":
        _check_ode_options(out)
    return out


def _check_ode_options(opts: Mapping[str, Any]) -> None:
    """Refuse ODE options the chosen solver would ignore: --steps for an adaptive one, --rtol/--atol for a fixed grid."""
    solver = opts.get("ode_method") or inspect.signature(SAMPLERS["ode"].__init__).parameters["method"].default
    adaptive = ODESolve(method=solver).adaptive
    if adaptive and "steps" in opts:
        raise ValueError(
            f"--steps {opts['steps']} does not apply to --method ode with the adaptive solver {solver!r}, which chooses "
            "its own steps from --rtol/--atol; leave --steps out, or give a fixed-grid --ode-method (euler, midpoint, "
            "rk4) to set them"
        )
    ignored = [k for k in ("rtol", "atol") if k in opts]
    if not adaptive and ignored:
        raise ValueError(
            f"--{ignored[0]} does not apply to the fixed-grid ODE solver {solver!r}, which takes --steps; leave it out, "
            "or give an adaptive --ode-method (dopri5, bosh3)"
        )


def solver_failure(err: BaseException, what: str, z: Tensor | None = None) -> ValueError:
    """One line for an ODE solve that failed (torchdiffeq's ``underflow in dt``): which fields, what
    scale, what to try.

    Args:
        err: the solver's exception.
        what: the fields, e.g. ``"fields 0-31 of data.nc"``.
        z: those fields in normalised units ``[b, C, *spatial]``, whose largest magnitude is
            reported (the training data have magnitude ~1 there).
    """
    reason = " ".join(str(err).split()) or type(err).__name__
    if z is not None:
        scale = float(z.detach().abs().amax()) if z.numel() else 0.0
        if not math.isfinite(scale) or scale > 50.0:
            return ValueError(
                f"the ODE solver failed on {what} ({reason}): they reach {scale:.3g} training standard deviations "
                "(the training data: about 1); check their units and values against the training data"
            )
        return ValueError(
            f"the ODE solver failed on {what} ({reason}) although they lie at {scale:.3g} training standard "
            "deviations at most; the model's score is too rough there: try --time-variable t, a larger --t-min, or a "
            "looser --rtol/--atol"
        )
    return ValueError(
        f"the ODE solver failed on {what} ({reason}); try another --method, a looser --rtol/--atol, or a larger --t-min"
    )


def sample(
    run: Run | LoadedModel | str | os.PathLike[str],
    n: int,
    *,
    method: str = "ode",
    cond: Mapping[str, float] | Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    device: torch.device | str | None = None,
    **options: Any,
) -> tuple[Any, Tensor]:
    """Draw ``n`` fields from a run's model.

    Args:
        run: a :class:`Run`, its folder, or a :class:`LoadedModel` (:meth:`Run.load`; load once
            to sample or evaluate several times).
        n: number of fields.
        method: "ode", "ancestral", "euler_maruyama" or "pc" (see ``docs/samplers.md``).
        cond: parameter values ``{name: value}`` shared by all fields, or a tensor ``[n, P]``
            (data units) of one parameter vector per field; required for a conditional model.
        seed: seeds the prior draws and the sampler's noise.
        batch_size: fields per sampler call.
        progress: show a progress bar.
        device: where to load the model when ``run`` is not loaded yet (default: the CPU).
        **options: sampler options (steps, rtol, atol, t_min, time_variable, ...; see
            :data:`SAMPLER_OPTIONS`).

    Returns:
        ``(dataset, x)``: the ``xarray.Dataset`` in the data's layout and units, with
        provenance attributes (model, method, seed, NFE), and the fields ``[n, C, *spatial]``.
    """
    n = check_int("n", n)
    batch_size = check_int("batch_size", batch_size)
    loaded = as_loaded(run, device=device)
    run = loaded.run
    opts = _sampler_options(method, options)
    theta = cond if isinstance(cond, Tensor) else _theta_matrix(run, cond or {}, n)
    if isinstance(cond, Tensor) and cond.shape != (n, len(run.cond_names)):
        raise ValueError(f"cond must be [n, P] = [{n}, {len(run.cond_names)}], got {list(cond.shape)}")
    generator = torch.Generator(device=loaded.device).manual_seed(int(seed))
    latent = loaded.latent  # a latent run draws latents and decodes them
    shape = run.field_shape if latent is None else latent.latent_shape
    dtype = next(loaded.model.parameters()).dtype
    bar = progress_bar(n, "sampling", enabled=progress, unit="field")
    parts: list[Tensor] = []
    nfe = 0
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        score = loaded.score(None if theta is None else theta[start : start + b])
        try:
            res = draw(
                score, loaded.model.sde, (b, *shape), method, generator=generator, dtype=dtype,
                device=loaded.device, progress=progress and method != "ode", return_result=True, **opts,
            )
        except AssertionError as err:  # torchdiffeq's step-size underflow
            raise solver_failure(err, f"samples {start}-{start + b - 1}") from None
        if not bool(torch.isfinite(res.x).all()):
            raise ValueError(
                f"method {method} drew non-finite values in samples {start}-{start + b - 1} although the model's "
                "weights are finite; try --method ode, more --steps, or a larger --t-min"
            )
        nfe += res.nfe
        if latent is not None:
            with torch.no_grad():
                res.x = latent.decode(res.x)
        parts.append(res.x.detach().double().cpu())
        bar.update(b)
    bar.close()
    z = torch.cat(parts)
    x = loaded.normalizer.inverse(z)
    provenance = {
        **loaded.provenance(),
        "method": method,
        "seed": int(seed),
        "nfe": int(nfe),
        "nfe_per_field_batch": int(round(nfe / math.ceil(n / batch_size))),
        "sampler_options": res.options,
    }
    ds = fields_to_dataset(
        x, run.template, provenance=provenance, sample_dim=run.template.sample_dim,
        cond=None if theta is None else theta,
    )
    return ds, x


def open_like_run(run: Run, path: str | os.PathLike[str], *, cond: bool = True) -> FieldSource:
    """Open ``path`` with the run's variables and dims; check it matches the model's fields.

    Raises:
        FileNotFoundError: no such file.
        DataError: a variable is missing, or the channels or grid differ from the training data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    tpl = run.template
    source = open_fields(
        path,
        list(run.data.variables),
        sample_dim=tpl.sample_dim if tpl.sample_dim else None,
        spatial_dims=list(tpl.spatial_dims),
        cond=list(run.data.cond) if cond else (),
    )
    if tuple(source.channels) != tuple(tpl.channels):
        source.close()
        raise DataError(
            f"{path.name}: channels {list(source.channels)} differ from the model's {list(tpl.channels)}"
        )
    if tuple(source.spatial_shape) != tuple(tpl.spatial_shape):
        source.close()
        grid = dict(zip(source.spatial_dims, source.spatial_shape))
        want = dict(zip(tpl.spatial_dims, tpl.spatial_shape))
        raise DataError(f"{path.name}: grid {grid} differs from the model's grid {want}; regrid the fields first")
    return source


def read_fields(source: FieldSource, limit: int | None = None, *, chunk: int = 256) -> Iterator[FieldChunk]:
    """Chunks (``x`` ``[b, C, *spatial]`` float64, ``cond``, ``index``) of the first ``limit`` fields."""
    total = source.num_samples if limit is None else min(int(limit), source.num_samples)
    for start in range(0, total, chunk):
        yield source.read(start, min(total, start + chunk))


def loglik(
    run: Run | LoadedModel | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    divergence: str = "lattice",
    n: int | None = None,
    batch_size: int = 32,
    probes: int = 1,
    spacing: int | Sequence[int] = 4,
    target_se: float | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    nodes: int | None = None,
    max_nodes: int | None = None,
    quadrature_tol: float = 1e-3,
    t_min: float = 1e-5,
    time_variable: str | None = None,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
    bound_samples: int = 4,
) -> Any:
    """log p(x) of the fields in ``data`` under a run's model, per field, in the data's units.

    For a latent run (:func:`scidiff.runs.train_latent`) ``log_prob`` is not log p(x) but the
    evidence lower bound E_q[log p(x | z) + log p(z) - log q(z | x)] <= log p(x)
    (:meth:`scidiff.latent.LatentDiffusion.log_likelihood_bound`, ``bound_samples`` draws of z
    per field), its standard error from the draws, and the attribute ``log_prob_is_lower_bound`` = 1.
    For a conditional latent run the bound is on log p(x | theta), theta read from ``data``.

    Args:
        run: a :class:`Run`, its folder, or a :class:`LoadedModel`.
        data: a netCDF/HDF5 file with the run's variables on the run's grid.
        divergence: how tr(ds/dx) is computed (:mod:`scidiff.divergence`): "lattice" (the
            default: Rademacher probes on a lattice of ``spacing``, C spacing^dims
            vector-Jacobian products per step, per-field error bars), "exact" (the full Jacobian
            trace, D products per step) or "hutchinson" (``probes`` products per step).
        n: evaluate only the first ``n`` fields.
        batch_size: fields per ODE solve.
        probes: Hutchinson probes, or lattice replicates, per field, held fixed over the solve.
        spacing: the lattice spacing (one int or one per spatial axis).
        target_se: a standard error per field to reach, in bits/dim (see
            :func:`scidiff.log_likelihood`).
        rtol, atol, t_min, time_variable: the PF-ODE solve (see ``docs/samplers.md``);
            ``time_variable=None`` takes ``scidiff.log_likelihood``'s default.
        nodes, max_nodes, quadrature_tol: None (default): the divergence is integrated with x by
            the solver.  ``nodes``: x is solved alone and the divergence is the trapezoid rule on
            ``nodes`` + 1 log-SNR nodes of the path, refined up to ``max_nodes`` intervals while
            a field's estimated quadrature error exceeds ``quadrature_tol`` bits/dim
            (:func:`scidiff.log_likelihood`): a third of the trace evaluations, but x needs a
            tighter tolerance (1e-6 on the demo model) since its error is not controlled through
            log p (``docs/likelihood.md``).  The default rtol = atol = 1e-4: at 1e-3 the demo
            models' log p moved by up to 0.007 bits/dim.
        seed: seeds the Hutchinson probes.
        progress: show a progress bar.
        device: where to load the model when ``run`` is not loaded yet.

    Returns:
        An ``xarray.Dataset`` with ``log_prob`` (nats), ``bits_per_dim`` and their standard
        errors ``log_prob_se``, ``bits_per_dim_se`` per field, the estimator used per field
        (``divergence``), the fields' positions in the file (``source_index``), their
        parameters, and provenance.
    """
    if divergence not in ESTIMATORS:
        raise ValueError(f"divergence must be one of {sorted(ESTIMATORS)}, got {divergence!r}")
    if time_variable is None:
        time_variable = inspect.signature(log_likelihood).parameters["time_variable"].default
    if n is not None:
        n = check_int("n", n)
    loaded = as_loaded(run, device=device)
    run = loaded.run
    source = open_like_run(run, data)
    total = source.num_samples if n is None else min(n, source.num_samples)
    dtype = next(loaded.model.parameters()).dtype
    d = math.prod(run.field_shape)
    rank, world = _rank_and_world()
    # whole batches, dealt round-robin to the ranks: every batch is solved on its own by one
    # process (no rank waits on another inside a solve), with probes seeded by the batch's
    # first field, so the values do not depend on the number of processes
    batches = [(b0, min(total, b0 + batch_size)) for b0 in range(0, total, batch_size)][rank::world]
    log_prob, log_prob_se, names, index, thetas = [], [], [], [], []
    nfe = 0
    quadrature = dict(nodes=nodes, max_nodes=max_nodes, quadrature_tol=quadrature_tol)
    worst_quadrature = 0.0  # the largest estimated quadrature error of a field, bits/dim
    bar = progress_bar(sum(b1 - b0 for b0, b1 in batches), f"log-likelihood ({divergence})",
                       enabled=progress and rank == 0, unit="field")
    try:
        for b0, b1 in batches:
            chunk = source.read(b0, b1)
            x = chunk.x
            z = loaded.normalizer.forward(x)
            score = loaded.score(chunk.cond)
            generator = torch.Generator(device=loaded.device).manual_seed(int(seed) * 1_000_003 + b0)
            try:
                if loaded.latent is not None:
                    # the latent model is conditioned as in training: on the normalised parameters
                    cond = None if chunk.cond is None else loaded.run.condition(
                        torch.as_tensor(chunk.cond).to(device=loaded.device, dtype=dtype))
                    res = loaded.latent.log_likelihood_bound(
                        z.to(device=loaded.device, dtype=dtype), samples=bound_samples, generator=generator, cond=cond,
                        divergence=divergence, probes=probes, spacing=spacing, target_se=target_se, rtol=rtol,
                        atol=atol, t_min=t_min, time_variable=time_variable, **quadrature,
                    )
                    res.divergence = [f"{divergence} (bound)"] * z.shape[0]
                else:
                    res = log_likelihood(
                        score, loaded.model.sde, z.to(device=loaded.device, dtype=dtype), divergence=divergence,  # type: ignore[arg-type]
                        probes=probes, spacing=spacing, target_se=target_se, rtol=rtol, atol=atol, t_min=t_min,
                        time_variable=time_variable, generator=generator, **quadrature,  # type: ignore[arg-type]
                    )
            except AssertionError as err:  # torchdiffeq's step-size underflow
                raise solver_failure(err, f"fields {b0}-{b1 - 1} of {Path(data).name}", z) from None
            nfe += res.nfe
            if getattr(res, "quadrature_error", None) is not None:
                worst_quadrature = max(worst_quadrature, float(res.quadrature_error.max()) / (d * math.log(2.0)))
            log_prob.append(res.log_prob.detach().double().cpu() + loaded.normalizer.log_abs_det_jacobian(x))
            log_prob_se.append(res.log_prob_se.detach().double().cpu())
            names.extend(res.divergence)
            index.append(np.asarray(chunk.index))
            if chunk.cond is not None:
                thetas.append(torch.as_tensor(chunk.cond))
            bar.update(x.shape[0])
    finally:
        bar.close()
        template = source.template
        source.close()
    if world > 1:
        log_prob, log_prob_se, names, index, thetas, nfe = _gather_in_order(
            log_prob, log_prob_se, names, index, thetas, nfe)
        import torch.distributed as dist

        worsts: list[Any] = [None] * world
        dist.all_gather_object(worsts, worst_quadrature)
        worst_quadrature = max(worsts)
    lp = torch.cat(log_prob)
    bpd = -lp / (d * math.log(2.0))
    provenance = {
        **loaded.provenance(),
        "data": str(Path(data).resolve()),
        "divergence": divergence,
        "probes": probes if divergence != "exact" else 0,
        "spacing": str(spacing) if divergence == "lattice" else "",
        "target_se_bits_per_dim": float(target_se) if target_se is not None else 0.0,
        "rtol": rtol,
        "atol": atol,
        "nodes": int(nodes) if nodes is not None else 0,
        "max_nodes": int(max_nodes or 0) if nodes is not None else 0,
        "quadrature_tol_bits_per_dim": float(quadrature_tol) if nodes is not None else 0.0,
        "max_quadrature_error_bits_per_dim": worst_quadrature,
        "t_min": t_min,
        "time_variable": time_variable,
        "seed": int(seed),
        "nfe": int(nfe),
        "processes": int(world),
    }
    if loaded.latent is not None:
        provenance["log_prob_is_lower_bound"] = 1
        provenance["bound_samples"] = int(bound_samples)
    return loglik_to_dataset(
        lp, bpd, template, provenance=provenance, sample_dim=template.sample_dim,
        index=np.concatenate(index), cond=torch.cat(thetas) if thetas else None,
        log_prob_se=torch.cat(log_prob_se), estimator=names,
    )


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_in_order(log_prob, log_prob_se, names, index, thetas, nfe):
    """Every rank's results, on every rank, in the order of the fields in the file (one all-gather)."""
    import torch.distributed as dist

    mine = {"lp": log_prob, "se": log_prob_se, "names": names, "index": index, "cond": thetas, "nfe": nfe}
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    lp = [t for p in parts for t in p["lp"]]
    se = [t for p in parts for t in p["se"]]
    idx = [i for p in parts for i in p["index"]]
    cond = [c for p in parts for c in p["cond"]]
    nm = [n for p in parts for n in p["names"]]
    order = np.argsort(np.concatenate(idx), kind="stable")
    cat = lambda ts: [torch.cat(ts)[torch.as_tensor(order)]] if ts else []  # noqa: E731
    names_sorted = [nm[i] for i in order]
    return cat(lp), cat(se), names_sorted, [np.concatenate(idx)[order]], cat(cond), sum(p["nfe"] for p in parts)


def write_table(ds: Any, out: str | os.PathLike[str]) -> Path:
    """Write a per-field table as netCDF (``.nc``) or CSV (``.csv``), chosen by the suffix."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return write_csv(ds, out)
    if suffix in (".nc", ".nc4", ".netcdf", ".h5", ".hdf5"):
        return write_netcdf(ds, out)
    raise ValueError(f"{str(out)!r}: give a .nc or .csv file name for the table")
