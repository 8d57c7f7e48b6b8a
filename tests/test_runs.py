"""scidiff.runs: a run folder's files, checkpoints, ``latest`` and pruning, and the library calls the CLI makes.

Under torchrun (2 gloo ranks) rank 0 alone changes the folder of an --overwrite or --resume.
Also the small shared pieces the runs write with: the TOML writer (round trip through the
reader) and atomic writing of files and folders.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from scidiff import runs
from scidiff._atomic import atomic_directory, is_temporary, previous_copies, write_text_atomically
from scidiff._toml import read_toml, toml_table
from scidiff.checkpoint import CheckpointFolder
from scidiff.training import TrainConfig

SIZE = 8


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, SIZE, SIZE)) * 2.0 + 5.0
    ds = xr.Dataset(
        {"u": (("sample", "y", "x"), x, {"units": "m/s"})},
        coords={"x": ("x", np.arange(SIZE) * 0.25), "y": ("y", np.arange(SIZE) * 0.25)},
    )
    path = tmp_path_factory.mktemp("runs") / "u.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path


@pytest.fixture(scope="module")
def run_dir(data_file: Path) -> Path:
    """Three steps, a checkpoint after each (keep 5), an eps-network that stays ~0 (lr 1e-12)."""
    out = data_file.parent / "run"
    summary = runs.train(
        out,
        runs.DataOptions(file=str(data_file), variables=["u"], val_fraction=0.0),
        runs.ModelOptions(base_channels=8, channel_mults=[1, 2], attention=False, periodic=True, prediction="eps"),
        TrainConfig(steps=3, batch_size=8, lr=1e-12, warmup_steps=0, checkpoint_every=1, keep_checkpoints=5,
                    val_every=0, log_every=1),
        progress=False,
    )
    assert summary.step == 3 and summary.run.path == out
    return out


def test_run_folder_files_and_latest(run_dir: Path) -> None:
    run = runs.Run.open(run_dir)
    assert run.config_file.is_file() and run.run_file.is_file() and runs.Run.is_run(run_dir)
    steps = [p.name for p in run.checkpoints.steps()]
    assert steps == ["step_00000001", "step_00000002", "step_00000003"]
    assert run.latest is not None and run.latest.name == "step_00000003"
    assert run.field_shape == (1, SIZE, SIZE)
    # a checkpoint directory inside the run opens the run
    assert runs.Run.open(run.latest).path == run.path
    data, model, train = runs.read_config(run.config_file)
    assert data.variables == ["u"] and model.prediction == "eps" and train.steps == 3


def test_prune_keeps_the_latest_and_clears_temporaries(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    stale = copy / "checkpoints" / ".step_00000004.tmp-abcd"
    stale.mkdir()
    run = runs.Run.open(copy)
    run.prune(keep=1)
    assert [p.name for p in run.checkpoints.steps()] == ["step_00000003"]
    assert not stale.exists() and run.latest is not None and run.latest.name == "step_00000003"


def test_checkpoint_folder_commit_moves_latest_only_to_a_complete_checkpoint(tmp_path: Path) -> None:
    folder = CheckpointFolder(tmp_path)
    assert folder.latest() is None and not folder.exists()
    for step in (1, 2):
        path = folder.path_for(step)
        path.mkdir(parents=True)
        (path / "checkpoint.json").write_text("{}")
        folder.commit(path, keep=1)
    assert folder.latest_file.read_text().strip() == "checkpoints/step_00000002"
    assert [p.name for p in folder.steps()] == ["step_00000002"]
    partial = folder.path_for(3)
    partial.mkdir()  # no checkpoint.json: not complete, never the latest
    assert folder.latest() == folder.path_for(2).resolve()
    assert CheckpointFolder.of(folder.path_for(2)).root == tmp_path
    assert CheckpointFolder.of(tmp_path / "elsewhere") is None


def test_library_calls_give_what_the_folder_promises(run_dir: Path, data_file: Path, tmp_path: Path) -> None:
    loaded = runs.Run.open(run_dir).load()
    assert loaded.checkpoint.path.name == "step_00000003"
    ds, x = runs.sample(loaded, 3, method="euler_maruyama", steps=5, seed=1, progress=False)
    assert x.shape == (3, 1, SIZE, SIZE) and ds["u"].attrs["units"] == "m/s"
    _, x2 = runs.sample(run_dir, 3, method="euler_maruyama", steps=5, seed=1, progress=False)  # a folder works too
    torch.testing.assert_close(x, x2)
    table = runs.loglik(loaded, data_file, n=4, divergence="exact", progress=False)
    lp = table["log_prob"].values
    assert lp.shape == (4,) and np.isfinite(lp).all()
    torch.testing.assert_close(
        torch.as_tensor(table["bits_per_dim"].values), torch.as_tensor(-lp / (SIZE * SIZE * math.log(2.0)))
    )
    out = runs.write_table(table, tmp_path / "ll.csv")
    assert out.read_text().splitlines()[0].count(",") >= 2


def test_prepare_refuses_a_run_unless_told(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(runs.RunError, match="already holds a run"):
        runs.Run.prepare(run_dir)
    assert runs.Run.prepare(tmp_path / "new") == tmp_path / "new"
    with pytest.raises(runs.RunError, match="not a scidiff run folder"):
        runs.Run.open(tmp_path)


def test_lock_refuses_a_second_writer_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    folder = tmp_path / "locked"
    with runs.Run.lock(folder) as file:
        assert file.read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(runs.RunError, match="is locked by process"):
            with runs.Run.lock(folder):
                pass
    assert not file.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    file.write_text(f"{int(dead.stdout)} {socket.gethostname()}\n")  # left behind by a process that has ended
    with runs.Run.lock(folder):
        assert file.read_text().split()[0] == str(os.getpid())
    assert not file.exists()


def test_toml_writer_round_trips_through_the_reader(tmp_path: Path) -> None:
    options = {
        "name": 'a "quoted" \\ back\\slash, tab\t and ü',
        "flag": True,
        "count": 3,
        "rate": 2.5e-4,
        "big": math.inf,
        "small": -math.inf,
        "sizes": [1, 2, 2],
        "names": ["x", "y"],
        "empty": [],
    }
    path = tmp_path / "c.toml"
    path.write_text(toml_table("t", options) + "\n" + toml_table("u", {"k": 1.0}))
    doc = read_toml(path)
    assert doc == {"t": options, "u": {"k": 1.0}}
    nan = tmp_path / "n.toml"
    nan.write_text(toml_table(None, {"v": math.nan}))
    assert math.isnan(read_toml(nan)["v"])


def test_atomic_writes_leave_nothing_half_done(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_text_atomically(target, "one")
    write_text_atomically(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    folder = tmp_path / "d"
    with atomic_directory(folder) as tmp:
        (tmp / "a").write_text("1")
        assert is_temporary(tmp) and not folder.exists()
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert (folder / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"] and previous_copies(folder) == []


# ---- torchrun ------------------------------------------------------------------------------------
def test_a_bare_cuda_device_means_the_local_rank_gpu_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda` under torchrun is cuda:LOCAL_RANK on each rank; an indexed device is kept as given."""
    from scidiff.runs.train import usable_device
    from scidiff.training.distributed import DistContext, device_for_rank

    assert device_for_rank("cuda", 1) == torch.device("cuda", 1)
    assert device_for_rank(torch.device("cuda"), 0) == torch.device("cuda", 0)
    assert device_for_rank("cuda:1", 0) == torch.device("cuda", 1)
    assert device_for_rank("cuda", None) == torch.device("cuda")  # one process: torch's current GPU
    assert device_for_rank("cpu", 1) == torch.device("cpu")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert DistContext.from_env() == DistContext()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = DistContext.from_env()
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    assert usable_device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() > 1:
        assert usable_device("cuda") == torch.device("cuda", 1)
    else:
        with pytest.raises(ValueError, match=r"^device 'cuda:1' \(--device 'cuda' on local rank 1\) is not usable"):
            usable_device("cuda")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match=r"RANK=4 must lie in \[0, WORLD_SIZE=4\)"):
        DistContext.from_env()


