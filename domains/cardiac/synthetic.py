"""A synthetic cardiac dataset written as real WFDB records (12-lead ECG + PPG).

Beats come from a rotating cardiac dipole projected onto each lead's axis, so the leads keep their
physical relations (III = II - I, aVF = (II + III) / 2, ...). Rhythms: sinus, atrial fibrillation
(irregular RR, no P waves, fibrillatory baseline), bradycardia, tachycardia, and ectopic ventricular
beats (early, wide, inverted, a weak pulse). The PPG pulse follows each beat.

Independently of the rhythm, each record has one of four conduction patterns (``morphology``): the
order in which the precordial leads see each beat (V1 first ... V6 last, 16 ms apart, or the reverse;
the limb leads see it together) crossed with the QRS mirrored in time (Q-R-S or S-R-Q). Both leave every
lead's distribution of values unchanged, so only the waveforms' structure tells the patterns apart.

The header comments carry the labels (``rhythm``, ``labels`` for multi-label diagnosis, ``hr``,
``morphology``). Some records have only two leads or only PPG; channel names use common aliases (MLII,
PLETH).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from scimae.core.files import build_folder_once
from scimae.core.progress import progress
from scimae.domains.cardiac.io import LEADS

VERSION = 2
DIAGNOSES = ["AF", "brady", "tachy", "PVC"]
MORPHOLOGIES = ["v1_first-qrs", "v1_first-srq", "v6_first-qrs", "v6_first-srq"]  # V1-V6 order x QRS order
STEP_S = 0.016  # delay of a beat between neighbouring precordial leads
# lead axes: limb leads in the frontal plane (degrees), precordial leads in the horizontal plane
_FRONTAL = {"I": 0, "II": 60, "III": 120, "aVR": -150, "aVL": -30, "aVF": 90}
_HORIZONTAL = {"V1": 115, "V2": 95, "V3": 75, "V4": 55, "V5": 30, "V6": 0}


def _lead_axes() -> np.ndarray:
    axes = []
    for lead in LEADS:
        if lead in _FRONTAL:
            a = np.deg2rad(_FRONTAL[lead])
            scale = 1.0 if lead in ("I", "II", "III") else np.sqrt(3) / 2  # augmented leads
            axes.append([scale * np.cos(a), scale * np.sin(a), 0.0])
        else:
            a = np.deg2rad(_HORIZONTAL[lead])
            axes.append([np.cos(a), 0.0, np.sin(a)])
    return np.array(axes)  # [12, 3]


# waves: (offset from R in s, width in s, dipole [x, y, z]) for a normal beat
_WAVES = {"P": (-0.18, 0.022, [0.12, 0.15, 0.05]), "Q": (-0.03, 0.010, [-0.10, 0.05, -0.15]),
          "R": (0.0, 0.012, [0.9, 1.1, 0.6]), "S": (0.035, 0.011, [-0.25, -0.2, -0.9]),
          "T": (0.28, 0.055, [0.25, 0.3, 0.35])}


def _gauss_train(t: np.ndarray, centres: np.ndarray, width: float, amp) -> np.ndarray:
    """Sum over beats of amp_k * exp(-(t - c_k)^2 / 2 w^2) -> [T] (impulses convolved with a Gaussian)."""
    fs = 1.0 / (t[1] - t[0])
    impulses = np.zeros(t.size)
    idx = np.round(centres * fs).astype(int)
    ok = (idx >= 0) & (idx < t.size)
    np.add.at(impulses, idx[ok], np.broadcast_to(amp, centres.shape)[ok])
    half = int(5 * width * fs) + 1
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / (width * fs)) ** 2)
    return fftconvolve(impulses, kernel, mode="same")


def make_record(rng: np.random.Generator, rhythm: str, pvc: bool, seconds: float, fs: float,
                morphology: str = MORPHOLOGIES[0]):
    """(signals [T, 13] in mV / NU, labels dict) for one record."""
    activation, qrs_order = morphology.split("-")
    turn = np.zeros(len(LEADS), int)  # [12]: the limb leads see the beat together, V1..V6 in turn
    turn[[LEADS.index(f"V{k}") for k in range(1, 7)]] = np.arange(6) if activation == "v1_first" else np.arange(5, -1, -1)
    step = int(round(STEP_S * fs))
    pad = step * 5
    t = np.arange(int(seconds * fs) + pad) / fs  # the beats, then each lead sees them ``turn * step`` samples late
    hr = {"sinus": rng.uniform(60, 95), "AF": rng.uniform(80, 130), "brady": rng.uniform(40, 55),
          "tachy": rng.uniform(105, 150)}[rhythm]
    rr = np.full(int(seconds * hr / 60) + 4, 60.0 / hr)
    rr *= 1 + (rng.uniform(-0.35, 0.35, rr.size) if rhythm == "AF" else rng.normal(0, 0.02, rr.size))
    ectopic = (rng.random(rr.size) < 0.15) if pvc else np.zeros(rr.size, bool)
    rr[ectopic] *= 0.65  # ectopic beats come early
    beats = np.cumsum(rr) - rr[0] * rng.uniform(0.2, 1.0)
    keep = beats < seconds + 0.5
    beats, ectopic, rr = beats[keep], ectopic[keep], rr[keep]
    axis = _lead_axes() * rng.uniform(0.8, 1.2)  # a person's heart axis and size
    ecg = np.zeros((len(LEADS), t.size))
    normal, wide = ~ectopic, ectopic
    for name, (offset, width, dipole) in _WAVES.items():
        if name == "P" and rhythm == "AF":
            continue
        amp = axis @ np.asarray(dipole)  # [12]
        for sel, scale, w_scale in ((normal, 1.0, 1.0), (wide, -1.4, 3.0)):
            if not sel.any() or (name == "P" and scale < 0):
                continue
            off = offset * (np.sqrt(rr[sel]) if name == "T" else 1.0) * (1.4 if scale < 0 else 1.0)
            if name in "QS" and qrs_order == "srq":
                off = -off
            shape = _gauss_train(t, beats[sel] + off, width * w_scale, np.ones(sel.sum()))
            ecg += scale * amp[:, None] * shape[None]
    start = pad - turn * step  # [12]
    ecg = ecg[np.arange(len(LEADS))[:, None], start[:, None] + np.arange(t.size - pad)[None]]  # [12, T]
    t = t[: t.size - pad]
    if rhythm == "AF":
        f = sum(rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * rng.uniform(4, 7) * t + rng.uniform(0, 6)) for _ in range(3))
        ecg += f[None] * axis[:, :1]
    wander = 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 6))  # respiration moves the axis
    ecg += (axis @ rng.uniform(-1, 1, 3))[:, None] * wander[None]
    ecg += rng.normal(0, 0.02, ecg.shape)
    pulse_amp = np.where(ectopic, 0.4, 1.0)
    ppg = (_gauss_train(t, beats + 0.25, 0.08, pulse_amp) + _gauss_train(t, beats + 0.5, 0.07, 0.35 * pulse_amp))
    ppg = 50 + 20 * ppg + rng.normal(0, 0.3, t.size)
    labels = [d for d, on in (("AF", rhythm == "AF"), ("brady", rhythm == "brady"), ("tachy", rhythm == "tachy"),
                              ("PVC", pvc)) if on]
    return np.vstack([ecg, ppg[None]]).T.astype(np.float64), {"rhythm": rhythm, "labels": ",".join(labels) or "none",
                                                              "hr": f"{hr:.1f}", "morphology": morphology}


def write_dataset(root: str | Path | None = None, n_records: int = 96, seconds: float = 30.0, seed: int = 0) -> Path:
    """Write the records once (complete or not at all) and return their folder."""
    key = f"{n_records} records of {seconds:g} s, seed {seed}"
    return build_folder_once(root, key, lambda tmp: _write(tmp, n_records, seconds, seed), f"cardiac_synthetic_v{VERSION}")


def _write(tmp: Path, n_records: int, seconds: float, seed: int) -> None:
    import wfdb

    rng = np.random.default_rng(seed)
    rhythms = ["sinus", "AF", "brady", "tachy"]
    for i in progress(range(n_records), "writing synthetic WFDB records"):
        rhythm = rhythms[i % 4]
        fs = 500.0 if i % 3 else 250.0
        sig, labels = make_record(rng, rhythm, pvc=bool(rng.random() < 0.3), seconds=seconds, fs=fs,
                                  morphology=MORPHOLOGIES[(i // 4) % 4])
        names = LEADS + ["PLETH"]
        units = ["mV"] * 12 + ["NU"]
        if i % 6 == 4:  # a two-lead Holter-style record
            cols, names, units = [0, 1], ["I", "MLII"], ["mV", "mV"]
        elif i % 6 == 5:  # a pulse oximeter alone
            cols, names, units = [12], ["PLETH"], ["NU"]
        else:
            cols = list(range(13))
        wfdb.wrsamp(f"syn{i:04d}", fs=fs, units=units, sig_name=names, p_signal=sig[:, cols], fmt=["16"] * len(cols),
                    comments=[f"{k}: {v}" for k, v in labels.items()], write_dir=str(tmp))
