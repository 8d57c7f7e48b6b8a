"""Tests of scidiff.data: files in, fields out, per-channel normalisation and its Jacobian."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.stats
import torch
import xarray as xr

from scidiff.data import (
    DataError,
    FieldDataset,
    FieldTemplate,
    Normalizer,
    RunningMoments,
    check_spatial_size,
    fields_to_dataset,
    loglik_to_dataset,
    make_loader,
    open_fields,
    split_indices,
    write_csv,
    write_netcdf,
)

N, H, W = 23, 8, 6


def _make_nc(path: Path, *, seed: int = 0) -> xr.Dataset:
    """A small simulator output: temperature, a positive density, a parameter and a coordinate."""
    rng = np.random.default_rng(seed)
    ds = xr.Dataset(
        {
            "T": (("time", "y", "x"), 280.0 + 5.0 * rng.normal(size=(N, H, W)),
             {"units": "K", "long_name": "temperature"}),
            "rho": (("time", "y", "x"), np.exp(rng.normal(0.3, 0.5, size=(N, H, W))).astype(np.float32),
                    {"units": "kg m-3", "long_name": "density"}),
            "slope": (("time",), rng.uniform(0.0, 1.0, size=N), {"units": "1"}),
        },
        coords={
            "time": ("time", np.arange(N) * 0.5, {"units": "s"}),
            "y": ("y", np.linspace(-1.0, 1.0, H), {"units": "m", "axis": "Y"}),
            "x": ("x", np.arange(W) * 0.25, {"units": "m", "axis": "X"}),
            "Re": ("time", 100.0 + 10.0 * np.arange(N), {"long_name": "Reynolds number"}),
        },
        attrs={"title": "toy run", "institution": "somewhere", "history": "created by a simulator"},
    )
    ds.to_netcdf(path, engine="h5netcdf")
    return ds


@pytest.fixture
def nc(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    path = tmp_path / "run.nc"
    return path, _make_nc(path)


# --------------------------------------------------------------------------- netCDF


def test_netcdf_round_trip_keeps_dims_coords_names_units_attrs(nc: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    path, ds = nc
    src = open_fields(path, ["T", "rho"], cond=["slope"])
    assert src.sample_dim == "time" and src.spatial_dims == ("y", "x")
    assert src.shape == (N, 2, H, W) and src.channels == ("T", "rho")
    assert src.units == {"T": "K", "rho": "kg m-3"}
    chunk = src.read(0, N)
    np.testing.assert_array_equal(chunk.x[:, 0].numpy(), ds["T"].values)
    np.testing.assert_array_equal(chunk.x[:, 1].numpy(), ds["rho"].values.astype(np.float64))

    norm = Normalizer.fit(FieldDataset(src, split="all"), log=["rho"], progress=False)
    z = norm.forward(chunk.x)
    x = norm.inverse(z)
    torch.testing.assert_close(x, chunk.x, rtol=1e-13, atol=1e-12)

    out = fields_to_dataset(x[:5], src.template, provenance={"model": "unet-a", "sampler": "ode", "seed": 3, "nfe": 41},
                            cond=chunk.cond[:5])
    target = tmp_path / "samples.nc"
    write_netcdf(out, target)
    back = xr.open_dataset(target, engine="h5netcdf")
    for name in ("T", "rho"):
        assert back[name].dims == ("sample", "y", "x")
        assert back[name].attrs["units"] == ds[name].attrs["units"]
        assert back[name].attrs["long_name"] == ds[name].attrs["long_name"]
        np.testing.assert_allclose(back[name].values, ds[name].values[:5], rtol=1e-12)
    for c in ("x", "y"):
        np.testing.assert_array_equal(back[c].values, ds[c].values)
        assert back[c].attrs == ds[c].attrs
    np.testing.assert_array_equal(back["slope"].values, ds["slope"].values[:5])
    assert back.attrs["title"] == "toy run" and back.attrs["institution"] == "somewhere"
    assert back.attrs["history"].startswith("created by a simulator")
    assert back.attrs["model"] == "unet-a" and back.attrs["sampler"] == "ode"
    assert int(back.attrs["seed"]) == 3 and int(back.attrs["nfe"]) == 41
    from scidiff._version import __version__

    assert back.attrs["scidiff_version"] == __version__
    back.close()


def test_cond_from_variable_and_coordinate(nc: tuple[Path, xr.Dataset]) -> None:
    path, ds = nc
    src = open_fields(path, "T", cond=["slope", "Re"])
    assert src.cond_names == ("slope", "Re")
    chunk = src.read(4, 9)
    np.testing.assert_array_equal(chunk.cond[:, 0].numpy(), ds["slope"].values[4:9])
    np.testing.assert_array_equal(chunk.cond[:, 1].numpy(), ds["Re"].values[4:9])


def test_dim_order_is_per_variable_and_explicit_dims(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 4, 3))
    ds = xr.Dataset({"a": (("run", "p", "q"), a), "b": (("q", "run", "p"), a.transpose(2, 0, 1) * 2.0)})
    path = tmp_path / "order.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    src = open_fields(path, ["a", "b"])  # no x/y names: the dims after the first are spatial
    assert src.sample_dim == "run" and src.spatial_dims == ("p", "q")
    x = src.read(0, 5).x.numpy()
    np.testing.assert_array_equal(x[:, 0], a)
    np.testing.assert_array_equal(x[:, 1], 2.0 * a)
    src2 = open_fields(path, "a", sample_dim="q", spatial_dims=("run", "p"))
    np.testing.assert_array_equal(src2.read(1, 2).x.numpy()[0, 0], a[:, :, 1])


def test_netcdf3_classic_file(tmp_path: Path) -> None:
    path = tmp_path / "classic.nc"
    ds = _make_nc(tmp_path / "four.nc")
    ds.to_netcdf(path, engine="scipy")  # netCDF-3: read through scipy, no C library
    src = open_fields(path, ["T", "rho"], cond="Re")
    assert src.backend.kind == "netcdf" and src.spatial_dims == ("y", "x") and src.units["T"] == "K"
    np.testing.assert_array_equal(src.read(0, N).x[:, 0].numpy(), ds["T"].values)
    np.testing.assert_array_equal(src.cond[:, 0], ds["Re"].values)


# --------------------------------------------------------------------------- plain HDF5


def test_hdf5_plain_dataset_without_channel_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    fields = rng.normal(size=(11, 8, 4)).astype(np.float32)
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["fields"] = fields
        f["fields"].attrs["units"] = "m s-1"
        f.attrs["note"] = "plain"
    src = open_fields(path, "fields")
    assert (src.sample_dim, src.spatial_dims, src.shape) == ("sample", ("y", "x"), (11, 1, 8, 4))
    np.testing.assert_array_equal(src.read(2, 7).x[:, 0].numpy(), fields[2:7].astype(np.float64))
    out = fields_to_dataset(src.read(0, 3).x, src.template, provenance={"model": "m"})
    assert out["fields"].dims == ("sample", "y", "x") and out["fields"].attrs["units"] == "m s-1"
    assert out.attrs["note"] == "plain"


def test_hdf5_plain_dataset_with_channel_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fields = rng.normal(size=(9, 3, 4, 8))
    path = tmp_path / "chan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("fields", data=fields, chunks=(2, 3, 4, 8))
    src = open_fields(path, "fields")
    assert src.channels == ("fields[0]", "fields[1]", "fields[2]") and src.spatial_shape == (4, 8)
    np.testing.assert_array_equal(src.read(0, 9).x.numpy(), fields)
    out = fields_to_dataset(torch.from_numpy(fields[:2]), src.template, provenance={})
    assert out["fields"].dims == ("sample", "channel", "y", "x")
    np.testing.assert_array_equal(out["fields"].values, fields[:2])
    # a 3-D volume with one channel: name the axes
    vol = open_fields(path, "fields", dims=("sample", "z", "y", "x"))
    assert vol.spatial_dims == ("z", "y", "x") and vol.shape == (9, 1, 3, 4, 8)


def test_hdf5_several_variables_in_group_with_cond_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    u, v = rng.normal(size=(2, 7, 5, 5))
    params = rng.normal(size=(7, 2))
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("sim/run1")
        g["u"], g["v"], g["params"] = u, v, params
    src = open_fields(path, ["u", "v"], group="sim/run1", cond="params")
    assert src.channels == ("u", "v") and src.cond_names == ("params[0]", "params[1]")
    chunk = src.read(0, 7)
    np.testing.assert_array_equal(chunk.x.numpy(), np.stack([u, v], axis=1))
    np.testing.assert_array_equal(chunk.cond.numpy(), params)


# --------------------------------------------------------------------------- normaliser


def _h5_source(tmp_path: Path, data: np.ndarray, name: str = "f.h5") -> Path:
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        f["fields"] = data
    return path


def test_streamed_statistics_equal_numpy_on_training_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = np.stack([3.0 + 2.0 * rng.normal(size=(53, 6, 5)), np.exp(rng.normal(1.0, 0.7, size=(53, 6, 5)))], axis=1)
    src = open_fields(_h5_source(tmp_path, data), "fields")
    train = FieldDataset(src, split="train", val_fraction=0.2, seed=7)
    ref = data[train.indices]
    for chunk_size in (7, 10, 53):  # 7 and 10 do not divide the split
        norm = Normalizer.fit(train, log=["fields[1]"], chunk_size=chunk_size, progress=False)
        assert norm.mean.dtype == torch.float64 and norm.log.tolist() == [False, True]
        g = np.stack([ref[:, 0], np.log(ref[:, 1])], axis=1)
        mean = g.mean(axis=(0, 2, 3))
        std = g.std(axis=(0, 2, 3))
        np.testing.assert_allclose(norm.mean.numpy(), mean, rtol=1e-12, atol=1e-12 * std.max())
        np.testing.assert_allclose(norm.std.numpy(), std, rtol=1e-12)
        assert norm.count == ref.shape[0] * 6 * 5


def test_running_moments_merge_is_exact_for_uneven_chunks() -> None:
    rng = np.random.default_rng(6)
    x = 1e3 + rng.normal(size=(40, 3, 4))  # an offset mean tests the stable update
    m = RunningMoments(3)
    for a, b in ((0, 1), (1, 14), (14, 15), (15, 40)):
        m.update(x[a:b])
    np.testing.assert_allclose(m.mean, x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(m.std, x.std(axis=(0, 2)), rtol=1e-11)


def test_log_abs_det_jacobian_equals_autograd_and_closed_form() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 2, 2, 3, dtype=torch.float64) + 0.1
    x[:, 1] -= 0.5  # the linear channel may be negative
    norm = Normalizer([0.3, -1.0], [0.7, 2.5], log=[True, False], channels=["rho", "u"])
    ladj = norm.log_abs_det_jacobian(x)
    assert ladj.shape == (3,)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: norm.forward(v.reshape(1, 2, 2, 3)).reshape(-1), x[b].reshape(-1))
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign > 0
        torch.testing.assert_close(ladj[b], logdet, rtol=1e-12, atol=1e-12)
    closed = (-torch.log(x[:, 0]) - math.log(0.7)).sum(dim=(1, 2)) + 6 * (-math.log(2.5))
    torch.testing.assert_close(ladj, closed, rtol=1e-13, atol=1e-13)
    expected_z = torch.stack([(torch.log(x[:, 0]) - 0.3) / 0.7, (x[:, 1] + 1.0) / 2.5], dim=1)
    torch.testing.assert_close(norm.forward(x), expected_z, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(norm.inverse(norm.forward(x)), x, rtol=1e-13, atol=1e-13)


def test_density_identity_against_scipy_lognorm() -> None:
    mu, s = 0.4, 0.6
    gen = torch.Generator().manual_seed(1)
    x = torch.exp(mu + s * torch.randn(16, 1, 4, 4, generator=gen, dtype=torch.float64))
    norm = Normalizer([mu], [s], log=[True], channels=["rho"])
    z = norm.forward(x)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    log_px = log_pz + norm.log_abs_det_jacobian(x)
    ref = scipy.stats.lognorm.logpdf(x.numpy(), s, scale=math.exp(mu)).reshape(16, -1).sum(1)
    np.testing.assert_allclose(log_px.numpy(), ref, rtol=1e-12, atol=1e-10)


def test_fitted_log_statistics_recover_lognormal_parameters(tmp_path: Path) -> None:
    mu, s, n = -0.5, 0.8, 400 * 16
    rng = np.random.default_rng(8)
    data = np.exp(mu + s * rng.normal(size=(400, 4, 4)))
    norm = Normalizer.fit(open_fields(_h5_source(tmp_path, data), "fields"), log=["fields"], chunk_size=37, progress=False)
    # standard errors: mean s / sqrt(n), std s / sqrt(2 n) (Gaussian log-values)
    assert abs(norm.mean.item() - mu) < 5 * s / math.sqrt(n)
    assert abs(norm.std.item() - s) < 5 * s / math.sqrt(2 * n)


def test_normalizer_serialises_exactly() -> None:
    norm = Normalizer([0.1234567890123456789, 2.0 / 3.0], [1.0 / 7.0, 3.3], log=[False, True], channels=["a", "b"], count=9)
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert torch.equal(back.mean, norm.mean) and torch.equal(back.std, norm.std)
    assert back.log.tolist() == [False, True] and back.channels == ("a", "b") and back.count == 9
    with pytest.raises(ValueError, match="not a saved Normalizer"):
        Normalizer.from_dict({"mean": [0.0]})


# --------------------------------------------------------------------------- streaming dataset


def _indexed_file(tmp_path: Path, n: int = 37) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(9)
    data = rng.normal(size=(n, 1, 4, 4))
    path = tmp_path / "idx.h5"
    with h5py.File(path, "w") as f:
        f["fields"], f["index"] = data, np.arange(n, dtype=np.float64)
    return path, data


def test_split_is_disjoint_and_complete() -> None:
    train, val = split_indices(50, val_fraction=0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50))
    assert np.array_equal(split_indices(50, val_fraction=0.2, seed=3)[1], val)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_yields_each_training_sample_once_normalised(tmp_path: Path, num_workers: int) -> None:
    path, data = _indexed_file(tmp_path)
    src = open_fields(path, "fields", cond="index")
    norm = Normalizer([0.5], [2.0], channels=["fields"])
    ds = FieldDataset(src, split="train", val_fraction=0.25, normalizer=norm, chunk_size=5, shuffle_chunks=2)
    loader = make_loader(ds, batch_size=4, num_workers=num_workers)
    assert loader.normalizer is norm
    orders = []
    for _ in range(2):
        seen = []
        for x, cond in loader:
            assert x.dtype == torch.float32 and x.shape[1:] == (1, 4, 4)
            idx = cond[:, 0].long().numpy()
            np.testing.assert_allclose(x.numpy(), ((data[idx] - 0.5) / 2.0).astype(np.float32), rtol=1e-6)
            seen.extend(idx.tolist())
        assert sorted(seen) == ds.indices.tolist()
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shuffle each epoch
    val = FieldDataset(src, split="val", val_fraction=0.25)
    assert set(val.indices.tolist()).isdisjoint(ds.indices.tolist())
    x0, c0 = val[0]
    np.testing.assert_allclose(x0.numpy(), data[val.indices[0]].astype(np.float32))


def test_random_access_batches_and_read_index(tmp_path: Path) -> None:
    path, data = _indexed_file(tmp_path)
    src = open_fields(path, "fields", cond="index")
    idx = [30, 2, 2, 17, 0, 36, 3]
    chunk = src.read_index(idx, max_gap=2)
    np.testing.assert_array_equal(chunk.x.numpy(), data[idx])
    np.testing.assert_array_equal(chunk.cond[:, 0].numpy(), idx)
    norm = Normalizer([1.0], [0.5], channels=["fields"])
    ds = FieldDataset(src, split="val", val_fraction=0.3, normalizer=norm, dtype=torch.float64)
    plan = [[4, 0, 2], [1, 3], [5]]  # what a DistributedSampler-driven trainer passes
    batches = list(torch.utils.data.DataLoader(ds, batch_sampler=plan))
    for items, (x, cond) in zip(plan, batches):
        expect = ds.indices[items]
        np.testing.assert_array_equal(cond[:, 0].numpy(), expect)
        np.testing.assert_allclose(x.numpy(), (data[expect] - 1.0) / 0.5, rtol=1e-15)
    seen = [int(i) for _, c in make_loader(ds, 4, streaming=False) for i in c[:, 0]]
    assert sorted(seen) == ds.indices.tolist()


# --------------------------------------------------------------------------- bad input


def test_nan_names_file_variable_and_sample(tmp_path: Path) -> None:
    path = tmp_path / "bad_nan.nc"
    ds = _make_nc(tmp_path / "ok.nc")
    ds["rho"].values[17, 3, 2] = np.nan
    ds.to_netcdf(path, engine="h5netcdf")
    src = open_fields(path, ["T", "rho"])
    with pytest.raises(DataError, match=r"bad_nan\.nc.*'rho'.*NaN.*sample 17.*y=3, x=2"):
        Normalizer.fit(FieldDataset(src, split="all"), chunk_size=4, progress=False)
    src.read(0, 17)  # the samples before are fine


def test_inf_in_plain_hdf5_and_in_conditioning(tmp_path: Path) -> None:
    data = np.ones((10, 4, 4))
    data[6, 1, 1] = -np.inf
    path = _h5_source(tmp_path, data, "bad_inf.h5")
    with pytest.raises(DataError, match=r"bad_inf\.h5.*'fields'.*-inf.*sample 6"):
        list(open_fields(path, "fields").iter_chunks(chunk_size=4))
    with h5py.File(path, "a") as f:
        f["p"] = np.array([0.0, 1, 2, np.nan, 4, 5, 6, 7, 8, 9])
    with pytest.raises(DataError, match=r"bad_inf\.h5.*'p'.*nan.*sample 3"):
        open_fields(path, "fields", cond="p")


def test_missing_variable_lists_available(nc: tuple[Path, xr.Dataset]) -> None:
    path, _ = nc
    with pytest.raises(DataError, match=r"run\.nc.*'pressure' not found.*available variables: 'T', 'rho', 'slope'"):
        open_fields(path, ["T", "pressure"])
    with pytest.raises(DataError, match=r"run\.nc.*'mass' not found"):
        open_fields(path, "T", cond="mass")


def test_missing_group_lists_groups(tmp_path: Path) -> None:
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f.create_group("sim")["u"] = np.zeros((3, 4))
    with pytest.raises(DataError, match=r"g\.h5.*group 'runs' not found.*'sim'"):
        open_fields(path, "u", group="runs")


def test_variables_with_disagreeing_dims_show_both(tmp_path: Path) -> None:
    ds = xr.Dataset({"T": (("time", "y", "x"), np.zeros((4, 3, 2))), "P": (("time", "y", "x2"), np.zeros((4, 3, 5)))})
    path = tmp_path / "dims.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    with pytest.raises(DataError, match=r"dims\.nc.*'T' dims \('time', 'y', 'x'\).*'P' dims \('time', 'y', 'x2'\)"):
        open_fields(path, ["T", "P"])
    path2 = tmp_path / "sizes.h5"
    with h5py.File(path2, "w") as f:
        f["a"], f["b"] = np.zeros((4, 8, 8)), np.zeros((4, 8, 6))
    with pytest.raises(DataError, match=r"sizes\.h5.*'a'.*shape \(4, 8, 8\).*'b'.*shape \(4, 8, 6\)"):
        open_fields(path2, ["a", "b"])


def test_non_numeric_dtype(tmp_path: Path) -> None:
    path = tmp_path / "text.h5"
    with h5py.File(path, "w") as f:
        f["names"] = np.array([[b"a", b"b"], [b"c", b"d"]])
    with pytest.raises(DataError, match=r"text\.h5.*'names'.*non-numeric dtype"):
        open_fields(path, "names")


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage"])
def test_unreadable_files_raise_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.h5"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        good = _h5_source(tmp_path, np.random.default_rng(0).normal(size=(64, 16, 16)), "good.h5")
        blob = good.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=rf"{kind}\.h5") as err:
        open_fields(path, "fields")
    assert "\n" not in str(err.value)


def test_corrupt_chunk_inside_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("fields", data=np.random.default_rng(0).normal(size=(6, 8, 8)),
                                chunks=(1, 8, 8), compression="gzip")
        info = dset.id.get_chunk_info(4)  # the compressed bytes of sample 4
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    src = open_fields(path, "fields")
    np.testing.assert_array_equal(src.read(0, 4).x.shape, (4, 1, 8, 8))
    with pytest.raises(DataError, match=r"damaged\.h5.*'fields', samples 2:6 failed"):
        src.read(2, 6)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "run.nc"
    with pytest.raises(FileNotFoundError, match=r"nowhere.run\.nc"):
        open_fields(path, "T")


def test_log_of_non_positive_value_names_variable_and_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    data = np.exp(rng.normal(size=(12, 2, 3, 3)))
    data[9, 1, 0, 2] = 0.0
    src = open_fields(_h5_source(tmp_path, data, "neg.h5"), "fields")
    with pytest.raises(DataError, match=r"neg\.h5.*'fields'.*fields\[1\].*<= 0 at sample 9"):
        Normalizer.fit(src, log=["fields"], chunk_size=5, progress=False)
    with pytest.raises(ValueError, match="not among the channels"):
        Normalizer.fit(src, log=["density"], progress=False)


def test_check_spatial_size_names_sizes_that_work() -> None:
    check_spatial_size((32, 64), 8)
    with pytest.raises(DataError, match=r"run\.nc.*y has size 30 \(nearest sizes that work: 24 or 32\)") as err:
        check_spatial_size((30, 32), 8, dims=("y", "x"), source="run.nc")
    assert "x has size" not in str(err.value)


# --------------------------------------------------------------------------- writing


def test_atomic_write_leaves_no_partial_file(nc: tuple[Path, xr.Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, ds = nc
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "samples.nc"
    write_netcdf(ds, target)
    before = target.read_bytes()

    def crash(self: xr.Dataset, tmp: object, **kwargs: object) -> None:
        Path(str(tmp)).write_bytes(b"\x89HDF\r\n\x1a\n half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_netcdf(ds, target)
    with pytest.raises(RuntimeError, match="disk full"):
        write_netcdf(ds, out_dir / "new.nc")
    assert target.read_bytes() == before
    assert sorted(os.listdir(out_dir)) == ["samples.nc"]


def test_loglik_dataset_and_csv(nc: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    path, _ = nc
    src = open_fields(path, ["T", "rho"], cond="slope")
    log_prob = torch.tensor([-10.5, -3.25, 7.0], dtype=torch.float64)
    D = 2 * H * W
    bpd = -log_prob / (D * math.log(2))
    provenance = {"model": "m", "nfe": 98, "guidance": {"scale": 1.5}, "ema": True, "note": None,
                  "t_min": torch.tensor(1e-3)}
    ds = loglik_to_dataset(log_prob, bpd, src.template, provenance=provenance, index=[4, 0, 2],
                           cond=src.cond[[4, 0, 2]])
    assert ds["log_prob"].attrs["units"] == "nat" and ds.attrs["nfe"] == 98
    write_netcdf(ds, tmp_path / "ll.nc")
    with xr.open_dataset(tmp_path / "ll.nc", engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["log_prob"].values, log_prob.numpy())
        assert json.loads(back.attrs["guidance"]) == {"scale": 1.5} and back.attrs["ema"] == 1
        assert back.attrs["t_min"] == pytest.approx(1e-3, rel=1e-6)
    csv = write_csv(ds, tmp_path / "ll.csv")
    table = np.genfromtxt(csv, delimiter=",", names=True, comments="#")
    np.testing.assert_array_equal(table["log_prob"], log_prob.numpy())
    np.testing.assert_allclose(table["bits_per_dim"], bpd.numpy(), rtol=1e-15)
    np.testing.assert_array_equal(table["source_index"], [4, 0, 2])
    np.testing.assert_array_equal(table["slope"], src.cond[[4, 0, 2], 0])


def test_template_survives_json_and_rejects_bad_shapes(nc: tuple[Path, xr.Dataset]) -> None:
    path, ds = nc
    src = open_fields(path, ["T", "rho"])
    template = FieldTemplate.from_dict(json.loads(json.dumps(src.template.to_dict())))
    x = src.read(0, 2).x
    a = fields_to_dataset(x, src.template, provenance={})
    b = fields_to_dataset(x, template, provenance={})
    xr.testing.assert_identical(a.drop_attrs(deep=False), b.drop_attrs(deep=False))
    with pytest.raises(ValueError, match=r"shape \(2, 1, 8, 6\).*\[n, 2, 8, 6\]"):
        fields_to_dataset(x[:, :1], template, provenance={})


# --------------------------------------------------------------------------- more layouts


def test_channel_dim_with_labels_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    u = rng.normal(size=(6, 2, 4, 5))
    ds = xr.Dataset(
        {"wind": (("time", "component", "lat", "lon"), u, {"units": "m s-1"}),
         "p": (("time", "lat", "lon"), rng.normal(size=(6, 4, 5)), {"units": "Pa"})},
        coords={"component": ["east", "north"], "lat": np.linspace(-10, 10, 4), "lon": np.linspace(0, 40, 5)},
    )
    path = tmp_path / "wind.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    src = open_fields(path, ["wind", "p"], channel_dim="component")
    assert src.channels == ("wind[east]", "wind[north]", "p") and src.spatial_dims == ("lat", "lon")
    x = src.read(0, 6).x
    np.testing.assert_array_equal(x[:, :2].numpy(), u)
    out = fields_to_dataset(x, src.template, provenance={})
    assert out["wind"].dims == ("sample", "component", "lat", "lon")
    assert out["component"].values.tolist() == ["east", "north"]
    np.testing.assert_array_equal(out["wind"].values, u)
    np.testing.assert_array_equal(out["p"].values, ds["p"].values)
    # without naming the channel dim, 'component' is an unexplained dim
    with pytest.raises(DataError, match=r"wind\.nc.*\['component'\].*channel_dim="):
        open_fields(path, "wind")


def test_one_and_three_dimensional_grids_and_integer_fields(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    line = rng.integers(0, 100, size=(7, 16)).astype(np.int32)
    vol = rng.normal(size=(3, 4, 5, 6))
    path = tmp_path / "grids.nc"
    xr.Dataset({"counts": (("run", "x"), line), "vol": (("member", "z", "y", "x2"), vol)}).to_netcdf(path, engine="h5netcdf")
    src1 = open_fields(path, "counts")
    assert (src1.sample_dim, src1.spatial_dims, src1.shape) == ("run", ("x",), (7, 1, 16))
    np.testing.assert_array_equal(src1.read(0, 7).x[:, 0].numpy(), line.astype(np.float64))
    src3 = open_fields(path, "vol", spatial_dims=("z", "y", "x2"))
    assert src3.sample_dim == "member" and src3.spatial_shape == (4, 5, 6)
    np.testing.assert_array_equal(src3.read(1, 3).x[:, 0].numpy(), vol[1:3])


def test_fill_value_is_reported_as_missing(tmp_path: Path) -> None:
    data = np.ones((8, 3, 3), dtype=np.float32)
    data[5, 2, 0] = -999.0
    path = tmp_path / "fill.nc"
    xr.Dataset({"h": (("time", "y", "x"), data)}).to_netcdf(
        path, engine="h5netcdf", encoding={"h": {"_FillValue": -999.0}}
    )
    with pytest.raises(DataError, match=r"fill\.nc.*'h'.*fill value.*sample 5.*y=2, x=0"):
        open_fields(path, "h").read(0, 8)


def test_distributed_shares_are_disjoint_and_equal(tmp_path: Path) -> None:
    path, _ = _indexed_file(tmp_path, n=41)
    src = open_fields(path, "fields", cond="index")
    seen = []
    for rank in range(2):
        ds = FieldDataset(src, split="train", val_fraction=0.1, chunk_size=4, rank=rank, world_size=2)
        seen.append([int(c.item()) for _, c in ds])
    assert len(seen[0]) == len(seen[1]) > 0
    assert set(seen[0]).isdisjoint(seen[1])
    assert set(seen[0]) | set(seen[1]) <= set(ds.indices.tolist())
    assert len(ds) - 2 * len(seen[0]) <= 4  # shares differ by at most one chunk (4 samples)


def test_normalizer_from_tensors_follows_input_dtype() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 2, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0]).view(1, 2, 1) + 2.0
    norm = Normalizer.fit([x[:13], x[13:]], channels=["a", "b"], progress=False)
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(dim=(0, 2)).numpy(), rtol=1e-13)
    np.testing.assert_allclose(norm.std.numpy(), x.std(dim=(0, 2), correction=0).numpy(), rtol=1e-13)
    z32 = norm.forward(x.float())
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32, norm.forward(x).float(), rtol=1e-5, atol=1e-5)
    bad = x.clone()
    bad[4, 1, 2] = float("nan")
    with pytest.raises(DataError, match=r"'b'.*nan.*sample 4"):
        Normalizer.fit([bad], channels=["a", "b"], progress=False)
