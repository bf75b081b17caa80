import pytest
import torch

from scimae.core.checkpoint import load_export
from scimae.domains.brain_mri.model import (BrainFineTuner, BrainModelConfig, TaskConfig, build_brain_mae, load_brain_mae,
                                            export_config, synthesise)

ROI = (32, 32, 32)


def _cfg(**kw):
    return BrainModelConfig(dim=48, depth=4, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4, **kw)


def _batch(present):
    torch.manual_seed(0)
    return {"image": torch.randn(len(present), 4, *ROI), "present": torch.tensor(present, dtype=torch.bool)}


def test_missing_modalities_are_invalid_slots_and_never_scored():
    mae = build_brain_mae(_cfg(), ROI)
    batch = _batch([[1, 0, 1, 1], [1, 1, 1, 1]])
    out = mae(batch, torch.Generator().manual_seed(0))
    ts, plan = out["tokenset"], out["plan"]
    n = 8  # (32 / 16)^3 patches per modality
    assert not ts.valid[0, n:2 * n].any() and ts.valid[1].all()
    assert plan.n_visible.tolist() == [round(0.25 * 24), round(0.25 * 32)]
    assert not plan.mask[0, n:2 * n].any()
    # values in a missing modality change nothing
    other = dict(batch, image=batch["image"].clone())
    other["image"][0, 1] = 1e4
    torch.testing.assert_close(mae(other, torch.Generator().manual_seed(0))["loss"], out["loss"])


@pytest.mark.parametrize("kind,shape", [("classification", (2, 3)), ("survival", (2, 3)),
                                        ("segmentation", (2, 3, 32, 32, 32))])
def test_fine_tuners_serve_any_modality_subset(kind, shape):
    mae = build_brain_mae(_cfg(), ROI)
    model = BrainFineTuner(mae.encoder, TaskConfig(kind=kind), 3).eval()
    full = model(_batch([[1, 1, 1, 1], [1, 1, 1, 1]]))
    subset = model(_batch([[1, 0, 0, 1], [1, 0, 0, 1]]))
    assert full.shape == subset.shape == shape
    assert not torch.allclose(full, subset)


def test_segmentation_needs_patch_16():
    mae = build_brain_mae(_cfg(patch=8), ROI)
    with pytest.raises(ValueError, match="needs patch 16"):
        BrainFineTuner(mae.encoder, TaskConfig(kind="segmentation"), 3)


def test_export_records_modality_order_and_reloads_bit_exact(tmp_path):
    mae = build_brain_mae(_cfg(), ROI)
    mae.export_config = export_config(_cfg(), ROI, [2.0, 2.0, 2.0])
    mae.save_pretrained(tmp_path / "e")
    config, _ = load_export(tmp_path / "e")
    assert config["modalities"] == ["t1", "t1ce", "t2", "flair"] and config["roi"] == list(ROI)
    assert config["model"]["mask"]["strategy"] == "group_dirichlet"
    again, _ = load_brain_mae(tmp_path / "e")
    for (k, a), (_, b) in zip(mae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_synthesise_covers_a_whole_volume_and_stays_in_the_foreground():
    mae = build_brain_mae(_cfg(), ROI).eval()
    image = torch.zeros(4, 40, 36, 30)
    image[:, 5:35, 4:30, 3:27] = torch.randn(4, 30, 26, 24)
    present = torch.tensor([True, False, True, True])
    out = synthesise(mae, image, present, "t1ce", ROI)
    assert out.shape == (40, 36, 30)
    assert (out[:5] == 0).all() and out[5:35, 4:30, 3:27].abs().sum() > 0
    with pytest.raises(ValueError, match="no other modality"):
        synthesise(mae, image, torch.tensor([False, True, False, False]), "t1ce", ROI)
