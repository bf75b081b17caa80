"""Reading cardiac records (WFDB .dat/.mat, multi-segment, EDF, arrays) onto one channel vocabulary."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scimae.core.errors import DataError
from scimae.core.files import find_files

log = logging.getLogger(__name__)

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CHANNELS = LEADS + ["PPG"]  # canonical order = group ids of the model
_ALIASES = {**{lead.lower(): lead for lead in LEADS}, "mlii": "II", "mli": "I", "mliii": "III", "ml2": "II",
            "pleth": "PPG", "ppg": "PPG", "spo2": "PPG", "spo2 pleth": "PPG", "pleth spo2": "PPG", "plet": "PPG"}


def canonical_channel(name: str) -> str | None:
    """'MLII' -> 'II', 'avr' -> 'aVR', 'PLETH' -> 'PPG', 'ECG II' -> 'II'; None for anything else."""
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    if key in _ALIASES:
        return _ALIASES[key]
    key = re.sub(r"^(ecg|lead)\s*", "", key)
    return _ALIASES.get(key)


@dataclass
class Signal:
    """A record on the canonical vocabulary: data [C, T] in physical units (NaN where unknown)."""

    data: np.ndarray  # [C, T] float32
    fs: float
    channels: list[str]  # canonical names, one per row of data
    source: str = "array"
    labels: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.data.shape[1] / self.fs


def from_array(data, fs: float, channel_names, source: str = "array", extra: tuple[str, ...] = ()) -> Signal:
    """Canonicalise an array [C, T] with its channel names; unknown, all-NaN and flat-line channels are dropped
    (and logged), infinite samples are gaps (NaN); nothing left is a DataError."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(channel_names):
        raise DataError(source, f"signal of shape {list(data.shape)} with {len(channel_names)} channel names",
                        "an array [channels, samples] with one name per channel")
    if fs is None or not np.isfinite(fs) or fs <= 0:
        raise DataError(source, f"sampling rate {fs}", "a positive sampling rate in Hz")
    inf = np.isinf(data)
    if inf.any():
        log.warning("%s: %d infinite samples treated as gaps (NaN)", source, int(inf.sum()))
        data = np.where(inf, np.nan, data)
    rows, names, ignored = [], [], []
    for i, raw in enumerate(channel_names):
        name = canonical_channel(str(raw)) or (str(raw) if str(raw) in extra else None)
        if name is None:
            ignored.append(str(raw))
        elif name in names:
            log.info("%s: channel %s repeats %s; keeping the first", source, raw, name)
        elif np.isnan(data[i]).all():
            log.warning("%s: channel %s is all NaN; dropped", source, raw)
        elif np.nanmin(data[i]) == np.nanmax(data[i]):
            log.warning("%s: channel %s is a flat line (every sample %g); dropped", source, raw, np.nanmin(data[i]))
        else:
            rows.append(i)
            names.append(name)
    if ignored:
        log.info("%s: ignored channels %s (not ECG leads or PPG)", source, ignored)
    if not names:
        raise DataError(source, f"no usable channel among {list(map(str, channel_names))}",
                        f"at least one of {CHANNELS} (aliases such as MLII and PLETH count) with a varying finite signal")
    return Signal(data[rows], float(fs), names, source)


def read_record(path: str | Path, extra: tuple[str, ...] = ()) -> Signal:
    """A WFDB record (header + .dat/.mat; multi-segment records with gaps as NaN) or an EDF file."""
    import wfdb

    path = Path(path)
    if path.suffix.lower() == ".edf":
        if not path.is_file():
            raise DataError(path, "no such file", "an EDF file")
        try:
            from wfdb.io.convert.edf import read_edf

            rec = read_edf(str(path))
        except Exception as e:  # wfdb raises many types for a bad EDF
            raise DataError(path, f"an unreadable EDF ({type(e).__name__}: {e})", "a valid EDF file") from None
    else:
        base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat", ".mat") else path
        if not base.with_suffix(".hea").is_file():
            raise DataError(base.with_suffix(".hea"), "no such file", "a WFDB header (.hea)")
        try:
            rec = wfdb.rdrecord(str(base), m2s=True)
        except FileNotFoundError as e:
            raise DataError(base.with_suffix(".hea"), f"a header whose signal file is missing ({e.filename or e})",
                            "the .dat or .mat file it names beside it") from None
        except Exception as e:  # header/data mismatches surface as ValueError, IndexError, ...
            raise DataError(base.with_suffix(".hea"), f"a record wfdb cannot read ({type(e).__name__}: {e})",
                            "a header whose signal files match its length and format") from None
        declared = _declared_fs(base.with_suffix(".hea"))
        if declared is not None and declared <= 0:
            raise DataError(base.with_suffix(".hea"), f"a sampling frequency of {declared:g}", "a positive sampling frequency")
        path = base
    signal = rec.p_signal
    if signal is None or signal.shape[0] == 0:
        raise DataError(path, "no samples", "a record with signal samples")
    if rec.sig_len and signal.shape[0] != rec.sig_len:
        raise DataError(path, f"{signal.shape[0]} samples where the header says {rec.sig_len}",
                        "signal files as long as the header says")
    out = from_array(signal.T, rec.fs, rec.sig_name, str(path), extra)
    out.labels = _header_labels(rec.comments or [])
    return out


def _declared_fs(header: Path) -> float | None:
    """The sampling frequency on a WFDB header's record line, as written (wfdb's reader drops a minus sign)."""
    for line in header.read_text(errors="replace").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            try:
                return float(re.split(r"[/(]", fields[2])[0]) if len(fields) > 2 else None
            except ValueError:
                return None
    return None


def _header_labels(comments: list[str]) -> dict:
    """'key: value' comment lines of a header (how the synthetic records and many datasets store labels)."""
    labels = {}
    for line in comments:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            labels[key.strip()] = value.strip()
    return labels


def find_records(root: str | Path) -> list[Path]:
    """Every WFDB record (by header) and EDF file under ``root``, sorted; segments of a multi-segment
    record (named in its layout) are not listed on their own."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "no such folder", "a folder of WFDB records or EDF files")
    files = find_files(root, lambda p: p.suffix.lower() in (".hea", ".edf"))
    headers = [f for f in files if f.suffix.lower() == ".hea"]
    segments = set()
    for h in headers:
        lines = [ln for ln in h.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("#")]
        if lines and "/" in lines[0].split()[0]:  # a multi-segment header: 'name/nseg nsig fs len'
            segments |= {h.parent / f"{ln.split()[0]}.hea" for ln in lines[1:]}
    records = [h.with_suffix("") for h in headers if h not in segments and not h.stem.endswith("_layout")]
    records += [f for f in files if f.suffix.lower() == ".edf"]
    if not records:
        raise DataError(root, "no .hea or .edf files", "WFDB records or EDF files")
    return records
