import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ROOT, load_benchmark
from scimae.core import DataError
from scimae.core.engine import read_metrics
from scimae.domains.brain_mri.data import BrainDataConfig, collate, make_dataset
from scimae.domains.brain_mri.io import discover_cases

from scimae.pipelines import brats_finetune
from scimae.pipelines import brats_pretrain
from scimae.pipelines import brats_reconstruct

TINY = ["model.dim=48", "model.depth=4", "model.heads=4", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=4", "train.epochs=2", "train.epoch_repeats=1", "train.batch_size=2",
        "train.num_workers=0", "train.log_every=1", "data.synthetic.cases=8", "data.synthetic.roi=[32,32,32]",
        "data.synthetic.spacing=[4,4,4]"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("brats")
    args = TINY + [f"data.synthetic.folder={tmp / 'data'}", f"train.out_dir={tmp / 'runs'}", "train.run_name=pre",
                   "train.figure_every=1"]
    brats_pretrain.main(args)
    return tmp


def test_pretrain_leaves_export_metrics_and_figures(pretrained):
    run = pretrained / "runs" / "pre"
    assert (run / "export" / "config.json").is_file() and (run / "export" / "model.safetensors").is_file()
    assert (run / "recon_epoch001.png").is_file() and (run / "recon_epoch002.png").is_file()
    assert (run / "config.yaml").read_text().count("group_dirichlet") == 1
    rows = read_metrics(run)
    assert {"loss/t1", "loss/t1ce", "loss/t2", "loss/flair"} <= set(rows[0])
    assert any(r["kind"] == "val" for r in rows)
    cases = sorted((pretrained / "data").glob("SynBraTS_*"))
    assert len(cases) == 8 and (pretrained / "data" / "labels.csv").is_file()
    held_out = json.loads((run / "export" / "config.json").read_text())["held_out"]
    assert 0 < len(held_out) < 8 and set(held_out) <= {c.name for c in cases}
    img = nib.load(str(cases[0] / f"{cases[0].name}_t1.nii.gz"))
    assert img.affine[0, 0] < 0 and img.shape == (72, 88, 72)  # BraTS-like LPS voxel axes
    assert len(list(cases[1].glob("*.nii.gz"))) == 4  # case 1 lacks t1ce: 3 images + seg


@pytest.mark.parametrize("kind,metric", [("classification", "auroc"), ("segmentation", "dice_wt"),
                                         ("survival", "c_index")])
def test_finetune_each_task_from_the_export(pretrained, kind, metric, capsys):
    args = TINY + [f"data.synthetic.folder={pretrained / 'data'}", f"train.out_dir={pretrained / 'runs'}",
                   f"train.run_name=ft_{kind}", f"task.kind={kind}", "data.val_fraction=0.5", "train.epochs=1",
                   f"--init-from={pretrained / 'runs' / 'pre' / 'export'}"]
    brats_finetune.main(args)
    out = capsys.readouterr().out
    assert "t1+t1ce+t2+flair" in out and "t1+t2+flair" in out and metric in out
    rows = read_metrics(pretrained / "runs" / f"ft_{kind}", "val")
    assert 0.0 <= float(rows[-1][metric]) <= 1.0


def test_finetune_on_few_labels_validates_on_val_root_and_returns_the_model(pretrained, capsys):
    data = pretrained / "data"
    args = TINY + [f"data.synthetic.folder={data}", f"train.out_dir={pretrained / 'runs'}", "train.run_name=ft_few",
                   f"data.val_root={data}", "task.labels_per_class=1", "train.epochs=1", "task.leave_one_out=false"]
    model = brats_finetune.main(args)
    out = capsys.readouterr().out
    assert "validation by modality set (8 cases)" in out and "t1+t2+flair" not in out  # all of val_root, nothing split off
    assert int(read_metrics(pretrained / "runs" / "ft_few", "val")[-1]["step"]) == 1  # 2 cases (1 per side), batch 2
    batch = next(iter(torch.utils.data.DataLoader(
        make_dataset(discover_cases(data)[:2], BrainDataConfig(str(data), roi=[32, 32, 32], spacing=[4, 4, 4]), False),
        batch_size=2, collate_fn=collate)))
    assert model(batch).shape == (2, 2)
    from scimae.domains.brain_mri.finetune import load_finetuned

    loaded, config = load_finetuned(pretrained / "runs" / "ft_few" / "export")  # the export gives the same model
    assert config["task"]["label"] == "side"
    torch.testing.assert_close(loaded(batch), model.eval()(batch))


def test_finetune_on_a_modality_subset(pretrained, capsys):
    args = TINY + [f"data.synthetic.folder={pretrained / 'data'}", f"train.out_dir={pretrained / 'runs'}",
                   "train.run_name=ft_subset", "data.modalities=[t1,flair]", "train.epochs=1", "data.val_fraction=0.5"]
    brats_finetune.main(args)
    out = capsys.readouterr().out
    assert "t1+flair " in out and "t1ce" not in out


def test_reconstruct_writes_the_missing_contrast_on_the_input_grid(pretrained):
    case = pretrained / "data" / "SynBraTS_00001"  # lacks t1ce
    out = pretrained / "t1ce.nii.gz"
    brats_reconstruct.main(["--model", str(pretrained / "runs" / "pre" / "export"), "--case", str(case),
                            "--out", str(out)])
    ref = nib.load(str(case / "SynBraTS_00001_t1.nii.gz"))
    rec = nib.load(str(out))
    assert rec.shape == ref.shape and np.array_equal(rec.affine, ref.affine)
    data = rec.get_fdata()
    assert np.isfinite(data).all() and data[ref.get_fdata() == 0].max() == 0 and data.std() > 0
    with pytest.raises(ValueError, match="exists"):
        brats_reconstruct.main(["--model", str(pretrained / "runs" / "pre" / "export"), "--case", str(case),
                                "--out", str(out)])
    brats_reconstruct.main(["--model", str(pretrained / "runs" / "pre" / "export"), "--case", str(case),
                            "--out", str(pretrained / "u.nii.gz"), "--uncertainty", "3"])
    spread = nib.load(str(pretrained / "u_uncertainty.nii.gz"))
    assert spread.shape == ref.shape and np.array_equal(spread.affine, ref.affine)
    assert (spread.get_fdata() >= 0).all() and spread.get_fdata().max() > 0
    np.testing.assert_allclose(nib.load(str(pretrained / "u.nii.gz")).get_fdata(), data, atol=1e-5)  # the same synthesis
    tuned = pretrained / "tuned_export"  # a fine-tuned export's config names its task; it has no trained decoder
    shutil.copytree(pretrained / "runs" / "pre" / "export", tuned, dirs_exist_ok=True)
    config = json.loads((tuned / "config.json").read_text())
    (tuned / "config.json").write_text(json.dumps({**config, "task": {"kind": "classification"}}))
    with pytest.raises(DataError, match="tuned_export/config.json: found a brats_finetune export"):
        brats_reconstruct.main(["--model", str(tuned), "--case", str(case), "--out", str(pretrained / "x.nii.gz")])
    full = pretrained / "data" / "SynBraTS_00002"  # every contrast: which one is the user's to say
    assert len(list(full.glob("*_t*.nii.gz")) + list(full.glob("*_flair.nii.gz"))) == 4
    with pytest.raises(ValueError, match="SynBraTS_00002 has every contrast; name the one to synthesise"):
        brats_reconstruct.main(["--model", str(pretrained / "runs" / "pre" / "export"), "--case", str(full)])


def test_imputation_benchmark_scores_each_held_out_case_that_has_the_contrast(pretrained, capsys):
    export = pretrained / "runs" / "pre" / "export"
    held = set(json.loads((export / "config.json").read_text())["held_out"])
    results = load_benchmark("brain_mri").imputation(str(export), str(pretrained / "data"), 2)
    out = capsys.readouterr().out
    for modality in ("t1ce", "flair"):
        having = [c for c in discover_cases(pretrained / "data") if c.case_id in held and modality in c.paths]
        if not having:
            assert modality not in results and f"{modality}: no held-out case has it" in out
            continue
        r = results[modality]
        assert r["items"] == len(having) and f"{modality} from the others (baseline: the mean image), cases, " \
                                             f"{len(having)} held out" in out
        assert 0 < r["psnr"] < 60 and 0 < r["baseline_psnr"] < 60  # finite: neither image equals the truth
        assert -1 <= r["spearman"] <= 1 and r["spearman"] != 0  # the spread varies with the voxel
    assert results  # the fixture holds out cases with FLAIR


def test_bad_data_exits_2_with_one_message(tmp_path):
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "c1_t1.nii.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    r = subprocess.run([sys.executable, str(ROOT / "pipelines" / "brats_pretrain.py"), "--data", str(tmp_path),
                        "data.val_fraction=0", "train.num_workers=0", f"train.out_dir={tmp_path / 'runs'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "c1_t1.nii.gz: found an unreadable or truncated NIfTI" in r.stderr
    assert "Traceback" not in r.stderr


def test_modalities_the_export_was_not_trained_on_are_refused_or_start_fresh(pretrained, tmp_path):
    export = tmp_path / "no_flair"
    shutil.copytree(pretrained / "runs" / "pre" / "export", export)
    config = json.loads((export / "config.json").read_text())
    assert config["trained_modalities"] == ["t1", "t1ce", "t2", "flair"]
    (export / "config.json").write_text(json.dumps({**config, "trained_modalities": ["t1", "t1ce", "t2"]}))
    case = pretrained / "data" / "SynBraTS_00001"  # lacks t1ce
    with pytest.raises(DataError, match=r"found a request for flair; expected a modality the model was trained on"):
        brats_reconstruct.main(["--model", str(export), "--case", str(case), "--modality", "flair",
                                "--out", str(tmp_path / "f.nii.gz")])
    brats_finetune.main(TINY + [f"data.synthetic.folder={pretrained / 'data'}", f"train.out_dir={tmp_path / 'runs'}",
                                "train.run_name=ft", "train.epochs=1", "data.val_fraction=0.5",
                                "task.leave_one_out=false", f"--init-from={export}"])
    tuned = json.loads((tmp_path / "runs" / "ft" / "export" / "config.json").read_text())
    assert tuned["modality_surgery"] == {"absent": [], "new": ["flair"]}
