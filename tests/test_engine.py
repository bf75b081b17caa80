import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, collate
from scimae.core import engine
from scimae.core.engine import Means, MetricsLog, TrainConfig, Trainer, cosine_schedule, read_metrics
from toy import ToyImages, toy_mae


def _trainer(tmp_path, name, config=None, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 8, "base_lr": 0.05, "warmup_epochs": 0.5, "log_every": 1,
                         "out_dir": str(tmp_path), "run_name": name, **kw})
    model = toy_mae()
    model.export_config = {"arch": "toy"}
    return Trainer(model, cfg, collate=collate, pipeline="toy_pretrain",
                   evaluate=lambda m, loader: {"val_loss": sum(m(b, torch.Generator().manual_seed(0))["loss"].item()
                                                                for b in loader)},
                   figure=lambda m, b, p: p.write_bytes(b"png"), config=config)


def test_resume_continues_exactly(tmp_path):
    data, val = ToyImages(32), ToyImages(8, seed=1)
    full = _trainer(tmp_path, "full")
    full.fit(data, val)
    part = _trainer(tmp_path, "part", max_steps=3)  # stops inside the first epoch
    part.fit(data, val)
    assert part.step == 3
    (tmp_path / "part" / "config.yaml").write_text("the run's own")
    resumed = _trainer(tmp_path, "ignored", resume=str(tmp_path / "part"), config=TrainConfig())
    resumed.fit(data, val)
    assert (tmp_path / "part" / "config.yaml").read_text() == "the run's own"  # a resumed run keeps its config
    assert resumed.step == full.step == 8
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    rows = read_metrics(tmp_path / "part")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [str(s) for s in range(1, 9)]
    assert len([r for r in rows if r["kind"] == "val"]) == 2
    assert (tmp_path / "part" / "export" / "model.safetensors").is_file()
    assert (tmp_path / "part" / "recon_epoch002.png").is_file()


def test_loss_falls_and_lr_follows_the_mae_rule(tmp_path):
    t = _trainer(tmp_path, "a", epochs=6, base_lr=1.5e-4 * 256 / 8 * 10)
    assert t.lr == pytest.approx(1.5e-3)
    t.fit(ToyImages(64))
    rows = read_metrics(tmp_path / "a")
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-4:]) < 0.6 * sum(losses[:4])
    assert {"loss/a", "loss/b", "lr"} <= set(rows[0])


@pytest.mark.parametrize("every, epochs", [(0, []), (1, ["0", "1", "2"]), (2, ["1", "2"])])
def test_validation_runs_every_val_every_epochs_and_after_the_last(tmp_path, every, epochs):
    t = _trainer(tmp_path, "v", epochs=3, val_every=every)
    t.fit(ToyImages(16), ToyImages(8, seed=1))
    assert [r["epoch"] for r in read_metrics(tmp_path / "v") if r["kind"] == "val"] == epochs


def test_resuming_into_another_model_or_optimizer_set_up_is_a_data_error(tmp_path):
    from scimae.core import DataError

    _trainer(tmp_path, "a", max_steps=1).fit(ToyImages(16))
    other = _trainer(tmp_path, "b", resume=str(tmp_path / "a"))
    other.model = toy_mae(dim=16)
    with pytest.raises(DataError, match=r"a/last.pt: found the state of another set-up: \d+ tensors of other shapes "
                                        r"\(e.g. decoder_embed.weight \[32, 32\] here \[32, 16\]\)"):
        other.fit(ToyImages(16))
    with pytest.raises(DataError, match=r"optimizer parameter groups of \[\d+, \d+\] tensors, here \[\d+(, \d+){3,}\]"):
        _trainer(tmp_path, "c", resume=str(tmp_path / "a"), layer_decay=0.7).fit(ToyImages(16))


def test_a_training_set_smaller_than_a_batch_trains_on_batches_of_the_set(tmp_path, caplog):
    t = _trainer(tmp_path, "small")
    t.fit(ToyImages(6))
    assert t.cfg.batch_size == 6 and t.step == 2  # one batch per epoch, two epochs
    assert "fewer than a batch of 8: batches of 6" in caplog.text
    with pytest.raises(ValueError, match="the training set has 0 samples"):
        _trainer(tmp_path, "empty").fit(ToyImages(0))


