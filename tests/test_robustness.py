"""Run folders under hostile use: seeds, divergence, bad inputs, paths, crashes, two writers.

Every test trains a tiny UNet (width 8, two levels, no attention) for a few steps on 8 x 8
fields, so that each runs in a few seconds on one CPU thread.  The property tested is
stated in each docstring; a test of a refusal also checks that the run folder is left
exactly as it was (:func:`_snapshot`: every file's path and bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from scidiff.cli import main

SIZE = 8
TINY = ["--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--batch-size", "8",
        "--warmup-steps", "0", "--val-fraction", "0"]


def _fields(path: Path, n: int = 24, size: int = SIZE, *, seed: int = 0, scale: float = 1.0) -> Path:
    """Smooth periodic fields ``T(sample, y, x)`` written to ``path`` (netCDF)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size) * size
    amp = 1.0 / (1.0 + np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)) ** 1.5
    x = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, size, size))) * amp).real * 3.0 * scale
    ds = xr.Dataset({"T": (("sample", "y", "x"), x, {"units": "K"}),
                     "slope": (("sample",), np.linspace(1.0, 3.0, n))},
                    coords={"x": np.arange(size) * 1.0, "y": np.arange(size) * 1.0})
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def cli(*args: str | Path) -> int:
    return main([*(str(a) for a in args), "--no-progress"])


