"""The benchmark suite: ``benchmarks/run.py --quick`` end to end, and the maths the benchmarks rely on.

The quick run is exercised in a subprocess (it must finish well within 3 minutes on a CPU);
its JSON must hold every section with finite figures and the evaluation counts each sampler
promises.  The reference implementations inside the benchmarks (the score_sde-style
likelihood loop, the GRF bits/dim with the normalisation's log-Jacobian) are checked against
closed forms in float64.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

SECTIONS = ("overhead", "peer", "likelihood", "trace", "accuracy", "quality", "throughput")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    return [v for x in obj for v in _numbers(x)]


@pytest.mark.slow
def test_quick_run_has_every_section_with_finite_figures(quick_run: dict) -> None:
    sections = quick_run["sections"]
    assert set(sections) == set(SECTIONS)
    for name, sec in sections.items():
        if sec["status"] == "skipped":
            # only the peer comparison may be skipped, and only for want of diffusers
            assert name == "peer" and "diffusers" in " ".join(sec["notes"])
            continue
        assert sec["status"] == "ok" and sec["rows"], name
        for row in sec["rows"]:
            assert set(sec["columns"]) <= set(row), (name, row)
        numbers = _numbers(sec["rows"])
        assert numbers and all(math.isfinite(v) for v in numbers), name
    m = quick_run["machine"]
    assert m["cpu_model"] and m["torch"] == torch.__version__ and m["torch_threads"] >= 1
    assert len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3


@pytest.mark.slow
def test_quick_run_counts_the_promised_evaluations(quick_run: dict) -> None:
    rows = quick_run["sections"]["overhead"]["rows"]
    steps = 8  # the quick run's step budget
    expected = {
        "ancestral": steps,
        "euler_maruyama": steps + 1,
        "pc (1 corrector)": 2 * (steps // 2) + 1,
        "ode rk4 (fixed)": 4 * (steps // 4) + 1,
        "ode euler (fixed)": steps + 1,
        "bare loop (floor)": steps,
    }
    for row in rows:
        if row["sampler"] in expected:
            assert row["nfe"] == expected[row["sampler"]], row
        assert row["ratio"] > 0 and row["ratio_min"] <= row["ratio"]
        # the overhead decomposition: 1 + (sampler's own time per evaluation) / (one forward)
        assert row["ratio_from_own"] == pytest.approx(1.0 + row["own_us_per_nfe"] / (1e3 * row["fwd_ms"]), rel=1e-9)
        assert row["pass"] == (row["ratio_from_own"] <= row["goal"])
    for row in quick_run["sections"]["trace"]["rows"]:
        assert row["exact_evals"] == pytest.approx(row["exact_per_D"] * row["D"], rel=1e-9)
    lik = quick_run["sections"]["likelihood"]["rows"]
    ours = [r for r in lik if r["impl"].startswith("scidiff")]
    base = [r for r in lik if r["impl"].startswith("score_sde")]
    for a, b in zip(ours, base):
        assert a["speedup"] == pytest.approx(b["time_s"] / a["time_s"], rel=1e-9)


def _isotropic_gaussian_score(v0: float):
    """Score of x_t when x_0 ~ N(0, v0 I) under the VP-SDE: -x / (alpha_t^2 v0 + sigma_t^2)."""
    import scidiff as sd

    sde = sd.VPSDE()

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        coef = sde.coefficients(t).like(x)
        alpha, sigma = coef.alpha, coef.sigma
        return -x / (alpha**2 * v0 + sigma**2)

    return sde, score


def test_scoresde_baseline_matches_closed_form_density() -> None:
    """For x_0 ~ N(0, v0 I) the Jacobian of the score is a multiple of I, so a Rademacher probe
    gives the exact trace and the baseline's log p must equal log N(x; 0, v0 I) up to the solver
    tolerance (and log p_{t_min} vs log p_0, O(t_min))."""
    from bench_likelihood import rademacher_like_library, scoresde_log_likelihood

    v0 = 0.25
    sde, score = _isotropic_gaussian_score(v0)
    gen = torch.Generator().manual_seed(0)
    x = math.sqrt(v0) * torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    probe = rademacher_like_library(x, 7)
    assert set(probe.unique().tolist()) <= {-1.0, 1.0}
    log_p, nfe = scoresde_log_likelihood(score, sde, x, probe, rtol=1e-8, atol=1e-8)
    d = x[0].numel()
    exact = -0.5 * x.flatten(1).pow(2).sum(1) / v0 - 0.5 * d * math.log(2 * math.pi * v0)
    # the flow starts at t_min = 1e-5, where the marginal variance differs from v0 by ~beta_min t_min (1 - v0)
    assert nfe > 10
    torch.testing.assert_close(log_p, exact, atol=1e-3, rtol=0)


def test_grf_bits_per_dim_account_for_the_normalisation() -> None:
    """GRFData.exact_bpd(z) is -log N(std z; 0, C) / (D ln 2) with the dense covariance, and the
    log-Jacobian turns a density of z into one of x: log p_x(x) = log p_z(z) + log|dz/dx|."""
    from bench_accuracy import GRFData

    data = GRFData(4)
    z = data.held_out(5, seed=3).double()
    x = (z * data.std).flatten(1)
    cov = data.grf.covariance()
    dist = torch.distributions.MultivariateNormal(torch.zeros(data.d, dtype=torch.float64), covariance_matrix=cov)
    expected = -dist.log_prob(x) / (data.d * math.log(2.0))
    torch.testing.assert_close(data.exact_bpd(z), expected, rtol=1e-10, atol=1e-10)
    # the density of z = x / std is N(0, C / std^2); adding log|dz/dx| = -D log std gives log p(x)
    dist_z = torch.distributions.MultivariateNormal(torch.zeros(data.d, dtype=torch.float64),
                                                    covariance_matrix=cov / data.std**2)
    log_px = dist_z.log_prob(z.flatten(1)) + data.log_det
    torch.testing.assert_close(log_px, dist.log_prob(x), rtol=1e-10, atol=1e-10)
    # the normalisation makes the pointwise variance one
    assert float(torch.diagonal(cov).mean()) / data.std**2 == pytest.approx(1.0, rel=1e-12)