class _Raises(ToyImages):
    """A dataset whose item 3 raises StopIteration, as a reader calling next() on nothing does."""

    def __getitem__(self, i):
        if i == 3:
            next(iter([]))
        return super().__getitem__(i)


def test_a_dataset_raising_stop_iteration_is_an_error_not_the_end_of_an_epoch(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="item 3 of the _Raises raised StopIteration"):
        _trainer(tmp_path, "stop").fit(_Raises(16))
    assert not (tmp_path / "stop" / "last.pt").exists()
    monkeypatch.setattr(engine, "_NoStopIteration", lambda dataset: dataset)  # a loader that runs dry anyway
    with pytest.raises(RuntimeError, match=r"the training loader gave [01] of the 2 batches of epoch 0"):
        _trainer(tmp_path, "dry").fit(_Raises(16))


class _Poisoned(ToyImages):
    """Item 5 holds NaN; each item comes from its own file."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, "image": item["image"] * float("nan")} if i == 5 else item

    def source(self, i):
        return f"img{i}.nii"


def test_a_non_finite_loss_names_the_batch_files_and_step_and_keeps_the_last_checkpoint(tmp_path):
    _trainer(tmp_path, "run", epochs=1).fit(ToyImages(16))
    good = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"loss is nan at step [23] on a batch of (img\d+.nii, )*img5.nii"):
        _trainer(tmp_path, "run", epochs=2, resume=str(tmp_path / "run")).fit(_Poisoned(16))
    assert (tmp_path / "run" / "last.pt").read_bytes() == good


def test_an_existing_run_is_never_overwritten(tmp_path):
    _trainer(tmp_path, "a", max_steps=1).fit(ToyImages(16))
    with pytest.raises(ValueError, match="already holds a run"):
        _trainer(tmp_path, "a")


def test_gradient_accumulation_matches_a_large_batch(tmp_path):
    a = _trainer(tmp_path, "big", batch_size=16)
    b = _trainer(tmp_path, "acc", batch_size=8, accum_steps=2)
    b.model.load_state_dict(a.model.state_dict())
    a.model.masking = b.model.masking = _FixedMask()
    data = ToyImages(16)
    batch = collate([data[i] for i in range(16)])
    a._forward_backward(batch, sync=True)
    b._forward_backward({k: v[:8] for k, v in batch.items()}, sync=False)
    b._forward_backward({k: v[8:] for k, v in batch.items()}, sync=True)
    for (k, x), (_, y) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(x.grad, y.grad, atol=1e-6, rtol=1e-4, msg=k)


class _FixedMask:
    """Hide the same slots in every sample, so that batch composition does not change the masks."""

    def for_tokens(self, ts, generator):
        from scimae.core.masking import plan_from_scores

        valid = ts.valid
        return plan_from_scores(torch.arange(valid.shape[1], dtype=torch.float)[None].expand_as(valid), valid, 0.75)


def test_layer_decay_reaches_the_optimizer(tmp_path):
    plain = _trainer(tmp_path, "plain")
    assert {g["lr"] for g in plain.optimizer.param_groups} == {plain.lr}
    decayed = _trainer(tmp_path, "decayed", layer_decay=0.5)
    enc = decayed.model.encoder
    lr_of = {id(p): g["lr"] for g in decayed.optimizer.param_groups for p in g["params"]}
    depth = len(enc.blocks.blocks)
    assert lr_of[id(enc.blocks.blocks[-1].mlp[0].weight)] == pytest.approx(decayed.lr * 0.5)
    assert lr_of[id(enc.cls_token)] == pytest.approx(decayed.lr * 0.5 ** (depth + 1))
    assert lr_of[id(decayed.model.decoder_pred.weight)] == pytest.approx(decayed.lr)
    data = ToyImages(16)
    plain.fit(data, None)
    decayed.fit(data, None)

    def logged(run):  # metrics.csv reports the top (undecayed) lr of the schedule
        return [float(r["lr"]) for r in read_metrics(tmp_path / run, "train")]

    assert logged("decayed") == pytest.approx(logged("plain"))


def test_metrics_log_appends_and_grows_columns(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    for step in (1, 2):
        log.add({"kind": "train", "epoch": 0, "step": step, "loss": 1.0 / step})
    log.add({"kind": "val", "epoch": 0, "step": 2, "accuracy": 0.5})  # a new column: the file is rewritten
    log.add({"kind": "train", "epoch": 1, "step": 3, "loss": 0.25})  # known columns: appended
    rows = read_metrics(tmp_path)
    assert [(r["kind"], r["step"], r["loss"], r["accuracy"]) for r in rows] == [
        ("train", "1", "1.0", ""), ("train", "2", "0.5", ""), ("val", "2", "", "0.5"), ("train", "3", "0.25", "")]
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == ["1", "2", "3"]
    resumed = MetricsLog(tmp_path / "metrics.csv", keep_until_step=2)  # resume from step 2 drops step 3
    assert [r["step"] for r in read_metrics(tmp_path)] == ["1", "2", "2"] and len(resumed.rows) == 3


def test_group_loss_means_weigh_batches_by_the_group_slots_they_scored():
    t = torch.tensor
    means = Means()
    means.add({"loss": t(1.0), "loss/a": t(2.0), "slots/a": t(3.0), "loss/b": t(0.0), "slots/b": t(0.0),
               "loss/c": t(0.0), "slots/c": t(0.0), "pred": t(9.0)})
    means.add({"loss": t(3.0), "loss/a": t(4.0), "slots/a": t(1.0), "loss/b": t(5.0), "slots/b": t(2.0),
               "loss/c": t(0.0), "slots/c": t(0.0), "metric_acc": t(0.5)})
    # b's first batch had none of its slots: its 0 is not a loss of 0; c never had any: no mean at all
    assert means.result("val_") == {"val_loss": 2.0, "val_loss/a": 2.5, "val_loss/b": 5.0, "val_metric_acc": 0.5}


def test_cosine_schedule():
    assert cosine_schedule(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert cosine_schedule(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert cosine_schedule(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_two_process_torchrun_ends_with_identical_weights(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                        str(Path(__file__).parent / "ddp_run.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert "world 2 steps 8" in r.stdout  # 32 samples / 2 ranks / batch 4 x 2 epochs
    assert (tmp_path / "run" / "metrics.csv").is_file()


@pytest.mark.parametrize("amp, dtype", [("auto", None), ("off", None), ("bf16", torch.bfloat16),
                                        ("fp16", torch.float16)])
def test_amp_setting_decides_the_autocast_dtype_on_cpu(tmp_path, amp, dtype):
    """auto is full precision on CPU; bf16 and fp16 autocast when asked (fp16 with loss scaling); every mode
    trains to finite weights."""
    seen = []

    def step(model, batch, generator):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return model(batch, generator)

    t = _trainer(tmp_path, amp, amp=amp, max_steps=2)
    t.step_fn = step
    t.fit(ToyImages(16))
    assert seen == [dtype, dtype]
    assert t.scaler.is_enabled() == (amp == "fp16")
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_training_bar_shows_the_total_loss_only_and_curves_are_drawn(tmp_path, monkeypatch, capsys):
    import scimae.core.progress as progress

    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    trainer = _trainer(tmp_path, "bar")
    trainer.fit(ToyImages(32), ToyImages(8, seed=1))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    rate = "step/s" in bar or "s/step" in bar  # tqdm shows seconds per step when a step takes over a second
    assert "8/8" in bar and rate and "loss=" in bar and "loss/" not in bar  # steps, rate, loss
    png = (tmp_path / "bar" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_data_preparation_logs_each_stage_off_a_terminal(caplog):
    import logging

    from scimae.core.progress import progress

    with caplog.at_level(logging.INFO, logger="scimae.core.progress"):
        assert list(progress(range(3), "writing things")) == [0, 1, 2]
    assert [r.getMessage() for r in caplog.records] == ["writing things: 3 items", "writing things: done (3 items)"]


def test_the_trainer_tells_the_model_how_far_training_has_come(tmp_path):
    t = _trainer(tmp_path, "p", epochs=2)  # 32 samples in batches of 8: 4 steps per epoch
    seen, forward = [], t.model.forward
    t.model.forward = lambda batch, g: (seen.append(t.model.progress), forward(batch, g))[1]
    t.fit(ToyImages(32))
    assert seen[:8] == [s / 8 for s in range(8)]  # then the validation passes, at the end's progress
