"""Trajectories on the linear-Gaussian AR(1) system, against its exact answers.

The system (``scidiff.simulators.AR1Field``): a periodic 1-D field of ``--size`` points,
every Fourier mode an AR(1) process (tau = 0.5, kappa = 0.002, interval 0.2, slope 2).
Every window score, trajectory score and posterior is known in closed form, so each section
measures one approximation alone:

* ``composition`` -- relative L2 error of the Markov-blanket composition of exact window
  scores against the exact score of the noised trajectory, by diffusion time t and window W;
* ``assimilation`` -- posterior samples (PF-ODE) for 2 point sensors every 4th state against
  the Rauch-Tung-Striebel smoother: MMPS and DPS (plain, inflated) on the exact trajectory
  score and on composed exact window scores; mean error in posterior sds, variance ratios,
  coverage of the truth at 50 / 90 %, network-equivalent cost;
* ``emulation`` -- trajectories of ``--length`` states drawn jointly from composed exact window
  scores, and rolled out autoregressively from the exact window conditional, against the exact
  variance and lag-1 covariance at each lead time; window evaluations per state;
* ``window_model`` (with ``--train-steps`` > 0) -- UNet window models trained on windows of the
  system rescaled to unit variance, with states stacked as channels and with time as an extra
  axis (``--wm-configs``, eps or v prediction): score error against the exact window score, and
  the coverage of held-out truths by their MMPS posteriors beside the exact posterior's and
  beside MMPS on the exact window score with the same sampler;
* ``parameterisation`` -- MMPS on the exact window score plus a small smooth error put in eps-hat
  or in x0-hat: what the guidance needs of a trained network;
* ``lorenz96`` (with ``--l96-steps`` > 0) -- a window model trained on Lorenz-96 trajectories,
  held-out truths observed by sparse sensors every other state, then forecast: CRPS and
  spread-skill of the MMPS posterior ensemble at each lead time, beside climatology and the
  observations interpolated in space and time (persisted after the last observation).

    python benchmarks/bench_trajectories.py [--quick] [--samples 2000] [--train-steps 1500] [--l96-steps 3000]
        [--sections composition,...] [--json out.json]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scidiff as sd  # noqa: E402
from _common import Section, machine, parse_script_args, report, script_parser  # noqa: E402
from scidiff.guidance import DPSGuidance  # noqa: E402
from scidiff.guidance.operators import SparseSensors  # noqa: E402
from scidiff.metrics import coverage, crps_ensemble, spread_skill_ratio  # noqa: E402
from scidiff.simulators import AR1Field, Lorenz96  # noqa: E402
from scidiff.trajectories import (  # noqa: E402
    AxisWindowScore, ExactScore, MarkovBlanketScore, MMPSGuidance, StackedWindowScore, StateObservation,
    autoregressive_rollout, every_nth, gaussian_conditional, kalman_smoother, window_fields,
)

F64 = torch.float64


def system(size: int) -> AR1Field:
    return AR1Field(size, 1, slope=2.0, tau=0.5, kappa=0.002, dt=0.2)


def full_operator(obs: StateObservation) -> torch.Tensor:
    H = obs.matrix()
    m, d = H.shape
    out = torch.zeros(len(obs.times) * m, obs.length * d, dtype=F64)
    for j, k in enumerate(obs.times):
        out[j * m:(j + 1) * m, k * d:(k + 1) * d] = H
    return out


# ---------------------------------------------------------------------- composition
def composition(size: int, length: int, n: int) -> Section:
    p, sde = system(size), sd.VPSDE()
    exact = ExactScore(p, sde)
    x0 = p.sample(n, length, seed=1)[:, :, None]
    windows = [1, 3, 5, 7, 9]
    s = Section("composition", f"composed exact window scores vs the exact trajectory score (L = {length})",
                ["t"] + [f"W={w}" for w in windows],
                goal="exact (round-off) at t = 0 for W >= 3 (AR(1) is Markov of order 1); decreasing in W for t > 0")
    g = torch.Generator().manual_seed(2)
    for t in (0.0, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0):
        tt = torch.full((n,), t, dtype=F64)
        c = sde.coefficients(tt)
        x_t = c.alpha[0] * x0 + c.sigma[0] * torch.randn(x0.shape, dtype=F64, generator=g)
        ref = exact(x_t, tt)
        row = {"t": t}
        for w in windows:
            comp = MarkovBlanketScore(exact, w)(x_t, tt)
            row[f"W={w}"] = float(((comp - ref).pow(2).sum() / ref.pow(2).sum()).sqrt())
        s.rows.append(row)
    s.notes.append(f"relative L2 error over {n} noised stationary trajectories of {size} points; one trajectory "
                   f"score costs L - W + 1 window evaluations")
    return s


# ---------------------------------------------------------------------- assimilation
def problem(size: int, length: int, seed: int = 3):
    p = system(size)
    sensors = SparseSensors(torch.tensor([[0, 1], [0, size // 2 + 1]]), (1, size))
    obs = StateObservation(sensors, every_nth(length, 4), length, (1, size))
    truth = p.sample(1, length, seed=seed)[:, :, None]
    g = torch.Generator().manual_seed(seed + 100)
    y = obs(truth)[0] + 0.1 * torch.randn(obs(truth)[0].shape, dtype=F64, generator=g)
    return p, obs, truth, y


def assimilation(size: int, length: int, n: int) -> Section:
    sde = sd.VPSDE()
    p, obs, truth, y = problem(size, length)
    F, Q, P0 = p.state_space()
    rts = kalman_smoother(F, Q, P0, length, obs.linear_observations(y, 0.1))
    mu, P = gaussian_conditional(p.covariance(length), full_operator(obs), y.reshape(-1), torch.tensor(0.01))
    assert torch.allclose(rts.mean.reshape(-1), mu, atol=1e-7)
    sd_post = P.diagonal().sqrt()
    s = Section("assimilation", f"posterior trajectories vs the RTS smoother ({size} points, L = {length}, "
                f"2 sensors every 4th state, noise 0.1)",
                ["guidance", "prior", "max_mean_err_sd", "rms_mean_err_sd", "var_ratio_min", "var_ratio_max",
                 "cover50", "cover90", "nfe", "seconds"],
                goal="MMPS on the exact score: errors within sampling noise; composed scores: the composition's bias")
    se = 1.0 / math.sqrt(n)
    s.notes.append(f"{n} PF-ODE samples (dopri5, rtol = atol = 1e-5); sampling noise: mean error sd {se:.3f} "
                   f"posterior sds, variance ratio sd {math.sqrt(2 / (n - 1)):.3f}; coverage of the one true "
                   f"trajectory over its {length * size} values")
    exact = ExactScore(p, sde)
    configs = [("mmps", "exact", None), ("mmps", "W=3", 3), ("mmps", "W=5", 5), ("mmps", "W=7", 7),
               ("dps", "exact", None), ("dps gamma=1", "exact", None)]
    for guidance, label, w in configs:
        prior = exact if w is None else MarkovBlanketScore(exact, w)
        if guidance == "mmps":
            guided = MMPSGuidance(prior, sde, obs, y, 0.1, cg_steps=6)
        else:
            guided = DPSGuidance(prior, sde, obs, y, 0.1, inflation=1.0 if "gamma" in guidance else None)
        t0 = time.perf_counter()
        res = sd.sample(guided, sde, (n, length, 1, size), "ode", generator=torch.Generator().manual_seed(0),
                        dtype=F64, progress=False, return_result=True)
        sec = time.perf_counter() - t0
        x = res.x.flatten(1)
        err = (x.mean(0) - mu) / sd_post
        ratio = x.var(0) / P.diagonal()
        cov = coverage(x.numpy(), truth.flatten().numpy())
        s.rows.append({"guidance": guidance, "prior": label, "max_mean_err_sd": float(err.abs().max()),
                       "rms_mean_err_sd": float(err.pow(2).mean().sqrt()), "var_ratio_min": float(ratio.min()),
                       "var_ratio_max": float(ratio.max()), "cover50": float(cov[0]), "cover90": float(cov[1]),
                       "nfe": res.nfe, "seconds": sec})
    # the exact posterior's own coverage of this truth, for reference
    ref = (mu + sd_post * torch.randn(n, mu.numel(), dtype=F64, generator=torch.Generator().manual_seed(9))).numpy()
    cov = coverage(ref, truth.flatten().numpy())
    s.notes.append(f"the exact posterior's marginal samples cover this truth at {cov[0]:.3f} / {cov[1]:.3f}")
    return s


# ---------------------------------------------------------------------- emulation
def emulation(size: int, length: int, n: int) -> Section:
    sde = sd.VPSDE()
    p = system(size)
    exact = ExactScore(p, sde)
    var = p.lag_covariance(0).diagonal()
    lag1 = p.lag_covariance(1).diagonal()
    s = Section("emulation", f"joint vs autoregressive emulation, {length} states of {size} points, exact window scores",
                ["method", "lead", "var_ratio", "lag1_ratio", "spectrum_err", "window_evals_per_state", "seconds"],
                goal="ratios 1 within sampling noise at every lead time")
    sd_ratio = math.sqrt(2.0 / n)
    s.notes.append("spectrum_err: mean over Fourier modes m of |ln(mean |x_hat_m|^2 / lambda_m)| at that lead time "
                   f"(sampling noise about {math.sqrt(2.0 / n):.3f} per mode)")
    s.notes.append(f"{n} trajectories; ratios averaged over the {size} points (sampling sd of one point's variance "
                   f"ratio {sd_ratio:.3f}); window evaluations counted as score calls x windows per call")
    runs = []
    for w in (3, 5):
        t0 = time.perf_counter()
        res = sd.sample(MarkovBlanketScore(exact, w), sde, (n, length, 1, size), "ode",
                        generator=torch.Generator().manual_seed(1), dtype=F64, progress=False, return_result=True)
        runs.append((f"joint W={w}", res.x[:, :, 0], res.nfe * (length - w + 1) / length, time.perf_counter() - t0))
    t0 = time.perf_counter()
    x_past = p.sample(n, 1, seed=7)[:, :, None]
    calls = []

    def counted(x, t):
        calls.append(1)
        return exact(x, t)

    out = autoregressive_rollout(counted, sde, x_past, length, window=3, noise_std=1e-3, cg_steps=8,
                                 generator=torch.Generator().manual_seed(2), rtol=1e-4, atol=1e-4)
    runs.append(("autoregressive W=3 (p=1, m=2)", out[:, :, 0], len(calls) / (length - 1), time.perf_counter() - t0))
    lam = p.spectrum()                                                   # [size // 2 + 1]
    for name, x, per_state, sec in runs:
        for lead in sorted({1, length // 4, length // 2, length - 1}):
            v = (x[:, lead] ** 2).mean(0) / var
            c1 = (x[:, lead] * x[:, lead - 1]).mean(0) / lag1
            power = (torch.fft.rfft(x[:, lead], norm="ortho").abs() ** 2).mean(0)
            spec = float((power / lam).log().abs().mean())          # E|x_hat_m|^2 = lambda_m
            s.rows.append({"method": name, "lead": lead, "var_ratio": float(v.mean()), "lag1_ratio": float(c1.mean()),
                           "spectrum_err": spec, "window_evals_per_state": per_state, "seconds": sec})
    s.notes.append("autoregressive window evaluations: forward passes of the window score per new state "
                   "(each MMPS call adds cg_steps + 1 backward passes)")
    return s


# ---------------------------------------------------------------------- trained window models
def unit_system(size: int) -> AR1Field:
    """The system of :func:`system` rescaled to unit marginal variance per point (what a model trains on)."""
    var0 = float(system(size).lag_covariance(0).diagonal().mean())
    return AR1Field(size, 1, slope=2.0, amplitude=1.0 / var0, tau=0.5, kappa=0.002, dt=0.2)


def window_problem(size: int, length: int, seed: int, noise: float = 0.2):
    """A truth of the unit-variance system and its observations: 4 point sensors every 2nd state."""
    p = unit_system(size)
    sites = torch.arange(0, size, size // 4)
    sensors = SparseSensors(torch.stack([torch.zeros_like(sites), sites], 1), (1, size))
    obs = StateObservation(sensors, every_nth(length, 2), length, (1, size))
    truth = p.sample(1, length, seed=seed)[:, :, None]
    g = torch.Generator().manual_seed(seed + 100)
    a_truth = obs(truth)[0]
    y = a_truth + noise * torch.randn(a_truth.shape, dtype=F64, generator=g)
    return p, obs, truth, y


def window_model(size: int, steps: int, n_post: int, truths: int, n_train: int, sampler: dict,
                 cg_steps: int, configs: list[tuple[str, str]], safeguard: bool = True) -> Section:
    """Window models trained on the unit-variance AR(1) system, in two layouts, against the exact answers."""
    sde = sd.VPSDE()
    p = unit_system(size)
    w, length, noise = 5, 8, 0.2
    x = p.sample(n_train, 16, seed=0, dtype=torch.float32)[:, :, None]          # training trajectories
    s = Section("window_model", f"trained W = {w} window scores on the AR(1) system ({size} points, unit variance), "
                f"{steps} steps, channels vs axis layout (MMPS safeguard {safeguard})",
                ["model", "params", "train_s", "err_t0.01", "err_t0.1", "err_t0.5", "max_mean_err_sd",
                 "var_ratio", "var_ratio_median", "cover50", "cover90", "cover50_se", "nfe", "sample_s"],
                goal="posterior coverage of the truth 0.5 / 0.9 within binomial tolerance (as the exact posterior)")
    exact = ExactScore(p, sde)
    # the reference: the RTS smoother of every truth, and its own coverage by marginal samples
    cases = []
    F, Q, P0 = p.state_space()
    for k in range(truths):
        _, obs, truth, y = window_problem(size, length, seed=20 + k, noise=noise)
        rts = kalman_smoother(F, Q, P0, length, obs.linear_observations(y, noise))
        cases.append((obs, truth, y, rts.mean.reshape(-1), rts.std.reshape(-1)))

    def assess(label: str, window_score, params: int, train_s: float, errs: dict) -> None:
        hits, mean_err, ratios, medians, nfe = [], [], [], [], 0
        t0 = time.perf_counter()
        for k, (obs, truth, y, mu, sd_post) in enumerate(cases):
            if window_score is None:                                   # the exact posterior's marginals
                post = mu + sd_post * torch.randn(n_post, mu.numel(), dtype=F64,
                                                  generator=torch.Generator().manual_seed(k))
            else:
                guided = MMPSGuidance(MarkovBlanketScore(window_score, w), sde, obs, y, noise, cg_steps=cg_steps,
                                      safeguard=safeguard)
                res = sd.sample(guided, sde, (n_post, length, 1, size), generator=torch.Generator().manual_seed(k),
                                dtype=F64, progress=False, return_result=True, **sampler)
                post, nfe = res.x.flatten(1), max(nfe, res.nfe)
            hits.append(coverage(post.numpy(), truth.flatten().numpy()))
            mean_err.append(((post.mean(0) - mu) / sd_post).abs().max().item())
            ratios.append((post.var(0) / sd_post ** 2).mean().item())
            medians.append((post.var(0) / sd_post ** 2).median().item())
        hits = np.asarray(hits)
        s.rows.append({"model": label, "params": params, "train_s": train_s, **errs,
                       "max_mean_err_sd": float(np.mean(mean_err)), "var_ratio": float(np.mean(ratios)),
                       "var_ratio_median": float(np.median(medians)),
                       "cover50": float(hits[:, 0].mean()), "cover90": float(hits[:, 1].mean()),
                       "cover50_se": float(hits[:, 0].std(ddof=1) / math.sqrt(len(hits))),
                       "cover90_se": float(hits[:, 1].std(ddof=1) / math.sqrt(len(hits))),
                       "nfe": nfe, "sample_s": time.perf_counter() - t0})

    def score_errors(window_score) -> dict:
        xw = p.sample(500, w, seed=9)[:, :, None]
        g = torch.Generator().manual_seed(3)
        out = {}
        with torch.no_grad():
            for t in (0.01, 0.1, 0.5):
                tt = torch.full((500,), t, dtype=F64)
                c = sde.coefficients(tt)
                x_t = c.alpha[0] * xw + c.sigma[0] * torch.randn(xw.shape, dtype=F64, generator=g)
                e = exact(x_t, tt)
                out[f"err_t{t}"] = float(((window_score(x_t, tt) - e).pow(2).sum() / e.pow(2).sum()).sqrt())
        return out

    assess("exact posterior (RTS)", None, 0, 0.0, {})
    assess("exact window score", exact, 0, 0.0, score_errors(exact))
    for layout, prediction in configs:
        torch.manual_seed(0)
        if layout == "channels":
            net = sd.UNet(w, 1, periodic=True, base_channels=32, channel_mults=(1, 2))
        else:
            net = sd.UNet(1, 2, periodic=True, base_channels=32, channel_mults=(1,))
        model = sd.ScoreModel(net, sde, prediction=prediction)
        t0 = time.perf_counter()
        res = sd.train(model, window_fields(x, w, layout=layout),
                       sd.TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup_steps=min(200, steps),
                                      lr_decay="cosine", ema_decay=0.995, log_every=max(1, steps // 10), seed=0),
                       progress=False)
        train_s = time.perf_counter() - t0
        trained = (StackedWindowScore if layout == "channels" else AxisWindowScore)(res.model.eval().score)

        def window64(xw, t, trained=trained):
            return trained(xw.float(), t.float()).double()

        assess(f"{layout}, {prediction}", window64, sum(q.numel() for q in net.parameters()), train_s,
               score_errors(window64))
    n_values = length * size
    s.notes.append(f"{n_train} training trajectories of 16 states ({n_train * 12} windows, standardised system: unit "
                   f"variance per point); {truths} held-out truths of {length} states, 4 point sensors every 2nd "
                   f"state, noise sd {noise}; {n_post} MMPS posterior samples per truth ({cg_steps} CG steps, "
                   f"sampler {sampler}); err_t: relative L2 error of the window score against the exact one on "
                   f"500 noised windows")
    s.notes.append(f"coverage: mean over truths of the fraction of the {n_values} values inside the central "
                   f"interval; cover_se: its standard error across the independent truths (the binomial sd of "
                   f"{truths * n_values} independent values would be {math.sqrt(0.25 / (truths * n_values)):.3f} at 50 %, "
                   f"{math.sqrt(0.09 / (truths * n_values)):.3f} at 90 %, a lower bound: values within a trajectory "
                   f"are correlated); max_mean_err_sd: the largest error of the posterior mean in posterior sds "
                   f"(mean over truths; sampling noise alone about {math.sqrt(2 * math.log(n_values)) / math.sqrt(n_post):.2f}); "
                   f"var_ratio: posterior variance over the smoother's, mean over values and truths (median: the median over "
                   f"values, then over truths)")
    return s


# ---------------------------------------------------------------------- what the guidance needs of a model
def parameterisation(size: int, n_post: int, truths: int) -> Section:
    """MMPS on the exact window score plus a small smooth error, put in eps-hat or in x0-hat.

    A network's error enters x0-hat = (x_t - sigma_t eps-hat) / alpha_t multiplied by sigma_t / alpha_t
    when it predicts eps, and as it is when it predicts x0 (or v: x0-hat = alpha_t x_t - sigma_t v-hat).
    """
    sde = sd.VPSDE()
    p = unit_system(size)
    w, length, noise = 5, 8, 0.2
    exact = ExactScore(p, sde)
    g = torch.Generator().manual_seed(0)
    d = w * size
    mix = torch.randn(d, d, dtype=F64, generator=g) / math.sqrt(d)

    def perturbed(eta: float, where: str):
        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            c = sde.coefficients(t.to(F64))
            shape = (-1,) + (1,) * (x.ndim - 1)
            sig, al = c.sigma.reshape(shape), c.alpha.reshape(shape)
            err = torch.tanh(x.flatten(1) @ mix).reshape(x.shape)       # smooth, O(1), Jacobian not symmetric
            if where == "eps":                                          # eps-hat = eps* + eta err
                return exact(x, t) - eta * err / sig
            return exact(x, t) + al * eta * err / sig ** 2              # x0-hat = x0* + eta err
        return score

    s = Section("parameterisation", "MMPS on the exact AR(1) window score with an error of size eta in eps-hat or "
                "in x0-hat", ["error_in", "eta", "var_ratio", "var_ratio_median", "cover50", "cover90"],
                goal="an error of a trained network's size leaves the posterior near the exact one")
    F, Q, P0 = p.state_space()
    for where in ("eps", "x0"):
        for eta in (0.0, 0.003, 0.01, 0.03):
            hits, ratios, medians = [], [], []
            for k in range(truths):
                _, obs, truth, y = window_problem(size, length, seed=20 + k, noise=noise)
                rts = kalman_smoother(F, Q, P0, length, obs.linear_observations(y, noise))
                guided = MMPSGuidance(MarkovBlanketScore(perturbed(eta, where), w), sde, obs, y, noise, cg_steps=6)
                x = sd.sample(guided, sde, (n_post, length, 1, size), "dpmpp_2m", steps=16, dtype=F64,
                              progress=False, generator=torch.Generator().manual_seed(k)).flatten(1)
                hits.append(coverage(x.numpy(), truth.flatten().numpy()))
                r = x.var(0) / rts.std.reshape(-1) ** 2
                ratios.append(float(r.mean()))
                medians.append(float(r.median()))
            cov = np.mean(hits, axis=0)
            s.rows.append({"error_in": where, "eta": eta, "var_ratio": float(np.mean(ratios)),
                           "var_ratio_median": float(np.median(medians)), "cover50": float(cov[0]),
                           "cover90": float(cov[1])})
    s.notes.append(f"the window_model section's problem ({size} points, L = {length}, W = {w}, 4 sensors every 2nd "
                   f"state, noise {noise}); {truths} truths x {n_post} samples (dpmpp_2m 16 steps, 6 CG steps); "
                   f"error eta tanh(M x) with a fixed random M; var_ratio: posterior over exact variance, mean "
                   f"(median) over values")
    s.notes.append("at t = 1 sigma_t / alpha_t = 150 (linear VP, beta 0.1..20): an eps error of 0.003 is an x0-hat "
                   "error of 0.45 prior sds, and the Tweedie covariance (sigma_t^2 / alpha_t) d x0-hat / d x_t "
                   "inherits the error's non-symmetric Jacobian times 150^2")
    return s


# ---------------------------------------------------------------------- Lorenz-96
def _interpolate(obs_times: list[int], sites: np.ndarray, y: np.ndarray, length: int, size: int) -> np.ndarray:
    """Observations y [T, S] at sites (periodic, sorted) linearly interpolated in space, then in time;
    persisted before the first and after the last observed state.  Returns [length, size]."""
    grid = np.arange(size)
    ext_sites = np.concatenate([sites, sites[:1] + size])
    space = np.stack([np.interp(grid, ext_sites, np.concatenate([v, v[:1]])) for v in y])   # [T, size]
    # the sites before the first sensor wrap around
    space[:, grid < sites[0]] = np.stack([np.interp(grid[grid < sites[0]] + size, ext_sites,
                                                    np.concatenate([v, v[:1]])) for v in y])
    return np.stack([np.array([np.interp(k, obs_times, space[:, i]) for i in range(size)]) for k in range(length)])


def lorenz96(steps: int, members: int, truths: int, quick: bool, prediction: str = "v", cg_steps: int = 3,
             sampler_steps: int = 32, safeguard: bool = True) -> Section:
    sde = sd.VPSDE()
    size, w, interval = 40, 5, 0.1
    model_l96 = Lorenz96(size)
    n_train = 64 if quick else 512
    x0 = model_l96.solve(model_l96.initial_state(n_train + truths, seed=0), 10.0)
    states = model_l96.trajectory(x0, 32, interval)                                   # [N, 32, 40]
    train, held = states[:n_train], states[n_train:]
    mean, std = float(train.mean()), float(train.std())
    z = ((train - mean) / std).float()[:, :, None]
    torch.manual_seed(0)
    net = sd.UNet(w, 1, periodic=True, base_channels=32, channel_mults=(1, 2))
    model = sd.ScoreModel(net, sde, prediction=prediction)
    t0 = time.perf_counter()
    res = sd.train(model, window_fields(z, w), sd.TrainConfig(steps=steps, batch_size=64, lr=1e-3, lr_decay="cosine",
                                                              warmup_steps=min(200, steps), ema_decay=0.995, seed=0,
                                                              log_every=max(1, steps // 10)), progress=False)
    train_s = time.perf_counter() - t0
    window = StackedWindowScore(res.model.eval().score)                    # the EMA weights
    # the prior alone: single windows and trajectories sampled jointly, against the attractor's statistics

    def lag1(x: torch.Tensor) -> float:
        a = x - mean
        return float((a[:, 1:] * a[:, :-1]).mean() / (a * a).mean())

    n_prior = 16 if quick else 64
    prior_note = []
    for label, length_p, score in (("single windows", w, window), ("joint trajectories of 16 states", 16,
                                                                    MarkovBlanketScore(window, w))):
        prior = sd.sample(score, sde, (n_prior, length_p, 1, size), "dpmpp_2m", steps=sampler_steps,
                          generator=torch.Generator().manual_seed(0), progress=False)
        prior = mean + std * prior[:, :, 0].double()
        prior_note.append(f"{label}: std {float(prior.std()):.2f}, lag-1 correlation {lag1(prior):.2f}")
    prior_note = (f"prior alone (dpmpp_2m {sampler_steps} steps, {n_prior} samples; training data: std {std:.2f}, "
                  f"lag-1 correlation {lag1(train):.2f}): " + "; ".join(prior_note))
    length = 16
    obs_times = list(range(0, 10, 2))
    sites = np.arange(0, size, 4)
    sensors = SparseSensors(torch.stack([torch.zeros(len(sites), dtype=torch.long), torch.from_numpy(sites)], 1),
                            (1, size))
    obs = StateObservation(sensors, obs_times, length, (1, size))
    noise = 0.5
    climatology = train.reshape(-1, size)
    s = Section("lorenz96", f"Lorenz-96 (N = 40, F = 8, interval {interval}): assimilation then forecast, "
                f"{steps}-step W = {w} window model ({prediction}-prediction, MMPS safeguard {safeguard})",
                ["lead", "state", "crps_model", "ssr_model", "crps_interp", "crps_climatology"],
                goal="model CRPS below both baselines over the observed window; spread-skill ratio near 1")
    per_lead = {k: {"m": [], "ssr": [], "i": [], "c": []} for k in range(length)}
    g = torch.Generator().manual_seed(11)
    t1 = time.perf_counter()
    for j in range(truths):
        truth = held[j, :length]
        y = obs(truth[None, :, None])[0] + noise * torch.randn(len(obs_times), len(sites), dtype=F64, generator=g)
        guided = MMPSGuidance(MarkovBlanketScore(window, w), sde, obs, ((y - mean) / std).float(), noise / std,
                              cg_steps=cg_steps, safeguard=safeguard)
        post = sd.sample(guided, sde, (members, length, 1, size), "dpmpp_2m", steps=sampler_steps,
                         generator=torch.Generator().manual_seed(j), progress=False)
        ens = (mean + std * post[:, :, 0].double()).numpy()                                # [M, L, 40]
        interp = _interpolate(obs_times, sites, y.numpy(), length, size)
        clim = climatology[torch.randint(0, climatology.shape[0], (members,), generator=g)].numpy()
        for k in range(length):
            tk = truth[k].numpy()
            per_lead[k]["m"].append(crps_ensemble(ens[:, k], tk))
            per_lead[k]["ssr"].append(spread_skill_ratio(ens[:, k], tk))
            per_lead[k]["i"].append(float(np.abs(interp[k] - tk).mean()))
            per_lead[k]["c"].append(crps_ensemble(clim, tk))
    for k in range(length):
        d = per_lead[k]
        kind = "observed" if k in obs_times else ("forecast" if k > obs_times[-1] else "between")
        s.rows.append({"lead": k, "state": kind, "crps_model": float(np.mean(d["m"])),
                       "ssr_model": float(np.mean(d["ssr"])), "crps_interp": float(np.mean(d["i"])),
                       "crps_climatology": float(np.mean(d["c"]))})
    s.notes.append(f"{n_train} training trajectories of 32 states ({n_train * 28} windows), {steps} steps in "
                   f"{train_s:.0f} s; {truths} held-out truths of {length} states, {len(sites)} sensors (every 4th "
                   f"site) at states {obs_times}, noise sd {noise}; {members} MMPS members (dpmpp_2m, {sampler_steps} steps, "
                   f"{cg_steps} CG steps) per truth in {time.perf_counter() - t1:.0f} s; states {obs_times[-1] + 1}.. are "
                   f"forecasts; interpolation: linear in periodic space and in time, persisted after the last "
                   f"observation (its CRPS is its mean absolute error)")
    s.notes.append(prior_note)
    return s


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--size", type=int, default=8, help="grid points of the 1-D field")
    p.add_argument("--samples", type=int, default=2000, help="posterior / emulation samples")
    p.add_argument("--length", type=int, default=32, help="states of the emulated trajectories")
    p.add_argument("--train-steps", type=int, default=0, help="train window models for this many steps (0: skip)")
    p.add_argument("--wm-samples", type=int, default=64, help="posterior samples per truth (window_model)")
    p.add_argument("--wm-truths", type=int, default=16, help="held-out truths (window_model)")
    p.add_argument("--wm-steps", type=int, default=32, help="DPM-Solver++ 2M steps of the posterior (window_model)")
    p.add_argument("--wm-configs", default="channels:eps,channels:v,axis:v",
                   help="window models to train, LAYOUT:PREDICTION[,...] (window_model)")
    p.add_argument("--wm-cg", type=int, default=6, help="MMPS conjugate-gradient steps (window_model)")
    p.add_argument("--l96-steps", type=int, default=0, help="train the Lorenz-96 window model this long (0: skip)")
    p.add_argument("--l96-prediction", choices=["eps", "x0", "v"], default="v",
                   help="what the Lorenz-96 window network predicts (MMPS needs an accurate x0-hat: see the docs)")
    p.add_argument("--l96-cg", type=int, default=3, help="MMPS conjugate-gradient steps (lorenz96)")
    p.add_argument("--l96-sampler-steps", type=int, default=32, help="DPM-Solver++ 2M steps (lorenz96)")
    p.add_argument("--no-safeguard", action="store_true",
                   help="MMPS without its CG curvature floor (window_model, lorenz96)")
    p.add_argument("--sections", default="composition,assimilation,emulation,window_model,parameterisation,lorenz96")
    args = parse_script_args(p)
    n = 100 if args.quick else args.samples
    wanted = set(args.sections.split(","))
    sections = []
    info = machine(torch.device(args.device))
    runs = {
        "composition": lambda: composition(args.size, 16, 200 if args.quick else 2000),
        "assimilation": lambda: assimilation(args.size, 10, n),
        "emulation": lambda: emulation(args.size, 8 if args.quick else args.length, n),
        "window_model": lambda: window_model(
            16, 20 if args.quick else args.train_steps, 24 if args.quick else args.wm_samples,
            2 if args.quick else args.wm_truths, 100 if args.quick else 2000,
            {"method": "dpmpp_2m", "steps": 8 if args.quick else args.wm_steps}, args.wm_cg,
            [tuple(c.split(":")) for c in args.wm_configs.split(",")], safeguard=not args.no_safeguard),
        "parameterisation": lambda: parameterisation(16, 24 if args.quick else 64, 1 if args.quick else 2),
        "lorenz96": lambda: lorenz96(20 if args.quick else args.l96_steps, 8 if args.quick else 32,
                                     2 if args.quick else 8, args.quick, prediction=args.l96_prediction,
                                     cg_steps=args.l96_cg, sampler_steps=8 if args.quick else args.l96_sampler_steps,
                                     safeguard=not args.no_safeguard),
    }
    for name, run in runs.items():
        if name not in wanted or (name == "window_model" and args.train_steps <= 0) or (
                name == "lorenz96" and args.l96_steps <= 0):
            continue
        t0 = time.perf_counter()
        section = run()
        section.seconds = time.perf_counter() - t0
        sections.append(section)
    for s in sections:
        s.notes.append(f"machine: {info} (seconds: wall clock)")
    report(sections, args.json)


if __name__ == "__main__":
    main()
