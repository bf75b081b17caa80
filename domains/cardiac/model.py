"""Cardiac models: the channel tokenizer, the MAE, its export config and loading."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


from scimae.core.checkpoint import from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae
from scimae.core.masking import MaskConfig
from scimae.domains.cardiac.io import CHANNELS


@dataclass
class CardiacModelConfig(SmallMAEConfig):
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="random", ratio=0.75))


def build_cardiac_mae(cfg: CardiacModelConfig, window_length: int, patch: int) -> MaskedAutoencoder:
    """1D patches per channel, a channel-type embedding (12 leads + PPG) and a time embedding; an
    absent channel is invalid slots, so any subset in any order is one model's input."""
    tok = GridTokenizer(CHANNELS, (window_length,), (patch,), cfg.dim)
    return build_mae(cfg, tok, PatchTarget(cfg.loss, cfg.norm_pix), tok.patch_values)


def export_config(model_cfg: CardiacModelConfig, data_cfg, **extra) -> dict:
    """Everything a script needs to feed the model: channel vocabulary, rate, window, patch, normalisation."""
    return {"domain": "cardiac", "model": dataclasses.asdict(model_cfg), "channels": list(CHANNELS),
            "trained_channels": list(data_cfg.channels),
            "fs": data_cfg.fs, "window_s": data_cfg.window_s, "stride_s": data_cfg.stride_s,
            "patch": data_cfg.patch, "max_gap_s": data_cfg.max_gap_s,
            "filters": {"ECG": [0.5, 40.0], "PPG": [0.5, 8.0]},
            "normalization": "per window and channel: zero mean, unit variance", **extra}


EXPORT_KEYS = ("model", "fs", "window_s", "stride_s", "patch", "max_gap_s")  # what a loader reads


def mae_from_config(config: dict) -> MaskedAutoencoder:
    cfg = from_dict(CardiacModelConfig, config["model"], "model.")
    return build_cardiac_mae(cfg, int(round(config["window_s"] * config["fs"])), config["patch"])


def load_cardiac_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    return from_pretrained(folder, mae_from_config, "cardiac", EXPORT_KEYS)
