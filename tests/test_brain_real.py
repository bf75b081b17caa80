"""Real data: one TCGA-LGG case from ../shared/data (skipped when that folder is absent)."""
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import shared_data
from scimae.domains.brain_mri.data import collate
from scimae.domains.brain_mri.io import discover_cases
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae, export_config
from scimae.domains.brain_mri.transforms import preprocess


@pytest.fixture(scope="module")
def case():
    (c,) = discover_cases(shared_data("brain_mri/TCGA-DU-7294"))
    return c


def test_discovery_maps_the_case_names(case):
    assert case.case_id == "TCGA-DU-7294"
    assert set(case.paths) == {"t1", "t1ce", "t2", "flair"}
    assert case.paths["t1ce"].endswith("_t1c_bet_raw.nii.gz") and case.paths["flair"].endswith("_fla_bet_raw.nii.gz")


def test_preprocess_and_one_pretraining_step(case):
    img = preprocess((64, 64, 64), (3.0, 3.0, 3.0), train=False)(case.as_dict())["image"]
    assert img.shape == (4, 64, 64, 64)
    for c in range(4):  # z-scored over non-zero voxels despite raw negative intensities
        fg = img[c][img[c] != 0]
        assert abs(fg.mean().item()) < 0.2 and 0.8 < fg.std().item() < 1.2
    cfg = BrainModelConfig(dim=48, depth=2, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    mae = build_brain_mae(cfg, (64, 64, 64))
    sample = preprocess((64, 64, 64), (3.0, 3.0, 3.0), train=True)(case.as_dict())
    assert sample["present"].all() and sample["image"].shape == (4, 64, 64, 64)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    out = mae(collate([sample]), torch.Generator().manual_seed(0))
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"])


def test_reconstruction_lands_on_the_input_grid(case, tmp_path):

    from scimae.pipelines import brats_reconstruct

    cfg = BrainModelConfig(dim=48, depth=2, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    mae = build_brain_mae(cfg, (64, 64, 64))
    mae.export_config = export_config(cfg, (64, 64, 64), (3.0, 3.0, 3.0))
    mae.save_pretrained(tmp_path / "export")
    out = tmp_path / "flair.nii.gz"
    brats_reconstruct.main(["--model", str(tmp_path / "export"), "--case", str(shared_data("brain_mri/TCGA-DU-7294")),
                            "--modality", "fla", "--out", str(out)])
    ref = nib.load(case.paths["flair"])
    rec = nib.load(str(out))
    assert rec.shape == ref.shape == (240, 240, 155)
    assert np.allclose(rec.affine, ref.affine) and np.isfinite(rec.get_fdata()).all()
