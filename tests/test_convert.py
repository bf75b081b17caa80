"""Published checkpoints converted to scimae exports reproduce the reference forward exactly (fixtures in
../shared/data/peers; skipped when that folder is absent)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, shared_data
from scimae.core.convert import mae_vit, point_mae, prithvi, read_checkpoint
from scimae.core.errors import DataError
from scimae.core.mae import full_plan
from scimae.core.masking import plan_from_scores
from scimae.domains.remote_sensing.model import HLS, convert_mae, convert_prithvi, load_geo_mae
from scimae.domains.scene3d.finetune import load_point_classifier
from scimae.domains.scene3d.model import convert_point_mae, load_point_mae


@pytest.fixture(scope="module")
def mae_fixture():
    folder = shared_data("peers/mae_vit_tiny")
    config = json.loads((folder / "config.json").read_text())["constructor"]
    return folder, config, load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "expected.safetensors"))


def test_a_converted_mae_vit_reproduces_the_reference_forward(mae_fixture, tmp_path):
    folder, c, inputs, expected = mae_fixture
    out = convert_mae(folder / "checkpoint.pth", tmp_path / "export", c["num_heads"], c["decoder_num_heads"])
    mae, config = load_geo_mae(out)
    assert config["source"]["format"] == "mae" and [g["bands"] for g in config["groups"]] == [["R", "G", "B"]]
    assert config["source"]["fresh"] == [] and config["source"]["left_out"] == []  # every tensor mapped, both ways
    mae.eval()
    imgs = inputs["imgs"]  # [2, 3, 32, 32], already normalised
    ts = mae.encoder.tokenizer({"image": imgs[:, None], "present": torch.ones(2, 1, dtype=torch.bool)})
    plan = plan_from_scores(inputs["noise"], ts.valid, mae.masking.ratio, mae.masking.count)  # the stored noise
    assert torch.equal(plan.mask.float(), expected["mask"]) and torch.equal(plan.keep, expected["ids_keep"])
    with torch.no_grad():
        latent, _ = mae.encoder.run(ts, plan)
        hidden = full_plan(plan.mask)
        result = mae.predict(ts, plan, hidden.keep, hidden.keep_pad)
    torch.testing.assert_close(latent, expected["latent"], atol=1e-5, rtol=0)
    reference = expected["pred"].gather(1, hidden.keep[..., None].expand(-1, -1, expected["pred"].shape[-1]))
    torch.testing.assert_close(result["pred"], reference, atol=1e-5, rtol=0)  # every hidden patch
    torch.testing.assert_close(result["loss"], expected["loss"], atol=0, rtol=1e-6)
    mae.target.norm_pix = False
    with torch.no_grad():
        plain = mae.predict(ts, plan, hidden.keep, hidden.keep_pad)["loss"]
    torch.testing.assert_close(plain, expected["loss_norm_pix_false"], atol=0, rtol=1e-6)


def test_the_command_converts_and_refuses_to_overwrite(mae_fixture, tmp_path):
    folder, c, _, _ = mae_fixture
    cmd = [sys.executable, "-m", "scimae", "convert", "--from", "mae", str(folder / "checkpoint.pth"),
           "--out", str(tmp_path / "export"), "--heads", str(c["num_heads"]), "--decoder-heads", str(c["decoder_num_heads"])]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "nothing is overwritten" in again.stderr


def test_unknown_keys_and_unreadable_files_are_refused_by_name(mae_fixture, tmp_path):
    folder, c, _, _ = mae_fixture
    state = read_checkpoint(folder / "checkpoint.pth")
    with pytest.raises(DataError, match="does not know: \\['extra.weight'\\]"):
        mae_vit({**state, "extra.weight": torch.zeros(1)}, "x.pth", c["num_heads"], c["decoder_num_heads"])
    with pytest.raises(DataError, match="without transformer blocks"):
        mae_vit({k: v for k, v in state.items() if not k.startswith("blocks.")}, "x.pth", c["num_heads"], c["decoder_num_heads"])
    with pytest.raises(DataError, match="head count"):
        mae_vit(state, "x.pth")  # a width of 64 tells no head count
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        read_checkpoint(bad)


def test_a_fine_tuned_classifier_converts_its_encoder(mae_fixture, tmp_path):
    folder, c, _, _ = mae_fixture
    state = read_checkpoint(folder / "checkpoint.pth")
    encoder = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    finetuned = {**encoder, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    model, _, tensors, left_out = mae_vit(finetuned, "ft.pth", c["num_heads"])
    assert left_out == ["head.bias", "head.weight"] and "decoder_dim" not in model
    assert torch.equal(tensors["encoder.blocks.blocks.1.mlp.2.weight"], state["blocks.1.mlp.fc2.weight"])


def test_fine_tuning_from_a_converted_mae_takes_its_bands_and_normalisation(mae_fixture, tmp_path):
    from scimae.pipelines import geo_finetune

    folder, c, _, _ = mae_fixture
    export = convert_mae(folder / "checkpoint.pth", tmp_path / "mae", c["num_heads"], c["decoder_num_heads"])
    geo_finetune.main([f"--init-from={export}", f"data.synthetic.folder={tmp_path / 'data'}", "data.synthetic.tiles=6",
                       "data.windows_per_scene=2", "train.epochs=1", "train.epoch_repeats=1", "train.batch_size=4",
                       f"train.out_dir={tmp_path / 'runs'}", "train.run_name=ft"])  # 4-band tiles, an RGB model
    tuned = json.loads((tmp_path / "runs" / "ft" / "export" / "config.json").read_text())
    assert [(b["name"], b["mean"]) for b in tuned["data_bands"]] == [("R", 123.675), ("G", 116.28), ("B", 103.53)]


@pytest.fixture(scope="module")
def pointmae_fixture(tmp_path_factory):
    folder = shared_data("peers/pointmae_tiny")
    c = json.loads((folder / "config.json").read_text())["constructor"]["config (EasyDict)"]
    t = c["transformer_config"]
    out = convert_point_mae(folder / "checkpoint.pth", tmp_path_factory.mktemp("pm") / "export", t["num_heads"],
                            t["decoder_num_heads"], c["num_group"], n_points=256)
    return folder, out, load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "expected.safetensors"))


def test_a_converted_point_mae_reproduces_the_reference_forward(pointmae_fixture):
    folder, export, inputs, expected = pointmae_fixture
    mae, config = load_point_mae(export)
    assert config["source"]["format"] == "pointmae" and config["source"]["fresh"] == ["encoder.cls_token"]
    assert (config["n_groups"], config["group_size"]) == (16, 8) and not config["model"]["qkv_bias"]
    mae.eval()
    ts = mae.encoder.tokenizer({"points": inputs["pts"]})
    torch.testing.assert_close(ts.coords, expected["center"], atol=1e-6, rtol=0)  # FPS from point 0
    torch.testing.assert_close(ts.target.reshape(2, 16, 8, 3), expected["neighborhood"], atol=1e-6, rtol=0)
    plan = plan_from_scores(inputs["mask"].float(), ts.valid, mae.masking.ratio, mae.masking.count)  # the stored mask
    assert torch.equal(plan.mask, expected["mask"]) and plan.keep.shape == (2, 7)
    hidden = full_plan(plan.mask)
    with torch.no_grad():
        latent, _ = mae.encoder.run(ts, plan)
        result = mae.predict(ts, plan, hidden.keep, hidden.keep_pad)
    torch.testing.assert_close(latent[:, 1:], expected["latent"], atol=1e-5, rtol=0)  # the cls slot aside
    torch.testing.assert_close(result["pred"].reshape(18, 8, 3), expected["rebuild_points"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["loss"], expected["loss"], atol=0, rtol=1e-6)
    mae.train()  # BatchNorm on the batch's statistics over every group, as Point-MAE's train mode
    with torch.no_grad():
        trained = mae.predict(mae.encoder.tokenizer({"points": inputs["pts"]}), plan, hidden.keep, hidden.keep_pad)
    torch.testing.assert_close(trained["loss"], expected["loss_train_mode"], atol=0, rtol=1e-6)


def test_point_mae_conversion_refuses_what_it_cannot_map(pointmae_fixture, tmp_path):
    folder = pointmae_fixture[0]
    state = read_checkpoint(folder / "checkpoint.pth")
    with pytest.raises(DataError, match="does not know: \\['MAE_encoder.extra'\\]"):
        point_mae({**state, "MAE_encoder.extra": torch.zeros(1)}, "x.pth", 4, 4)
    with pytest.raises(DataError, match="without \\['decoder_pos_embed.0.weight'\\]"):
        point_mae({k: v for k, v in state.items() if k != "decoder_pos_embed.0.weight"}, "x.pth", 4, 4)
    with pytest.raises(DataError, match="head count"):
        point_mae(state, "x.pth")  # a width of 64 tells no head count
    with pytest.raises(DataError, match="a Point-MAE pretraining checkpoint"):
        point_mae({"blocks.0.weight": torch.zeros(1)}, "x.pth")
    cmd = [sys.executable, "-m", "scimae", "convert", "--from", "pointmae", str(folder / "checkpoint.pth"),
           "--out", str(tmp_path / "export"), "--heads", "4", "--decoder-heads", "4", "--groups", "16", "--points", "256"]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    info = subprocess.run([sys.executable, "-m", "scimae", "info", str(tmp_path / "export")], cwd=ROOT,
                          capture_output=True, text=True)
    assert info.returncode == 0 and "converted   from pointmae (checkpoint.pth)" in info.stdout


def test_fine_tuning_from_a_converted_point_mae(pointmae_fixture, tmp_path):
    from scimae.pipelines import pointcloud_finetune

    export = pointmae_fixture[1]
    model = pointcloud_finetune.main([f"--init-from={export}", f"data.synthetic.folder={tmp_path / 'data'}",
                                      "data.synthetic.per_class=4", "data.n_points=256", "train.epochs=1",
                                      "train.epoch_repeats=1", "train.batch_size=8", f"train.out_dir={tmp_path / 'runs'}",
                                      "train.run_name=ft"])
    tuned = load_point_classifier(tmp_path / "runs" / "ft" / "export")[0]
    pretrained = load_point_mae(export)[0].encoder.tokenizer.embed.second[0].weight
    assert isinstance(tuned.encoder.tokenizer.embed.first[1], torch.nn.BatchNorm1d)  # Point-MAE's PointNet travels
    assert tuned.encoder.tokenizer.embed.second[0].weight.shape == pretrained.shape
    assert model.encoder.blocks.blocks[0].attn.qkv.bias is None  # no qkv bias, as converted


@pytest.fixture(scope="module")
def prithvi_fixture():
    folder = shared_data("peers/prithvi_tiny")
    config = json.loads((folder / "config.json").read_text())["constructor"]
    return folder, config, load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "expected.safetensors"))


@pytest.mark.parametrize("eps, variant", [(1e-5, ""), (1e-6, "_ln_eps_1e-6")])
def test_a_converted_prithvi_reproduces_the_reference_forward(prithvi_fixture, tmp_path, eps, variant):
    folder, c, inputs, expected = prithvi_fixture
    out = convert_prithvi(folder / "checkpoint.pt", tmp_path / "export", c["num_heads"], c["decoder_num_heads"], eps)
    mae, config = load_geo_mae(out)
    assert config["source"]["format"] == "prithvi" and config["source"]["fresh"] == []
    assert config["model"]["frames"] == 2 and [g["bands"] for g in config["groups"]] == [list(HLS)]
    mae.eval()
    x = inputs["pixel_values"]  # [B, C, T, H, W], already standardised
    ts = mae.encoder.tokenizer({"image": x[:, None], "present": torch.ones(2, 1, dtype=torch.bool)})
    plan = plan_from_scores(inputs["noise"], ts.valid, mae.masking.ratio, mae.masking.count)  # the stored noise
    assert torch.equal(plan.mask.float(), expected["mask"]) and torch.equal(plan.keep, expected["ids_keep"])
    hidden = full_plan(plan.mask)
    with torch.no_grad():
        latent, _ = mae.encoder.run(ts, plan)
        result = mae.predict(ts, plan, hidden.keep, hidden.keep_pad)
    torch.testing.assert_close(latent, expected["latent" + variant], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["loss"], expected["loss" + variant], atol=0, rtol=1e-6)
    if variant:  # the fixture stores predictions and the norm-pix loss for eps 1e-5 only
        return
    reference = expected["pred"].gather(1, hidden.keep[..., None].expand(-1, -1, expected["pred"].shape[-1]))
    torch.testing.assert_close(result["pred"], reference, atol=1e-5, rtol=0)  # every hidden patch, (s, p, q, c)
    mae.target.norm_pix = True
    with torch.no_grad():
        normed = mae.predict(ts, plan, hidden.keep, hidden.keep_pad)["loss"]
    torch.testing.assert_close(normed, expected["loss_norm_pix_true"], atol=0, rtol=1e-6)


def _tiles(folder, descriptions, classes=("a", "b"), per_class=4):
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            data = (rng.normal(1500 + 500 * k, 400, (len(descriptions), 32, 32))).clip(1, None).astype(np.uint16)
            with rasterio.open(folder / name / f"{i}.tif", "w", driver="GTiff", width=32, height=32, count=len(descriptions),
                               dtype="uint16", crs="EPSG:32614", transform=from_origin(500000, 4500000, 30, 30)) as dst:
                dst.write(data)
                dst.descriptions = tuple(descriptions)
    return folder


def test_prithvi_converts_by_command_and_fine_tunes_on_named_geotiff_bands(prithvi_fixture, tmp_path):
    from scimae.pipelines import geo_finetune

    folder, c, _, _ = prithvi_fixture
    cmd = [sys.executable, "-m", "scimae", "convert", "--from", "prithvi", str(folder / "checkpoint.pt"),
           "--out", str(tmp_path / "prithvi"), "--heads", str(c["num_heads"]), "--decoder-heads", str(c["decoder_num_heads"])]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    state = read_checkpoint(folder / "checkpoint.pt")
    with pytest.raises(DataError, match="does not know: \\['temporal_embed_enc.scale'\\]"):  # a TL variant's key
        prithvi({**state, "encoder.temporal_embed_enc.scale": torch.ones(1)}, "x.pt", 4, 4)
    v1 = prithvi({k.split(".", 1)[1]: v for k, v in state.items()}, "v1.pt", 4, 4)  # Prithvi-EO-1.0: no prefixes
    assert v1[1] == prithvi(state, "x.pt", 4, 4)[1] == {"img_size": 32, "patch": 8, "channels": 6, "frames": 2,
                                                       "tubelet": 1}
    common = ["data.windows_per_scene=1", "train.epochs=1", "train.epoch_repeats=1", "train.batch_size=4",
              f"train.out_dir={tmp_path / 'runs'}", f"--init-from={tmp_path / 'prithvi'}"]
    geo_finetune.main([f"--data={_tiles(tmp_path / 'hls', list(HLS))}", "train.run_name=ft", *common])
    tuned = json.loads((tmp_path / "runs" / "ft" / "export" / "config.json").read_text())
    assert tuned["model"]["frames"] == 1 and [b["name"] for b in tuned["data_bands"]] == list(HLS)  # one date per tile
    assert tuned["data_bands"][0]["mean"] == 1087.0  # the released normalisation travels
    with pytest.raises(DataError, match=r"found bands named \['R', 'G', 'B', 'NIR'\]; expected the bands \['BLUE'"):
        geo_finetune.main([f"--data={_tiles(tmp_path / 'naip', ['R', 'G', 'B', 'NIR'])}", "train.run_name=ft2", *common])


def test_channel_surgery_fine_tunes_a_prithvi_export_on_naip_bands(prithvi_fixture, tmp_path):
    from scimae.pipelines import geo_finetune

    folder, c, _, _ = prithvi_fixture
    export = convert_prithvi(folder / "checkpoint.pt", tmp_path / "prithvi", c["num_heads"], c["decoder_num_heads"])
    naip = "[" + ", ".join(f"{{name: {b}, mean: 1500, std: 500}}" for b in ("R", "G", "B", "NIR")) + "]"
    geo_finetune.main([f"--data={_tiles(tmp_path / 'naip', ['R', 'G', 'B', 'NIR'])}", f"data.bands={naip}",
                       "data.windows_per_scene=1", "train.epochs=1", "train.epoch_repeats=1", "train.batch_size=4",
                       f"train.out_dir={tmp_path / 'runs'}", "train.run_name=ft", f"--init-from={export}"])
    tuned = json.loads((tmp_path / "runs" / "ft" / "export" / "config.json").read_text())
    assert tuned["band_surgery"] == {"matched": {"R": "RED", "G": "GREEN", "B": "BLUE", "NIR": "NIR_NARROW"},
                                     "absent": ["SWIR_1", "SWIR_2"], "new": []}
    assert tuned["groups"] == [{"name": "hls", "bands": ["B", "G", "R", "NIR", "SWIR_1", "SWIR_2"]}]  # Prithvi's places


@pytest.fixture(scope="module")
def stmem_fixture(tmp_path_factory):
    from scimae.domains.cardiac.model import convert_stmem

    folder = shared_data("peers/stmem_tiny")
    out = convert_stmem(folder / "checkpoint.pth", tmp_path_factory.mktemp("stmem") / "export")
    return folder, out, load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "expected.safetensors"))


def _stmem_batch(series: torch.Tensor) -> dict:
    """The 12 leads [B, 12, L] on the cardiac vocabulary (PPG absent)."""
    image = torch.zeros(len(series), 13, 1, series.shape[-1])
    image[:, :12, 0] = series
    return {"image": image, "present": torch.arange(13).expand(len(series), -1) < 12}


def test_a_converted_stmem_reproduces_the_reference_forward(stmem_fixture):
    from scimae.core.masking import show_fixed
    from scimae.domains.cardiac.model import load_cardiac_mae

    folder, export, inputs, expected = stmem_fixture
    mae, config = load_cardiac_mae(export)
    assert config["source"]["format"] == "stmem" and config["source"]["fresh"] == ["encoder.cls_token"]
    assert len(config["source"]["left_out"]) == 6  # the top-level copy of the patch embedding
    assert (config["fs"], config["window_s"], config["patch"], config["model"]["head_dim"]) == (250.0, 3.0, 75, 64)
    mae.eval()
    B, n = 2, 10
    batch = _stmem_batch(inputs["series"])
    ts = mae.encoder.tokenizer(batch)
    fixed = ts.fixed & ts.valid  # the separators
    scores = torch.nn.functional.pad(inputs["noise"], (1, 1)).reshape(B, -1)  # the stored noise at the patch slots
    plan = show_fixed(plan_from_scores(scores, ts.valid & ~fixed, mae.masking.ratio, mae.masking.count, ts.group), fixed)
    assert torch.equal(plan.mask.reshape(B, 12, n + 2)[:, :, 1:-1].float(), expected["mask"])
    kept = plan.keep[:, 24:]  # after the 24 separators: lead by lead, each in ascending noise
    assert torch.equal((kept % (n + 2) - 1).reshape(B, 12, 2), expected["ids_keep"])
    hidden = full_plan(plan.mask)
    with torch.no_grad():
        latent, _ = mae.encoder.run(ts, plan)
        result = mae.predict(ts, plan, hidden.keep, hidden.keep_pad)
        pooled = mae.encoder(batch)["mean_norm"]
    # ST-MEM's encoder sequence: per lead [separator, kept patches, separator]
    slots = torch.stack([torch.cat([torch.tensor([g * (n + 2)]), kept[b][kept[b] // (n + 2) == g],
                                    torch.tensor([g * (n + 2) + n + 1])]) for b in range(B) for g in range(12)])
    at = (plan.keep[:, None, None, :] == slots.reshape(B, 12, 4, 1)).int().argmax(-1).reshape(B, 48)
    torch.testing.assert_close(latent[:, 1:].gather(1, at[..., None].expand(-1, -1, 64)), expected["latent"],
                               atol=1e-5, rtol=0)
    pred = torch.zeros(B, 12 * (n + 2), 75).scatter(1, hidden.keep[..., None].expand(-1, -1, 75), result["pred"])
    hid = expected["mask"].bool()
    torch.testing.assert_close(pred.reshape(B, 12, n + 2, 75)[:, :, 1:-1][hid], expected["pred"][hid], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["loss"], expected["loss"], atol=0, rtol=1e-6)
    torch.testing.assert_close(pooled, expected["pooled"], atol=1e-5, rtol=0)
    mae.target.norm_pix = False
    with torch.no_grad():
        torch.testing.assert_close(mae.predict(ts, plan, hidden.keep, hidden.keep_pad)["loss"],
                                   expected["loss_norm_pix_false"], atol=0, rtol=1e-6)
    mae.target.norm_pix, mae.decoder.norm.eps = True, 1e-5
    with torch.no_grad():
        torch.testing.assert_close(mae.predict(ts, plan, hidden.keep, hidden.keep_pad)["loss"],
                                   expected["loss_decoder_norm_eps_1e-5"], atol=0, rtol=1e-6)


def test_a_converted_stmem_masks_lead_by_lead_and_converts_by_command(stmem_fixture, tmp_path):
    from scimae.core.convert import st_mem
    from scimae.domains.cardiac.model import load_cardiac_mae

    folder, export, inputs, _ = stmem_fixture
    mae, _ = load_cardiac_mae(export)
    batch = _stmem_batch(inputs["series"])
    batch["present"][1, 3] = False  # aVR missing in the second sample
    with torch.no_grad():
        out = mae(batch, torch.Generator().manual_seed(0))
    plan = out["plan"]
    hidden = plan.mask.reshape(2, 12, 12)
    assert not hidden[:, :, [0, -1]].any()  # separators are never hidden
    assert (hidden.sum(-1)[0] == 8).all() and hidden.sum(-1)[1].tolist() == [8] * 3 + [0] + [8] * 8  # int(10 x 0.25) kept
    shown = torch.zeros_like(plan.mask).scatter(1, plan.keep, ~plan.keep_pad).reshape(2, 12, 12)
    assert shown[0, :, [0, -1]].all() and not shown[1, 3].any()  # an absent lead: not even its separators
    assert torch.isfinite(out["loss"]) and set(out) >= {"loss/aVR", "loss/V6"}
    state = read_checkpoint(folder / "checkpoint.pth")
    with pytest.raises(DataError, match="does not know: \\['encoder.extra'\\]"):
        st_mem({**state, "encoder.extra": torch.zeros(1)}, "x.pth")
    with pytest.raises(DataError, match="without \\['decoder_norm.weight'\\]"):
        st_mem({k: v for k, v in state.items() if k != "decoder_norm.weight"}, "x.pth")
    changed = {**state, "to_patch_embedding.2.bias": state["to_patch_embedding.2.bias"] + 1}
    with pytest.raises(DataError, match="unlike encoder.to_patch_embedding.2.bias"):
        st_mem(changed, "x.pth")
    cmd = [sys.executable, "-m", "scimae", "convert", "--from", "stmem", str(folder / "checkpoint.pth"),
           "--out", str(tmp_path / "export")]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    info = subprocess.run([sys.executable, "-m", "scimae", "info", str(tmp_path / "export")], cwd=ROOT,
                          capture_output=True, text=True)
    assert info.returncode == 0 and "converted   from stmem (checkpoint.pth)" in info.stdout
    assert "channels    I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6\n" in info.stdout  # no PPG: it has no tokens

