"""The malformed-input corpus through the command line: each case writes a dataset with one bad file (generated
here, never stored) and runs a pretraining pipeline on it; the run must end with exit status 2 and a one-line
message naming the file, never a traceback."""
import gzip

import nibabel as nib
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from scimae.core.config import run_cli

TINY = ["train.epochs=1", "model.dim=32", "model.depth=1", "model.heads=2", "model.decoder_dim=32",
        "model.decoder_depth=1", "model.decoder_heads=2", "train.figure_every=0"]
EXTRA = {"pointcloud_pretrain": ["data.n_points=64", "data.n_groups=8", "data.group_size=8", "train.batch_size=2"],
         "nerf_pretrain": ["train.batch_size=1"], "skeleton_pretrain": ["data.frames=8"]}
JOINT = "0.1 0.2 3 1 2 3 4 1 0 0 0 2"
RNG = np.random.default_rng(0)


# -- writers ------------------------------------------------------------------------------------------------
def nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def brain(d, data, name="case1_t1.nii.gz"):
    nifti(d / name, data)
    return d, name


def wfdb_record(d, name, signal, fs=250, names=("I",)):
    import wfdb

    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(names), sig_name=list(names), p_signal=np.asarray(signal, float),
                fmt=["16"] * len(names), write_dir=str(d))
    return d


def tiff(path, data, crs="EPSG:32614", dtype=None, **profile):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=dtype or data.dtype, crs=crs, transform=from_origin(500000, 4500000, 10, 10),
                       **profile) as dst:
        dst.write(data)
    return path


def tile(bands=4, size=64):
    return RNG.integers(1, 3000, (bands, size, size)).astype(np.uint16)


def skeleton_text(frames):
    """A .skeleton file of one body per frame, each frame a list of 25 joint lines."""
    body = ["1\n72057594037931101 0 1 1 1 1 0 0.01 -0.02 2\n25\n" + "\n".join(js) for js in frames]
    return f"{len(body)}\n" + "\n".join(body) + "\n"


def pcd(points, declared, binary=False):
    head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {declared}\n"
            f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {declared}\nDATA {'binary' if binary else 'ascii'}\n")
    body = points.astype(np.float32).tobytes() if binary else "\n".join(" ".join(map(str, p)) for p in points).encode()
    return head.encode() + body


def ply_ascii(points):
    head = f"ply\nformat ascii 1.0\nelement vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    return (head + "".join(" ".join(map(str, p)) + "\n" for p in points)).encode()


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# -- the corpus: id -> (pipeline, make(tmp) -> (data path, the file the message must name)) -----------------
def _brain_cases():
    cube = RNG.uniform(1, 2, (8, 8, 8))
    huge = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    huge.header.set_data_shape((4000, 4000, 4000))
    ok = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_bytes()

    def manifest(d, text, encoding="utf-8"):
        nifti(d / "c1_t1.nii.gz", cube)
        (d / "cases.csv").write_bytes(text.encode(encoding))
        return d / "cases.csv", "cases.csv"

    def two_t1(d):
        nifti(d / "case1_t1.nii", cube)
        nifti(d / "case1_t1.nii.gz", cube)
        return d, "case1_t1.nii"

    return {
        "brain-constant": lambda d: brain(d, np.full((8, 8, 8), 7.0)),
        "brain-all-zero": lambda d: brain(d, np.zeros((8, 8, 8))),
        "brain-all-nan": lambda d: brain(d, np.full((8, 8, 8), np.nan)),
        "brain-all-inf": lambda d: brain(d, np.full((8, 8, 8), -np.inf)),
        "brain-2d": lambda d: brain(d, np.ones((8, 8)) * np.arange(8)),
        "brain-4d": lambda d: brain(d, RNG.uniform(1, 2, (8, 8, 8, 2))),
        "brain-huge-header": lambda d: (write(d / "case1_flair.nii", huge.header.binaryblock + ok[348:]).parent,
                                        "case1_flair.nii"),
        "brain-truncated": lambda d: (write(d / "case1_t2.nii", ok[:-100]).parent, "case1_t2.nii"),
        "brain-not-nifti": lambda d: (write(d / "case1_t1.nii.gz", "not an image").parent, "case1_t1.nii.gz"),
        "brain-broken-gzip": lambda d: (write(d / "case1_t1.nii.gz", gzip.compress(ok)[:200]).parent,
                                        "case1_t1.nii.gz"),
        "brain-seg-only": lambda d: (nifti(d / "case1_seg.nii.gz", np.ones((8, 8, 8))).parent, "case1_seg.nii.gz"),
        "brain-two-t1": two_t1,
        "brain-manifest-outside": lambda d: manifest(d, "case_id,t1\nc1,../../etc/passwd\n"),
        "brain-manifest-missing-file": lambda d: manifest(d, "case_id,t1\nc1,c9_t1.nii.gz\n"),
        "brain-manifest-latin1": lambda d: manifest(d, "case_id,t1,site\nc1,c1_t1.nii.gz,Zürich\n", "latin-1"),
        "brain-manifest-no-id-column": lambda d: manifest(d, "patient,t1\nc1,c1_t1.nii.gz\n"),
        "brain-manifest-no-rows": lambda d: manifest(d, "case_id,t1\n"),
        "brain-manifest-no-image": lambda d: manifest(d, "case_id,t1\nc1,\n"),
    }


