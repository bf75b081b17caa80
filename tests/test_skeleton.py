import json

import numpy as np
import pytest
import torch

from scimae.core import DataError
from scimae.core.engine import read_metrics
from scimae.domains.skeleton import synthetic
from scimae.domains.skeleton.data import SkeletonDataConfig, SyntheticConfig, load_samples
from scimae.domains.skeleton.io import in_split, parse_name, read_arrays, read_skeleton, write_skeleton
from scimae.domains.skeleton.model import MotionAwareMasking, SkeletonMaskConfig, SkeletonModelConfig, build_skeleton_mae
from scimae.domains.skeleton.transforms import BONES, JOINTS, PARTS, adjacency, clean, hop_distance, resample_frames


TINY = dict(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)


def test_generated_files_read_back_exactly_with_bodies_ids_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    seq = synthetic.make_sequence(3, rng, two_people=True, empty_frames=2, misdetection=True)
    path = tmp_path / "S017C003P020R002A004.skeleton"
    write_skeleton(path, seq)
    back = read_skeleton(path)
    assert back.body_ids == seq.body_ids and len(back.body_ids) == 3
    np.testing.assert_array_equal(back.joints, seq.joints)  # NaN where a body is absent, equal elsewhere
    np.testing.assert_array_equal(back.body, seq.body)
    assert back.meta == {"setup": 17, "camera": 3, "performer": 20, "replication": 2, "action": 4}
    lines = path.read_text().splitlines()
    assert lines[0] == str(seq.n_frames) and lines[1] == "0" and lines[2] == "0"  # frames with no body
    assert lines[4].split()[0] == seq.body_ids[0] and len(lines[4].split()) == 10 and lines[5] == "25"
    assert len(lines[6].split()) == 12


