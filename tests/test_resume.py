"""Exact resume: a pretraining run killed with kill -9 and resumed writes the export of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

TINY = ["model.dim=32", "model.depth=1", "model.heads=4", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=4", "train.epochs=8", "train.figure_every=0"]
PIPELINES = {
    "skeleton_pretrain": ["data.synthetic.per_action=4", "data.frames=16", "train.batch_size=8"],
    "cardiac_pretrain": ["data.synthetic.records=12", "data.synthetic.seconds=20", "train.batch_size=8",
                         "train.epoch_repeats=1"],
}


def _command(pipeline, tmp_path, *args):
    return [sys.executable, str(ROOT / "pipelines" / f"{pipeline}.py"), *TINY, *PIPELINES[pipeline],
            f"data.synthetic.folder={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'runs'}", *args]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_run_killed_mid_way_and_resumed_writes_the_export_of_an_uninterrupted_one(tmp_path, pipeline):
    env = {**os.environ, "SCIMAE_CACHE": str(tmp_path / "cache")}
    run = lambda *args: subprocess.run(_command(pipeline, tmp_path, *args), env=env, check=True,  # noqa: E731
                                       capture_output=True)
    run("train.run_name=whole")
    cut = subprocess.Popen(_command(pipeline, tmp_path, "train.run_name=cut"), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    first = tmp_path / "runs" / "cut" / "export" / "config.json"
    deadline = time.time() + 300
    while not first.is_file() and cut.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    cut.send_signal(signal.SIGKILL)  # right after its first checkpoint
    cut.wait()
    steps = lambda name: json.loads((tmp_path / "runs" / name / "export" / "config.json").read_text())[  # noqa: E731
        "training"]["step"]
    assert 0 < steps("cut") < steps("whole"), "the run was not interrupted"
    run("--resume", str(tmp_path / "runs" / "cut"))
    assert steps("cut") == steps("whole")
    whole = load_file(tmp_path / "runs" / "whole" / "export" / "model.safetensors")
    resumed = load_file(tmp_path / "runs" / "cut" / "export" / "model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not list((tmp_path / "runs" / "cut").rglob(".*.tmp"))  # nothing a killed writer left behind


class _Crash(Exception):
    pass


SMALL = ["model.dim=32", "model.depth=1", "model.heads=4", "model.decoder_dim=32", "model.decoder_depth=1",
         "model.decoder_heads=4", "train.epochs=3", "train.epoch_repeats=1", "train.figure_every=0"]
IN_PROCESS = {
    "brats_pretrain": ["data.synthetic.cases=6", "data.synthetic.roi=[32,32,32]", "data.synthetic.spacing=[4,4,4]",
                       "train.batch_size=2"],
    "geo_pretrain": ["data.synthetic.tiles=6", "data.windows_per_scene=4", "train.batch_size=4"],
    "pointcloud_pretrain": ["data.synthetic.per_class=4", "data.n_points=128", "data.n_groups=8", "data.group_size=16",
                            "train.batch_size=4"],
    "nerf_pretrain": ["data.synthetic.per_class=1", "data.synthetic.rooms=6", "data.grid=[16,16,16]",
                      "train.batch_size=2"],
    "skeleton_pretrain": ["data.synthetic.per_action=2", "data.frames=16", "train.batch_size=4", "train.num_workers=2"],
}


@pytest.mark.parametrize("pipeline", IN_PROCESS)
def test_every_pretraining_pipeline_resumes_exactly_after_a_crash(tmp_path, monkeypatch, pipeline):
    """A run that dies right after its first checkpoint and is resumed ends with the uninterrupted run's weights
    (skeleton with two loader workers, whose seeds follow the epoch)."""
    import importlib

    from scimae.core.engine import Trainer

    main = importlib.import_module(f"scimae.pipelines.{pipeline}").main
    args = [*SMALL, *IN_PROCESS[pipeline], f"data.synthetic.folder={tmp_path / 'data'}",
            f"train.out_dir={tmp_path / 'runs'}"]
    main([*args, "train.run_name=whole"])
    save = Trainer.save

    def crash_after_first_save(trainer):
        save(trainer)
        raise _Crash

    monkeypatch.setattr(Trainer, "save", crash_after_first_save)
    with pytest.raises(_Crash):
        main([*args, "train.run_name=cut"])
    monkeypatch.setattr(Trainer, "save", save)
    main(["--resume", str(tmp_path / "runs" / "cut")])
    whole = load_file(tmp_path / "runs" / "whole" / "export" / "model.safetensors")
    resumed = load_file(tmp_path / "runs" / "cut" / "export" / "model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
