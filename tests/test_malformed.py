"""Malformed and degenerate inputs, generated here, across the five domains: each is refused with a DataError
naming the file (what was found, what was expected) or, where the domain has validity, read with the bad
values marked invalid and counted in a warning."""
import logging

import nibabel as nib
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from scimae.core import DataError
from scimae.domains.brain_mri.io import read_volume
from scimae.domains.cardiac.io import from_array, read_record
from scimae.domains.remote_sensing.io import Band, open_scene
from scimae.domains.scene3d.io import read_cloud
from scimae.domains.skeleton.data import SkeletonDataConfig, load_samples
from scimae.domains.skeleton.io import read_arrays, read_skeleton

JOINT = "0.1 0.2 3 1 2 3 4 1 0 0 0 2"


def _nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return path


def _skeleton(path, joints_per_frame):
    """A .skeleton file of one body, one frame per entry of ``joints_per_frame`` (25 joint lines each)."""
    frames = ["1\n72057594037931101 0 1 1 1 1 0 0.01 -0.02 2\n25\n" + "\n".join(js) for js in joints_per_frame]
    path.write_text(f"{len(frames)}\n" + "\n".join(frames) + "\n")
    return path


# -- brain MRI -----------------------------------------------------------------------------------------------
def test_brain_non_finite_voxels_are_zeroed_and_counted(tmp_path, caplog):
    data = np.random.default_rng(0).uniform(1, 2, (8, 8, 8))
    data[0, 0, :3] = [np.inf, -np.inf, np.nan]
    with caplog.at_level(logging.WARNING):
        volume, _, _ = read_volume(_nifti(tmp_path / "t1.nii.gz", data))
    assert np.isfinite(volume).all() and (volume[0, 0, :3] == 0).all()
    assert "t1.nii.gz: 3 non-finite voxels (NaN or inf) set to 0" in caplog.text


@pytest.mark.parametrize("data, found", [
    (np.full((8, 8, 8), 7.0), r"a constant volume \(every voxel 7\)"),
    (np.zeros((8, 8, 8)), "an all-zero volume"),
    (np.full((8, 8, 8), np.inf), r"only non-finite voxels \(NaN or inf\)"),
])
def test_brain_volumes_without_signal_are_data_errors(tmp_path, data, found):
    with pytest.raises(DataError, match=f"flair.nii.gz: found {found}"):
        read_volume(_nifti(tmp_path / "flair.nii.gz", data))


def test_brain_headers_declaring_absurd_or_missing_data_are_refused_before_reading(tmp_path):
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    img.header.set_data_shape((4000, 4000, 4000))
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / "ok.nii"))
    raw = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "huge.nii").write_bytes(img.header.binaryblock + raw[348:])
    with pytest.raises(DataError, match=r"huge.nii: found a header declaring 4000 x 4000 x 4000 = 64,000,000,000 voxels"):
        read_volume(tmp_path / "huge.nii")
    (tmp_path / "short.nii").write_bytes(raw[:-100])
    with pytest.raises(DataError, match=r"short.nii: found 2,300 bytes where the header's \(8, 8, 8\) float32 volume "
                                        r"needs 2,400"):
        read_volume(tmp_path / "short.nii")


# -- cardiac -------------------------------------------------------------------------------------------------
def test_cardiac_infinite_samples_are_gaps_and_flat_lines_are_dropped(caplog):
    x = np.random.default_rng(0).normal(size=(3, 500))
    x[0, 10] = np.inf
    x[2] = 0.5  # a lead that is off
    with caplog.at_level(logging.WARNING):
        sig = from_array(x, 250.0, ["I", "II", "V1"], "rec7")
    assert sig.channels == ["I", "II"] and np.isnan(sig.data[0, 10]) and np.isfinite(np.delete(sig.data[0], 10)).all()
    assert "rec7: 1 infinite samples treated as gaps" in caplog.text
    assert "rec7: channel V1 is a flat line (every sample 0.5); dropped" in caplog.text