def _write(tmp_path, text, name="S001C001P001R001A001.skeleton"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def _frame(n_joints=25, joint="0.1 0.2 3 1 2 3 4 1 0 0 0 2"):
    return "1\n72057594037931101 0 1 1 1 1 0 0.01 -0.02 2\n" + f"{n_joints}\n" + "\n".join([joint] * n_joints)


@pytest.mark.parametrize("text, message", [
    ("", "found an empty file; expected a frame count"),
    ("2\n" + _frame(), "ending at line 29 \\(a truncated frame\\); expected the body count of frame 2"),
    ("1\n" + _frame() + "\n0", "found 1 lines after frame 1"),
    ("1\n" + _frame()[:-40], "inside frame 1 \\(a truncated frame\\)|line 28 with"),
    ("1\n" + _frame(n_joints=20), "found 20 joints on line 4; expected 25 joints per body"),
    ("1\n" + _frame(joint="0.1 0.2 x 1 2 3 4 1 0 0 0 2"), "found 'x' on line 5; expected a number"),
    ("two\n", "found 'two' on line 1; expected a number"),
    ("2\n0\n0\n", None),
])
def test_malformed_skeleton_files_are_data_errors(tmp_path, text, message):
    path = _write(tmp_path, text)
    if message is None:  # well-formed, but no body in any frame
        with pytest.raises(DataError, match="no body in any frame"):
            clean(read_skeleton(path), name=path)
        return
    with pytest.raises(DataError, match=message):
        read_skeleton(path)


def test_names_splits_and_arrays(tmp_path):
    meta = parse_name("S001C002P003R002A013.skeleton")
    assert meta == {"setup": 1, "camera": 2, "performer": 3, "replication": 2, "action": 13}
    assert not in_split(meta, "xsub", True) and in_split(meta, "xview", True)  # P003 is a test subject
    x = np.random.default_rng(0).normal(size=(4, 3, 20, 25, 2)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(4))
    xs, ys = read_arrays(tmp_path / "a.npz")
    assert xs.shape == x.shape and ys.tolist() == [0, 1, 2, 3]
    np.save(tmp_path / "bad.npy", x[0])
    with pytest.raises(DataError, match=r"bad.npy: found an array of shape \(3, 20, 25, 2\)"):
        read_arrays(tmp_path / "bad.npy")
    train, val = load_samples(SkeletonDataConfig(root=str(tmp_path / "a.npz"), frames=8, val_fraction=0.25))
    assert len(train) == 3 and len(val) == 1 and train[0]["xyz"].shape == (2, 8, 25, 3)


def test_the_graph():
    assert len(JOINTS) == 25 and len(BONES) == 24
    assert sorted(j for p in PARTS.values() for j in p) == list(range(25))
    a = adjacency()
    assert np.allclose(a, a.T) and np.isclose(np.linalg.eigvalsh(a).max(), 1)  # the normalised spectrum
    hops = hop_distance()
    assert hops[JOINTS.index("head"), JOINTS.index("neck")] == 1
    assert hops[JOINTS.index("hand_l"), JOINTS.index("hand_r")] == 8  # hand, wrist, elbow, shoulder, spine, ...


def test_cleaning_keeps_moving_bodies_drops_noise_and_centres():
    rng = np.random.default_rng(1)
    seq = synthetic.make_sequence(1, rng, two_people=True, empty_frames=3, misdetection=True)
    xyz, present = clean(seq)
    assert present.tolist() == [True, True] and xyz.shape[1] == seq.n_frames - 3  # empty frames dropped
    np.testing.assert_allclose(xyz[0, 0, JOINTS.index("spine_mid")], 0, atol=1e-6)  # centred
    wide = seq.joints[2, :, :, 0]
    assert np.nanmax(wide) - np.nanmin(wide) > 1.5  # the misdetection was there, and is not kept
    assert not any(np.allclose(xyz[k, :, :, 1].std(), 0.02, atol=0.01) for k in range(2))
    assert resample_frames(xyz, 32).shape == (2, 32, 25, 3)


def test_masking_strategies_and_targets():
    batch = {"joints": torch.randn(2, 2, 8, 25, 3), "present": torch.tensor([[True, False], [True, True]])}
    batch["joints"][:, :, :, JOINTS.index("hand_r")] *= 10  # the right hand moves most
    for strategy in ("random", "body_part", "motion"):
        mae = build_skeleton_mae(SkeletonModelConfig(**TINY, segment=4, mask=SkeletonMaskConfig(strategy, 0.5)), 8)
        out = mae(batch, torch.Generator().manual_seed(0))
        out["loss"].backward()
        plan = out["plan"]
        assert plan.mask.sum(1).tolist() == [25, 50] and not plan.mask[0, 50:].any()  # absent body: never
        if strategy == "body_part":  # whole parts per segment: at most one unit partly hidden
            unit = out["tokenset"].unit[1]
            hidden = [plan.mask[1, unit == u].float().mean() for u in unit.unique()]
            assert sum(0 < h < 1 for h in hidden) <= 1 and sum(h == 1 for h in hidden) >= 3
        if strategy == "motion":
            hand = torch.arange(100) % 25 == JOINTS.index("hand_r")
            assert plan.mask[1, hand].float().mean() > plan.mask[1, ~hand].float().mean()
    motion = build_skeleton_mae(SkeletonModelConfig(**TINY, target="position_motion"), 8)
    ts = motion.encoder.tokenizer(batch)
    assert ts.target.shape == (2, 100, 24)
    x = batch["joints"][0, 0, 1:4, 0] - batch["joints"][0, 0, 0:3, 0]  # joint 0, frames 1-3 minus 0-2
    torch.testing.assert_close(ts.target[0, 0, 12:].reshape(4, 3)[1:], x / 0.25)  # in units of 0.25 m
    torch.testing.assert_close(ts.target[0, 0, :3], batch["joints"][0, 0, 0, 0] / 0.25)


def test_attention_bias_follows_the_body_graph():
    mae = build_skeleton_mae(SkeletonModelConfig(**TINY), 8)
    tok = mae.encoder.tokenizer
    with torch.no_grad():
        tok.hop_bias.copy_(torch.arange(8.0)[:, None].expand(-1, 4))
    ts = tok({"joints": torch.randn(1, 2, 8, 25, 3), "present": torch.ones(1, 2, dtype=torch.bool)})
    head, neck, hand = JOINTS.index("head"), JOINTS.index("neck"), JOINTS.index("hand_l")
    bias = ts.attn_bias(torch.tensor([[head, neck, hand, 50 + head]]))  # [1, H, 4, 4]
    assert bias[0, 0, 0].tolist() == [0, 1, hop_distance()[head, hand], 7]  # other body: its own bucket


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from scimae.pipelines import skeleton_finetune
    from scimae.pipelines import skeleton_pretrain

    tmp = tmp_path_factory.mktemp("sk")
    common = [f"data.synthetic.folder={tmp / 'data'}", "data.synthetic.per_action=4", "data.frames=16",
              "model.dim=32", "model.depth=1", "model.decoder_dim=32", "model.decoder_depth=1", "train.epochs=1",
              "train.epoch_repeats=1", "train.batch_size=8", f"train.out_dir={tmp / 'runs'}"]
    skeleton_pretrain.main(common + ["train.run_name=pre"])
    skeleton_finetune.main(common + ["train.run_name=probe", "task.linear_probe=true", f"--init-from={tmp / 'runs/pre/export'}"])
    skeleton_finetune.main(common + ["train.run_name=scratch"])
    return tmp


def test_pipelines_write_native_files_exports_metrics_and_figures(runs):
    files = sorted((runs / "data").glob("*.skeleton"))
    assert len(files) == 32 and {parse_name(f)["action"] for f in files} == set(range(1, 9))
    pre = runs / "runs" / "pre"
    assert (pre / "export" / "model.safetensors").is_file() and (pre / "recon_epoch001.png").is_file()
    assert "loss/body1" in read_metrics(pre)[0]
    held_out = json.loads((pre / "export" / "config.json").read_text())["held_out"]  # the split's test side
    cfg = SkeletonDataConfig(synthetic=SyntheticConfig(per_action=4, folder=str(runs / "data")), frames=16)
    assert held_out and held_out == [s["name"] for s in load_samples(cfg)[1]]
    probe = json.loads((runs / "runs" / "probe" / "export" / "config.json").read_text())
    assert probe["task"]["linear_probe"] and probe["actions"] == list(range(1, 9))
    from scimae.domains.skeleton.finetune import load_finetuned
    from scimae.domains.skeleton.model import load_skeleton_mae

    classifier, _ = load_finetuned(runs / "runs" / "probe" / "export")  # a linear probe: the encoder stayed as pretrained
    pretrained = load_skeleton_mae(pre / "export")[0].encoder.state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in classifier.encoder.state_dict().items())
    assert not classifier.training and sum(p.numel() for p in classifier.head.parameters()) == 32 * 8 + 8
    rows = read_metrics(runs / "runs" / "scratch", "val")
    assert 0 <= float(rows[-1]["accuracy"]) <= 1


