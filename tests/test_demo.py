"""``scidiff demo --fast``: the run folder it writes is complete, readable and self-consistent.

The demo's numbers are recomputed here from its own files: the exact bits/dim of the
held-out Gaussian random fields from ``GaussianRandomField.log_prob`` on ``data/heldout.nc``,
the model's from ``loglik.nc`` (bits/dim = -log p / (D ln 2)), and the gap between them.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from scidiff.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("demo") / "scidiff-demo"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["demo", "--fast", "--out", str(folder), "--seed", "3", "--no-progress"])
    assert rc == 0
    return folder, out.getvalue()


def test_last_lines_say_where_the_outputs_are(demo: tuple[Path, str]) -> None:
    folder, printed = demo
    last = printed.strip().splitlines()[-2:]
    assert str(folder.resolve()) in last[0]
    assert str((folder / "report.md").resolve()) in last[1]


def test_run_folder_holds_every_output(demo: tuple[Path, str]) -> None:
    folder, _ = demo
    for name in ("config.toml", "run.json", "latest", "samples.nc", "loglik.nc", "report.md", "metrics.json",
                 "data/train.nc", "data/heldout.nc"):
        assert (folder / name).is_file(), name
    for name in ("samples", "spectra", "histograms", "likelihood"):
        png = folder / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
        import matplotlib.image

        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert float(np.std(image)) > 0.01  # not a blank canvas


def test_samples_are_fields_like_the_training_data(demo: tuple[Path, str]) -> None:
    folder, _ = demo
    metrics = json.loads((folder / "metrics.json").read_text())
    size, n = metrics["config"]["size"], metrics["config"]["n_samples"]
    with xr.open_dataset(folder / "samples.nc") as ds, xr.open_dataset(folder / "data" / "train.nc") as train:
        (var,) = [v for v in train.data_vars if train[v].ndim == 3]
        assert list(ds.data_vars) == [var]
        assert ds[var].dims == train[var].dims
        assert ds[var].shape == (n, size, size)
        assert ds[var].attrs == train[var].attrs
        for dim in train[var].dims[1:]:
            if dim in train.coords:
                np.testing.assert_array_equal(ds[dim].values, train[dim].values)
        assert ds.attrs["method"] == "ode" and int(ds.attrs["nfe"]) == metrics["sample_nfe"] > 0
        assert int(ds.attrs["seed"]) == 3
        assert np.isfinite(ds[var].values).all()


def test_report_numbers_are_recomputable(demo: tuple[Path, str]) -> None:
    from scidiff import simulators

    folder, _ = demo
    metrics = json.loads((folder / "metrics.json").read_text())
    cfg = metrics["config"]
    d = cfg["size"] ** 2
    with xr.open_dataset(folder / "data" / "heldout.nc") as ds:
        (var,) = [v for v in ds.data_vars if ds[v].ndim == 3]
        x = torch.from_numpy(ds[var].values).double()
        np.testing.assert_array_equal(ds["slope"].values, cfg["slope"])
        amplitude = ds["amplitude"].values  # per field; A of P(k) = A |k|^-slope
    with xr.open_dataset(folder / "loglik.nc") as ll:
        log_prob = ll["log_prob"].values
        bpd = ll["bits_per_dim"].values
        assert ll["log_prob"].attrs["units"] == "nat"
    assert log_prob.shape == (cfg["n_heldout"],) and np.isfinite(log_prob).all()
    np.testing.assert_allclose(bpd, -log_prob / (d * math.log(2.0)), rtol=1e-12)
    grf = simulators.GaussianRandomField(cfg["size"], 2)
    log_p = grf.log_prob(x, slope=torch.full((x.shape[0],), cfg["slope"], dtype=torch.float64),
                         amplitude=torch.from_numpy(amplitude).double())
    bpd_exact = -log_p.numpy() / (d * math.log(2.0))
    assert metrics["bpd_exact"] == pytest.approx(float(bpd_exact.mean()), rel=1e-9)
    assert metrics["bpd_model"] == pytest.approx(float(bpd.mean()), rel=1e-9)
    assert metrics["gap_bpd"] == pytest.approx(float((bpd - bpd_exact).mean()), rel=1e-9, abs=1e-12)
    assert metrics["gap_nats"] == pytest.approx(metrics["gap_bpd"] * d * math.log(2.0), rel=1e-9, abs=1e-9)
    report = (folder / "report.md").read_text()
    assert f"{metrics['gap_bpd']:+.4f}" in report
    assert f"{metrics['bpd_exact']:.4f}" in report
    total = re.search(r"\*\*total\*\* \| \*\*([0-9.]+)\*\*", report)
    assert total is not None and float(total.group(1)) > 0


def test_training_follows_the_demo_configuration(demo: tuple[Path, str]) -> None:
    folder, _ = demo
    metrics = json.loads((folder / "metrics.json").read_text())
    cfg = metrics["config"]
    (checkpoint,) = (folder / "checkpoints").glob("*/checkpoint.json")
    stored = json.loads(checkpoint.read_text())
    for key in ("steps", "batch_size", "lr", "warmup_steps", "ema_decay", "grad_clip", "weighting", "time_sampling"):
        assert stored["train_config"][key] == cfg[key], key
    assert stored["prediction"] == cfg["prediction"] == metrics["prediction"]
    assert stored["net"]["kwargs"]["channel_mults"] == cfg["channel_mults"]


def test_demo_run_folder_serves_the_other_commands(demo: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = demo
    out = tmp_path / "more.csv"
    assert main(["loglik", str(folder), "--data", str(folder / "data" / "heldout.nc"), "--n", "2",
                 "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out), "--no-progress"]) == 0
    table = np.genfromtxt(out, delimiter=",", names=True, comments="#")
    assert table.shape == (2,) and np.isfinite(table["log_prob"]).all()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--fast", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "not a scidiff demo folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_refuses_a_training_run_and_leaves_it_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "run.json").write_text('{"format": "scidiff-run"}')
    (run / "checkpoints" / "step_00000010" / "weights.bin").write_bytes(b"hours of training")
    assert main(["demo", "--fast", "--out", str(run), "--no-progress"]) == 2
    assert "holds a scidiff training run" in capsys.readouterr().err
    assert (run / "checkpoints" / "step_00000010" / "weights.bin").read_bytes() == b"hours of training"
    assert (run / "run.json").is_file() and not (run / "demo.json").exists()


@pytest.mark.parametrize("lock", ["lock", "demo.lock"])
def test_demo_refuses_a_folder_another_process_is_writing(tmp_path: Path, lock: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A previous demo's folder is not emptied while a training (lock) or another demo (demo.lock) holds it."""
    from scidiff.runs import Run

    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "demo.json").write_text('{"format": "scidiff-demo", "version": 1}\n')
    (folder / "samples.nc").write_bytes(b"being written")
    with Run.lock(folder, name=lock):  # held through an OS lock, as by another process
        assert main(["demo", "--fast", "--out", str(folder), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert str(os.getpid()) in err and ("wait for it to finish" in err)
        assert (folder / "samples.nc").read_bytes() == b"being written"
    assert not (folder / lock).exists()
