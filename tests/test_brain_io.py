import gzip
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from scimae.core import DataError
from scimae.domains.brain_mri.io import discover_cases, read_manifest, read_volume, write_volume
from scimae.domains.brain_mri.transforms import LoadCase, preprocess

AFFINE = np.diag([-2.0, -2.0, 2.0, 1.0])


def _vol(shape=(16, 20, 12), seed=0):
    v = np.zeros(shape, np.float32)
    v[3:-3, 4:-4, 2:-2] = np.random.default_rng(seed).uniform(100, 200, (shape[0] - 6, shape[1] - 8, shape[2] - 4))
    return v


def _write(path, data=None, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(_vol() if data is None else data, affine), str(path))
    return path


def test_discovers_brats_2021_2023_and_alias_names(tmp_path):
    for m in ("t1", "t1ce", "t2", "flair", "seg"):
        _write(tmp_path / "BraTS2021_00001" / f"BraTS2021_00001_{m}.nii.gz")
    for m in ("t1n", "t1c", "t2w", "t2f"):
        _write(tmp_path / "BraTS-GLI-00002-000" / f"BraTS-GLI-00002-000-{m}.nii.gz")
    for m in ("t1", "t1gd", "fla"):
        _write(tmp_path / "TCGA-XX-1" / f"TCGA-XX-1_{m}_bet_raw.nii")
    _write(tmp_path / "TCGA-XX-1" / "TCGA-XX-1_brain_mask.nii.gz")
    (tmp_path / "labels.csv").write_text("case_id,grade\nBraTS2021_00001,HGG\n")
    cases = {c.case_id: c for c in discover_cases(tmp_path)}
    assert set(cases) == {"BraTS2021_00001", "BraTS-GLI-00002-000", "TCGA-XX-1"}
    assert set(cases["BraTS2021_00001"].paths) == {"t1", "t1ce", "t2", "flair"}
    assert cases["BraTS2021_00001"].seg.endswith("_seg.nii.gz")
    assert cases["BraTS2021_00001"].labels == {"grade": "HGG"}
    assert set(cases["BraTS-GLI-00002-000"].paths) == {"t1", "t1ce", "t2", "flair"}
    assert set(cases["TCGA-XX-1"].paths) == {"t1", "t1ce", "flair"}


def test_duplicate_modality_and_empty_folder(tmp_path):
    _write(tmp_path / "a_t1ce.nii.gz")
    _write(tmp_path / "a_t1c.nii.gz")
    with pytest.raises(DataError, match="a second t1ce file for case a"):
        discover_cases(tmp_path)
    with pytest.raises(DataError, match="found a file that is not a .csv; expected a folder of NIfTI cases"):
        discover_cases(tmp_path / "a_t1c.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no NIfTI files"):
        discover_cases(empty)


def test_manifest_with_relative_paths_and_labels(tmp_path):
    _write(tmp_path / "img" / "x1.nii.gz")
    _write(tmp_path / "img" / "x2.nii.gz")
    (tmp_path / "m.csv").write_text("case_id,T1,FLAIR,grade,survival_days\ns1,img/x1.nii.gz,img/x2.nii.gz,LGG,300\n")
    (case,) = read_manifest(tmp_path / "m.csv")
    assert set(case.paths) == {"t1", "flair"} and case.labels == {"grade": "LGG", "survival_days": "300"}
    (tmp_path / "bad.csv").write_text("case_id,t2\ns1,img/nope.nii.gz\n")
    with pytest.raises(DataError, match=r"bad.csv: found line 2 names t2 file img/nope.nii.gz, which does not exist"):
        discover_cases(tmp_path / "bad.csv")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up.csv").write_text("case_id,t1\ns1,../img/x1.nii.gz\n")
    with pytest.raises(DataError, match=r"up.csv: found line 2 names t1 file ../img/x1.nii.gz, outside the manifest's "
                                        r"folder; expected paths inside it \(data.manifest_outside=true allows others\)"):
        discover_cases(tmp_path / "sub" / "up.csv")
    assert discover_cases(tmp_path / "sub" / "up.csv", outside=True)[0].paths["t1"] == str(tmp_path / "img" / "x1.nii.gz")