def test_exports_from_before_the_unit_option_keep_taking_metres(runs, tmp_path):
    import shutil

    from scimae.domains.skeleton.model import load_skeleton_mae

    export = runs / "runs" / "pre" / "export"
    assert load_skeleton_mae(export)[0].encoder.tokenizer.unit == 0.25
    old = tmp_path / "old"
    shutil.copytree(export, old)
    config = json.loads((old / "config.json").read_text())
    del config["model"]["unit"]
    (old / "config.json").write_text(json.dumps(config))
    assert load_skeleton_mae(old)[0].encoder.tokenizer.unit == 1.0


def test_skip_list_and_missing_folder(runs, tmp_path):
    cfg = SkeletonDataConfig(synthetic=SyntheticConfig(per_action=4, folder=str(runs / "data")), frames=16)
    train, val = load_samples(cfg)
    skip = tmp_path / "missing.txt"
    skip.write_text(f"{train[0]['name']}\n{val[0]['name']}\n")
    cfg.skip_list = str(skip)
    t2, v2 = load_samples(cfg)
    assert len(t2) == len(train) - 1 and len(v2) == len(val) - 1
    with pytest.raises(DataError, match="no such file or folder"):
        load_samples(SkeletonDataConfig(root=str(tmp_path / "nope")))


