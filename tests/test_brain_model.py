import pytest
import torch

from scimae.core.checkpoint import load_export
from scimae.domains.brain_mri.finetune import brain_finetuner, TaskConfig
from scimae.domains.brain_mri.inference import synthesise
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae, load_brain_mae, export_config

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
    model = brain_finetuner(mae.encoder, TaskConfig(kind=kind), 3).eval()
    full = model(_batch([[1, 1, 1, 1], [1, 1, 1, 1]]))
    subset = model(_batch([[1, 0, 0, 1], [1, 0, 0, 1]]))
    assert full.shape == subset.shape == shape
    assert not torch.allclose(full, subset)


def test_segmentation_needs_patch_16():
    mae = build_brain_mae(_cfg(patch=8), ROI)
    with pytest.raises(ValueError, match="needs patch 16"):
        brain_finetuner(mae.encoder, TaskConfig(kind="segmentation"), 3)


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


def test_tumour_patterns_share_their_volumes_and_summary_statistics_stay_near_chance():
    """Ring and split tumours hold the same volumes of necrosis and solid tissue on average, arranged
    differently; a logistic regression on per-modality intensity percentiles stays within 10 points of chance
    on the pattern and on the lesion's side, and the side is the hemisphere the segmentation lies in."""
    import numpy as np

    from scimae.core.evaluate import logistic_predict
    from scimae.domains.brain_mri import synthetic
    from scimae.domains.brain_mri.io import MODALITIES
    from scimae.domains.brain_mri.transforms import summary_statistics

    volumes = {}
    for pattern in synthetic.PATTERNS:
        segs = [synthetic.make_case(np.random.default_rng(seed), True, pattern)[1] for seed in range(30)]
        volumes[pattern] = np.mean([[(seg == 1).sum(), (seg == 4).sum()] for seg in segs], 0)  # necrosis, enhancing
    ring, split = volumes["ring"], volumes["split"]
    assert (np.abs(ring - split) < 0.1 * ring).all(), volumes

    rng = np.random.default_rng(0)
    features, patterns, sides = [], [], []
    for i in range(160):
        vols, seg, facts = synthetic.make_case(rng, bool(rng.random() < 0.5), synthetic.PATTERNS[i % 2])
        lps_x = (synthetic.affine() @ np.r_[np.argwhere(seg > 0).mean(0), 1])[0]  # LPS: +x points to the left
        assert (lps_x > 0) == (facts["side"] == "left"), (facts, lps_x)
        x = torch.from_numpy(np.stack([vols[m] for m in MODALITIES]).astype(np.float32))  # [4, X, Y, Z]
        brain = x != 0
        mean = (x * brain).sum((1, 2, 3), keepdim=True) / brain.sum((1, 2, 3), keepdim=True)
        std = (((x - mean) * brain) ** 2).sum((1, 2, 3), keepdim=True).div(brain.sum((1, 2, 3), keepdim=True)).sqrt()
        features.append(summary_statistics(torch.where(brain, (x - mean) / std, 0.0)[None]))
        patterns.append(i % 2)
        sides.append(synthetic.SIDES.index(facts["side"]))
    x = torch.cat(features).double().numpy()
    assert 60 <= sum(sides) <= 100, sides
    for labels in (patterns, sides):
        y = np.array(labels)
        accuracy = (logistic_predict(x[:80], y[:80], x[80:]) == y[80:]).mean()
        assert abs(accuracy - 0.5) <= 0.10, accuracy
