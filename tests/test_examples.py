"""Every script in examples/ runs end to end at a tiny size and writes what its docstring promises.

Each script runs in a subprocess: these are marked ``slow`` (``pytest -m "not slow"`` skips
them; the default run keeps them).

These are smoke tests of the scripts (tiny budgets, so no accuracy is asserted of the trained
models); the exact reference quantities the scripts print are checked where they have a
closed-form meaning.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args, "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_every_example_has_a_test():
    tested = {"emulate_at_new_parameters.py", "parameter_inference.py", "sensor_reconstruction.py",
              "load_your_own_file.py", "likelihood_ranking.py", "kolmogorov_assimilation.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_parameter_inference(tmp_path):
    _run("parameter_inference.py", "--size", "8", "--n-train", "256", "--steps", "20", "--batch-size", "16",
         "--n-test", "3", "--grid-step", "0.5", "--out", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["n_test"] == 3 and len(res["fields"]) == 3 and res["train_steps"] == 20
    for f in res["fields"]:
        # the exact posterior is the reference of the comparison: its ML slope must sit within
        # a few posterior sd of the slope the field was drawn with
        assert _finite(f["ml_exact"], f["ml_model"], f["posterior_sd_model"], f["loglik_gap_at_ml_nats"])
        assert abs(f["ml_exact"] - f["true"]) < 4 * f["posterior_sd_exact"], f
        assert 2.0 <= f["ml_model"] <= 4.0
    assert (tmp_path / "likelihood_curves.png").stat().st_size > 0
    assert (tmp_path / "posteriors.png").stat().st_size > 0
    assert (tmp_path / "model" / "model.pt").is_file()


@pytest.mark.slow
def test_emulate_at_new_parameters(tmp_path):
    _run("emulate_at_new_parameters.py", "--size", "8", "--n-train", "128", "--steps", "20",
         "--sampler-steps", "10", "--n-samples", "8", "--out", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["train_steps"] == 20 and len(res["slopes"]) >= 3
    assert all(_finite(r["fitted_slope_model"]) for r in res["slopes"].values())
    assert (tmp_path / "emulated_spectra.png").stat().st_size > 0


@pytest.mark.slow
def test_sensor_reconstruction(tmp_path):
    _run("sensor_reconstruction.py", "--size", "16", "--n-train", "256", "--max-steps", "20", "--samples", "19",
         "--steps", "10", "--out", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["coverage_model"]) == len(res["levels"]) == len(res["coverage_exact"])
    assert all(0.0 <= c <= 1.0 for c in res["coverage_model"] + res["coverage_exact"])
    assert _finite(res["rmse_model"], res["rmse_exact"], res["mean_std_exact"])
    for name in ("posterior.png", "exact_posterior.png", "calibration.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.slow
def test_load_your_own_file(tmp_path):
    _run("load_your_own_file.py", "--n", "64", "--size", "8", "--steps", "10", "--out", str(tmp_path))
    ds = xr.open_dataset(tmp_path / "ocean_samples.nc", engine="h5netcdf")
    try:
        assert {"sst", "chl"} <= set(ds.data_vars)
        assert ds["sst"].attrs["units"] == "degC"
    finally:
        ds.close()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from scidiff.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, fast=True, progress=False)
    return out


@pytest.mark.slow
def test_likelihood_ranking(tmp_path, demo_run):
    _run("likelihood_ranking.py", "--run", str(demo_run), "--n-calibration", "8", "--n-per-kind", "2",
         "--rtol", "1e-3", "--out", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert _finite(res["threshold_log_prob_nats"], res["spearman_model_vs_exact"])
    assert all(0.0 <= r <= 1.0 for r in res["flag_rate_by_kind"].values())
    lines = (tmp_path / "ranking.csv").read_text().splitlines()
    assert lines[0].startswith("rank,kind,log_prob_nats") and len(lines) > 2


@pytest.mark.slow
def test_kolmogorov_assimilation(tmp_path):
    """The smoke run: simulate, train a few steps, assimilate, score against the baselines, draw."""
    _run("kolmogorov_assimilation.py", "--quick", "--out", str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    rows = res["rows"]
    assert len(rows) == 8 and res["steps"] == 5 and res["observed_states"] == sorted(res["observed_states"])
    assert all(r["state"] == k for k, r in enumerate(rows))
    assert all(_finite(r["crps_model"], r["crps_climatology"], r["mae_interpolation"]) for r in rows)
    assert all(r["crps_model"] >= 0 and r["crps_climatology"] >= 0 for r in rows)
    # states after the last observation are forecasts
    last = max(res["observed_states"])
    assert all(r["forecast"] == (r["state"] > last) for r in rows)
    assert (tmp_path / "assimilation.png").stat().st_size > 0 and (tmp_path / "scores.png").stat().st_size > 0