@pytest.mark.parametrize("fs", [0.0, -250.0, np.inf, np.nan])
def test_cardiac_a_sampling_rate_that_is_not_positive_is_a_data_error(fs):
    with pytest.raises(DataError, match=f"rec7: found sampling rate {fs}"):
        from_array(np.random.default_rng(0).normal(size=(1, 100)), fs, ["I"], "rec7")


def test_cardiac_only_flat_or_empty_channels_is_a_data_error():
    with pytest.raises(DataError, match=r"rec7: found no usable channel among \['I', 'II'\]"):
        from_array(np.stack([np.zeros(100), np.full(100, np.nan)]), 250.0, ["I", "II"], "rec7")


def test_cardiac_a_header_with_a_negative_sampling_frequency_is_a_data_error(tmp_path):
    import wfdb

    wfdb.wrsamp("r1", fs=250, units=["mV"], sig_name=["I"], p_signal=np.random.default_rng(0).normal(size=(500, 1)),
                fmt=["16"], write_dir=str(tmp_path))
    header = tmp_path / "r1.hea"
    header.write_text(header.read_text().replace("r1 1 250 500", "r1 1 -250 500", 1))
    with pytest.raises(DataError, match="r1.hea: found a sampling frequency of -250; expected a positive"):
        read_record(tmp_path / "r1")


# -- remote sensing ------------------------------------------------------------------------------------------
def test_geotiff_nan_and_inf_without_a_nodata_tag_are_invalid_pixels(tmp_path):
    data = np.ones((1, 8, 8), np.float32)
    data[0, 0, :2] = [np.nan, np.inf]
    with rasterio.open(tmp_path / "f.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       crs="EPSG:32614", transform=from_origin(500000, 4500000, 1, 1)) as dst:
        dst.write(data)
    x, valid = open_scene(tmp_path / "f.tif", [Band("B1")]).read(0, 0, 8)
    assert not valid[0, 0, :2].any() and valid.sum() == 62 and np.isfinite(x).all()


def test_a_truncated_geotiff_is_a_data_error_naming_it(tmp_path):
    with rasterio.open(tmp_path / "full.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:32614", transform=from_origin(500000, 4500000, 1, 1)) as dst:
        dst.write(np.full((1, 64, 64), 9, np.uint8))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "full.tif").read_bytes()[:2000])
    with pytest.raises(DataError, match="cut.tif: found a window rasterio cannot read"):
        open_scene(tmp_path / "cut.tif", [Band("B1")]).read(0, 0, 64)


# -- point clouds --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("array, found", [
    (np.tile([[1.0, 2.0, 3.0]], (50, 1)), r"50 points all at one place \(1, 2, 3\)"),
    (np.array([["a", "b", "c"]]), "an array of <U1"),
    (np.full((10, 3), np.nan), "10 points, none of them finite"),
])
def test_degenerate_clouds_are_data_errors(tmp_path, array, found):
    np.save(tmp_path / "c.npy", array)
    with pytest.raises(DataError, match=f"c.npy: found {found}"):
        read_cloud(tmp_path / "c.npy")


def test_a_npy_cloud_numpy_cannot_read_is_a_data_error(tmp_path):
    (tmp_path / "c.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="c.npy: found a file NumPy cannot read"):
        read_cloud(tmp_path / "c.npy")


@pytest.mark.parametrize("kind", ["ascii", "binary"])
def test_a_pcd_holding_fewer_points_than_its_header_declares_is_a_data_error(tmp_path, kind):
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).normal(size=(100, 3))))
    o3d.io.write_point_cloud(str(tmp_path / "full.pcd"), pc, write_ascii=kind == "ascii")
    assert len(read_cloud(tmp_path / "full.pcd").points) == 100
    text = (tmp_path / "full.pcd").read_bytes()
    (tmp_path / "short.pcd").write_bytes(text.replace(b"POINTS 100", b"POINTS 4096").replace(b"WIDTH 100", b"WIDTH 4096"))
    with pytest.raises(DataError, match="short.pcd: found 100 points where the header declares 4096"):
        read_cloud(tmp_path / "short.pcd")


