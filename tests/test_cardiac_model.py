"""ST-MEM's layout as a cardiac configuration: lead tokens with separators, its preprocessing, and the API and
fine-tuning on an export of that layout (no converted checkpoint needed: tests/test_convert.py has those)."""
import numpy as np
import pytest
import torch
from scipy import signal as sps

from scimae.core.checkpoint import save_export
from scimae.domains.cardiac.data import CardiacDataConfig
from scimae.domains.cardiac.io import LEADS, Signal
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae, export_config
from scimae.domains.cardiac.transforms import stmem_crops

MODEL = {"dim": 32, "depth": 2, "heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "head_dim": 16,
         "layout": "stmem", "cls_token": False, "decoder_pos": "sincos", "decoder_attention": "group",
         "decoder_norm_eps": 1e-6, "norm_pix": True, "mask": {"strategy": "random", "ratio": 0.75, "count": "group_floor"}}


def _stmem_model(window=750, patch=75):
    from scimae.core.config import from_dict

    torch.manual_seed(0)
    cfg = from_dict(CardiacModelConfig, MODEL, "model.")
    return cfg, build_cardiac_mae(cfg, window, patch)


def _batch(x: torch.Tensor, present=None) -> dict:
    image = torch.zeros(len(x), 13, 1, x.shape[-1])
    image[:, :12, 0] = x
    return {"image": image, "present": torch.arange(13).expand(len(x), -1) < 12 if present is None else present}


def test_lead_tokens_frame_each_lead_with_separators_that_are_shown_but_not_features():
    _, mae = _stmem_model()
    x = torch.randn(2, 12, 750)
    present = torch.arange(13).expand(2, -1) < 12
    present = present.clone()
    present[1, 3] = False  # aVR absent in the second sample
    ts = mae.encoder.tokenizer(_batch(x, present))
    assert ts.valid.shape == (2, 12 * 12) and ts.fixed.reshape(2, 12, 12)[:, :, [0, -1]].all()
    assert not ts.valid.reshape(2, 12, 12)[1, 3].any()  # an absent lead: its separators too
    torch.testing.assert_close(mae.encoder.tokenizer.unpatchify(ts.target)[:, :12, 0], x)
    feats = mae.encoder(_batch(x, present), return_layers=(2,))
    valid = feats["valid"].reshape(2, 12, 12)
    assert not valid[:, :, [0, -1]].any() and valid[0].sum() == 120 and valid[1].sum() == 110
    last = feats["layers"][0] * feats["valid"][..., None]  # the last block's output, before the final norm
    mean = last.sum(1) / feats["valid"].sum(1, keepdim=True)
    torch.testing.assert_close(feats["mean_norm"], mae.encoder.blocks.norm(mean))


def test_stmem_crops_are_st_mems_steps_written_out():
    rng = np.random.default_rng(0)
    fs = 360.0  # MIT-BIH's rate
    x = rng.normal(size=(2, int(fs * 23))).cumsum(1) * 0.01
    crops, invalid = stmem_crops(Signal(x.astype(np.float32), fs, ["II", "V5"], "r"), 250.0, 2250)
    assert crops.shape == (6, 2, 2250) and not invalid.any()  # two 10-s windows x three crops
    for w in range(2):
        window = sps.resample(x[:, w * 3600:(w + 1) * 3600], 2500, axis=-1)
        for i, start in enumerate((0, 125, 250)):
            c = window[:, start:start + 2250]
            c = sps.sosfiltfilt(sps.butter(5, 0.67, "highpass", fs=250, output="sos"), c, axis=-1)
            c = sps.sosfiltfilt(sps.butter(5, 40, "lowpass", fs=250, output="sos"), c, axis=-1)
            np.testing.assert_allclose(crops[3 * w + i], (c - c.mean()) / c.std(), atol=2e-4)


def test_the_api_embeds_with_st_mems_preprocessing_and_pooling(tmp_path):
    from scimae.domains.cardiac.api import CardiacFoundationModel

    cfg, mae = _stmem_model()
    data = CardiacDataConfig(window_s=3.0, patch=75, channels=list(LEADS), preprocessing="stmem")
    save_export(tmp_path / "export", mae, export_config(cfg, data))
    model = CardiacFoundationModel.from_pretrained(tmp_path / "export", device="cpu")
    rng = np.random.default_rng(1)
    fs = 500.0
    x = rng.normal(size=(12, int(fs * 25))).cumsum(1) * 0.01
    order = list(range(11, -1, -1))  # the leads in reverse: read by name
    vectors = model.embed(x[order], fs=fs, names=[LEADS[i] for i in order])
    for w in range(2):
        window = sps.resample(x[:, w * 5000:(w + 1) * 5000], 2500, axis=-1)
        crops = []
        for start in (0, 875, 1750):
            c = window[:, start:start + 750]
            c = sps.sosfiltfilt(sps.butter(5, 0.67, "highpass", fs=250, output="sos"), c, axis=-1)
            c = sps.sosfiltfilt(sps.butter(5, 40, "lowpass", fs=250, output="sos"), c, axis=-1)
            crops.append((c - c.mean()) / c.std())
        with torch.no_grad():
            pooled = mae.eval().encoder(_batch(torch.tensor(np.stack(crops), dtype=torch.float32)))["mean_norm"]
        np.testing.assert_allclose(vectors[w], pooled.mean(0).numpy(), atol=1e-4)
    recon = model.reconstruct(x[order], ["aVR"], fs=fs, names=[LEADS[i] for i in order])  # through its separators
    assert recon["aVR"].shape == (6, 750) and np.isfinite(recon["aVR"]).all()
    with pytest.raises(ValueError, match="unknown group"):
        model.reconstruct(x[order], ["PPG"], fs=fs, names=[LEADS[i] for i in order])


