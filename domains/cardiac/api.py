"""CardiacFoundationModel: load an export and call it on a record from a clinical script.

    model = CardiacFoundationModel.from_pretrained("runs/cardiac_pretrain/<run>/export")  # or a Hub repo id
    vectors = model.embed("data/100")                                 # a WFDB record: [windows, D]
    batch = model.embed(["data/100", "data/101"])                     # a list of records: a list of [W_i, D]
    lead_ii = model.reconstruct(x, ["II"], fs=125, names=["PLETH"])   # an array: lead II from a PPG

A record is a WFDB path (or EDF file), a ``wfdb.Record``, or an array [channels, samples] with
``fs`` and ``names``; it is preprocessed as the export records (scimae's, or a converted ST-MEM's own). The model is a ``torch.nn.Module`` in eval mode: ``.to(device)`` moves it, and
``save_pretrained(folder)`` writes the export it was loaded from.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from scimae.core.checkpoint import load_export, load_weights, save_export
from scimae.core.errors import DataError
from scimae.core.heads import FineTuner
from scimae.domains.cardiac.data import CardiacDataConfig, records_windows
from scimae.domains.cardiac.io import CHANNELS, Signal, canonical_channel, from_array, read_record
from scimae.domains.cardiac.finetune import cardiac_finetuner, CardiacTaskConfig
from scimae.domains.cardiac.model import EXPORT_KEYS, mae_from_config

log = logging.getLogger(__name__)


class CardiacFoundationModel(nn.Module):
    """Embeddings, predictions (with a fine-tuned head) and channel synthesis on CPU or GPU."""

    def __init__(self, mae, config: dict, head: FineTuner | None = None, device: str | None = None):
        super().__init__()
        self.mae, self.head, self.config = mae, head, config
        self.data_cfg = CardiacDataConfig(fs=config["fs"], window_s=config["window_s"], stride_s=config["stride_s"],
                                          patch=config["patch"], max_gap_s=config["max_gap_s"], root="",
                                          preprocessing=config.get("preprocessing", "scimae"))
        self.crops = 3 if self.data_cfg.preprocessing == "stmem" else 1  # ST-MEM: three crops per 10-s window
        self.pooling = "mean_norm" if config["model"].get("layout") == "stmem" else "mean"
        self.eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | None = None) -> "CardiacFoundationModel":
        """An export of cardiac_pretrain (or of cardiac_finetune, which adds the head): a local folder or a
        Hugging Face Hub repo id."""
        config, state = load_export(folder, "cardiac", EXPORT_KEYS)
        mae = mae_from_config(config)
        head = None
        if "task" in config:
            head = cardiac_finetuner(mae.encoder, CardiacTaskConfig(**config["task"]), config["n_out"])
            load_weights(head, state)
        else:
            load_weights(mae, state)
        return cls(mae, config, head, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write this model as an export folder that ``from_pretrained`` reads back."""
        return save_export(folder, self.head if self.head is not None else self.mae, self.config)

    def forward(self, batch: dict) -> torch.Tensor:
        """Windows as the data pipeline batches them -> the head's logits [B, K] (fine-tuned) or the pooled
        embedding [B, D] (pretrained)."""
        if self.head is not None:
            return self.head(batch)
        return self._pool(self.mae.encoder(batch))

    def _pool(self, feats: dict) -> torch.Tensor:
        """The export's pooled feature [B, D]: the mean of the tokens over valid slots (ST-MEM's: then the norm)."""
        if self.pooling == "mean_norm":
            return feats["mean_norm"]
        w = feats["valid"][..., None].float()  # [B, N, 1]
        return (feats["tokens"] * w).sum(1) / w.sum(1).clamp_min(1)  # [B, D]

    def _per_window(self, out: torch.Tensor) -> torch.Tensor:
        """[W x crops, ...] -> [W, ...]: the mean over each window's crops (ST-MEM averages its three)."""
        return out.reshape(-1, self.crops, *out.shape[1:]).mean(1)

    def _map(self, records, fs, names, fn, workers: int | None, batch_size: int = 64):
        """``fn(batch) -> [b, ...]`` over every window of one record (-> [W, ...]) or of a list of records (-> a list
        of [W_i, ...]): records read and preprocessed in ``workers`` DataLoader processes, a chunk of records at a
        time, and their windows batched through ``fn``."""
        many = isinstance(records, (list, tuple)) or (isinstance(records, np.ndarray) and records.ndim == 3)
        items = list(records) if many else [records]
        chunks = _Chunks(items, fs, names, self.data_cfg, self.config.get("trained_channels", CHANNELS))
        if workers is None:
            workers = min(8, len(os.sched_getaffinity(0)))
        loader = DataLoader(chunks, batch_size=None, num_workers=workers if len(chunks) > 1 else 0)
        outs = []
        for item in loader:
            if isinstance(item, Exception):
                raise item
            inputs, counts = item
            out = torch.cat([fn({k: v[i:i + batch_size].to(self.device) for k, v in inputs.items()}).cpu()
                             for i in range(0, len(inputs["image"]), batch_size)])
            outs += [self._per_window(o).numpy() for o in out.split(counts)]
        return outs if many else outs[0]

    @torch.inference_mode()
    def embed(self, record, fs: float | None = None, names: list[str] | None = None,
              workers: int | None = None) -> np.ndarray | list[np.ndarray]:
        """One vector per window [W, D]: the mean of the encoder's tokens over the valid channels and time (an ST-MEM
        export: its pooled feature, averaged over the window's three crops). A list of records gives a list of
        [W_i, D], read in ``workers`` processes (default: the CPU cores, at most 8)."""
        return self._map(record, fs, names, lambda b: self._pool(self.mae.encoder(b)), workers)

    @torch.inference_mode()
    def predict(self, record, fs: float | None = None, names: list[str] | None = None,
                workers: int | None = None) -> np.ndarray | list[np.ndarray]:
        """The fine-tuned head's output per window: diagnosis probabilities [W, K], class probabilities [W, K] or the
        regression value [W] (an ST-MEM export: from the logits averaged over the three crops); a list of records
        gives a list of them."""
        if self.head is None:
            raise ValueError("this export has no fine-tuned head; use cardiac_finetune's export for predict()")
        out = self._map(record, fs, names, self.head, workers)
        return [self._activate(o) for o in out] if isinstance(out, list) else self._activate(out)

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        """Logits per window -> what :meth:`predict` returns for the export's task."""
        kind = self.config["task"]["kind"]
        if kind == "diagnosis":
            return torch.from_numpy(logits).sigmoid().numpy()
        if kind == "classification":
            return torch.from_numpy(logits).softmax(-1).numpy()
        return logits.reshape(-1) * self.config.get("target_scale", 1.0)

    @torch.no_grad()
    def reconstruct(self, record, channels: list[str], fs: float | None = None, names: list[str] | None = None,
                    uncertainty: int = 0) -> dict[str, np.ndarray]:
        """Synthesise ``channels`` (e.g. a lead from a PPG) from the record's other channels:
        {channel: [W, L]} per window (an ST-MEM export: per crop), standardised units, at the model's rate. With
        ``uncertainty`` K > 0 also {"<channel>/uncertainty": [W, L]}: the spread of K syntheses, each from a random
        three quarters of the other channels' patches (:meth:`~scimae.core.mae.MaskedAutoencoder.fill_spread`)."""
        if self.head is not None:  # a fine-tuned export holds the encoder and head, not the decoder
            raise ValueError("this export is a fine-tuned model without the pretrained decoder; use "
                             "cardiac_pretrain's export for reconstruct()")
        wanted = [canonical_channel(c) or c for c in channels]
        unknown = [c for c in wanted if c not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown channels {unknown}; expected names from {CHANNELS}")
        sig = to_signal(record, fs, names)
        keep = [i for i, c in enumerate(sig.channels) if c not in wanted]
        if not keep:
            raise DataError(sig.source, f"only the channels to synthesise ({wanted})", "at least one other channel")
        sig = Signal(sig.data[keep], sig.fs, [sig.channels[i] for i in keep], sig.source)
        tok = self.mae.encoder.tokenizer
        g = torch.Generator().manual_seed(0)

        def fill(batch):  # -> [b, 13, L], and the spread [b, 13, L] (or zeros)
            recon = torch.nan_to_num(self.mae.reconstruction(self.mae.fill(batch, wanted))[2])  # [b, N, P]
            spread = self.mae.fill_spread(batch, wanted, uncertainty, generator=g) if uncertainty else recon * 0
            return torch.stack([tok.unpatchify(v)[:, :, 0] for v in (recon, spread)], 1).cpu()  # [b, 2, 13, L]

        values = torch.cat([fill(b) for b in self._batches(sig)])  # [W, 2, 13, L], every crop
        out = {c: values[:, 0, CHANNELS.index(c)].numpy() for c in wanted}
        return out | ({f"{c}/uncertainty": values[:, 1, CHANNELS.index(c)].numpy() for c in wanted} if uncertainty else {})

    def _batches(self, sig: Signal, batch_size: int = 256):
        """One record's windows as model inputs on the model's device, ``batch_size`` at a time."""
        w = records_windows([usable(sig, self.config.get("trained_channels", CHANNELS))], self.data_cfg)[0]
        for i in range(0, len(w["image"]), batch_size):
            yield {k: torch.from_numpy(v[i:i + batch_size]).to(self.device) for k, v in w.items()}


def to_signal(record, fs: float | None = None, names: list[str] | None = None) -> Signal:
    """A record as a path, a ``wfdb.Record`` or an array [C, T] with ``fs`` and ``names`` -> Signal."""
    if isinstance(record, (str, Path)):
        return read_record(record)
    if hasattr(record, "p_signal") and hasattr(record, "sig_name"):  # a wfdb.Record
        return from_array(np.asarray(record.p_signal).T, record.fs, record.sig_name, getattr(record, "record_name", "record"))
    if fs is None or names is None:
        raise ValueError("an array record needs fs= and names= (one channel name per row)")
    return from_array(record, fs, names)


def usable(sig: Signal, trained: list[str]) -> Signal:
    """The record's channels the model was trained on (others left out, with a warning); a record with none of
    them is a DataError naming them: an untrained channel embedding is never fed."""
    used = [i for i, c in enumerate(sig.channels) if c in trained]
    if not used:
        raise DataError(sig.source, f"channels {sig.channels}", f"at least one of the channels this model was "
                                                                f"trained on: {trained}")
    if len(used) < len(sig.channels):
        log.warning("%s: channels %s left out: the model was trained on %s", sig.source,
                    [c for c in sig.channels if c not in trained], trained)
    return Signal(sig.data[used], sig.fs, [sig.channels[i] for i in used], sig.source, sig.labels)


class _Chunks(Dataset):
    """Chunks of records -> (their windows as model inputs, concatenated [W, ...], and the windows per record). A bad
    record's error is returned, not raised, so that it reaches the caller as the DataError it is."""

    def __init__(self, records: list, fs, names, cfg, trained: list[str], chunk: int = 16):
        self.records, self.fs, self.names, self.cfg, self.trained, self.chunk = records, fs, names, cfg, trained, chunk

    def __len__(self) -> int:
        return -(-len(self.records) // self.chunk)

    def __getitem__(self, k: int):
        try:
            sigs = [usable(to_signal(r, self.fs, self.names), self.trained)
                    for r in self.records[k * self.chunk:(k + 1) * self.chunk]]
            parts = records_windows(sigs, self.cfg)
        except (DataError, ValueError) as e:
            return e
        windows = {key: torch.from_numpy(np.concatenate([p[key] for p in parts]) if len(parts) > 1 else parts[0][key])
                   for key in parts[0]}
        return windows, [len(p["image"]) for p in parts]