def test_a_nerf_grid_whose_mask_covers_no_patch_is_a_data_error(tmp_path):
    from scimae.domains.scene3d.data import NerfDataConfig, NerfGrids

    mask = np.zeros((8, 8, 8), bool)
    mask[0, 0, 0] = True  # one voxel: no 4^3 patch is half inside
    np.savez(tmp_path / "g.npz", rgbsigma=np.ones((8, 8, 8, 4), np.float32), mask=mask)
    with pytest.raises(DataError, match=r"g.npz: found no patch of 4\^3 voxels with a share of at least 0.5"):
        NerfGrids([tmp_path / "g.npz"], NerfDataConfig(grid=(8, 8, 8), patch=4))[0]


def test_an_hdf5_file_with_no_clouds_is_a_data_error(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py (the 3d extra) reads HDF5 clouds")
    from scimae.domains.scene3d.io import read_h5

    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["data"] = np.zeros((0, 1024, 3), np.float32)
    with pytest.raises(DataError, match=r"e.h5: found 'data' of shape \(0, 1024, 3\); expected \[S >= 1, N, 3"):
        read_h5(tmp_path / "e.h5")


# -- skeletons -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan 0.2 3 1 2 3 4 1 0 0 0 2", "1e308 0.2 3 1 2 3 4 1 0 0 0 2",
                                 "inf 0.2 3 1 2 3 4 1 0 0 0 2"])
def test_skeleton_frames_with_non_finite_joints_are_left_out(tmp_path, caplog, bad):
    path = _skeleton(tmp_path / "S001C001P001R001A001.skeleton", [[JOINT] * 25, [JOINT] * 24 + [bad], [JOINT] * 25])
    with caplog.at_level(logging.WARNING):
        seq = read_skeleton(path)
    assert seq.present().tolist() == [[True, False, True]]
    assert "S001C001P001R001A001.skeleton: 1 bodies in frames with non-finite or out-of-range joints" in caplog.text


def test_a_skeleton_file_with_a_negative_frame_count_is_a_data_error(tmp_path):
    (tmp_path / "S001C001P001R001A001.skeleton").write_text("-3\n")
    with pytest.raises(DataError, match="A001.skeleton: found a frame count of -3 on line 1"):
        read_skeleton(tmp_path / "S001C001P001R001A001.skeleton")


@pytest.mark.parametrize("make, found", [
    (lambda p: np.save(p, np.array([["x"] * 3])), "arrays of <U1"),
    (lambda p: p.write_bytes(b"not numpy"), "a file NumPy cannot read"),
    (lambda p: np.save(p, np.zeros((2, 3, 4))), r"an array of shape \(2, 3, 4\)"),
])
def test_unreadable_skeleton_arrays_are_data_errors(tmp_path, make, found):
    make(tmp_path / "x.npy")
    with pytest.raises(DataError, match=f"x.npy: found {found}"):
        read_arrays(tmp_path / "x.npy")


def test_skeleton_arrays_non_finite_values_are_absent_and_empty_sequences_refused(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(4, 3, 6, 25, 1)).astype(np.float32)
    x[0, 0, 0, 0, 0] = np.inf
    np.save(tmp_path / "ok.npy", x)
    with caplog.at_level(logging.WARNING):
        read, _ = read_arrays(tmp_path / "ok.npy")
    assert read[0, 0, 0, 0, 0] == 0 and np.isfinite(read).all()
    assert "ok.npy: 1 non-finite or out-of-range values" in caplog.text
    x[2] = np.nan  # one sequence with no usable joint
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataError, match=r"bad.npy: found 1 sequences with no body in any frame \(bad.npy\[2\]\)"):
        load_samples(SkeletonDataConfig(root=str(tmp_path / "bad.npy"), frames=8))


def test_a_missing_skip_list_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.txt: found no such file; expected a text file of sample names"):
        load_samples(SkeletonDataConfig(root=str(tmp_path), skip_list=str(tmp_path / "nope.txt")))


# -- through the pipelines' command line: exit status 2, the file named, no traceback ------------------------
def _cli(main, argv, capsys) -> str:
    from scimae.core.config import run_cli

    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    return err


