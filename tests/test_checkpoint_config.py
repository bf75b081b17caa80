import shutil
from dataclasses import dataclass, field

import pytest
import torch
import yaml

from scimae.core import DataError
from scimae.core.checkpoint import (from_pretrained, load_export, load_training_state, load_weights, save_export,
                                    save_training_state)
from scimae.core.config import apply_overrides, load_config, save_config
from scimae.core.engine import TrainConfig
from scimae.core.heads import FineTuner
from toy import toy_mae


def test_export_and_reload_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = toy_mae()
    save_export(tmp_path / "exp", model, {"arch": "toy", "groups": ["a", "b"]})
    config, state = load_export(tmp_path / "exp")
    assert config["groups"] == ["a", "b"] and config["export_version"] == 1
    torch.manual_seed(1)
    other = toy_mae()
    load_weights(other, state)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("exp/.*tmp"))  # atomic writes leave no temporary files


def test_load_weights_reports_missing_and_unexpected_keys():
    model = toy_mae()
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["decoder_pred.bias"]
    state["decoder_pred.weight"] = torch.zeros(3, 3)  # wrong shape: reported, not loaded
    state["encoder.cls_token"] = torch.ones_like(state["encoder.cls_token"])
    with pytest.raises(ValueError, match="missing .*decoder_pred.bias.*unexpected .*extra.weight"):
        load_weights(model, state)
    assert not torch.equal(model.encoder.cls_token, state["encoder.cls_token"])  # a refused load changes nothing
    missing, unexpected = load_weights(model, state, strict=False)
    assert "decoder_pred.weight" in missing and unexpected == ["extra.weight"]


def test_bad_exports_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="config.json: found no such file"):
        load_export(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="invalid JSON"):
        load_export(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="model.safetensors"):
        load_export(tmp_path)


def test_an_export_of_another_domain_or_without_needed_keys_is_a_data_error(tmp_path):
    save_export(tmp_path, toy_mae(), {"domain": "skeleton", "model": {}, "frames": 8})
    assert load_export(tmp_path, "skeleton", ("model", "frames"))[0]["frames"] == 8
    with pytest.raises(DataError, match=r"config.json: found an export of domain 'skeleton'; expected a cardiac export"):
        load_export(tmp_path, "cardiac")
    with pytest.raises(DataError, match=r"config.json: found no joints, bodies .*expected an export with model, joints"):
        load_export(tmp_path, "skeleton", ("model", "joints", "bodies"))


def test_from_pretrained_builds_from_the_config_and_fills_the_parts_the_export_has(tmp_path):
    torch.manual_seed(0)
    source = toy_mae()
    save_export(tmp_path / "pre", source, {"domain": "toy", "dim": 32})
    model, config = from_pretrained(tmp_path / "pre", lambda c: toy_mae(dim=c["dim"]), "toy", ("dim",))
    assert config["dim"] == 32
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    tuned = FineTuner(toy_mae().encoder, 3)  # a fine-tuned export: encoder + pooler + head, no decoder
    save_export(tmp_path / "tuned", tuned, {"dim": 32})
    torch.manual_seed(1)
    fresh = toy_mae().decoder.state_dict()
    torch.manual_seed(1)
    mae, _ = from_pretrained(tmp_path / "tuned", lambda c: toy_mae(dim=c["dim"]))
    assert all(torch.equal(mae.encoder.state_dict()[k], v) for k, v in tuned.encoder.state_dict().items())
    assert all(torch.equal(mae.decoder.state_dict()[k], v) for k, v in fresh.items())  # kept as initialised
    with pytest.raises(ValueError, match=r"weights do not match the model: missing \['decoder_embed.weight'"):
        from_pretrained(tmp_path / "pre", lambda c: toy_mae(dim=16))  # a part both have must match
    with pytest.raises(DataError, match="model.safetensors: found weights of"):
        from_pretrained(tmp_path / "tuned", lambda c: torch.nn.Linear(2, 2))


def test_atomic_writes_follow_the_umask_and_clear_what_a_crashed_writer_left(tmp_path):
    import os
    import subprocess

    from scimae.core.checkpoint import atomic_write

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".last.pt.{dead.pid}.abc.tmp").write_bytes(b"half")  # a writer killed mid-write
    (tmp_path / f".last.pt.{os.getpid()}.live.tmp").write_bytes(b"busy")  # a live writer's (here: this process)
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "last.pt", lambda p: open(p, "wb").write(b"state"))
    finally:
        os.umask(old)
    assert (tmp_path / "last.pt").read_bytes() == b"state"
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".last.pt.{os.getpid()}.live.tmp", "last.pt"]


def test_training_state_loads_with_weights_only_and_rejects_pickled_code(tmp_path):
    state = {"model": toy_mae().state_dict(), "step": 3}
    save_training_state(tmp_path / "last.pt", state)
    assert load_training_state(tmp_path / "last.pt")["step"] == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="unreadable training state"):
        load_training_state(tmp_path / "evil.pt")


@dataclass
class Inner:
    ratio: float = 0.5
    name: str = "a"
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    limit: int | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_config_yaml_overrides_and_saving(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  ratio: 1\n  sizes: [3]\ntrain:\n  epochs: 2\n")
    cfg = load_config(Outer, path, ["inner.name=b", "train.batch_size=4", "inner.limit=7", "train.lr=3e-3"])
    assert cfg.train.lr == 0.003
    assert cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio, float)
    assert cfg.inner.sizes == [3] and cfg.inner.name == "b" and cfg.inner.limit == 7
    assert cfg.train.epochs == 2 and cfg.train.batch_size == 4
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert again["inner"]["name"] == "b" and again["train"]["batch_size"] == 4


