"""A latent run: `scidiff train --latent`, then sample and loglik on it (the bound, in the file's units).

The fields are a Gaussian random field in physical units (x = 5 + 2 g, g from the built-in
simulator), so the exact log p(x) = log p_g((x - 5) / 2) - D ln 2 is known and the run's bound,
which carries the normaliser's Jacobian, must lie below it on average (within its standard error).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from scidiff import runs
from scidiff.cli import main
from scidiff.simulators import GaussianRandomField

SIZE = 16
GRF = GaussianRandomField(SIZE, dims=2, slope=2.0)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = GRF.sample(96, seed=0).numpy()
    ds = xr.Dataset({"rho": (("sample", "y", "x"), 5.0 + 2.0 * g, {"units": "kg/m^3"})},
                    coords={"x": ("x", np.arange(SIZE) / SIZE), "y": ("y", np.arange(SIZE) / SIZE)})
    path = tmp_path_factory.mktemp("latent_run") / "rho.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path


@pytest.fixture(scope="module")
def run_dir(data_file: Path) -> Path:
    out = data_file.parent / "run"
    code = main(["train", "--data", str(data_file), "--var", "rho", "--out", str(out), "--periodic",
                 "--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--steps", "40",
                 "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", "5", "--ema-decay", "0.9",
                 "--latent", "factor=2,channels=2,base_channels=8", "--no-progress"])
    assert code == 0
    return out


def test_latent_run_holds_both_models(run_dir: Path) -> None:
    assert (run_dir / "autoencoder" / "autoencoder.json").is_file()
    info = json.loads((run_dir / "latent.json").read_text())
    assert info["latent_shape"] == [2, SIZE // 2, SIZE // 2] and info["options"]["factor"] == 2
    loaded = runs.Run.open(run_dir).load()
    assert loaded.latent is not None and loaded.latent.latent_shape == (2, SIZE // 2, SIZE // 2)
    assert loaded.checkpoint.step == 40


def test_sample_decodes_to_fields_in_the_data_units(run_dir: Path) -> None:
    ds, x = runs.sample(run_dir, 4, method="dpmpp_2m", steps=8, seed=0, progress=False)
    assert x.shape == (4, 1, SIZE, SIZE) and ds["rho"].attrs["units"] == "kg/m^3"
    assert bool(torch.isfinite(x).all())
    # decoded fields sit around the data's mean 5, not around the normalised 0
    assert abs(float(x.mean()) - 5.0) < 2.0


def test_loglik_reports_a_bound_below_the_exact_density(run_dir: Path, data_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ll.nc"
    assert main(["loglik", str(run_dir), "--data", str(data_file), "--out", str(out), "--n", "12",
                 "--divergence", "hutchinson", "--bound-samples", "3", "--no-progress"]) == 0
    assert "LOWER BOUND" in capsys.readouterr().out
    table = xr.open_dataset(out, engine="h5netcdf")
    assert table.attrs["log_prob_is_lower_bound"] == 1
    bound = torch.as_tensor(table["log_prob"].values)
    se = torch.as_tensor(table["log_prob_se"].values)
    with xr.open_dataset(data_file, engine="h5netcdf") as data:
        x = torch.as_tensor(data["rho"].values[:12])
    exact = GRF.log_prob((x - 5.0) / 2.0) - SIZE * SIZE * math.log(2.0)
    assert bool(torch.isfinite(bound).all()) and bool((se > 0).all())
    se_mean = float(se.square().sum().sqrt()) / len(se)
    assert float((exact - bound).mean()) > -3 * se_mean
    torch.testing.assert_close(torch.as_tensor(table["bits_per_dim"].values),
                               -bound / (SIZE * SIZE * math.log(2.0)))


def test_a_factor_that_does_not_divide_the_grid_fails_in_one_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    odd = tmp_path / "odd.nc"
    xr.Dataset({"rho": (("sample", "y", "x"), np.zeros((8, 12, 12)))}).to_netcdf(odd, engine="h5netcdf")
    base = ["train", "--data", str(odd), "--var", "rho", "--steps", "1", "--periodic", "--no-progress"]
    code = main([*base, "--out", str(tmp_path / "r"), "--latent", "factor=8,channels=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "odd.nc: spatial axis 0 has size 12, which the downsampling factor 8 does not divide" in err
    # the latent grid 12 / 4 = 3 cannot be taken by a two-level periodic UNet: one line too
    code = main([*base, "--out", str(tmp_path / "r"), "--latent", "factor=4,channels=2", "--channel-mults", "1,2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "the latent grid of odd.nc" in err, err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="factor must be 1, 2, 4 or 8"):
        runs.parse_latent("factor=3")
    with pytest.raises(ValueError, match="is not NAME=VALUE"):
        runs.parse_latent("size=3")


def test_an_overwrite_cut_short_is_finished_before_the_next(run_dir: Path, data_file: Path, tmp_path: Path) -> None:
    """A latent --overwrite killed before its first checkpoint left the old run set aside and a
    partial new one: the next --overwrite puts the old one back and replaces it, leaving one run."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    aside = runs.Run.set_aside(folder)  # as an overwrite does first ...
    assert aside is not None and not (folder / "run.json").exists()
    (folder / "autoencoder").mkdir()  # ... then it was killed while training the autoencoder
    assert main(["train", "--data", str(data_file), "--var", "rho", "--out", str(folder), "--periodic",
                 "--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--steps", "3",
                 "--batch-size", "16", "--warmup-steps", "1", "--latent", "factor=2,channels=2,base_channels=8",
                 "--overwrite", "--no-progress"]) == 0
    assert not list(folder.glob(".overwritten*"))  # neither the old run nor the partial one is left over
    loaded = runs.Run.open(folder).load()
    assert loaded.latent is not None and loaded.checkpoint.step == 3