def test_pipelines_refuse_bad_files_with_status_2_naming_them(tmp_path, capsys):
    import wfdb

    from scimae.pipelines import brats_pretrain, cardiac_pretrain, geo_pretrain, pointcloud_pretrain, skeleton_pretrain

    tiny = ["train.epochs=1", "model.dim=32", "model.depth=1", "model.heads=2"]
    brain = tmp_path / "brain"
    brain.mkdir()
    _nifti(brain / "case1_t1.nii.gz", np.full((8, 8, 8), 3.0))
    assert "case1_t1.nii.gz: found a constant volume" in _cli(brats_pretrain.main, ["--data", str(brain), *tiny], capsys)

    ecg = tmp_path / "ecg"
    ecg.mkdir()
    wfdb.wrsamp("flat", fs=250, units=["mV"], sig_name=["I"], p_signal=np.zeros((3000, 1)), fmt=["16"], write_dir=str(ecg))
    assert "flat: found no usable channel" in _cli(cardiac_pretrain.main, ["--data", str(ecg), *tiny], capsys)

    import xarray as xr

    xr.Dataset().to_netcdf(tmp_path / "empty.nc")
    assert "empty.nc: found data variables []" in _cli(geo_pretrain.main, ["--data", str(tmp_path / "empty.nc"), *tiny],
                                                       capsys)

    clouds = tmp_path / "clouds" / "a"
    clouds.mkdir(parents=True)
    for i in range(4):
        np.save(clouds / f"c{i}.npy", np.random.default_rng(i).normal(size=(600, 3)))
    np.save(clouds / "dot.npy", np.ones((600, 3)))
    err = _cli(pointcloud_pretrain.main, ["--data", str(clouds.parent), "data.n_points=64", "data.n_groups=8",
                                          "data.group_size=8", "train.batch_size=2", *tiny], capsys)
    assert "dot.npy: found 600 points all at one place" in err

    np.save(tmp_path / "joints.npy", np.array([["x"] * 3]))
    assert "joints.npy: found arrays of <U1" in _cli(skeleton_pretrain.main, ["--data", str(tmp_path / "joints.npy"),
                                                                              *tiny], capsys)


# -- the dataset preflight in the domains: every bad file named at once, or left out --------------------------
def test_cardiac_and_geo_datasets_name_every_bad_file_before_training(tmp_path, caplog):
    import wfdb

    from scimae.domains.cardiac.data import CardiacDataConfig, train_val_records
    from scimae.domains.remote_sensing.data import GeoDataConfig, load_splits

    ecg = tmp_path / "ecg"
    ecg.mkdir()
    rng = np.random.default_rng(0)
    for name, signal in (("a", rng.normal(size=(3000, 1))), ("b", rng.normal(size=(3000, 1))),
                         ("flat1", np.zeros((3000, 1))), ("flat2", np.ones((3000, 1)))):
        wfdb.wrsamp(name, fs=250, units=["mV"], sig_name=["I"], p_signal=signal, fmt=["16"], write_dir=str(ecg))
    with pytest.raises(DataError, match=r"(?s)2 of the 4 records cannot be used.*flat1: found no usable.*flat2: found"):
        train_val_records(CardiacDataConfig(root=str(ecg)))
    with caplog.at_level(logging.WARNING):
        train, val = train_val_records(CardiacDataConfig(root=str(ecg), on_error="skip", val_fraction=0.5))
    assert sorted(p.name for p in train + val) == ["a", "b"] and "2 of the 4 records left out" in caplog.text

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i in range(3):
        with rasterio.open(tiles / f"t{i}.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                           crs="EPSG:32614", transform=from_origin(500000, 4500000, 1, 1)) as dst:
            dst.write(np.full((1, 64, 64), 9, np.uint8))
    (tiles / "t1.tif").write_bytes((tiles / "t0.tif").read_bytes()[:2000])
    (tiles / "t3.tif").write_text("not a raster")
    cfg = dict(root=str(tiles), bands=[Band("B1")], val_fraction=0.0)
    with pytest.raises(DataError, match=r"(?s)2 of the 4 scenes cannot be used.*t1.tif: found a window.*t3.tif: found"):
        load_splits(GeoDataConfig(**cfg))
    train, _ = load_splits(GeoDataConfig(**cfg, on_error="skip"))
    assert [p.name for p in train.paths] == ["t0.tif", "t2.tif"]


# -- exports -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, found", [
    ({"dim": "big"}, r"found model.dim = 'big'; expected a non-negative number"),
    ({"dim": 65536, "depth": 64}, r"found a model of about [\d,]+ transformer parameters; expected at most "
                                  r"1,000,000,000 \(set SCIMAE_MAX_PARAMS"),
    ({"depth": 0}, r"found a config the model cannot be built from \(ValueError: model.depth must be >= 1, got 0\)"),
    ({"mode": "other"}, r"found a config the model cannot be built from \(ValueError: model.mode must be drop or "
                        r"mask_token, got 'other'\)"),
    ({"unknown_key": 1}, r"found a config the model cannot be built from \(ValueError: unknown config key "
                         r"'model.unknown_key'"),
])
def test_exports_with_bad_config_fields_are_refused_before_anything_is_built(tmp_path, change, found):
    import json

    from scimae.core.checkpoint import save_export
    from scimae.domains.cardiac.data import CardiacDataConfig
    from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae, export_config, load_cardiac_mae

    cfg = CardiacModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    data = CardiacDataConfig()
    save_export(tmp_path, build_cardiac_mae(cfg, data.window_length, data.patch), export_config(cfg, data))
    load_cardiac_mae(tmp_path)  # as written, it loads
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="config.json: " + found):
        load_cardiac_mae(tmp_path)