def _cardiac_cases():
    def header(d, name, text):
        write(d / f"{name}.hea", text)
        return d, f"{name}.hea"

    def edited(d, old, new):  # a good record whose header says something else
        wfdb_record(d, "r1", RNG.normal(size=(3000, 1)))
        hea = d / "r1.hea"
        hea.write_text(hea.read_text().replace(old, new, 1))
        return d, "r1"

    def truncated(d):
        wfdb_record(d, "r1", RNG.normal(size=(3000, 1)))
        dat = d / "r1.dat"
        dat.write_bytes(dat.read_bytes()[:1000])
        return d, "r1"

    def all_gaps(d):  # every sample the format's missing-value code
        import wfdb

        wfdb.wrsamp("gaps", fs=250, units=["mV"], sig_name=["I"], d_signal=np.full((3000, 1), -32768), fmt=["16"],
                    adc_gain=[200.0], baseline=[0], write_dir=str(d))
        return d, "gaps"

    def no_signal_file(d):
        wfdb_record(d, "r1", RNG.normal(size=(3000, 1)))
        (d / "r1.dat").unlink()
        return d, "r1"

    return {
        "cardiac-flat-line": lambda d: (wfdb_record(d, "flat", np.zeros((3000, 1))), "flat"),
        "cardiac-constant-leads": lambda d: (wfdb_record(d, "dc", np.ones((3000, 2)), names=("I", "II")), "dc"),
        "cardiac-all-gaps": all_gaps,
        "cardiac-negative-fs": lambda d: edited(d, "r1 1 250", "r1 1 -250"),
        "cardiac-zero-fs": lambda d: edited(d, "r1 1 250", "r1 1 0"),
        "cardiac-missing-signal-file": no_signal_file,
        "cardiac-truncated-signal": truncated,
        "cardiac-garbage-header": lambda d: header(d, "junk", "this is not a header\n"),
        "cardiac-header-bad-count": lambda d: header(d, "cnt", "cnt 1 250 many\ncnt.dat 16 200 16 0 0 0 0 I\n"),
        "cardiac-garbage-edf": lambda d: (write(d / "bad.edf", "0       not an edf").parent, "bad.edf"),
        "cardiac-too-short": lambda d: (wfdb_record(d, "short", RNG.normal(size=(500, 1))), "short"),
        "cardiac-unknown-channels": lambda d: (wfdb_record(d, "odd", RNG.normal(size=(3000, 2)), names=("foo", "bar")),
                                               "odd"),
    }