def test_config_reads_yaml_1_2_scalars_and_round_trips(tmp_path):
    """`off` and `no` stay strings (YAML 1.1 reads them as booleans), floats need no dot, true is a boolean."""
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  name: no\ntrain:\n  amp: off\n  tensorboard: true\n")
    cfg = load_config(Outer, path, ["inner.ratio=-2E+3"])
    assert cfg.train.amp == "off" and cfg.inner.name == "no" and cfg.train.tensorboard is True
    assert cfg.inner.ratio == -2000.0
    assert load_config(Outer, None, ["train.amp=off"]).train.amp == "off"
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Outer, tmp_path / "run" / "config.yaml") == cfg
    with pytest.raises(ValueError, match="config key 'train.tensorboard': expected bool, got 'yes'"):
        load_config(Outer, None, ["train.tensorboard=yes"])


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match=r"unknown config key 'inner.ratoi'; expected one of \['inner.ratio'"):
        load_config(Outer, None, ["inner.ratoi=0.3"])
    with pytest.raises(ValueError, match="config key 'inner.ratio': expected float, got 'x'"):
        load_config(Outer, None, ["inner.ratio=x"])
    with pytest.raises(ValueError, match="train.epochs must be >= 1, got 0"):
        load_config(Outer, None, ["train.epochs=0"])
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_bad_yaml_is_a_data_error(tmp_path):
    (tmp_path / "c.yaml").write_text("- just\n- a list\n")
    with pytest.raises(DataError, match="expected a YAML mapping"):
        load_config(Outer, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("train: [1, 2\n")
    with pytest.raises(DataError, match=r"c.yaml: found an unreadable config \(invalid YAML at line 2, column 1: "
                                        r"expected ',' or '\]'"):
        load_config(Outer, tmp_path / "c.yaml")
    with pytest.raises(DataError, match="none.yaml: found no such file; expected a YAML config"):
        load_config(Outer, tmp_path / "none.yaml")
    with pytest.raises(ValueError, match=r"override 'train.betas=\[1, 2': invalid YAML at line 1, column 6"):
        load_config(Outer, None, ["train.betas=[1, 2"])


class _BadData(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError("f.nii", "x", "y")


def test_a_data_error_from_a_worker_or_a_wrapper_is_reported_in_one_line():
    from scimae.core.errors import one_line, user_error

    with pytest.raises(DataError) as info:
        next(iter(torch.utils.data.DataLoader(_BadData(), num_workers=1)))
    assert one_line(info.value) == "f.nii: found x; expected y"
    try:
        try:
            raise DataError("g.nii", "a", "b")
        except DataError as inner:
            raise RuntimeError("applying transform") from inner
    except RuntimeError as outer:
        assert one_line(user_error(outer)) == "g.nii: found a; expected b"
    assert user_error(RuntimeError("x")) is None


def test_a_generated_folder_is_complete_or_absent(tmp_path):
    from scimae.core.files import build_folder_once

    def broken(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        build_folder_once(tmp_path / "data", "1 file", broken)
    assert not (tmp_path / "data").exists()
    calls = []

    def fill(folder):
        calls.append(folder)
        (folder / "a.txt").write_text("a")

    assert (build_folder_once(tmp_path / "data", "1 file", fill) / "a.txt").read_text() == "a"
    build_folder_once(tmp_path / "data", "1 file", fill)  # already complete: not written again
    assert len(calls) == 1 and (tmp_path / "data" / "COMPLETE").read_text() == "1 file\n"
    with pytest.raises(DataError, match="found a generated dataset of 1 file; expected 2 files"):
        build_folder_once(tmp_path / "data", "2 files", fill)  # never silently the wrong dataset
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="a folder with other files"):
        build_folder_once(tmp_path / "mine", "1 file", fill)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_processes_building_one_folder_at_once_all_get_the_first_complete_one(tmp_path):
    from scimae.core.files import build_folder_once

    root = tmp_path / "data"

    def racing(key):
        def fill(folder):  # while this process fills its copy, another completes root
            (folder / "a.txt").write_text("second")
            root.mkdir()
            (root / "a.txt").write_text("first")
            (root / "COMPLETE").write_text(key + "\n")
        return fill

    assert (build_folder_once(root, "1 file", racing("1 file")) / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the second copy is gone
    shutil.rmtree(root)
    with pytest.raises(OSError):  # a folder completed as something else is never taken for ours
        build_folder_once(root, "1 file", racing("2 files"))


def test_newest_export_finds_or_makes_one(tmp_path):
    import os
    import time

    from scimae.core.files import newest_export

    with pytest.raises(DataError, match="no run with an export"):
        newest_export(tmp_path)
    for i, run in enumerate(("a", "b")):
        save_export(tmp_path / run / "export", toy_mae(), {"arch": "toy"})
        t = time.time() + i
        os.utime(tmp_path / run / "export" / "model.safetensors", (t, t))
    assert newest_export(tmp_path) == tmp_path / "b" / "export"
    made = []
    empty = tmp_path / "none"
    newest = newest_export(empty, lambda: made.append(save_export(empty / "r" / "export", toy_mae(), {})))
    assert made and newest == empty / "r" / "export"
