import json
import numpy as np
import pytest
import torch
import wfdb

from conftest import load_benchmark, shared_data
from scimae.core.engine import read_metrics
from scimae.core.errors import DataError
from scimae.domains.cardiac.api import CardiacFoundationModel
from scimae.domains.cardiac.io import CHANNELS, read_record

from scimae.pipelines import cardiac_finetune
from scimae.pipelines import cardiac_pretrain

TINY = ["model.dim=32", "model.depth=2", "model.heads=4", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=4", "train.epochs=1", "train.batch_size=8", "train.log_every=1",
        "data.synthetic.records=12", "data.synthetic.seconds=20"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cardiac")
    cardiac_pretrain.main(TINY + [f"data.synthetic.folder={tmp / 'data'}", f"train.out_dir={tmp / 'runs'}",
                                  "train.run_name=pre", "train.figure_every=1"])
    return tmp


def test_synthetic_records_and_pretraining_outputs(pretrained):
    run = pretrained / "runs" / "pre"
    assert (run / "export" / "model.safetensors").is_file() and (run / "recon_epoch001.png").is_file()
    rows = read_metrics(run)
    assert {"loss/II", "loss/PPG", "loss/V6"} <= set(rows[0])
    held_out = json.loads((run / "export" / "config.json").read_text())["held_out"]
    records = {str(p.with_suffix("")) for p in (pretrained / "data").glob("*.hea")}
    assert 0 < len(held_out) < len(records) and set(held_out) <= records
    twelve = read_record(pretrained / "data" / "syn0001")
    assert twelve.channels == CHANNELS and twelve.labels["rhythm"] == "AF" and "AF" in twelve.labels["labels"]
    # limb leads keep their physical relations: III = II - I
    assert np.corrcoef(twelve.data[2], twelve.data[1] - twelve.data[0])[0, 1] > 0.9
    assert read_record(pretrained / "data" / "syn0004").channels == ["I", "II"]  # written as I, MLII
    assert read_record(pretrained / "data" / "syn0005").channels == ["PPG"]  # written as PLETH


@pytest.mark.parametrize("kind,metric,probe", [("diagnosis", "macro_auroc", False), ("regression", "mae", True)])
def test_finetune_prints_the_channel_configuration_table(pretrained, kind, metric, probe, capsys):
    head = ["task.head=linear", "task.freeze_encoder=true"] if probe else []
    cardiac_finetune.main(TINY + head + [f"data.synthetic.folder={pretrained / 'data'}",
                                         f"train.out_dir={pretrained / 'runs'}", f"train.run_name=ft_{kind}",
                                         f"task.kind={kind}", "data.val_fraction=0.5",
                                         f"--init-from={pretrained / 'runs' / 'pre' / 'export'}"])
    out = capsys.readouterr().out
    if probe:  # a linear probe leaves the pretrained encoder untouched
        from scimae.core.checkpoint import load_export

        _, pre = load_export(pretrained / "runs" / "pre" / "export")
        _, ft = load_export(pretrained / "runs" / f"ft_{kind}" / "export")
        assert torch.equal(pre["encoder.blocks.blocks.0.attn.qkv.weight"], ft["encoder.blocks.blocks.0.attn.qkv.weight"])
    for name in ("12-lead", "limb leads", "lead I", "lead II", "PPG only", "ECG + PPG"):
        assert name in out
    assert metric in out


def test_classification_of_a_header_comment_with_its_own_validation_folder(pretrained, tmp_path, capsys):
    """task.kind=classification learns the class named by a header comment (the synthetic conduction
    pattern); data.val_root holds the validation records, so nothing is split off the training folder."""
    import json

    from scimae.domains.cardiac import synthetic

    val = tmp_path / "val"
    val.mkdir()
    for f in (pretrained / "data").glob("syn000[0-3].*"):  # four 12-lead or reduced records, linked
        (val / f.name).symlink_to(f)
    model = cardiac_finetune.main(TINY + ["--data", str(pretrained / "data"), f"data.val_root={val}",
                                          "task.kind=classification", "task.labels_per_class=3",
                                          f"train.out_dir={tmp_path}", "train.run_name=cls"])
    config = json.loads((tmp_path / "cls" / "export" / "config.json").read_text())
    classes = sorted({read_record(p.with_suffix("")).labels["morphology"] for p in (pretrained / "data").glob("*.hea")})
    assert config["classes"] == classes and set(classes) <= set(synthetic.MORPHOLOGIES)
    assert config["n_out"] == len(classes) and model.head(torch.zeros(1, 32)).shape == (1, len(classes))
    assert "accuracy" in capsys.readouterr().out


def test_foundation_model_on_paths_records_and_arrays(pretrained):
    model = CardiacFoundationModel.from_pretrained(pretrained / "runs" / "pre" / "export")
    path = pretrained / "data" / "syn0001"
    emb = model.embed(path)
    assert emb.shape == (3, 32) and np.isfinite(emb).all()  # 20 s -> 10-s windows every 5 s
    rec = wfdb.rdrecord(str(path))
    np.testing.assert_allclose(model.embed(rec), emb, atol=1e-5)
    sig = read_record(path)
    np.testing.assert_allclose(model.embed(sig.data, fs=sig.fs, names=sig.channels), emb, atol=1e-5)
    # channels are identified by name, not position: any order gives the same vectors
    np.testing.assert_allclose(model.embed(sig.data[::-1], fs=sig.fs, names=sig.channels[::-1]), emb, atol=1e-5)
    lead = model.reconstruct(sig.data[-1:], ["II"], fs=sig.fs, names=["PLETH"])
    assert lead["II"].shape == (3, 2500) and np.isfinite(lead["II"]).all()
    sure = model.reconstruct(sig.data[-1:], ["II"], fs=sig.fs, names=["PLETH"], uncertainty=3)
    np.testing.assert_allclose(sure["II"], lead["II"], atol=1e-5)  # the same synthesis, and its spread beside it
    assert sure["II/uncertainty"].shape == (3, 2500) and (sure["II/uncertainty"] >= 0).all()
    assert sure["II/uncertainty"].max() > 0
    with pytest.raises(ValueError, match="fs= and names="):
        model.embed(sig.data)
    with pytest.raises(ValueError, match="no fine-tuned head"):
        model.predict(path)


def test_foundation_model_predicts_with_a_fine_tuned_export(pretrained):
    model = CardiacFoundationModel.from_pretrained(pretrained / "runs" / "ft_diagnosis" / "export")
    probs = model.predict(pretrained / "data" / "syn0002")
    assert probs.shape == (3, 4) and ((probs >= 0) & (probs <= 1)).all()
    with pytest.raises(ValueError, match="fine-tuned model without the pretrained decoder"):
        model.reconstruct(pretrained / "data" / "syn0002", ["II"])  # its decoder would be untrained


def test_a_list_of_records_gives_what_one_at_a_time_calls_give(pretrained, tmp_path):
    """embed / predict on a list (paths of mixed rates and lead sets, a wfdb.Record, arrays), read in worker
    processes and preprocessed together where records share rate, channels and length, equal the calls one record
    at a time; a bad record in the list is the DataError naming it."""
    model = CardiacFoundationModel.from_pretrained(pretrained / "runs" / "pre" / "export")
    paths = sorted(p.with_suffix("") for p in (pretrained / "data").glob("*.hea"))
    sig = read_record(paths[1])
    records = [*paths, wfdb.rdrecord(str(paths[0])), sig.data, paths[1]]
    one = [model.embed(r, fs=sig.fs, names=sig.channels) for r in records]
    for workers in (0, 2):
        many = model.embed(records, fs=sig.fs, names=sig.channels, workers=workers)
        assert len(many) == len(records) and all(a.shape == b.shape for a, b in zip(many, one))
        assert max(abs(a - b).max() for a, b in zip(many, one)) < 1e-5
    assert len({(read_record(p).fs, tuple(read_record(p).channels)) for p in paths}) > 1  # mixed groups
    tuned = CardiacFoundationModel.from_pretrained(pretrained / "runs" / "ft_diagnosis" / "export")
    probs = tuned.predict(paths[:5], workers=2)
    for p, q in zip(paths[:5], probs):
        np.testing.assert_allclose(q, tuned.predict(p), atol=1e-5)
    (tmp_path / "bad.hea").write_text("bad 1 250 1000\nbad.dat 16 200 16 0 0 0 0 I\n")  # no signal file
    with pytest.raises(DataError, match="bad.hea"):
        model.embed([*paths[:3], tmp_path / "bad"], workers=2)


def test_real_records_read_resample_step_and_embed(pretrained):
    mitdb, chal = shared_data("cardiac/mitdb") / "100", shared_data("cardiac/challenge2015") / "v102s"
    sig = read_record(mitdb)
    assert sig.channels == ["II", "V5"] and sig.fs == 360
    icu = read_record(chal)
    assert icu.channels == ["II", "PPG"]  # V has no canonical lead; RESP is ignored
    assert np.isnan(icu.data).sum() > 0
    from scimae.domains.cardiac.data import CardiacDataConfig, record_windows
    from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae

    cfg = CardiacDataConfig(root="")
    w = record_windows(icu, cfg)
    assert w["image"].shape[1:] == (13, 1, 2500) and np.isfinite(w["image"]).all()
    mae = build_cardiac_mae(CardiacModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1,
                                               decoder_heads=4), 2500, 100)
    batch = {k: torch.from_numpy(v[:4]) for k, v in w.items()}
    out = mae(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    model = CardiacFoundationModel.from_pretrained(pretrained / "runs" / "pre" / "export")
    emb = model.embed(shared_data("cardiac/mitdb") / "100")
    assert emb.shape[1] == 32 and emb.shape[0] > 300 and np.isfinite(emb).all()


def test_leads_the_export_was_not_trained_on_are_never_fed_and_start_fresh_in_fine_tuning(pretrained, tmp_path, caplog):
    import logging
    import shutil

    from scimae.core import DataError

    export = tmp_path / "precordial"
    shutil.copytree(pretrained / "runs" / "pre" / "export", export)
    config = json.loads((export / "config.json").read_text())
    assert config["trained_channels"] == CHANNELS
    config["trained_channels"] = ["V1", "V2", "V3", "V4", "V5", "V6"]  # as if pretrained on the chest leads only
    (export / "config.json").write_text(json.dumps(config))
    model = CardiacFoundationModel.from_pretrained(export)
    x = np.random.default_rng(0).normal(size=(2, 2500)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        emb = model.embed(x, fs=250, names=["MLII", "V5"])
    assert emb.shape[0] > 0 and "channels ['II'] left out: the model was trained on" in caplog.text
    full = CardiacFoundationModel.from_pretrained(pretrained / "runs" / "pre" / "export")
    np.testing.assert_allclose(emb, full.embed(x[1:], fs=250, names=["V5"]), atol=1e-5)  # V5 alone, as fed
    with pytest.raises(DataError, match=r"found channels \['I', 'II'\]; expected at least one of the channels this "
                                        r"model was trained on: \['V1'"):
        model.embed(x, fs=250, names=["I", "MLII"])
    cardiac_finetune.main(TINY + [f"data.synthetic.folder={pretrained / 'data'}", f"train.out_dir={tmp_path / 'runs'}",
                                  "train.run_name=ft", "task.by_channels=false", f"--init-from={export}"])
    tuned = json.loads((tmp_path / "runs" / "ft" / "export" / "config.json").read_text())
    assert tuned["channel_surgery"] == {"absent": [], "new": [c for c in CHANNELS if not c.startswith("V")]}
    probs = CardiacFoundationModel.from_pretrained(tmp_path / "runs" / "ft" / "export").predict(x, fs=250, names=["MLII", "V5"])
    assert probs.shape == (1, 4) and np.isfinite(probs).all()  # a 2-lead record (MLII, V5) on the 13-channel model


def test_imputation_benchmark_scores_each_synthesis_on_held_out_records_with_every_channel(pretrained, tmp_path, capsys):
    import shutil

    export = tmp_path / "export"
    shutil.copytree(pretrained / "runs" / "pre" / "export", export)
    config = json.loads((export / "config.json").read_text())
    full = [str(p.with_suffix("")) for p in sorted((pretrained / "data").rglob("*.hea"))
            if set(CHANNELS) <= set(read_record(p.with_suffix("")).channels)][:2]
    assert full  # the synthetic set has 12-lead records with PPG
    (export / "config.json").write_text(json.dumps({**config, "held_out": full}))
    results = load_benchmark("cardiac").imputation(str(export), 2)
    out = capsys.readouterr().out
    assert set(results) == {"V1-V6 from the limb leads and PPG", "III from I and II", "II from PPG"}
    for name, r in results.items():
        assert r["items"] == len(full) and f"{name} (baseline: the mean, 0), records, {len(full)} held out" in out
        assert 0 < r["psnr"] < 60 and 0 < r["baseline_psnr"] < 60 and -1 <= r["spearman"] <= 1
    (export / "config.json").write_text(json.dumps({**config, "held_out": []}))
    assert load_benchmark("cardiac").imputation(str(export), 2) == {}