@pytest.mark.parametrize("probe", [True, False])
def test_finetuning_an_stmem_layout_export_follows_its_input_layout(tmp_path, probe):
    from scimae.domains.cardiac import synthetic
    from scimae.domains.cardiac.api import CardiacFoundationModel
    from scimae.pipelines import cardiac_finetune

    cfg, mae = _stmem_model()
    export = save_export(tmp_path / "export", mae, export_config(cfg, CardiacDataConfig(
        window_s=3.0, patch=75, channels=list(LEADS), preprocessing="stmem")))
    data = ["--data", str(synthetic.write_dataset(tmp_path / "wfdb", 12, 20.0))] if probe else [
        f"data.synthetic.folder={tmp_path / 'synthetic'}", "data.synthetic.records=12", "data.synthetic.seconds=20"]
    head = ["task.head=linear", "task.freeze_encoder=true", "task.pooler=mean_norm"] if probe else []
    cardiac_finetune.main([f"--init-from={export}", *data, *head, "task.kind=classification", "train.epochs=1",
                           "train.batch_size=8", f"train.out_dir={tmp_path / 'runs'}", "train.run_name=ft"])
    tuned = CardiacFoundationModel.from_pretrained(tmp_path / "runs" / "ft" / "export", device="cpu")
    config = tuned.config
    assert (config["preprocessing"], config["window_s"], config["patch"]) == ("stmem", 3.0, 75)
    assert config["trained_channels"] == LEADS  # the synthetic records' PPG is not read
    after = tuned.head.encoder.blocks.blocks[0].attn.qkv.weight
    assert torch.equal(mae.encoder.blocks.blocks[0].attn.qkv.weight, after) == probe  # a probe leaves the encoder
    record = sorted((tmp_path / ("wfdb" if probe else "synthetic")).rglob("*.hea"))[0]
    probs = tuned.predict(str(record.with_suffix("")))
    assert probs.shape == (2, len(config["classes"])) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_hpm_masking_from_the_config_keeps_separators_and_lead_shares_and_exports(tmp_path):
    """model.mask.strategy=hpm on ST-MEM's layout: separators stay shown, every lead keeps int(10 x 0.25) = 2 of its
    10 patches, the loss predictor trains with the rest and comes back from the export."""
    from scimae.core.config import from_dict
    from scimae.domains.cardiac.model import load_cardiac_mae

    torch.manual_seed(0)
    mask = {"strategy": "hpm", "ratio": 0.75, "count": "group_floor", "hard": [0.5, 0.5]}
    cfg = from_dict(CardiacModelConfig, {**MODEL, "mask": mask}, "model.")
    mae = build_cardiac_mae(cfg, 750, 75)
    out = mae(_batch(torch.randn(2, 12, 750)), torch.Generator().manual_seed(0))
    ts, plan = out["tokenset"], out["plan"]
    kept = torch.zeros_like(ts.valid).scatter_(1, plan.keep, ~plan.keep_pad).reshape(2, 12, 12)
    assert kept[:, :, [0, -1]].all() and not plan.mask[ts.fixed].any()
    assert (kept[:, :, 1:-1].sum(-1) == 2).all()
    out["loss"].backward()
    assert out["loss/hardness"] > 0 and mae.hardness.head.weight.grad.abs().sum() > 0
    data = CardiacDataConfig(window_s=3.0, patch=75, channels=list(LEADS), preprocessing="stmem")
    save_export(tmp_path / "export", mae, export_config(cfg, data))
    loaded, _ = load_cardiac_mae(tmp_path / "export")
    torch.testing.assert_close(loaded.hardness.head.weight, mae.hardness.head.weight)
    with pytest.raises(ValueError, match="hpm does not apply"):
        from_dict(CardiacModelConfig, {**MODEL, "norm_pix": False, "target": "frequency", "mask": mask}, "model.")