# ---- a conditional latent run: the bound on log p(x | slope) -------------------------------------
SLOPES = (1.5, 3.0)


@pytest.fixture(scope="module")
def cond_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fields of two spectral slopes (48 each, interleaved), x = 5 + 2 g, the slope a coordinate."""
    gs = [GaussianRandomField(SIZE, dims=2, slope=a).sample(48, seed=10 + i).numpy() for i, a in enumerate(SLOPES)]
    g = np.stack(gs, 1).reshape(-1, SIZE, SIZE)
    slope = np.tile(np.asarray(SLOPES), 48)
    ds = xr.Dataset({"rho": (("sample", "y", "x"), 5.0 + 2.0 * g, {"units": "kg/m^3"})},
                    coords={"x": ("x", np.arange(SIZE) / SIZE), "y": ("y", np.arange(SIZE) / SIZE),
                            "slope": ("sample", slope)})
    path = tmp_path_factory.mktemp("latent_cond") / "rho_slope.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def test_loglik_on_a_conditional_latent_run_bounds_the_conditional_density(
        cond_data_file: Path, tmp_path: Path) -> None:
    run = cond_data_file.parent / "run"
    assert main(["train", "--data", str(cond_data_file), "--var", "rho", "--cond", "slope", "--out", str(run),
                 "--periodic", "--base-channels", "8", "--channel-mults", "1,2", "--no-attention", "--steps", "40",
                 "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", "5", "--ema-decay", "0.9",
                 "--latent", "factor=2,channels=2,base_channels=8", "--no-progress"]) == 0
    out = tmp_path / "ll.nc"
    assert main(["loglik", str(run), "--data", str(cond_data_file), "--out", str(out), "--n", "12",
                 "--divergence", "hutchinson", "--bound-samples", "3", "--no-progress"]) == 0
    table = xr.open_dataset(out, engine="h5netcdf")
    assert table.attrs["log_prob_is_lower_bound"] == 1
    # the parameter of each field is carried into the table, in the file's order
    np.testing.assert_array_equal(table["slope"].values, np.tile(np.asarray(SLOPES), 6))
    bound = torch.as_tensor(table["log_prob"].values)
    se = torch.as_tensor(table["log_prob_se"].values)
    with xr.open_dataset(cond_data_file, engine="h5netcdf") as data:
        x = torch.as_tensor(data["rho"].values[:12])
        slope = torch.as_tensor(data["slope"].values[:12])
    g = (x - 5.0) / 2.0
    exact = torch.stack([GaussianRandomField(SIZE, dims=2, slope=float(a)).log_prob(gi[None])[0]
                         for gi, a in zip(g, slope)]) - SIZE * SIZE * math.log(2.0)
    assert bool(torch.isfinite(bound).all()) and bool((se > 0).all())
    se_mean = float(se.square().sum().sqrt()) / len(se)
    assert float((exact - bound).mean()) > -3 * se_mean
    # the table is the bound under each field's own slope: the same call with the parameters
    # normalised as in training gives the same numbers, and the other slope different ones
    loaded = runs.Run.open(run).load()
    z = loaded.normalizer.forward(x[:, None].float())
    jac = loaded.normalizer.log_abs_det_jacobian(x[:, None].float())

    def bound_at(theta: torch.Tensor) -> torch.Tensor:
        res = loaded.latent.log_likelihood_bound(
            z, samples=3, cond=loaded.run.condition(theta[:, None].float()), divergence="hutchinson",
            generator=torch.Generator().manual_seed(0), rtol=1e-4, atol=1e-4)
        return res.log_prob + jac

    torch.testing.assert_close(bound_at(slope), bound, rtol=1e-5, atol=1e-3)
    other = torch.where(slope == SLOPES[0], SLOPES[1], SLOPES[0])
    assert float((bound_at(other) - bound).abs().min()) > 1e-2