def test_an_export_config_that_is_not_an_object_is_a_data_error(tmp_path):
    from scimae.core.checkpoint import load_export

    (tmp_path / "config.json").write_text("[1, 2]")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match=r"config.json: found a JSON list; expected a JSON object"):
        load_export(tmp_path)


def test_a_skeleton_folder_names_every_bad_file_in_its_one_pass(tmp_path):
    for name in ("S001C001P001R001A001", "S001C001P002R001A001"):
        _skeleton(tmp_path / f"{name}.skeleton", [[JOINT] * 25] * 6)
    (tmp_path / "S001C001P003R001A001.skeleton").write_text("-3\n")
    (tmp_path / "S001C001P004R001A001.skeleton").write_text("two\n")
    with pytest.raises(DataError, match=r"(?s)2 of the 4 .skeleton files cannot be used.*P003R001A001.skeleton: found "
                                        r"a frame count of -3.*P004R001A001.skeleton: found 'two'"):
        load_samples(SkeletonDataConfig(root=str(tmp_path), frames=8))
    train, val = load_samples(SkeletonDataConfig(root=str(tmp_path), frames=8, on_error="skip"))
    assert sorted(s["name"] for s in train + val) == ["S001C001P001R001A001", "S001C001P002R001A001"]


@pytest.mark.parametrize("finder", ["brain", "cardiac", "geo", "points", "nerf", "skeleton"])
def test_an_unreadable_subfolder_is_a_data_error_naming_it(tmp_path, monkeypatch, finder):
    """chmod 000 does not stop root, so the refusal is made where os.walk lists a folder."""
    import os

    from scimae.domains.brain_mri.io import discover_cases
    from scimae.domains.cardiac.io import find_records
    from scimae.domains.remote_sensing.data import GeoDataConfig, scene_paths
    from scimae.domains.scene3d.data import NerfDataConfig, find_clouds, grid_paths

    find = {"brain": discover_cases, "cardiac": find_records, "geo": lambda root: scene_paths(GeoDataConfig(root=str(root))),
            "points": find_clouds, "nerf": lambda root: grid_paths(NerfDataConfig(root=str(root))),
            "skeleton": lambda root: load_samples(SkeletonDataConfig(root=str(root)))}[finder]
    (tmp_path / "open").mkdir()
    (tmp_path / "locked").mkdir()
    scandir = os.scandir

    def refuse_locked(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    with pytest.raises(DataError, match=r"locked: found a folder that cannot be read \(Permission denied\)"):
        find(tmp_path)