def test_truncated_nifti(tmp_path):
    path = _write(tmp_path / "c_t1.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    with pytest.raises(DataError, match=r"c_t1.nii.gz: found an unreadable or truncated NIfTI"):
        read_volume(path)


@pytest.mark.parametrize("shape,found", [((16, 20), "a 2D image"), ((16, 20, 12, 3), "a 4D image")])
def test_wrong_dimensionality(tmp_path, shape, found):
    path = _write(tmp_path / "c_t1.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(DataError, match=f"found {found} of shape .* expected a 3D volume"):
        read_volume(path)


def test_zero_and_nan_volumes(tmp_path, caplog):
    with pytest.raises(DataError, match="all-zero volume"):
        read_volume(_write(tmp_path / "z_t1.nii.gz", np.zeros((8, 8, 8), np.float32)))
    assert read_volume(_write(tmp_path / "z_seg.nii.gz", np.zeros((8, 8, 8), np.float32)), label=True)[0].sum() == 0
    with pytest.raises(DataError, match=r"only non-finite voxels \(NaN or inf\)"):
        read_volume(_write(tmp_path / "n_t1.nii.gz", np.full((8, 8, 8), np.nan, np.float32)))
    v = _vol()
    v[5, 5, 5:8] = np.nan
    with caplog.at_level(logging.WARNING):
        data, _, _ = read_volume(_write(tmp_path / "p_t1.nii.gz", v))
    assert "3 non-finite voxels (NaN or inf) set to 0" in caplog.text and not np.isnan(data).any() and data[5, 5, 5] == 0


def test_case_with_no_readable_modality_and_mismatched_label(tmp_path):
    with pytest.raises(DataError, match="no readable modality"):
        LoadCase()({"case_id": "c", "paths": {}, "seg": None})
    t1 = _write(tmp_path / "c_t1.nii.gz")
    seg = _write(tmp_path / "c_seg.nii.gz", np.zeros((10, 10, 10), np.float32))
    with pytest.raises(DataError, match=r"c_seg.nii.gz: found a label grid \[10, 10, 10\] matching no modality"):
        LoadCase()({"case_id": "c", "paths": {"t1": str(t1)}, "seg": str(seg)})


def test_modalities_on_other_grids_are_resampled_with_a_warning(tmp_path, caplog):
    t1 = _write(tmp_path / "c_t1.nii.gz")
    t2 = _write(tmp_path / "c_t2.nii.gz", _vol((8, 10, 6)), np.diag([-4.0, -4.0, 4.0, 1.0]))
    with caplog.at_level(logging.WARNING):
        out = LoadCase()({"case_id": "c", "paths": {"t1": str(t1), "t2": str(t2)}, "seg": None})
    assert "t2 grid [8, 10, 6] differs from t1 grid [16, 20, 12]" in caplog.text
    assert out["image"].shape == (4, 16, 20, 12)
    assert out["present"].tolist() == [True, False, True, False]


def test_preprocess_orients_normalises_and_crops(tmp_path):
    v = _vol()
    v[3, 4, 2] = 5000.0  # a marker in the first foreground corner (voxel axes are LPS: x, y flipped)
    t1 = _write(tmp_path / "c_t1.nii.gz", v)
    seg = np.zeros(v.shape, np.float32)
    seg[8, 10, 6] = 3  # BraTS 2023 enhancing label
    s = _write(tmp_path / "c_seg.nii.gz", seg)
    case = {"case_id": "c", "paths": {"t1": str(t1)}, "seg": str(s)}
    out = preprocess((16, 16, 16), None, train=False)(case)
    img = out["image"]
    assert img.shape == (4, 16, 16, 16) and out["seg"].shape == (1, 16, 16, 16)
    fg = img[0][img[0] != 0]
    assert abs(fg.mean().item()) < 1e-3 and abs(fg.std().item() - 1) < 0.05
    assert (img[1:] == 0).all()
    assert 4 in out["seg"].unique().tolist() and 3 not in out["seg"].unique().tolist()
    # RAS: the marker at the first L-P corner now sits at the last x and y of the foreground
    peak = (img[0] == img[0].max()).nonzero()[0].tolist()
    assert peak[0] > 8 and peak[1] > 8
    regions = preprocess((16, 16, 16), None, train=False, seg_regions=True)(case)["seg"]
    assert regions.shape == (3, 16, 16, 16) and regions[2].sum() == 1  # ET
    assert torch.equal(regions[0] | regions[2], regions[0])  # ET inside TC


def test_training_flips_only_along_the_configured_axes(tmp_path):
    v = _vol()
    v[3, 4, 2] = 5000.0  # a marker near one corner
    case = {"case_id": "c", "paths": {"t1": str(_write(tmp_path / "c_t1.nii.gz", v))}, "seg": None}

    def corners(flips) -> set:
        peaks = set()
        for seed in range(12):
            img = preprocess((16, 16, 16), None, train=True, seed=seed, flips=flips)(dict(case))["image"][0]
            peak = (img == img.max()).nonzero()[0]
            peaks.add(tuple((peak >= 8).tolist()))
        return peaks

    assert {c[0] for c in corners((1, 2))} == {True}  # never flipped left-right: the side is kept
    assert len({c[1:] for c in corners((1, 2))}) > 1
    assert {c[0] for c in corners((0, 1, 2))} == {False, True}


def test_write_volume_never_overwrites_silently(tmp_path):
    p = write_volume(tmp_path / "o.nii.gz", np.ones((4, 4, 4)), AFFINE)
    assert np.allclose(nib.load(str(p)).affine, AFFINE)
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        write_volume(p, np.zeros((4, 4, 4)), AFFINE)
    write_volume(p, np.zeros((4, 4, 4)), AFFINE, overwrite=True)
    assert nib.load(str(p)).get_fdata().sum() == 0


def test_memory_and_disk_caches_give_the_same_volumes(tmp_path):
    from scimae.domains.brain_mri.data import BrainDataConfig, collate, make_dataset
    from scimae.domains.brain_mri.io import Case

    t1 = _write(tmp_path / "c_t1.nii.gz")
    cases = [Case("c", {"t1": str(t1)})]
    base = dict(root=str(tmp_path), roi=[16, 16, 16], spacing=None)
    plain = make_dataset(cases, BrainDataConfig(**base), train=False)[0]["image"]
    for cache in ("memory", "disk"):
        cfg = BrainDataConfig(**base, cache=cache, cache_dir=str(tmp_path / "cache"))
        assert torch.equal(make_dataset(cases, cfg, train=False)[0]["image"], plain)
    assert any((tmp_path / "cache").iterdir())
    cases.append(Case("d", {"t1": str(_write(tmp_path / "d_t1.nii.gz"))}))
    warm = make_dataset(cases, cfg, train=False)  # "c" read from the disk cache, "d" computed
    batch = collate([warm[0], warm[1]])
    assert batch["image"].shape == (2, 4, 16, 16, 16) and all(isinstance(v, (torch.Tensor, list)) for v in batch.values())
    with pytest.raises(ValueError, match="data.cache must be"):
        BrainDataConfig(cache="disk")
