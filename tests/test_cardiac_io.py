import logging

import numpy as np
import pytest
import wfdb

from scimae.core import DataError
from scimae.domains.cardiac.io import CHANNELS, canonical_channel, find_records, from_array, read_record
from scimae.domains.cardiac.transforms import (bandpass, check_rate, fill_gaps, filtered, resample, standardise, to_slots,
                                               windows)


def _write(tmp_path, name="r", names=("I", "MLII", "PLETH", "RESP"), fs=250, seconds=12, nan=None):
    t = np.arange(int(fs * seconds)) / fs
    sig = np.stack([np.sin(2 * np.pi * (1 + i) * t) for i in range(len(names))], 1)
    if nan is not None:
        sig[nan] = np.nan
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(names), sig_name=list(names), p_signal=sig, fmt=["16"] * len(names),
                adc_gain=[200.0] * len(names), baseline=[0] * len(names),  # NaN is then stored as invalid
                comments=["labels: AF", "hr: 72"], write_dir=str(tmp_path))
    return tmp_path / name


@pytest.mark.parametrize("raw,canon", [("MLII", "II"), ("avr", "aVR"), ("V5", "V5"), ("PLETH", "PPG"),
                                       ("SpO2", "PPG"), ("ECG II", "II"), ("RESP", None), ("ABP", None)])
def test_channel_names_are_canonicalised(raw, canon):
    assert canonical_channel(raw) == canon


def test_read_record_canonicalises_and_logs_ignored(tmp_path, caplog):
    path = _write(tmp_path)
    with caplog.at_level(logging.INFO):
        sig = read_record(path)
    assert sig.channels == ["I", "II", "PPG"] and sig.fs == 250 and sig.data.shape == (3, 3000)
    assert "ignored channels ['RESP']" in caplog.text
    assert sig.labels == {"labels": "AF", "hr": "72"}
    assert read_record(str(path) + ".hea").channels == sig.channels


def test_multi_segment_records_read_with_gaps_as_nan(tmp_path):
    a = _write(tmp_path, "seg1", names=("II",), seconds=2)
    _write(tmp_path, "seg2", names=("II",), seconds=2)
    (tmp_path / "multi_layout.hea").write_text("multi_layout 1 250 0\n~ 0 200/mV 16 0 0 0 0 II\n")
    (tmp_path / "multi.hea").write_text("multi/4 1 250 1250\nmulti_layout 0\nseg1 500\n~ 250\nseg2 500\n")
    sig = read_record(tmp_path / "multi")
    assert sig.data.shape == (1, 1250) and np.isnan(sig.data[0, 500:750]).all()
    assert not np.isnan(sig.data[0, :500]).any()
    assert [p.name for p in find_records(tmp_path)] == ["multi"]
    assert a.with_suffix(".hea").is_file()


def test_arrays_need_rate_and_names():
    sig = from_array(np.random.default_rng(0).normal(size=(2, 100)), 100, ["lead i", "Pleth"])
    assert sig.channels == ["I", "PPG"]
    with pytest.raises(DataError, match="one name per channel"):
        from_array(np.zeros((2, 100)), 100, ["I"])
    with pytest.raises(DataError, match="positive sampling rate"):
        from_array(np.zeros((1, 100)), 0, ["I"])