def _geo_cases():
    def folder(d, name, make):
        make(d / name)
        return d, name

    def nc(d, name, ds):
        ds.to_netcdf(d / name)
        return d / name, name

    def engineering(d):
        tiff(d / "a_utm.tif", tile(size=128))
        local = CRS.from_wkt('LOCAL_CS["Site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
        tiff(d / "b_site.tif", tile(size=128), crs=local)
        return d, "b_site.tif"

    def band_folder(d):  # one GeoTIFF per band, NIR missing
        (d / "scene1").mkdir()
        for band in ("R", "G", "B"):
            tiff(d / "scene1" / f"{band}.tif", tile(1))
        return d / "scene1", "scene1"

    def truncated(d):
        full = tiff(d / "full.tif", tile()).read_bytes()
        (d / "full.tif").unlink()
        write(d / "t.tif", full[:3000])
        return d, "t.tif"

    import xarray as xr

    return {
        "geo-truncated-tiff": truncated,
        "geo-text-as-tiff": lambda d: (write(d / "t.tif", "not a raster").parent, "t.tif"),
        "geo-three-bands": lambda d: folder(d, "rgb.tif", lambda p: tiff(p, tile(3))),
        "geo-all-nan": lambda d: folder(d, "nan.tif", lambda p: tiff(p, np.full((4, 64, 64), np.nan, np.float32))),
        "geo-all-nodata": lambda d: folder(d, "nod.tif", lambda p: tiff(p, np.zeros((4, 64, 64), np.uint16), nodata=0)),
        "geo-engineering-crs": engineering,
        "geo-band-folder-missing-band": band_folder,
        "geo-netcdf-empty": lambda d: nc(d, "empty.nc", xr.Dataset()),
        "geo-netcdf-1d": lambda d: nc(d, "line.nc", xr.Dataset({"R": ("x", np.ones(64))})),
        "geo-netcdf-garbage": lambda d: (write(d / "bad.nc", "CDF but not really").parent, "bad.nc"),
        "geo-zarr-empty": lambda d: (write(d / "empty.zarr" / ".zgroup", '{"zarr_format": 2}').parent, "empty.zarr"),
    }


def _point_cases():
    blob = RNG.normal(size=(200, 3))

    def cloud(d, name, content):
        write(d / "a" / name, content)
        return d, name

    def npy(d, name, array):
        (d / "a").mkdir()
        np.save(d / "a" / name, array)
        return d, name

    def h5_without_clouds(d):
        import h5py

        with h5py.File(d / "set.h5", "w") as f:
            f["label"] = np.zeros(3, np.int64)
        return d, "set.h5"

    def grid(d, name, **arrays):
        np.savez(d / name, **arrays)
        return d, name

    return {
        "points-one-place": lambda d: npy(d, "dot.npy", np.ones((200, 3))),
        "points-single": lambda d: npy(d, "one.npy", np.ones((1, 3))),
        "points-strings": lambda d: npy(d, "s.npy", np.array([["x"] * 3] * 10)),
        "points-two-columns": lambda d: npy(d, "flat.npy", blob[:, :2]),
        "points-all-nan": lambda d: npy(d, "nan.npy", np.full((200, 3), np.nan)),
        "points-all-inf": lambda d: npy(d, "inf.npy", np.full((200, 3), np.inf)),
        "points-npy-garbage": lambda d: cloud(d, "bad.npy", b"\x93NUMPY garbage"),
        "points-pcd-ascii-short": lambda d: cloud(d, "short.pcd", pcd(blob[:100], 4096)),
        "points-pcd-binary-short": lambda d: cloud(d, "short.pcd", pcd(blob[:100], 4096, binary=True)),
        "points-ply-garbage": lambda d: cloud(d, "junk.ply", "ply\nthis is not a ply file\n"),
        "points-ply-empty": lambda d: cloud(d, "empty.ply", ply_ascii(np.zeros((0, 3)))),
        "points-xyz-text": lambda d: cloud(d, "words.xyz", "a b c\nd e f\n"),
        "points-h5-without-clouds": h5_without_clouds,
        "nerf-no-rgbsigma": lambda d: grid(d, "room.npz", density=np.ones((16, 16, 16))),
        "nerf-wrong-shape": lambda d: grid(d, "room.npz", rgbsigma=np.ones((16, 16, 16, 3), np.float32)),
        "nerf-non-finite": lambda d: grid(d, "room.npz", rgbsigma=np.full((16, 16, 16, 4), np.nan, np.float32)),
        "nerf-no-valid-patch": lambda d: grid(d, "room.npz", rgbsigma=RNG.random((16, 16, 16, 4)).astype(np.float32),
                                              mask=np.zeros((16, 16, 16), bool)),
        "nerf-mask-shape": lambda d: grid(d, "room.npz", rgbsigma=RNG.random((16, 16, 16, 4)).astype(np.float32),
                                          mask=np.ones((8, 8, 8), bool)),
        "nerf-garbage": lambda d: (write(d / "room.npz", "PK not a zip").parent, "room.npz"),
    }


def _skeleton_cases():
    name = "S001C001P001R001A001.skeleton"
    good = [JOINT] * 25

    def text(d, content, file=name):
        write(d / file, content)
        return d, file

    def npy(d, array, file="joints.npy"):
        np.save(d / file, array)
        return d / file, file

    def npz(d, **arrays):
        np.savez(d / "set.npz", **arrays)
        return d / "set.npz", "set.npz"

    return {
        "skeleton-negative-frames": lambda d: text(d, "-3\n"),
        "skeleton-word-frames": lambda d: text(d, "two\n"),
        "skeleton-empty-file": lambda d: text(d, ""),
        "skeleton-truncated": lambda d: text(d, skeleton_text([good] * 6)[:-400]),
        "skeleton-declares-more-frames": lambda d: text(d, "9" + skeleton_text([good] * 2)[1:]),
        "skeleton-24-joints": lambda d: text(d, skeleton_text([good] * 4).replace("\n25\n", "\n24\n")),
        "skeleton-bad-body-count": lambda d: text(d, skeleton_text([good] * 4).replace("\n1\n72", "\nx\n72", 1)),
        "skeleton-nan-joints": lambda d: text(d, skeleton_text([["nan 0.2 3 1 2 3 4 1 0 0 0 2"] * 25] * 4)),
        "skeleton-huge-joints": lambda d: text(d, skeleton_text([["1e308 0.2 3 1 2 3 4 1 0 0 0 2"] * 25] * 4)),
        "skeleton-npy-strings": lambda d: npy(d, np.array([["x"] * 3])),
        "skeleton-npy-shape": lambda d: npy(d, np.ones((2, 3, 8, 25))),
        "skeleton-npy-all-nan": lambda d: npy(d, np.full((2, 3, 8, 25, 1), np.nan, np.float32)),
        "skeleton-npz-no-x": lambda d: npz(d, y=np.zeros(2, np.int64)),
        "skeleton-npz-label-count": lambda d: npz(d, x=RNG.normal(size=(2, 3, 8, 25, 1)), y=np.zeros(3, np.int64)),
    }


PIPELINE = {"brain": "brats_pretrain", "cardiac": "cardiac_pretrain", "geo": "geo_pretrain",
            "points": "pointcloud_pretrain", "nerf": "nerf_pretrain", "skeleton": "skeleton_pretrain"}
CASES = {**_brain_cases(), **_cardiac_cases(), **_geo_cases(), **_point_cases(), **_skeleton_cases()}


def test_the_corpus_covers_every_domain_with_at_least_60_cases():
    assert len(CASES) >= 60 and {c.split("-")[0] for c in CASES} == set(PIPELINE)


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_dataset_ends_with_status_2_naming_the_file(tmp_path, capsys, case):
    import importlib

    pipeline = PIPELINE[case.split("-")[0]]
    data = tmp_path / "data"
    data.mkdir()
    path, bad = CASES[case](data)
    main = importlib.import_module(f"scimae.pipelines.{pipeline}").main
    argv = ["--data", str(path), *TINY, *EXTRA.get(pipeline, []), f"train.out_dir={tmp_path / 'runs'}"]
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert message and bad in "\n".join(err.splitlines()[err.splitlines().index(message[0]):]), err
    assert not list(tmp_path.rglob("last.pt")), "it trained"


CARDIAC = '{"domain": "cardiac", "model": %s, "fs": 250, "window_s": 10, "stride_s": 5, "patch": 100, "max_gap_s": 0.5}'


def _export(d, config):
    from safetensors.torch import save_file

    d.mkdir()
    (d / "config.json").write_text(config)
    save_file({}, d / "model.safetensors")
    return d


SETTINGS = {  # id -> (make(tmp) -> extra command-line words, what the message must name)
    "config-mask-ratio": (lambda t: ["model.mask.ratio=1.0"], "model.mask.ratio"),
    "config-batch-size": (lambda t: ["train.batch_size=0"], "train.batch_size"),
    "config-patch": (lambda t: ["data.patch=0"], "data.patch"),
    "config-unknown-key": (lambda t: ["model.widht=64"], "model.widht"),
    "config-wrong-type": (lambda t: ["train.epochs=many"], "train.epochs"),
    "config-yaml-tab": (lambda t: ["--config", str(write(t / "tab.yaml", "train:\n\tepochs: 2\n"))], "tab.yaml"),
    "config-yaml-duplicate": (lambda t: ["--config", str(write(t / "dup.yaml", "train:\n  epochs: 2\n  epochs: 3\n"))],
                              "dup.yaml"),
    "config-missing-file": (lambda t: ["--config", str(t / "nowhere.yaml")], "nowhere.yaml"),
    "resume-not-a-run": (lambda t: ["--resume", str((t / "empty_run").mkdir() or t / "empty_run")], "empty_run"),
    "export-not-an-object": (lambda t: ["--init-from", str(_export(t / "exp", "[1, 2]"))], "config.json"),
    "export-not-json": (lambda t: ["--init-from", str(_export(t / "exp", "{model: "))], "config.json"),
    "export-missing": (lambda t: ["--init-from", str(t / "no_export")], "no_export"),
    "export-bad-dim": (lambda t: ["--init-from", str(_export(t / "exp", CARDIAC % '{"dim": "big"}'))], "config.json"),
    "export-version-text": (lambda t: ["--init-from", str(_export(t / "exp", '{"domain": "cardiac", "export_version": '
                                                              '"2"}'))], "config.json"),
    "export-weights-unreadable": (lambda t: ["--init-from", str(write(_export(t / "exp", CARDIAC % "{}") / "model.safetensors",
                                                                      "junk").parent)], "model.safetensors"),
    "export-other-domain": (lambda t: ["--init-from", str(_export(t / "exp", '{"domain": "skeleton", "model": {}}'))],
                            "config.json"),
}


@pytest.mark.parametrize("case", SETTINGS)
def test_malformed_settings_and_exports_end_with_status_2_naming_them(tmp_path, capsys, case):
    from scimae.pipelines import cardiac_pretrain

    records = tmp_path / "records"
    records.mkdir()
    for i in range(2):
        wfdb_record(records, f"r{i}", RNG.normal(size=(5000, 1)))
    make, named = SETTINGS[case]
    argv = ["--data", str(records), *TINY, f"train.out_dir={tmp_path / 'runs'}", *make(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: cardiac_pretrain.main(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and named in err, err
    assert not list(tmp_path.rglob("last.pt")), "it trained"
