"""Tests of checkpoints: exact round trips, atomic writes, and clear errors on bad files."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import scidiff as sd
import scidiff._atomic as atomic_mod
from scidiff.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from scidiff.training import TrainConfig, Trainer

SDE = sd.VPSDE(0.1, 20.0)


def _unet(base: int = 8, seed: int = 0, **kw) -> sd.UNet:
    torch.manual_seed(seed)
    return sd.UNet(1, 2, base_channels=base, channel_mults=(1, 2), groups=4, **kw)


def _model(base: int = 8, seed: int = 0, prediction: str = "eps", **kw) -> sd.ScoreModel:
    return sd.ScoreModel(_unet(base, seed, **kw), SDE, prediction=prediction)


def _perturb(model: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, sd.ScoreModel, sd.ScoreModel]:
    model = _model(prediction="v", cond_dim=3)
    _perturb(model)
    ema = _model(prediction="v", cond_dim=3)
    _perturb(ema, seed=2)
    path = save_checkpoint(
        tmp_path / "ck", model, ema_model=ema, config=TrainConfig(steps=77), step=42,
        normalizer={"mean": [0.5], "std": [2.0], "dims": ["x", "y"]}, field_shape=(1, 16, 16),
        history=[{"step": 10, "loss": 0.5}],
    )
    return path, model, ema


def test_round_trip_rebuilds_the_model_exactly(saved) -> None:
    path, model, ema = saved
    ck = load_checkpoint(path)
    assert ck.step == 42 and ck.config == TrainConfig(steps=77) and ck.prediction == "v"
    assert ck.normalizer == {"mean": [0.5], "std": [2.0], "dims": ["x", "y"]}
    assert ck.field_shape == (1, 16, 16) and ck.history == [{"step": 10, "loss": 0.5}]
    assert ck.sde.to_dict() == SDE.to_dict()
    assert isinstance(ck.model.net, sd.UNet) and ck.model.net.config == model.net.config
    assert ck.model is ck.ema_model and not ck.model.training
    assert _same_weights(ck.raw_model.net, model.net) and _same_weights(ck.ema_model.net, ema.net)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 0.7]), torch.randn(2, 3)
    model.eval()
    assert torch.equal(ck.raw_model.score(x, t, c), model.score(x, t, c))
    assert _same_weights(load_model(path).net, ema.net)
    assert _same_weights(load_model(path, ema=False).net, model.net)
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["net"]["class"] == "scidiff.nets.unet.UNet"
    assert set(meta["files"]) == {"model.safetensors", "ema.safetensors"}


def test_optimizer_and_rng_state_round_trip_exactly(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    model.net(torch.randn(2, 1, 8, 8), torch.rand(2)).pow(2).sum().backward()
    opt.step()
    random.seed(3)
    np.random.seed(4)
    rng = {"torch_cpu": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    save_checkpoint(tmp_path / "ck", model, optimizer=opt, rng=rng, step=1)
    ck = load_checkpoint(tmp_path / "ck")
    state = ck.state["optimizer"]
    ref = opt.state_dict()
    assert state["param_groups"] == ref["param_groups"]  # betas stay a tuple
    for i, entry in ref["state"].items():
        for name, value in entry.items():
            assert torch.equal(state["state"][i][name], value)
    got = ck.state["rng"]
    assert torch.equal(got["torch_cpu"], rng["torch_cpu"]) and got["torch_cpu"].dtype == torch.uint8
    random.setstate(got["python"])
    np.random.set_state(got["numpy"])
    a = (random.random(), np.random.rand())
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    assert a == (random.random(), np.random.rand())
    fresh = torch.optim.AdamW(_model().parameters(), lr=1.0)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == 1e-3


def test_atomic_write_survives_an_interrupted_overwrite(saved, monkeypatch) -> None:
    path, model, ema = saved
    other = _model(prediction="v", cond_dim=3, seed=5)
    real = atomic_mod.write_bytes
    calls = {"n": 0}

    def dying_writer(file: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second file: write half of it, then the process "dies"
            with open(file, "wb") as f:
                f.write(data[: len(data) // 2])
            raise KeyboardInterrupt("killed")
        real(file, data)

    monkeypatch.setattr("scidiff.training.checkpoint.write_bytes", dying_writer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, other, ema_model=other, step=99)
    monkeypatch.setattr("scidiff.training.checkpoint.write_bytes", real)
    ck = load_checkpoint(path)
    assert ck.step == 42 and _same_weights(ck.raw_model.net, model.net) and _same_weights(ck.ema_model.net, ema.net)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]  # no temporary left behind


def test_kill_between_the_two_renames_recovers_the_previous_copy(saved) -> None:
    path, model, _ = saved
    path.rename(path.parent / ".ck.old-deadbeef")  # the state after os.replace(path, old) only
    with pytest.warns(UserWarning, match="previous copy"):
        ck = load_checkpoint(path)
    assert ck.step == 42 and _same_weights(ck.raw_model.net, model.net)


def test_trainer_run_dir_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    data = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=0, checkpoint_every=2, keep_checkpoints=1, val_every=0)
    trainer = Trainer(_model(), cfg, run_dir=tmp_path)
    trainer.fit(data, until=2, progress=False)
    good = {k: v.clone() for k, v in trainer.model.net.state_dict().items()}

    def dying_writer(file: Path, data: bytes) -> None:
        with open(file, "wb") as f:
            f.write(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr("scidiff.training.checkpoint.write_bytes", dying_writer)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(data, progress=False)
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path)
    assert ck.step == 2 and all(torch.equal(ck.raw_model.net.state_dict()[k], v) for k, v in good.items())
    assert (tmp_path / "latest").read_text().strip() == "checkpoints/step_00000002"
    # the next successful save clears the debris and keeps only the newest checkpoint
    trainer.save()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000004"]
    assert load_checkpoint(tmp_path).step == 4


def test_architecture_mismatch_lists_parameters(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, net=_unet(base=16, cond_dim=3))
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors' does not fit the network UNet" in msg
    first = next(iter(_unet(base=16, cond_dim=3).state_dict()))
    assert first in msg and "more)" in msg
    shape = r"\[\d+(, \d+)*\]"
    assert re.search(rf"shape mismatch \(checkpoint vs network\): \S+ {shape} vs {shape}", msg)
    # the saved net has a conditioning embedding, this one has none (and the reverse)
    extra = sorted(set(_unet(cond_dim=3).state_dict()) - set(_unet().state_dict()))
    with pytest.raises(CheckpointError, match=r"not in the network: .*" + re.escape(extra[0])):
        load_checkpoint(path, net=_unet())
    save_checkpoint(tmp_path / "plain", _model())
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: \S+"):
        load_checkpoint(tmp_path / "plain", net=_unet(cond_dim=3))
    # tampered constructor kwargs in the JSON are caught the same way
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["net"]["kwargs"]["base_channels"] = 16
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(path)


def test_corrupt_and_truncated_files_are_named(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    broken = tmp_path / "trunc"
    shutil.copytree(path, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"trunc/model\.safetensors' is corrupt or truncated"):
        load_checkpoint(broken)
    # without the recorded checksum nothing can be verified: the checkpoint is refused, naming the file
    meta = json.loads((broken / "checkpoint.json").read_text())
    del meta["files"]["model.safetensors"]["sha256"]
    (broken / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"records no sha256 for model\.safetensors"):
        load_checkpoint(broken)
    bad_json = tmp_path / "badjson"
    shutil.copytree(path, bad_json)
    text = (bad_json / "checkpoint.json").read_text()
    (bad_json / "checkpoint.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"badjson/checkpoint\.json' is corrupt or truncated: not valid JSON"):
        load_checkpoint(bad_json)
    flipped = tmp_path / "flipped"
    shutil.copytree(path, flipped)
    raw = bytearray((flipped / "ema.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (flipped / "ema.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"flipped/ema\.safetensors' is corrupt"):
        load_checkpoint(flipped)
    missing = tmp_path / "missing"
    shutil.copytree(path, missing)
    (missing / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: ema\.safetensors is missing"):
        load_checkpoint(missing)


def test_missing_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint at '.*nowhere': the path does not exist") as err:
        load_checkpoint(tmp_path / "nowhere")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint in '.*empty': it has neither checkpoint\.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointNotFoundError, match="is a file, not a checkpoint directory"):
        load_checkpoint(tmp_path / "notes.txt")


def test_resolve_run_dir_without_latest_picks_newest_complete(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    run = tmp_path / "run"
    shutil.copytree(path, run / "checkpoints" / "step_00000005")
    shutil.copytree(path, run / "checkpoints" / "step_00000009")
    (run / "checkpoints" / "step_00000012").mkdir()  # incomplete: no checkpoint.json
    assert resolve_checkpoint(run).name == "step_00000009"
    assert resolve_checkpoint(run / "checkpoints" / "step_00000005" / "model.safetensors").name == "step_00000005"


class NoConfigNet(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lin(x)


def test_network_without_config_needs_net_or_net_config(tmp_path: Path) -> None:
    model = sd.ScoreModel(NoConfigNet(4), SDE)
    save_checkpoint(tmp_path / "a", model)
    with pytest.raises(CheckpointError, match=r"records network class '.*NoConfigNet' but not its constructor arguments"):
        load_checkpoint(tmp_path / "a")
    assert _same_weights(load_model(tmp_path / "a", net=NoConfigNet(4)).net, model.net)
    save_checkpoint(tmp_path / "b", model, net_config={"width": 4})
    assert _same_weights(load_model(tmp_path / "b").net, model.net)  # class found in this imported module


def test_loading_never_calls_arbitrary_callables(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    evil = tmp_path / "evil"
    shutil.copytree(path, evil)
    meta = json.loads((evil / "checkpoint.json").read_text())
    meta["net"] = {"class": "os.system", "kwargs": {"command": f"touch {tmp_path / 'pwned'}"}}
    (evil / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a torch.nn.Module"):
        load_checkpoint(evil)
    meta["net"] = {"class": "some_unimported_pkg.Net", "kwargs": {}}
    (evil / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not in an imported module"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_normalizer_object_with_to_dict_is_stored(tmp_path: Path) -> None:
    class Stats:
        def to_dict(self) -> dict:
            return {"mean": [1.0, 2.0], "std": [3.0, 4.0]}

    save_checkpoint(tmp_path / "n", _model(), normalizer=Stats())
    assert load_checkpoint(tmp_path / "n").normalizer == {"mean": [1.0, 2.0], "std": [3.0, 4.0]}
    with pytest.raises(TypeError, match="normalizer must be a dict or have a to_dict"):
        save_checkpoint(tmp_path / "m", _model(), normalizer=object())
    with pytest.raises(FileExistsError, match="exists"):
        save_checkpoint(tmp_path / "n", _model(), overwrite=False)