def test_bad_records(tmp_path, caplog):
    path = _write(tmp_path)
    (tmp_path / "r.dat").unlink()
    with pytest.raises(DataError, match="r.hea: found a header whose signal file is missing"):
        read_record(path)
    with pytest.raises(DataError, match="no usable channel among \\['RESP', 'ABP'\\]"):
        read_record(_write(tmp_path, "x", names=("RESP", "ABP")))
    with caplog.at_level(logging.WARNING):
        sig = read_record(_write(tmp_path, "n", names=("I", "II"), nan=(slice(None), 1)))
    assert sig.channels == ["I"] and "channel II is all NaN; dropped" in caplog.text
    with pytest.raises(DataError, match="no usable channel"):
        read_record(_write(tmp_path, "m", names=("II",), nan=(slice(None), 0)))
    short = _write(tmp_path, "s", names=("II",), seconds=4)
    lines = (tmp_path / "s.hea").read_text().splitlines()
    head = lines[0].split()
    (tmp_path / "s.hea").write_text("\n".join([" ".join(head[:3] + ["5000"])] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="s.hea: found a record wfdb cannot read|samples where the header says"):
        read_record(short)
    with pytest.raises(DataError, match="no such file"):
        read_record(tmp_path / "missing")


def test_rate_window_and_gap_rules(tmp_path):
    sig = from_array(np.random.default_rng(0).normal(size=(2, 600)), 60, ["II", "PPG"], "low.hea")
    with pytest.raises(DataError, match="low.hea: found sampling rate 60 Hz for II; expected more than 80 Hz"):
        check_rate(sig)
    x = np.arange(20, dtype=np.float32)[None].repeat(2, 0)
    x[0, 3:5] = np.nan
    x[1, 5:15] = np.nan
    filled, invalid = fill_gaps(x, max_gap=3)
    assert np.allclose(filled[0, 3:5], [3, 4]) and not invalid[0].any()
    assert invalid[1, 5:15].all() and (filled[1, 5:15] == 0).all()
    with pytest.raises(DataError, match="at least one window of 2500 samples"):
        windows(np.zeros((1, 100)), np.zeros((1, 100), bool), 2500, 2500, "short")


def test_filtering_resamples_filters_and_slots():
    fs = 500
    t = np.arange(fs * 12) / fs
    ecg = np.sin(2 * np.pi * 10 * t) + 5 * np.sin(2 * np.pi * 0.05 * t) + np.sin(2 * np.pi * 100 * t)
    sig = from_array(np.stack([ecg, ecg]), fs, ["V2", "PPG"])
    x, invalid = filtered(*fill_gaps(sig.data, 250), sig.fs, 250.0, sig.channels)
    assert x.shape == (2, 3000) and not invalid.any()
    spec = np.abs(np.fft.rfft(x[0])) / len(x[0])
    freqs = np.fft.rfftfreq(len(x[0]), 1 / 250)
    assert spec[np.argmin(abs(freqs - 10))] > 0.3  # in band: kept
    assert spec[np.argmin(abs(freqs - 0.05))] < 0.2  # baseline wander: removed
    ppg_spec = np.abs(np.fft.rfft(x[1])) / len(x[1])
    assert ppg_spec[np.argmin(abs(freqs - 10))] < 0.5 * spec[np.argmin(abs(freqs - 10))]  # above PPG's 8 Hz
    w, bad = windows(x, invalid, 2500, 250, "r")
    assert w.shape == (3, 2, 2500)
    z = standardise(w, bad)
    assert np.allclose(z.mean(-1), 0, atol=1e-4) and np.allclose(z.std(-1), 1, atol=1e-3)
    slots = to_slots(z, bad, ["V2", "PPG"], 50)
    assert slots["image"].shape == (3, 13, 1, 2500) and slots["patch_valid"].shape == (3, 13, 50)
    assert slots["present"][0].tolist() == [c in ("V2", "PPG") for c in CHANNELS]
    assert resample(np.ones((1, 360)), 360, 250).shape == (1, 250)
    assert bandpass(np.zeros((1, 1000)), 250, ["I"]).shape == (1, 1000)


def test_mat_and_edf_records(tmp_path, monkeypatch):
    from wfdb.io.convert import edf, matlab

    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "r", names=("II", "PLETH"))
    matlab.wfdb_to_mat("r")  # writes rm.hea + rm.mat (the PhysioNet/CinC 2020 layout)
    edf.wfdb_to_edf("r", output_filename="r.edf")
    ref = read_record(tmp_path / "r")
    for path, checked in ((tmp_path / "rm", 2), (tmp_path / "r.edf", 1)):  # wfdb's EDF writer clips PLETH
        sig = read_record(path)
        assert sig.channels == ["II", "PPG"] and sig.fs == 250
        for a, b in zip(sig.data[:checked, :3000], ref.data[:checked]):
            assert np.corrcoef(a, b)[0, 1] > 0.999
    (tmp_path / "bad.edf").write_bytes(b"0       not an edf")
    with pytest.raises(DataError, match="bad.edf: found an unreadable EDF"):
        read_record(tmp_path / "bad.edf")


