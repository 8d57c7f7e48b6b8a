"""Tests of the ``scidiff`` command line on tiny data.

Every command runs in-process through ``scidiff.cli.main``.  Besides the files' layout, the
maths of the data-units pipeline is checked exactly: a run trained for one step with a
learning rate of 1e-12 keeps the UNet's zero-initialised output layer, so its noise
prediction is 0 and its score s = 0.  The probability-flow ODE dx/dt = -beta(t) x / 2 is
then linear, so the model in normalised units z = (x - m) / s_x is exactly

    p(z) = N(0, c^2 I),    c = alpha(t_min) / alpha(1),

and in the data's units log p(x) = log N(z; 0, c^2 I) - D log s_x; the ODE sampler maps
x_1 ~ N(0, I) to z = x_1 / alpha(1) (Tweedie's step at t_min included), so samples in data
units are N(m, (s_x / alpha(1))^2) per value.
"""

from __future__ import annotations

import json
import math
import sys
import subprocess
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from scidiff.cli import build_parser, main

N_FIELDS = 48
SIZE = 8
TINY_NET = ["--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--batch-size", "8"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_fields(path: Path, n: int, size: int, *, seed: int, offset: float = 280.0) -> Path:
    """Smooth periodic fields T(sample, y, x) in kelvin with a parameter ``slope`` per field."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size) * size
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    amp = 1.0 / (1.0 + kk) ** 1.5
    w = rng.standard_normal((n, size, size))
    x = np.fft.ifft2(np.fft.fft2(w) * amp).real * 3.0 + offset
    coords = {
        "x": ("x", np.arange(size) * 0.5, {"units": "km"}),
        "y": ("y", np.arange(size) * 0.5, {"units": "km"}),
    }
    ds = xr.Dataset(
        {
            "T": (("sample", "y", "x"), x, {"units": "K", "long_name": "temperature"}),
            "slope": (("sample",), np.linspace(1.0, 3.0, n), {"units": "1"}),
        },
        coords=coords,
        attrs={"title": "tiny test fields", "institution": "nowhere"},
    )
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def run_cli(*args: str) -> int:
    return main([*args, "--no-progress"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data_file(workdir: Path) -> Path:
    return _write_fields(workdir / "tiny.nc", N_FIELDS, SIZE, seed=0)


@pytest.fixture(scope="module")
def zero_run(workdir: Path, data_file: Path) -> Path:
    """A run whose eps-network still outputs (almost exactly) 0: one step at lr 1e-12, so s = 0."""
    run = workdir / "zero_run"
    rc = run_cli("train", "--data", str(data_file), "--var", "T", "--out", str(run), "--steps", "1",
                 "--lr", "1e-12", "--warmup-steps", "0", "--periodic", "--prediction", "eps", *TINY_NET)
    assert rc == 0
    return run


@pytest.fixture(scope="module")
def cond_run(workdir: Path, data_file: Path) -> Path:
    run = workdir / "cond_run"
    rc = run_cli("train", "--data", str(data_file), "--var", "T", "--cond", "slope", "--out", str(run),
                 "--steps", "2", *TINY_NET)
    assert rc == 0
    return run


def _normaliser_stats(data_file: Path) -> tuple[float, float]:
    """Mean and population std of T over the training split (val_fraction 0.1, seed 0), computed here."""
    from scidiff.data import split_indices

    with xr.open_dataset(data_file) as ds:
        values = ds["T"].values
    train, _ = split_indices(values.shape[0], val_fraction=0.1, seed=0)
    sel = values[train]
    return float(sel.mean()), float(sel.std())


def _alpha(t: float) -> float:
    """alpha(t) of the default linear VP schedule (beta_min 0.1, beta_max 20)."""
    return math.exp(-0.25 * (20.0 - 0.1) * t**2 - 0.5 * 0.1 * t)


# ---- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", [[], ["demo"], ["data"], ["data", "make"], ["data", "info"], ["data", "list"], ["train"], ["sample"],
                ["loglik"], ["evaluate"]],
)
def test_every_command_explains_itself(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: scidiff" in out
    assert len(out.splitlines()) > 5


def test_parser_lists_all_subcommands() -> None:
    text = build_parser().format_help()
    for name in ("demo", "data", "train", "sample", "loglik", "evaluate"):
        assert name in text


# ---- data ----------------------------------------------------------------------------------------
def test_data_info_describes_the_file(data_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("data", "info", str(data_file)) == 0
    out = capsys.readouterr().out
    assert f"sample={N_FIELDS}" in out and f"y={SIZE}" in out
    assert "T" in out and "[K]" in out and "temperature" in out
    assert "scidiff train --data" in out and "--var T" in out and "--cond slope" in out


def test_data_info_reads_plain_hdf5(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    path = workdir / "plain.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("fields/rho", data=np.zeros((3, 4, 4)))
    assert run_cli("data", "info", str(path)) == 0
    out = capsys.readouterr().out
    assert "fields/rho" in out and "3x4x4" in out


def test_data_make_writes_a_builtin_dataset(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "grf.nc"
    assert run_cli("data", "make", "grf", "--n", "5", "--size", "8", "--seed", "3", "--out", str(out)) == 0
    assert str(out) in capsys.readouterr().out
    with xr.open_dataset(out) as ds:
        fields = [v for v in ds.data_vars.values() if v.ndim == 3]
        assert fields and fields[0].shape == (5, 8, 8)
    assert run_cli("data", "list") == 0
    assert "grf" in capsys.readouterr().out.split()


# ---- train ---------------------------------------------------------------------------------------
def test_train_saves_the_full_config_and_run(zero_run: Path, data_file: Path) -> None:
    from scidiff.runs import read_config
    from scidiff.checkpoint import load_checkpoint
    from scidiff.training import TrainConfig

    with (zero_run / "config.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    assert set(doc) == {"data", "model", "train"}
    assert set(doc["train"]) == set(TrainConfig().to_dict())  # every training option is written
    assert doc["train"]["steps"] == 1 and doc["train"]["lr"] == 1e-12
    assert doc["model"]["periodic"] is True and doc["model"]["channel_mults"] == [1, 2]
    assert doc["data"]["variables"] == ["T"] and Path(doc["data"]["file"]) == data_file.resolve()
    data, model, train = read_config(zero_run / "config.toml")  # the saved file is a valid --config
    assert train.to_dict() == TrainConfig.from_dict(doc["train"]).to_dict()
    meta = json.loads((zero_run / "run.json").read_text())
    assert meta["format"] == "scidiff-run"
    assert meta["template"]["variables"][0]["attrs"]["units"] == "K"
    ckpt = load_checkpoint(zero_run)
    assert ckpt.step == 1 and ckpt.field_shape == (1, SIZE, SIZE)
    mean, std = _normaliser_stats(data_file)
    assert ckpt.normalizer["mean"][0] == pytest.approx(mean, rel=1e-12)
    assert ckpt.normalizer["std"][0] == pytest.approx(std, rel=1e-12)


def test_train_config_file_then_command_line_override(workdir: Path, data_file: Path) -> None:
    from scidiff.checkpoint import load_checkpoint

    cfg = workdir / "opts.toml"
    cfg.write_text(
        f'[data]\nfile = "{data_file}"\nvariables = ["T"]\nval_fraction = 0.25\n\n'
        "[model]\nbase_channels = 8\nchannel_mults = [1, 2]\nattention = false\n\n"
        "[train]\nsteps = 3\nbatch_size = 8\nseed = 5\n"
    )
    run = workdir / "from_config"
    assert run_cli("train", "--config", str(cfg), "--out", str(run), "--steps", "2") == 0
    ckpt = load_checkpoint(run)
    assert ckpt.step == 2  # the command line wins over the file
    assert ckpt.config.seed == 5 and ckpt.config.batch_size == 8  # the file wins over the defaults
    with (run / "config.toml").open("rb") as fh:
        saved = tomllib.load(fh)
    assert saved["data"]["val_fraction"] == 0.25 and saved["train"]["steps"] == 2
    # resume continues the same run to a later step
    assert run_cli("train", "--config", str(run / "config.toml"), "--out", str(run), "--resume", "--steps", "3") == 0
    assert load_checkpoint(run).step == 3


# ---- sample --------------------------------------------------------------------------------------
def test_sample_writes_fields_like_the_data(zero_run: Path, data_file: Path, workdir: Path) -> None:
    out = workdir / "samples.nc"
    assert run_cli("sample", str(zero_run), "--n", "64", "--seed", "1", "--method", "ode", "--rtol", "1e-6", "--atol", "1e-6",
                   "--out", str(out)) == 0
    with xr.open_dataset(out) as ds, xr.open_dataset(data_file) as src:
        assert list(ds.data_vars) == ["T"]
        assert ds["T"].dims == ("sample", "y", "x") and ds["T"].shape == (64, SIZE, SIZE)
        assert ds["T"].attrs["units"] == "K" and ds["T"].attrs["long_name"] == "temperature"
        np.testing.assert_array_equal(ds["x"].values, src["x"].values)
        assert ds["x"].attrs["units"] == "km"
        assert ds.attrs["title"] == "tiny test fields"
        assert ds.attrs["method"] == "ode" and int(ds.attrs["seed"]) == 1 and int(ds.attrs["nfe"]) > 0
        assert str(zero_run) in ds.attrs["model"]
        values = ds["T"].values
    # closed form: z = x_1 / alpha(1) exactly, so x = m + s_x z ~ N(m, (s_x / alpha(1))^2) per value
    mean, std = _normaliser_stats(data_file)
    expected_std = std / _alpha(1.0)
    n = values.size
    assert abs(values.mean() - mean) < 5 * expected_std / math.sqrt(n)
    assert abs(values.std() / expected_std - 1.0) < 5 / math.sqrt(2 * n)


def test_sample_is_reproducible_by_seed(zero_run: Path, workdir: Path) -> None:
    paths = [workdir / f"s{i}.nc" for i in range(3)]
    for path, seed in zip(paths, ("7", "7", "8")):
        assert run_cli("sample", str(zero_run), "--n", "3", "--method", "ancestral", "--steps", "5",
                       "--seed", seed, "--out", str(path)) == 0
    a, b, c = (xr.open_dataset(p)["T"].values for p in paths)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_sample_conditional_run_stores_parameters(cond_run: Path, workdir: Path) -> None:
    out = workdir / "cond_samples.nc"
    assert run_cli("sample", str(cond_run), "--n", "2", "--cond", "slope=2.5", "--method", "euler_maruyama",
                   "--steps", "4", "--out", str(out)) == 0
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["slope"].values, [2.5, 2.5])
        # Euler-Maruyama: one score evaluation per step plus Tweedie's denoising step, one batch
        assert ds.attrs["method"] == "euler_maruyama" and int(ds.attrs["nfe"]) == 4 + 1


# ---- loglik --------------------------------------------------------------------------------------
@pytest.mark.parametrize("divergence,suffix,n,rtol", [("exact", ".csv", 1, 1e-4), ("hutchinson", ".nc", 6, 1e-5)])
def test_loglik_matches_the_closed_form_in_data_units(
    zero_run: Path, data_file: Path, workdir: Path, divergence: str, suffix: str, n: int, rtol: float
) -> None:
    out = workdir / f"loglik_{divergence}{suffix}"
    assert run_cli("loglik", str(zero_run), "--data", str(data_file), "--n", str(n), "--divergence", divergence,
                   "--rtol", str(rtol), "--atol", str(rtol), "--out", str(out)) == 0
    if suffix == ".csv":
        table = np.atleast_1d(np.genfromtxt(out, delimiter=",", names=True, comments="#"))
        log_prob, bpd, index = table["log_prob"], table["bits_per_dim"], table["source_index"]
    else:
        with xr.open_dataset(out) as ds:
            log_prob, bpd, index = ds["log_prob"].values, ds["bits_per_dim"].values, ds["source_index"].values
            assert ds["log_prob"].attrs["units"] == "nat" and ds.attrs["divergence"] == divergence
    np.testing.assert_array_equal(index, np.arange(n))
    mean, std = _normaliser_stats(data_file)
    with xr.open_dataset(data_file) as ds:
        x = ds["T"].values[:n].reshape(n, -1)
    d = SIZE * SIZE
    c = _alpha(1e-5) / _alpha(1.0)
    z = (x - mean) / std
    exact = -0.5 * (z**2).sum(1) / c**2 - d * math.log(c) - 0.5 * d * math.log(2 * math.pi) - d * math.log(std)
    # the solver integrates Delta log p = D log c (about 320 nats) to relative accuracy ~ rtol;
    # the divergence of s = 0 is 0 for both estimators, so only the solver's error remains
    np.testing.assert_allclose(log_prob, exact, rtol=0, atol=5 * rtol * d * math.log(c))
    np.testing.assert_allclose(bpd, -log_prob / (d * math.log(2.0)), rtol=1e-12)


@pytest.fixture(scope="module")
def trained_run(workdir: Path, data_file: Path) -> Path:
    """A run trained for a few steps, so that its score depends on x (the untrained output layer is zero)."""
    run = workdir / "trained_run"
    rc = run_cli("train", "--data", str(data_file), "--var", "T", "--out", str(run), "--steps", "30", "--lr", "1e-2",
                 "--warmup-steps", "0", "--periodic", *TINY_NET)
    assert rc == 0
    return run


def test_loglik_default_lattice_gives_standard_errors(trained_run: Path, data_file: Path, workdir: Path) -> None:
    out = workdir / "loglik_lattice.nc"
    assert run_cli("loglik", str(trained_run), "--data", str(data_file), "--n", "5", "--out", str(out)) == 0
    with xr.open_dataset(out) as ds:
        assert ds.attrs["divergence"] == "lattice" and list(ds["divergence"].values) == ["lattice"] * 5
        se = ds["bits_per_dim_se"].values
        assert np.isfinite(se).all() and (se > 0).all()
        np.testing.assert_allclose(ds["log_prob_se"].values, se * SIZE * SIZE * math.log(2.0), rtol=1e-12)
    # the exact trace of the same model: within a few of the reported standard errors
    exact = workdir / "loglik_lattice_exact.nc"
    assert run_cli("loglik", str(trained_run), "--data", str(data_file), "--n", "5", "--divergence", "exact",
                   "--out", str(exact)) == 0
    with xr.open_dataset(exact) as ref, xr.open_dataset(out) as ds:
        assert (ref["log_prob_se"].values == 0).all()
        err = np.abs(ds["log_prob"].values - ref["log_prob"].values)
        assert (err <= 5 * ds["log_prob_se"].values + 1e-6).all(), (err, ds["log_prob_se"].values)


def test_loglik_on_the_path_matches_the_joint_solve(trained_run: Path, data_file: Path, workdir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """--nodes: the exact trace by quadrature on the path agrees with the joint solve's exact trace,
    the provenance records it, and a bad node count fails in one line."""
    joint, path = workdir / "loglik_joint.nc", workdir / "loglik_path.nc"
    common = ["--data", str(data_file), "--n", "3", "--divergence", "exact", "--rtol", "1e-6", "--atol", "1e-6"]
    assert run_cli("loglik", str(trained_run), *common, "--out", str(joint)) == 0
    assert run_cli("loglik", str(trained_run), *common, "--nodes", "16", "--max-nodes", "64", "--out", str(path)) == 0
    assert "quadrature error" in capsys.readouterr().out
    with xr.open_dataset(joint) as a, xr.open_dataset(path) as b:
        assert int(b.attrs["nodes"]) == 16 and int(a.attrs["nodes"]) == 0
        assert b.attrs["max_quadrature_error_bits_per_dim"] <= 1e-3
        # both converge to the same integral: within the quadrature tolerance (bits/dim) plus the solvers'
        diff = np.abs(a["bits_per_dim"].values - b["bits_per_dim"].values)
        assert (diff <= 1e-3 + 1e-4).all(), diff
    with pytest.raises(SystemExit):
        run_cli("loglik", str(trained_run), *common, "--nodes", "7", "--out", str(workdir / "bad.nc"))
    assert "--nodes must be 0 or an even number" in capsys.readouterr().err


@pytest.mark.slow
def test_loglik_split_across_processes_writes_one_table_in_order(trained_run: Path, data_file: Path,
                                                                 workdir: Path) -> None:
    """torchrun with two processes: each solves whole batches, rank 0 writes the table in the file's
    order, and the values are those of one process (probes are seeded per batch)."""
    one, two = workdir / "loglik_one.nc", workdir / "loglik_two.nc"
    seven = _write_fields(workdir / "seven.nc", 7, SIZE, seed=0)  # torchrun's parser would take --n for its own
    common = ["--data", str(seven), "--batch-size", "2", "--no-progress"]
    assert run_cli("loglik", str(trained_run), *common[:-1], "--out", str(one)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "scidiff.cli",
         "loglik", str(trained_run), *common, "--out", str(two)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with xr.open_dataset(one) as a, xr.open_dataset(two) as b:
        np.testing.assert_array_equal(b["source_index"].values, np.arange(7))
        np.testing.assert_allclose(b["log_prob"].values, a["log_prob"].values, rtol=0, atol=1e-9)
        np.testing.assert_allclose(b["log_prob_se"].values, a["log_prob_se"].values, rtol=0, atol=1e-9)
        assert int(b.attrs["processes"]) == 2 and int(a.attrs["processes"]) == 1


# ---- evaluate ------------------------------------------------------------------------------------
def test_evaluate_data_against_itself_is_exact(zero_run: Path, data_file: Path, workdir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "eval_self"
    assert run_cli("evaluate", str(zero_run), "--data", str(data_file), "--samples", str(data_file),
                   "--out", str(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["channels"]["T"]
    assert entry["spectrum_error"] == 0.0 and entry["histogram_w1"] == 0.0
    assert entry["moments_model"] == entry["moments_data"]
    for name in ("samples.png", "spectra.png", "histograms.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "metrics:" in capsys.readouterr().out


def test_evaluate_draws_samples_and_measures_their_spread(zero_run: Path, data_file: Path, workdir: Path) -> None:
    out = workdir / "eval_model"
    assert run_cli("evaluate", str(zero_run), "--data", str(data_file), "--n", "16", "--method", "ode", "--rtol", "1e-4",
                   "--atol", "1e-4", "--out", str(out)) == 0
    entry = json.loads((out / "metrics.json").read_text())["channels"]["T"]
    _, std = _normaliser_stats(data_file)
    # the zero-score model's values spread as s_x / alpha(1) ~ 150 s_x: 5 standard errors of 1024 values
    ratio = entry["moments_model"]["std"] / (std / _alpha(1.0))
    assert abs(ratio - 1.0) < 5 / math.sqrt(2 * 16 * SIZE * SIZE)


# ---- errors --------------------------------------------------------------------------------------
def _error_cases(workdir: Path, data_file: Path, zero_run: Path, cond_run: Path) -> list[tuple[list[str], str]]:
    wrong_grid = _write_fields(workdir / "wrong_grid.nc", 4, 16, seed=1)
    extra_dim = workdir / "extra_dim.nc"
    xr.Dataset({"T": (("sample", "member", "y", "x"), np.zeros((2, 3, SIZE, SIZE)))}).to_netcdf(
        extra_dim, engine="h5netcdf"
    )
    not_a_run = workdir / "not_a_run"
    not_a_run.mkdir(exist_ok=True)
    return [
        (["train", "--data", str(workdir / "missing.nc"), "--var", "T", "--out", str(workdir / "r")], "missing.nc"),
        (["train", "--data", str(data_file), "--var", "Q", "--out", str(workdir / "r")], "'Q' not found"),
        (["train", "--data", str(data_file), "--var", "T", "--out", str(zero_run)], "--resume"),
        (["train", "--data", str(data_file), "--var", "T", "--out", str(workdir / "r"), "--config",
          str(workdir / "none.toml")], "none.toml"),
        (["sample", str(not_a_run), "--n", "2", "--out", str(workdir / "x.nc")], "not a scidiff run folder"),
        (["sample", str(workdir / "no_such_run"), "--n", "2", "--out", str(workdir / "x.nc")], "does not exist"),
        (["sample", str(cond_run), "--n", "2", "--out", str(workdir / "x.nc")], "slope=VALUE"),
        (["sample", str(zero_run), "--n", "2", "--method", "ancestral", "--rtol", "1e-3", "--out",
          str(workdir / "x.nc")], "rtol"),
        (["loglik", str(zero_run), "--data", str(wrong_grid), "--out", str(workdir / "x.csv")], "grid"),
        (["loglik", str(zero_run), "--data", str(extra_dim), "--out", str(workdir / "x.csv")], "member"),
        (["loglik", str(zero_run), "--data", str(workdir / "gone.nc"), "--out", str(workdir / "x.csv")], "gone.nc"),
        (["loglik", str(zero_run), "--data", str(data_file), "--out", str(workdir / "x.txt")], ".csv"),
        (["evaluate", str(data_file), "--data", str(data_file)], "not a scidiff run folder"),
        (["data", "info", str(workdir / "nothing.nc")], "nothing.nc"),
    ]


def test_user_errors_end_in_one_line(workdir: Path, data_file: Path, zero_run: Path, cond_run: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    for args, needle in _error_cases(workdir, data_file, zero_run, cond_run):
        capsys.readouterr()
        rc = run_cli(*args)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (args, err)
        assert err.startswith("scidiff: error: ") and "\n" not in err, (args, err)
        assert "Traceback" not in err
        assert needle in err, (args, err)


def test_debug_flag_shows_the_exception(workdir: Path) -> None:
    with pytest.raises(Exception, match="not a scidiff run folder"):
        main(["sample", str(workdir), "--n", "1", "--out", str(workdir / "x.nc"), "--debug"])


def test_bad_option_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sample", "RUN", "--n", "0", "--out", "x.nc"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


# ---- the reference docs --------------------------------------------------------------------------
def test_api_reference_lists_every_top_level_name() -> None:
    import scidiff

    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    missing = [name for name in scidiff.__all__ if name != "__version__" and f"`sd.{name}`" not in text]
    assert not missing, f"docs/api.md lacks {missing}; regenerate it with python docs/_make_api.py"
