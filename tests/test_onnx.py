"""The encoder's mask-free path: dense encoding equals the gathered one, and the ONNX graph run by onnxruntime gives
torch's embeddings for a cardiac and a remote-sensing export, whichever groups are present."""
import pytest
import torch

from scimae.__main__ import main as scimae_main
from scimae.core.checkpoint import save_export
from scimae.core.errors import DataError
from scimae.core.heads import Pooler
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae
from scimae.domains.brain_mri.model import export_config as brain_config
from scimae.domains.cardiac.data import CardiacDataConfig
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae
from scimae.domains.cardiac.model import export_config as cardiac_config
from scimae.domains.remote_sensing.data import GeoDataConfig
from scimae.domains.remote_sensing.io import Band
from scimae.domains.remote_sensing.model import GeoModelConfig, build_geo_mae
from scimae.domains.remote_sensing.model import export_config as geo_config

SMALL = {"dim": 32, "depth": 2, "heads": 4, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


def cardiac_export(folder):
    torch.manual_seed(0)
    data = CardiacDataConfig(fs=100.0, window_s=5.0, patch=50)
    model = CardiacModelConfig(**SMALL, group_heads=True)
    mae = build_cardiac_mae(model, data.window_length, data.patch)
    return save_export(folder, mae, cardiac_config(model, data)), mae


def geo_export(folder):
    torch.manual_seed(0)
    data = GeoDataConfig(bands=[Band("R"), Band("G"), Band("B"), Band("NIR")],
                         groups={"visible": ["R", "G", "B"], "nir": ["NIR"]}, window=16, patch=4)
    layout = {"visible": ["R", "G", "B"], "nir": ["NIR"]}
    model = GeoModelConfig(**SMALL)
    mae = build_geo_mae(model, layout, data.window, data.patch)
    return save_export(folder, mae, geo_config(model, data, layout)), mae


def brain_export(folder):
    torch.manual_seed(0)
    model = BrainModelConfig(**SMALL, patch=8)
    mae = build_brain_mae(model, (16, 16, 16))
    return save_export(folder, mae, brain_config(model, (16, 16, 16), None)), mae


def gaps(batch: dict) -> dict:
    """A batch with only the first group present in one sample and invalid patches in another (where the layout has
    patch validity)."""
    batch = {k: v.clone() for k, v in batch.items()}
    batch["present"][0, 1:] = False
    batch["present"][1, 0] = True
    if "patch_valid" in batch:
        batch["patch_valid"][0, 1:] = False
        batch["patch_valid"][1].view(-1)[:5] = False
    return batch


@pytest.mark.parametrize("make", [cardiac_export, geo_export, brain_export])
def test_dense_encoding_gives_the_gathered_features(make, tmp_path):
    _, mae = make(tmp_path / "export")
    enc = mae.encoder.eval()
    batch = gaps(enc.tokenizer.example_inputs(4))
    with torch.no_grad():
        gathered, dense = enc(batch), enc(batch, dense=True)
    assert torch.equal(gathered["valid"], dense["valid"]) and not dense["valid"][0].all()
    for key in ("tokens", "cls", "mean_norm"):
        torch.testing.assert_close(dense[key], gathered[key], atol=1e-5, rtol=1e-5)
    assert dense["tokens"][~dense["valid"]].abs().max() == 0  # invalid slots stay zero


@pytest.mark.parametrize("make", [cardiac_export, geo_export, brain_export])
def test_onnx_export_gives_torch_embeddings_in_onnxruntime(make, tmp_path, capsys):
    from scimae.core.onnx import OnnxEncoder

    folder, mae = make(tmp_path / "export")
    scimae_main(["export-onnx", str(folder), "--out", str(tmp_path / "enc.onnx")])
    assert "max difference" in capsys.readouterr().out
    onnx = OnnxEncoder(tmp_path / "enc.onnx")
    assert onnx.inputs == list(mae.encoder.tokenizer.example_inputs(1))  # image, present (, patch_valid)
    enc = mae.encoder.eval()
    batch = gaps(enc.tokenizer.example_inputs(5))  # another batch size than the traced one
    with torch.no_grad():
        ref = Pooler(enc.dim, "mean")(enc(batch)).numpy()
    out = onnx.embed(batch)
    assert out.shape == ref.shape and abs(out - ref).max() < 1e-4
    with pytest.raises(SystemExit):
        scimae_main(["export-onnx", str(folder), "--out", str(tmp_path / "enc.onnx")])
    assert "nothing is overwritten" in capsys.readouterr().err


def test_onnx_export_of_a_tokenizer_without_a_fixed_layout_is_a_clear_error(tmp_path):
    from scimae.core.onnx import export_onnx
    from scimae.domains.scene3d.model import PointModelConfig, build_point_mae

    mae = build_point_mae(PointModelConfig(**SMALL), 8, 8)
    with pytest.raises(ValueError, match="no fixed input layout"):
        export_onnx(mae.encoder, tmp_path / "x.onnx")
    with pytest.raises(DataError, match="existing file"):
        (tmp_path / "y.onnx").write_text("")
        export_onnx(cardiac_export(tmp_path / "c")[1].encoder, tmp_path / "y.onnx")