def _train(data: Path, out: Path, *extra: str | Path, steps: int = 4) -> int:
    return cli("train", "--data", data, "--var", "T", "--out", out, "--steps", str(steps), *TINY, *extra)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from scidiff.checkpoint import resolve_checkpoint

    return load_file(resolve_checkpoint(run) / "model.safetensors")


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("scidiff: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return _fields(tmp_path / "fields.nc")


@pytest.fixture()
def dropout(tmp_path: Path) -> Path:
    """A configuration file turning dropout on (so that resumes must restore the global RNG)."""
    path = tmp_path / "dropout.toml"
    path.write_text("[model]\ndropout = 0.2\n[train]\nlog_every = 2\n")
    return path


# ---- one seed, one result ------------------------------------------------------------------
def test_same_seed_gives_identical_weights(data: Path, dropout: Path, tmp_path: Path) -> None:
    """Two trainings with --seed 3 end in the same weights bit for bit (network built from the seed too),
    and a different seed gives different weights."""
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert _train(data, tmp_path / name, "--seed", seed, "--config", dropout) == 0
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ---- divergence fails loudly -----------------------------------------------------------------
def test_divergence_stops_training_and_keeps_the_last_finite_checkpoint(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A learning rate of 1e6 makes the loss non-finite: training stops with a non-zero exit and one line
    naming the step and what to try, and ``latest`` still names the last finite checkpoint."""
    run = tmp_path / "run"
    assert _train(data, run, "--checkpoint-every", "2") == 0
    before = _weights(run)
    capsys.readouterr()
    code = _train(data, run, "--resume", "--lr", "1e6", "--checkpoint-every", "2", steps=40)
    assert code != 0
    line = _one_error_line(capsys, "non-finite", "step", "--lr")
    assert "step_00000004" in line
    from scidiff.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(run).name == "step_00000004"
    after = _weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _poison(run: Path) -> None:
    """Rewrite the latest checkpoint of ``run`` with NaN in one EMA weight (digests recomputed)."""
    from scidiff.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run)
    next(ckpt.ema_model.parameters()).data.view(-1)[0] = float("nan")
    save_checkpoint(ckpt.path, ckpt.raw_model, ema_model=ckpt.ema_model, config=ckpt.config, step=ckpt.step,
                    normalizer=ckpt.normalizer, field_shape=ckpt.field_shape)


def test_sample_and_loglik_refuse_a_model_with_non_finite_weights(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint holding NaN weights is refused in one line by sample and loglik; nothing is written."""
    run = tmp_path / "run"
    assert _train(data, run) == 0
    _poison(run)
    capsys.readouterr()
    assert cli("sample", run, "--n", "2", "--out", tmp_path / "s.nc") != 0
    _one_error_line(capsys, "non-finite", "weight")
    assert cli("loglik", run, "--data", data, "--n", "2", "--out", tmp_path / "l.csv") != 0
    _one_error_line(capsys, "non-finite", "weight")
    assert not (tmp_path / "s.nc").exists() and not (tmp_path / "l.csv").exists()


# ---- validate everything, then write -----------------------------------------------------------
def _two_channels(path: Path) -> Path:
    with xr.open_dataset(_fields(path.with_suffix(".one.nc")), engine="h5netcdf") as ds:
        ds = ds.load()
    ds["U"] = ds["T"] * 2.0
    ds.to_netcdf(path, engine="h5netcdf")
    return path


@pytest.mark.parametrize("change", ["width", "grid", "channels", "data file"])
def test_resume_with_other_data_or_architecture_changes_nothing(
    change: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume with a different width, grid, channel count or data file fails in one line naming the
    difference, and every file of the run folder is left as it was."""
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = _snapshot(run)
    capsys.readouterr()
    if change == "width":
        code = _train(data, run, "--resume", "--base-channels", "16", steps=8)
        words = ["base_channels"]
    elif change == "grid":
        code = _train(_fields(tmp_path / "big.nc", size=16), run, "--resume", steps=8)
        words = ["file"]
    elif change == "channels":
        code = cli("train", "--data", _two_channels(tmp_path / "two.nc"), "--var", "T,U", "--out", run,
                   "--resume", "--steps", "8", *TINY)
        words = ["variables"]
    else:
        code = _train(_fields(tmp_path / "other.nc", seed=5), run, "--resume", steps=8)
        words = ["file"]
    assert code != 0
    _one_error_line(capsys, "--resume", *words)
    assert _snapshot(run) == before


def test_resume_reads_the_runs_own_options(data: Path, tmp_path: Path) -> None:
    """`train --resume --out RUN --steps N` needs no other option: they come from RUN/config.toml."""
    run = tmp_path / "run"
    assert _train(data, run) == 0
    assert cli("train", "--out", run, "--resume", "--steps", "6") == 0
    from scidiff.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(run).name == "step_00000006"


def _bad_data(tmp_path: Path, kind: str) -> Path:
    path = _fields(tmp_path / f"{kind}.nc")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    if kind == "nan":
        ds["T"][3, 2, 1] = np.nan
    else:
        ds["T"][:] = 1.5
    out = tmp_path / f"{kind}-data.nc"
    ds.to_netcdf(out, engine="h5netcdf")
    return out


@pytest.mark.parametrize("problem", ["nan", "constant", "device"])
def test_overwrite_that_fails_keeps_the_old_run(
    problem: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--overwrite with NaN data, constant data or an unavailable device fails in one line and the old
    run is still there, whole, with no temporaries left."""
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = _snapshot(run)
    capsys.readouterr()
    if problem == "device":
        code = _train(data, run, "--overwrite", "--device", "cuda:77" if torch.cuda.is_available() else "cuda")
    else:
        code = _train(_bad_data(tmp_path, problem), run, "--overwrite")
    assert code != 0
    _one_error_line(capsys)
    assert _snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in run.iterdir() if not p.name.startswith("."))


def test_overwrite_replaces_the_run_and_leaves_no_copy(data: Path, tmp_path: Path) -> None:
    """A successful --overwrite leaves only the new run (the old one was kept aside until its first checkpoint)."""
    run = tmp_path / "run"
    assert _train(data, run, "--seed", "1") == 0
    assert _train(data, run, "--overwrite", "--seed", "2", steps=2) == 0
    from scidiff.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(run).name == "step_00000002"
    assert [p.name for p in run.rglob(".*")] == []
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]


def test_failed_first_training_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A training that fails before its first checkpoint does not leave an empty --out folder behind."""
    out = tmp_path / "new-run"
    assert _train(_bad_data(tmp_path, "constant"), out) != 0
    _one_error_line(capsys, "constant")
    assert not out.exists()


# ---- paths -----------------------------------------------------------------------------------
@pytest.fixture()
def run(data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    assert _train(data, out) == 0
    return out


def test_loglik_never_overwrites_its_input(run: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`loglik --data X.nc --out X.nc` is refused in one line and X.nc keeps its bytes."""
    before = data.read_bytes()
    capsys.readouterr()
    assert cli("loglik", run, "--data", data, "--n", "2", "--out", data) != 0
    _one_error_line(capsys, "--out", data.name)
    assert data.read_bytes() == before


def test_sample_checks_the_output_suffix(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sample --out a.csv` is refused (samples are netCDF) before anything is drawn or written."""
    capsys.readouterr()
    assert cli("sample", run, "--n", "2", "--out", tmp_path / "a.csv") != 0
    _one_error_line(capsys, "a.csv", ".nc")
    assert not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize("target", ["outside", "absolute"])
def test_latest_must_name_a_checkpoint_inside_the_run(
    target: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``latest`` naming ``../other/...`` or an absolute path outside the run is refused, not followed."""
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(next((run / "checkpoints").iterdir()), other / "step_00000099")
    name = "../other/step_00000099" if target == "outside" else str(other / "step_00000099")
    (run / "latest").write_text(name + "\n")
    capsys.readouterr()
    assert cli("sample", run, "--n", "2", "--out", tmp_path / "s.nc") != 0
    _one_error_line(capsys, "latest", "outside")


def _edit_meta(run: Path, edit) -> None:
    from scidiff.checkpoint import resolve_checkpoint

    file = resolve_checkpoint(run) / "checkpoint.json"
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


def test_a_checkpoint_without_its_digest_is_refused(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint.json whose files carry no sha256 is refused in one line naming the file."""
    _edit_meta(run, lambda m: m["files"]["model.safetensors"].pop("sha256"))
    capsys.readouterr()
    assert cli("sample", run, "--n", "2", "--out", tmp_path / "s.nc") != 0
    _one_error_line(capsys, "model.safetensors", "sha256")


@pytest.mark.parametrize("net", ["linear", "wide unet"])
def test_architecture_is_checked_against_the_weights_before_allocation(
    net: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint.json asking for Linear(10**6, 10**6) (4 TB) or a UNet of width 200000 is refused in one
    line, in well under a second, because its shapes do not match the weights file."""
    def edit(meta: dict) -> None:
        if net == "linear":
            meta["net"] = {"class": "torch.nn.Linear", "kwargs": {"in_features": 10**6, "out_features": 10**6}}
        else:
            meta["net"]["kwargs"]["base_channels"] = 200000
    _edit_meta(run, edit)
    capsys.readouterr()
    start = time.perf_counter()
    assert cli("sample", run, "--n", "2", "--out", tmp_path / "s.nc") != 0
    assert time.perf_counter() - start < 5.0
    _one_error_line(capsys, "does not fit")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_cleaned_and_files_honour_the_umask(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A temporary left by a killed write of the same output (its process gone) is removed by the next
    write, and files and folders are created with the permissions the umask allows (0644 / 0755 at 022)."""
    stale = tmp_path / f".s.nc.tmp-{_dead_pid()}-abcdefgh"
    stale.write_bytes(b"half a file")
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert _train(data, run) == 0
        assert cli("sample", run, "--n", "2", "--out", tmp_path / "s.nc") == 0
    finally:
        os.umask(old)
    assert not stale.exists()
    assert (tmp_path / "s.nc").stat().st_mode & 0o777 == 0o644
    for path in [run, *run.rglob("*")]:
        if path.name == "lock":
            continue
        want = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode))


# ---- options the sampler would ignore; solver failures ---------------------------------------------
def test_ode_sampler_refuses_steps_it_would_ignore(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sample --method ode --steps 10` (adaptive dopri5) is refused in one line instead of recording an
    ignored --steps in the provenance; with a fixed-grid solver --steps is honoured."""
    capsys.readouterr()
    assert cli("sample", run, "--n", "2", "--method", "ode", "--steps", "10", "--out", tmp_path / "s.nc") != 0
    _one_error_line(capsys, "--steps", "adaptive", "dopri5")
    assert not (tmp_path / "s.nc").exists()
    assert cli("sample", run, "--n", "2", "--method", "ode", "--ode-method", "euler", "--steps", "3",
               "--out", tmp_path / "s.nc") == 0
    with xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf") as ds:
        assert int(ds.attrs["nfe"]) == 4  # 3 Euler steps and Tweedie's denoising


def test_solver_failure_names_the_fields_and_their_scale(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """loglik on fields 1e30 times the training data's: one line naming the fields, their scale in training
    standard deviations and what to check (not ``AssertionError: underflow in dt``)."""
    huge = _fields(tmp_path / "huge.nc", n=4, scale=1e30)
    capsys.readouterr()
    assert cli("loglik", run, "--data", huge, "--n", "2", "--out", tmp_path / "l.csv") != 0
    _one_error_line(capsys, "fields 0-1 of huge.nc", "standard deviations", "units")


# ---- bit-exact resume, crashes, two writers ------------------------------------------------------
def _all_state(run: Path) -> dict[str, torch.Tensor]:
    """Weights, EMA weights and the optimiser/RNG tensors of the latest checkpoint of ``run``."""
    from safetensors.torch import load_file

    from scidiff.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    out = {}
    for name in ("model", "ema", "state"):
        out.update({f"{name}/{k}": v for k, v in load_file(ckpt / f"{name}.safetensors").items()})
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options", ["dropout", "importance sampling, conditional"])
def test_resume_is_bit_exact(options: str, data: Path, dropout: Path, tmp_path: Path) -> None:
    """8 steps straight, or 3 + resume to 8 (checkpoints every 3), with dropout on (or importance sampling of
    t on a conditional model): identical weights, EMA, optimiser state and RNG states, bit for bit."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = dropout
    extra: list[str] = []
    if options != "dropout":
        config = tmp_path / "importance.toml"
        config.write_text('[model]\ndropout = 0.1\n[train]\ntime_sampling = "importance"\n')
        extra = ["--cond", "slope"]
    assert _train(data, straight, "--config", config, "--checkpoint-every", "3", *extra, steps=8) == 0
    assert _train(data, resumed, "--config", config, "--checkpoint-every", "3", *extra, steps=3) == 0
    assert cli("train", "--out", resumed, "--resume", "--steps", "8") == 0
    assert _same(_all_state(straight), _all_state(resumed))


def _spawn(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "scidiff.cli", *(str(a) for a in args), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _latest_step(run: Path) -> int:
    from scidiff.checkpoint import CheckpointFolder

    found = CheckpointFolder(run).latest() if run.is_dir() else None
    return -1 if found is None else int(found.name.split("_")[1])


@pytest.mark.slow
def test_kill_9_at_random_points_loses_less_than_one_interval(data: Path, dropout: Path, tmp_path: Path) -> None:
    """Training killed with SIGKILL at random moments (three times, checkpoints every 2 steps, dropout on):
    after each kill the run loads, no checkpoint seen before the kill is lost, and resuming to the end
    gives the same weights, EMA, optimiser and RNG state bit for bit as one uninterrupted run."""
    import random

    from scidiff.runs import Run

    steps, every = 40, 2
    opts = ["--config", dropout, "--checkpoint-every", str(every), "--seed", "7"]
    reference = tmp_path / "reference"
    assert _train(data, reference, *opts, steps=steps) == 0
    run = tmp_path / "run"
    rng = random.Random(13)
    first = ["train", "--data", data, "--var", "T", "--out", run, "--steps", str(steps), *TINY, *opts]
    for trial in range(3):
        proc = _spawn(*(first if trial == 0 else ["train", "--out", run, "--resume"]))
        start_step = _latest_step(run)
        deadline = time.monotonic() + 60
        while _latest_step(run) <= start_step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        seen = _latest_step(run)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert seen >= 0, proc.stderr.read() if proc.stderr else ""
        assert _latest_step(run) >= seen  # whatever was committed before the kill survives
        loaded = Run.open(run).load()
        assert loaded.checkpoint.step == _latest_step(run)
    proc = _spawn("train", "--out", run, "--resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _latest_step(run) == steps
    assert _same(_all_state(reference), _all_state(run))
    assert not list(run.rglob(".*tmp-*")) and not (run / "lock").exists()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_the_first_completes_untouched(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one `train` runs into a folder, a second one (--overwrite, --resume, or a sample written into the
    folder) is refused with one line naming the holder's pid; the first ends exactly as an undisturbed run."""
    steps = 30
    reference = tmp_path / "reference"
    assert _train(data, reference, "--seed", "5", steps=steps) == 0
    run = tmp_path / "run"
    proc = _spawn("train", "--data", data, "--var", "T", "--out", run, "--steps", str(steps), "--seed", "5", *TINY)
    deadline = time.monotonic() + 60
    while not (run / "lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    capsys.readouterr()
    assert _train(data, run, "--overwrite", "--seed", "6") != 0
    _one_error_line(capsys, "locked", str(proc.pid))
    assert _train(data, run, "--resume", "--seed", "5", steps=steps + 10) != 0
    _one_error_line(capsys, "locked", str(proc.pid))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _same(_all_state(reference), _all_state(run))
    assert json.loads((run / "run.json").read_text())["data"] == json.loads((reference / "run.json").read_text())["data"]


def test_writing_into_a_run_folder_takes_its_lock(run: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """sample, loglik and evaluate writing into a run folder whose lock another live process holds are refused
    with one line naming its pid, and write nothing."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from scidiff.runs import Run\n"
         "with Run.lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert cli("sample", run, "--n", "2", "--out", run / "x.nc") != 0
        _one_error_line(capsys, "locked", str(holder.pid))
        assert not (run / "x.nc").exists()
        assert cli("loglik", run, "--data", data, "--n", "2", "--out", run / "l.csv") != 0
        _one_error_line(capsys, "locked", str(holder.pid))
        assert cli("evaluate", run, "--data", data, "--n", "2") != 0
        _one_error_line(capsys, "locked", str(holder.pid))
        assert not (run / "l.csv").exists() and not (run / "evaluation").exists()
    finally:
        holder.kill()
        holder.wait()


def test_an_overwrite_killed_before_its_first_checkpoint_is_undone(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --overwrite killed after setting the old run aside (and writing the new run.json) but before its
    first checkpoint: commands name the situation in one line, and `train --resume` puts the old run back
    and continues it."""
    from scidiff.runs import Run

    before = _snapshot(run)
    Run.set_aside(run)  # what a killed --overwrite leaves: the old run aside, nothing new committed
    capsys.readouterr()
    assert cli("sample", run, "--n", "2", "--out", run.parent / "s.nc") != 0
    _one_error_line(capsys, "interrupted", "--resume")
    assert cli("train", "--out", run, "--resume", "--steps", "6") == 0
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if "step_00000004" in k} == {k: v for k, v in before.items() if "step_00000004" in k}
    from scidiff.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(run).name == "step_00000006"
    assert not list(run.glob(".overwritten*"))


_DDP_RESUME = '''
import json, os, sys
from pathlib import Path
import torch
from scidiff.models import ScoreModel
from scidiff.nets import UNet
from scidiff.sde import VPSDE
from scidiff.training import TrainConfig, Trainer
from scidiff.training.ddp_check import weights_sha256

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
fields = torch.randn(32, 1, 16, generator=torch.Generator().manual_seed(0))
config = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=0, log_every=2, val_every=0,
                     checkpoint_every=3, seed=7)

def model():
    torch.manual_seed(1)
    return ScoreModel(UNet(1, 1, base_channels=8, channel_mults=(1, 2), groups=4, dropout=0.3), VPSDE())

straight = Trainer(model(), config, run_dir=out / "straight")
straight.fit(fields, progress=False)
first = Trainer(model(), config, run_dir=out / "resumed")
first.fit(fields, until=3, progress=False)
torch.rand(100)  # the process's generators move on: the resume must restore them from the checkpoint
resumed = Trainer(model(), config, run_dir=out / "resumed", resume=True)
assert resumed.step == 3
resumed.fit(fields, progress=False)
(out / f"rank{rank}.json").write_text(json.dumps(
    {"straight": weights_sha256(straight.model), "resumed": weights_sha256(resumed.model),
     "straight_ema": weights_sha256(straight.ema_model), "resumed_ema": weights_sha256(resumed.ema_model)}))
straight.dist.close()
'''


@pytest.mark.slow
def test_resume_under_ddp_with_dropout_is_bit_exact(tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks and dropout on: 6 steps straight, or 3, a resume, and 3 more, give the same
    weights and EMA weights bit for bit (every rank's RNG state is saved, not only rank 0's)."""
    import socket

    script = tmp_path / "ddp_resume.py"
    script.write_text(_DDP_RESUME)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (0, 1):
        report = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert report["straight"] == report["resumed"], r
        assert report["straight_ema"] == report["resumed_ema"], r


def test_resume_with_condition_dropout_is_bit_exact(tmp_path: Path) -> None:
    """Classifier-free-guidance training (ConditionDropout drops each condition with probability 0.3, from
    torch's global generator): 6 steps straight, or 3, a resume in a fresh Trainer, and 3 more, give the
    same weights and EMA weights bit for bit."""
    from scidiff.guidance.cfg import condition
    from scidiff.models import ScoreModel
    from scidiff.nets import UNet
    from scidiff.sde import VPSDE
    from scidiff.training import ConditionDropout, TrainConfig, Trainer

    fields = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = condition(torch.linspace(0, 1, 16)[:, None])
    config = TrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=0, log_every=2, val_every=0,
                         checkpoint_every=3, seed=3)

    def model() -> ScoreModel:
        torch.manual_seed(2)
        net = UNet(1, 2, cond_dim=2, base_channels=8, channel_mults=(1, 2), attention_levels=(), dropout=0.2)
        return ScoreModel(ConditionDropout(net, 0.3), VPSDE())

    straight = Trainer(model(), config, run_dir=tmp_path / "straight")
    straight.fit(fields, cond, progress=False)
    Trainer(model(), config, run_dir=tmp_path / "resumed").fit(fields, cond, until=3, progress=False)
    torch.rand(100)  # the global generator moves on: the resume must restore it
    resumed = Trainer(model(), config, run_dir=tmp_path / "resumed", resume=True)
    resumed.fit(fields, cond, progress=False)
    for a, b in ((straight.model, resumed.model), (straight.ema_model, resumed.ema_model)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_trainer_refuses_to_save_non_finite_weights(tmp_path: Path) -> None:
    """Trainer.save called by hand on NaN weights raises TrainingDiverged and writes no checkpoint."""
    from scidiff.models import ScoreModel
    from scidiff.nets import UNet
    from scidiff.sde import VPSDE
    from scidiff.training import TrainConfig, Trainer, TrainingDiverged

    net = UNet(1, 2, base_channels=8, channel_mults=(1, 2), attention_levels=())
    trainer = Trainer(ScoreModel(net, VPSDE()), TrainConfig(steps=1), run_dir=tmp_path / "run")
    next(net.parameters()).data.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="NaN or inf"):
        trainer.save()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_lock_whose_owner_has_gone_is_taken_over_even_if_its_pid_was_reused(
    data: Path, tmp_path: Path
) -> None:
    """A lock file left by a killed training names a pid that now belongs to another, unrelated process: it
    holds no OS lock on the file, so the next training takes the lock over instead of waiting forever."""
    import socket

    run = tmp_path / "run"
    run.mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / "lock").write_text(f"{stranger.pid} {socket.gethostname()}\n")
        assert _train(data, run) == 0
        assert not (run / "lock").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_network_too_large_for_the_machine_is_refused_before_allocation(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--base-channels 200000` (a UNet of ~1e12 parameters) is refused in one line naming its size and the
    option to lower, without allocating it and without leaving a folder."""
    start = time.perf_counter()
    assert _train(data, tmp_path / "run", "--base-channels", "200000") != 0
    assert time.perf_counter() - start < 10.0
    _one_error_line(capsys, "base_channels = 200000", "GiB", "--base-channels")
    assert not (tmp_path / "run").exists()