def test_conduction_patterns_differ_in_structure_and_summary_statistics_stay_near_chance():
    """The four synthetic conduction patterns: V1 first or V6 first, the limb leads unchanged; a logistic
    regression on per-lead percentiles, slopes and heart rate stays within 10 points of chance on them."""
    import torch

    from scimae.core.evaluate import logistic_predict
    from scimae.domains.cardiac import synthetic
    from scimae.domains.cardiac.data import CardiacDataConfig, record_windows
    from scimae.domains.cardiac.io import LEADS, Signal
    from scimae.domains.cardiac.transforms import summary_statistics

    def first_beat(morphology, lead):  # the time (s) of the first QRS peak's largest deflection in a lead
        sig, _ = synthetic.make_record(np.random.default_rng(1), "sinus", False, 3.0, 500.0, morphology)
        x = sig[:, LEADS.index(lead)]
        return np.argmax(np.abs(x[:400] - np.median(x))) / 500.0

    spread = 5 * synthetic.STEP_S  # V1 to V6
    assert abs(first_beat("v1_first-qrs", "V6") - first_beat("v6_first-qrs", "V6") - spread) < 0.006
    assert abs(first_beat("v6_first-qrs", "V1") - first_beat("v1_first-qrs", "V1") - spread) < 0.006
    assert first_beat("v1_first-qrs", "II") == first_beat("v6_first-qrs", "II")

    rng, cfg = np.random.default_rng(0), CardiacDataConfig(stride_s=10.0)
    features, labels = [], []
    for i in range(320):
        rhythm, morphology = ["sinus", "AF", "brady", "tachy"][i % 4], synthetic.MORPHOLOGIES[(i // 4) % 4]
        sig, lab = synthetic.make_record(rng, rhythm, bool(rng.random() < 0.3), 10.0, 250.0, morphology)
        w = record_windows(Signal(sig.T.astype(np.float32), 250.0, LEADS + ["PPG"]), cfg)
        features.append(summary_statistics(torch.from_numpy(w["image"]), torch.tensor([float(lab["hr"])])))
        labels.append(synthetic.MORPHOLOGIES.index(lab["morphology"]))
    x, y = torch.cat(features).double().numpy(), np.array(labels)
    accuracy = (logistic_predict(x[::2], y[::2], x[1::2]) == y[1::2]).mean()
    assert abs(accuracy - 0.25) <= 0.10, accuracy


def test_windows_are_preprocessed_once_into_a_disk_cache_that_a_changed_record_rebuilds(tmp_path, monkeypatch):
    """CardiacWindows preprocesses into the window cache once: the windows equal record_windows per record, a second
    dataset of the same records and settings reads the cache without opening a record, DataLoader workers read the
    same windows, and a changed record or other settings build a new cache."""
    import shutil

    import torch
    from torch.utils.data import DataLoader

    from scimae.domains.cardiac import data, synthetic
    from scimae.domains.cardiac.data import CardiacDataConfig, CardiacWindows, record_windows

    folder = tmp_path / "records"
    shutil.copytree(synthetic.write_dataset(None, 8, 20.0), folder)
    records = find_records(folder)
    cfg = CardiacDataConfig(stride_s=5.0, cache_dir=str(tmp_path / "cache"))
    first = CardiacWindows(records, cfg)
    expected = [record_windows(read_record(r), cfg) for r in records]
    assert len(first) == sum(len(w["image"]) for w in expected) == len(first.record)
    for key in ("image", "present", "patch_valid"):
        np.testing.assert_array_equal(np.stack([first[i][key].numpy() for i in range(len(first))]),
                                      np.concatenate([w[key] for w in expected]))
    assert first.hr[0] == float(read_record(records[0]).labels["hr"])
    assert len(list((tmp_path / "cache").iterdir())) == 1

    def unread(path, *args):
        raise AssertionError(f"{path} read again")

    with monkeypatch.context() as m:
        m.setattr(data, "read_record", unread)
        again = CardiacWindows(records, cfg)
        assert torch.equal(again.y, first.y) and torch.equal(again[5]["image"], first[5]["image"])
        batches = list(DataLoader(again, batch_size=4, num_workers=2))
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack([first[i]["image"] for i in range(len(first))]))
    header = records[2].with_suffix(".hea")
    header.write_text(header.read_text() + "# edited\n")  # the record changed
    CardiacWindows(records, cfg)
    CardiacWindows(records, CardiacDataConfig(stride_s=10.0, cache_dir=cfg.cache_dir))
    assert len(list((tmp_path / "cache").iterdir())) == 3