def test_parsed_files_are_cached_and_a_changed_file_is_parsed_again(tmp_path, monkeypatch):
    import scimae.domains.skeleton.data as data

    monkeypatch.setenv("SCIMAE_CACHE", str(tmp_path / "cache"))
    cfg = SkeletonDataConfig(synthetic=SyntheticConfig(per_action=2, folder=str(tmp_path / "data")), frames=16,
                             on_error="skip")
    train, val = load_samples(cfg)
    parsed = []
    monkeypatch.setattr(data, "read_skeleton", lambda f, j: parsed.append(f.name) or read_skeleton(f, j))
    train2, val2 = load_samples(cfg)
    assert parsed == []  # the second run reads the cache only
    for a, b in zip(train + val, train2 + val2):
        assert a["name"] == b["name"] and a["action"] == b["action"]
        np.testing.assert_array_equal(a["xyz"], b["xyz"])
        np.testing.assert_array_equal(a["present"], b["present"])
    changed, broken = sorted((tmp_path / "data").glob("*.skeleton"))[:2]
    text = changed.read_text().splitlines()
    n = next(i for i, line in enumerate(text) if len(line.split()) == 12)  # the first joint's line
    row = text[n].split()
    row[0] = str(float(row[0]) + 1.0)  # that joint moves by 1 m in x
    text[n] = " ".join(row)
    changed.write_text("\n".join(text) + "\n")
    broken.write_text("two\n")
    train3, val3 = load_samples(cfg)
    assert sorted(parsed) == sorted([changed.name, broken.name])  # only the changed files are read again
    after = {s["name"]: s for s in train3 + val3}
    before = {s["name"]: s for s in train + val}
    assert broken.stem not in after and not np.array_equal(after[changed.stem]["xyz"], before[changed.stem]["xyz"])
    parsed.clear()
    load_samples(cfg)
    assert parsed == [broken.name]  # a bad file is never recorded as parsed: it is named again on every run


def test_actions_differ_in_structure_and_summary_statistics_stay_near_chance(tmp_path):
    """Reversing time turns one squat tempo into the other and leaves every summary statistic unchanged; on
    the synthetic set a logistic regression on the statistics stays within 10 points of chance."""
    from scimae.core.evaluate import logistic_predict
    from scimae.domains.skeleton.data import Skeletons
    from scimae.domains.skeleton.transforms import summary_statistics

    rng = np.random.default_rng(0)
    drop = synthetic.perform("drop_left_leads", 48, rng)
    joints = torch.from_numpy(drop).float()[None, None]  # [1, 1, T, V, 3]
    present = torch.ones(1, 1, dtype=torch.bool)
    forward, backward = summary_statistics(joints, present), summary_statistics(joints.flip(2), present)
    assert forward.shape == (1, 25 * 17) and torch.allclose(forward, backward, atol=1e-6)

    cfg = SkeletonDataConfig(synthetic=SyntheticConfig(per_action=30, folder=str(tmp_path / "data")), frames=32)
    train, val = load_samples(cfg)
    actions = sorted({s["action"] for s in train})

    def stats(samples):
        items = [Skeletons(samples, cfg, False, actions)[i] for i in range(len(samples))]
        x = summary_statistics(torch.stack([s["joints"] for s in items]), torch.stack([s["present"] for s in items]))
        return x.double().numpy(), np.array([int(s["y"]) for s in items])

    (x_tr, y_tr), (x_va, y_va) = stats(train), stats(val)
    accuracy = (logistic_predict(x_tr, y_tr, x_va) == y_va).mean()
    assert abs(accuracy - 1 / len(actions)) <= 0.10, accuracy


def test_the_skeleton_strategies_belong_to_its_mask_config_and_earlier_exports_still_load():
    """body_part and motion (with tau) parse in the skeleton's config only, whatever was imported first; core
    configs list the strategies they know, and read the tau that earlier exports wrote."""
    from scimae.core.config import from_dict
    from scimae.core.masking import MaskConfig
    from scimae.domains.cardiac.model import CardiacModelConfig

    assert isinstance(from_dict(SkeletonMaskConfig, {"strategy": "motion", "tau": 0.5}).build(), MotionAwareMasking)
    with pytest.raises(ValueError, match=r"unknown masking strategy 'motion'; expected one of \['block', 'colored'"):
        MaskConfig(strategy="motion")
    with pytest.raises(ValueError, match=r"model.mask.tau must be > 0, got 0"):
        SkeletonMaskConfig(tau=0)
    old = from_dict(CardiacModelConfig, {"mask": {"strategy": "random", "ratio": 0.6, "tau": 0.75}}, "model.")
    assert old.mask == MaskConfig(strategy="random", ratio=0.6)