@pytest.mark.slow
def test_overwrite_and_resume_under_torchrun_leave_one_clean_run(data_file: Path, tmp_path: Path, torchrun) -> None:
    """`torchrun --nproc_per_node 2 -m scidiff.cli train --overwrite` over a run: rank 0 alone sets the old
    run aside and drops it, so the folder holds the new run only (its options, its one checkpoint, no copy
    set aside, no lock), and the summary is printed once; a `--resume` under torchrun continues it."""
    from scidiff.checkpoint import load_checkpoint

    out = tmp_path / "run"
    data = runs.DataOptions(file=str(data_file), variables=["u"], val_fraction=0.0)
    model = runs.ModelOptions(base_channels=8, channel_mults=[1, 2], attention=False, periodic=True)
    runs.train(out, data, model, TrainConfig(steps=3, batch_size=8, warmup_steps=0, checkpoint_every=1, seed=1),
               progress=False)
    old = load_checkpoint(out)
    assert [p.name for p in runs.Run.open(out).checkpoints.steps()] == ["step_00000002", "step_00000003"]
    common = ["-m", "scidiff.cli", "train", "--data", str(data_file), "--var", "u", "--out", str(out), "--periodic",
              "--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--batch-size", "8",
              "--warmup-steps", "0", "--val-fraction", "0", "--checkpoint-every", "100", "--no-progress"]
    entries = ["checkpoints", "config.toml", "latest", "run.json"]
    # the overwrite's one checkpoint, then the resume's beside it (keep_checkpoints = 2)
    for steps, extra, kept in ((2, ["--overwrite", "--seed", "2"], [2]), (4, ["--resume"], [2, 4])):
        proc = torchrun([*common, "--steps", str(steps), *extra])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summaries = [line for line in proc.stdout.splitlines() if line.startswith("trained ")]
        assert len(summaries) == 1 and f" for {steps} steps on 24 fields" in summaries[0], proc.stdout
        assert proc.stdout.count("run folder: ") == 1
        assert sorted(p.name for p in out.iterdir()) == entries  # no .overwritten.old-*, no lock
        assert [p.name for p in runs.Run.open(out).checkpoints.steps()] == [f"step_{k:08d}" for k in kept]
        _, _, train = runs.read_config(out / "config.toml")
        assert (train.steps, train.seed) == (steps, 2)
        loaded = runs.Run.open(out).load()
        assert loaded.checkpoint.step == steps
        assert [e["step"] for e in loaded.checkpoint.history] == [2, 4][: steps // 2]
    new = load_checkpoint(out)
    assert not torch.equal(next(iter(new.raw_model.parameters())), next(iter(old.raw_model.parameters())))
