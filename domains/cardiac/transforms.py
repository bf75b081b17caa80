"""Preprocessing with scipy: gap filling, resampling, band-pass filtering, windows, standardisation (scimae's,
or ST-MEM's crops)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from scipy import signal as sps

from scimae.core.errors import DataError
from scimae.domains.cardiac.io import CHANNELS, Signal

BANDS = {"ECG": (0.5, 40.0), "PPG": (0.5, 8.0)}  # Hz


def kind(channel: str) -> str:
    return "PPG" if channel == "PPG" else "ECG"


def check_rate(sig: Signal) -> None:
    """The record's rate must carry every band it needs (above twice the band's upper edge)."""
    for ch in sig.channels:
        high = BANDS[kind(ch)][1]
        if sig.fs <= 2 * high:
            raise DataError(sig.source, f"sampling rate {sig.fs:g} Hz for {ch}",
                            f"more than {2 * high:g} Hz (twice the {kind(ch)} band's {high:g} Hz)")


def fill_gaps(x: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate NaN runs of at most ``max_gap`` samples; longer runs become 0 and are
    returned as invalid. x [C, T] -> (filled [C, T], invalid [C, T] bool)."""
    x = x.copy()
    invalid = np.zeros(x.shape, dtype=bool)
    for c in np.flatnonzero(np.isnan(x).any(1)):  # a loop over the few channels with gaps
        row = x[c]
        nan = np.isnan(row)
        edges = np.diff(np.concatenate([[0], nan.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        good = np.flatnonzero(~nan)
        row[nan] = np.interp(np.flatnonzero(nan), good, row[good])
        for s, e in zip(starts, ends):
            if e - s > max_gap:
                row[s:e] = 0.0
                invalid[c, s:e] = True
    return x, invalid


def resample(x: np.ndarray, fs: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along time: [..., T] at ``fs`` -> [..., T'] at ``fs_out``."""
    if fs == fs_out:
        return x
    ratio = Fraction(fs_out / fs).limit_denominator(1000)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def bandpass(x: np.ndarray, fs: float, channels: list[str]) -> np.ndarray:
    """Zero-phase Butterworth band-pass per channel kind (ECG and PPG have their own bands): x [..., C, T]."""
    out = x.copy()
    for k, (low, high) in BANDS.items():
        rows = [i for i, ch in enumerate(channels) if kind(ch) == k]
        if rows:
            sos = sps.butter(2, [low, high], btype="bandpass", fs=fs, output="sos")
            out[..., rows, :] = sps.sosfiltfilt(sos, x[..., rows, :], axis=-1)
    return out


def filtered(x: np.ndarray, invalid: np.ndarray, fs_in: float, fs: float, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Gap-filled signals at ``fs_in`` [..., C, T] -> (resampled to ``fs`` and band-passed [..., C, T'], invalid)."""
    x = bandpass(resample(x, fs_in, fs), fs, channels)
    if invalid.any():
        invalid = resample(invalid.astype(np.float32), fs_in, fs) > 0.1
    else:
        invalid = np.zeros(x.shape, dtype=bool)
    return x.astype(np.float32), invalid[..., : x.shape[-1]]


def windows(x: np.ndarray, invalid: np.ndarray, length: int, stride: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Fixed windows every ``stride`` samples: x, invalid [..., C, T] -> [..., W, C, length]."""
    T = x.shape[-1]
    if T < length:
        raise DataError(source, f"{T} samples after resampling", f"at least one window of {length} samples")
    starts = np.arange(0, T - length + 1, stride)
    idx = starts[:, None] + np.arange(length)[None]  # [W, L]
    return np.moveaxis(x[..., idx], -2, -3), np.moveaxis(invalid[..., idx], -2, -3)


def standardise(w: np.ndarray, invalid: np.ndarray, axis: tuple[int, ...] = (-1,)) -> np.ndarray:
    """Zero mean, unit variance over the valid samples of ``axis`` (per window and channel by default; ST-MEM's
    (-2, -1): over all channels of a window together); invalid samples and flat signals become 0."""
    if not invalid.any():
        mean, std = w.mean(axis, keepdims=True), w.std(axis, keepdims=True)
        return ((w - mean) / np.maximum(std, 1e-6)).astype(np.float32)
    valid = ~invalid
    n = np.maximum(valid.sum(axis, keepdims=True), 1)
    mean = (w * valid).sum(axis, keepdims=True) / n
    std = np.sqrt((((w - mean) * valid) ** 2).sum(axis, keepdims=True) / n)
    return np.where(valid, (w - mean) / np.maximum(std, 1e-6), 0.0).astype(np.float32)


def stmem_crops(sig: Signal, fs: float, crop: int, max_gap_s: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """ST-MEM's preprocessing of a record -> (crops [3W, C, crop], invalid [3W, C, crop]), window-major: 10-s
    windows at the record's rate, each resampled by FFT (scipy.signal.resample) to 10 x ``fs`` samples, three crops
    of ``crop`` samples at equally spaced starts, each high-passed at 0.67 Hz and low-passed at 40 Hz (order-5
    Butterworth, zero phase) and standardised by one mean and std over all its leads and samples. Gaps as in
    :func:`fill_gaps` (short ones interpolated, long ones invalid)."""
    check_rate(sig)
    x, invalid = fill_gaps(sig.data, int(max_gap_s * sig.fs))
    n10 = int(round(10 * sig.fs))
    W = x.shape[1] // n10
    if W == 0 or crop > int(10 * fs):
        raise DataError(sig.source, f"{x.shape[1] / sig.fs:.1f} s at {sig.fs:g} Hz",
                        f"at least one 10-s window holding crops of {crop} samples at {fs:g} Hz")

    def cut(a):  # [C, T] -> [W, C, n10]
        return a[:, :W * n10].reshape(a.shape[0], W, n10).transpose(1, 0, 2)

    length = int(n10 * fs / sig.fs)
    w = sps.resample(cut(x), length, axis=-1)  # [W, C, length]
    bad = sps.resample(cut(invalid).astype(np.float32), length, axis=-1) > 0.1 if invalid.any() else np.zeros(w.shape, bool)
    starts = np.linspace(0, length - crop, 3).round().astype(int)
    idx = starts[:, None] + np.arange(crop)[None]  # [3, crop]
    w, bad = w[:, :, idx].transpose(0, 2, 1, 3), bad[:, :, idx].transpose(0, 2, 1, 3)  # [W, 3, C, crop]
    w, bad = w.reshape(-1, *w.shape[2:]), bad.reshape(-1, *bad.shape[2:])  # [3W, C, crop]
    for btype, cutoff in (("highpass", 0.67), ("lowpass", 40.0)):
        w = sps.sosfiltfilt(sps.butter(5, cutoff, btype=btype, fs=fs, output="sos"), w, axis=-1)
    return standardise(w, bad, (-2, -1)), bad


def to_slots(w: np.ndarray, invalid: np.ndarray, channels: list[str], patch: int,
             min_valid: float = 0.5) -> dict[str, np.ndarray]:
    """Windows on the record's channels -> the model's 13 channel slots.

    w, invalid [..., C, L] -> image [..., 13, 1, L], present [..., 13], patch_valid [..., 13, L / patch]
    (a patch is valid when at least ``min_valid`` of its samples are).
    """
    *lead, _, L = w.shape
    rows = [CHANNELS.index(ch) for ch in channels]
    image = np.zeros((*lead, len(CHANNELS), 1, L), np.float32)
    image[..., rows, 0, :] = w
    present = np.zeros((*lead, len(CHANNELS)), bool)
    present[..., rows] = True
    ok = np.zeros((*lead, len(CHANNELS), L), bool)
    ok[..., rows, :] = ~invalid
    patch_valid = ok.reshape(*lead, len(CHANNELS), L // patch, patch).mean(-1) >= min_valid
    return {"image": image, "present": present & patch_valid.any(-1), "patch_valid": patch_valid}


def summary_statistics(image: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """The evaluation's ``simple`` baseline: per channel slot, the 5/25/50/75/95th percentiles and the mean
    absolute slope of the (standardised) window, and the heart rate. image [B, 13, 1, L], hr [B] -> [B, 13 * 6 + 1]."""
    x = image[:, :, 0]  # [B, 13, L]
    q = torch.quantile(x, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=x.dtype), dim=-1)  # [5, B, 13]
    slope = (x[..., 1:] - x[..., :-1]).abs().mean(-1)  # [B, 13]
    return torch.cat([q.permute(1, 2, 0).flatten(1), slope, torch.nan_to_num(hr)[:, None].to(x.dtype)], 1)
