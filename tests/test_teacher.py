"""Teacher-feature targets: the student regresses a frozen export's standardised features of its hidden slots."""
import shutil

import pytest
import torch

from scimae.core.checkpoint import save_export
from scimae.core.config import from_dict
from scimae.core.errors import DataError
from scimae.core.teacher import standardise
from scimae.domains.cardiac.data import CardiacDataConfig
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae, export_config, load_cardiac_mae

SMALL = {"dim": 32, "depth": 2, "heads": 4, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
DATA = CardiacDataConfig(window_s=2.0, patch=50)  # 500 samples at 250 Hz


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    present = torch.ones(n, 13, dtype=torch.bool)
    present[:, 12] = False  # no PPG
    present[0, 6:12] = False  # the first record has limb leads only
    return {"image": torch.randn(n, 13, 1, 500, generator=g) * present[:, :, None, None], "present": present}


def _export(folder, **model):
    torch.manual_seed(1)
    cfg = from_dict(CardiacModelConfig, {**SMALL, **model}, "model.")
    mae = build_cardiac_mae(cfg, 500, 50)
    save_export(folder, mae, export_config(cfg, DATA))
    return mae


def _student(teacher, **model):
    torch.manual_seed(0)
    cfg = from_dict(CardiacModelConfig, {**SMALL, "target": "features", "teacher": str(teacher), **model}, "model.")
    return cfg, build_cardiac_mae(cfg, 500, 50)


def test_standardise_sets_each_feature_to_zero_mean_and_unit_variance_over_valid_slots():
    x = torch.randn(3, 10, 4) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + 7
    valid = torch.rand(3, 10) > 0.3
    z = standardise(x, valid)
    picked = z[valid]  # [V, 4]
    torch.testing.assert_close(picked.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(picked.var(0, correction=0), torch.ones(4), atol=1e-3, rtol=0)
    assert (z[~valid] == 0).all()


def test_the_student_regresses_the_teachers_standardised_features_of_its_hidden_slots(tmp_path):
    teacher = _export(tmp_path / "teacher", dim=48, heads=4)
    cfg, student = _student(tmp_path / "teacher")
    assert cfg.teacher_dim == 48 and student.feature_pred.out_features == 48
    assert not any(k.startswith("teacher") for k in student.state_dict())  # the teacher is no part of the student
    n_params = sum(p.numel() for p in student.parameters())
    batch = _batch()
    calls = []
    student(batch, torch.Generator().manual_seed(0))  # loads the teacher
    student.teacher.encoder.register_forward_hook(lambda *a: calls.append(1))
    assert sum(p.numel() for p in student.parameters()) == n_params
    assert all(not p.requires_grad for p in student.teacher.encoder.parameters())
    # with a zero feature head, the feature loss is the mean square of the teacher's standardised hidden features
    torch.nn.init.zeros_(student.feature_pred.weight)
    torch.nn.init.zeros_(student.feature_pred.bias)
    out = student(batch, torch.Generator().manual_seed(0))
    assert len(calls) == 1  # once per batch
    ts = out["tokenset"]
    with torch.no_grad():
        feats = standardise(teacher.encoder(batch)["tokens"], ts.valid)  # [B, N, 48]
    hidden = out["plan"].mask  # [B, N]
    expected = feats[hidden].pow(2).mean()
    torch.testing.assert_close(out["loss/features"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["loss/features"])  # pixel_weight 0: features alone
    assert "loss/I" in out  # the pixel loss is still reported


def test_a_student_learns_the_features_and_its_export_loads_without_the_teacher(tmp_path):
    _export(tmp_path / "teacher")
    cfg, student = _student(tmp_path / "teacher", pixel_weight=0.5)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    batch, losses = _batch(8), []
    for _ in range(40):
        out = student(batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss/features"].detach()))
    out = {k: v.detach() for k, v in out.items() if k.startswith(("loss", "slots"))}
    pixels = sum(out[f"loss/{lead}"] * out[f"slots/{lead}"] for lead in student.group_names) / sum(
        out[f"slots/{lead}"] for lead in student.group_names)
    torch.testing.assert_close(out["loss"], out["loss/features"] + 0.5 * pixels, rtol=1e-4, atol=1e-5)
    assert losses[-1] < 0.7 * losses[0]
    save_export(tmp_path / "student", student, export_config(cfg, DATA))
    shutil.rmtree(tmp_path / "teacher")
    loaded, config = load_cardiac_mae(tmp_path / "student")  # downstream use needs no teacher
    assert config["model"]["teacher_dim"] == cfg.teacher_dim
    torch.testing.assert_close(loaded.encode(batch)["cls"], student.encode(batch)["cls"])
    with pytest.raises(DataError, match="config.json"):  # pretraining on needs it, and says where it looked
        loaded(batch, torch.Generator())


def test_teacher_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs model.teacher"):
        from_dict(CardiacModelConfig, {"target": "features"}, "model.")
    with pytest.raises(ValueError, match="with model.target=features only"):
        from_dict(CardiacModelConfig, {"teacher": str(tmp_path)}, "model.")
    with pytest.raises(DataError, match="no such file"):
        from_dict(CardiacModelConfig, {"target": "features", "teacher": str(tmp_path / "absent")}, "model.")
    torch.manual_seed(0)
    cfg = from_dict(CardiacModelConfig, SMALL, "model.")
    other = build_cardiac_mae(cfg, 500, 25)  # another patch: other slots
    save_export(tmp_path / "other", other, export_config(cfg, CardiacDataConfig(window_s=2.0, patch=25)))
    _, student = _student(tmp_path / "other")
    with pytest.raises(DataError, match="slots"):
        student(_batch(), torch.Generator())


def test_with_hpm_masking_the_loss_predictor_ranks_the_feature_errors(tmp_path):
    _export(tmp_path / "teacher")
    _, student = _student(tmp_path / "teacher", mask={"strategy": "hpm"})
    torch.nn.init.zeros_(student.feature_pred.weight)
    torch.nn.init.zeros_(student.feature_pred.bias)
    batch = _batch()
    out = student(batch, torch.Generator().manual_seed(0))
    feats = student.teacher(batch, out["tokenset"])  # [B, N, D]
    idx = out["pred_idx"]
    expected = feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1])).pow(2).mean(-1)  # [B, M]
    torch.testing.assert_close(out["errors"], expected)
    assert "loss/hardness" in out
