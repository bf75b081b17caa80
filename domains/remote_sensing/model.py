"""Remote-sensing models: band-group tokenizer, the MAE, exports and the composite figure."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.checkpoint import load_export, load_weights, save_export
from core.config import from_dict
from core.embed import GridTokenizer
from core.losses import PatchTarget
from core.mae import MAEConfig, MaskedAutoencoder, build_mae
from core.masking import MaskConfig


@dataclass
class GeoModelConfig(MAEConfig):
    dim: int = 128
    depth: int = 4
    heads: int = 4
    decoder_dim: int = 96
    decoder_depth: int = 2
    decoder_heads: int = 4
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="group_independent", ratio=0.75))


def build_geo_mae(cfg: GeoModelConfig, band_names: list[str], window: int, patch: int) -> MaskedAutoencoder:
    """One group per band (2D patches, a band embedding, 2D sin-cos positions): any band subset by name."""
    tok = GridTokenizer(band_names, (window, window), (patch, patch), cfg.dim)
    return build_mae(cfg, tok, band_names, PatchTarget(band_names, cfg.loss, cfg.norm_pix), tok.patch_values)


def save_geo_export(model: nn.Module, folder, model_cfg: GeoModelConfig, data_cfg, **extra):
    """Weights with the band table (names, kinds, normalisation), window and patch size."""
    return save_export(folder, model, {"domain": "remote_sensing", "model": dataclasses.asdict(model_cfg),
                                       "bands": [dataclasses.asdict(b) for b in data_cfg.bands],
                                       "window": data_cfg.window, "patch": data_cfg.patch, **extra})


def load_geo_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    config, state = load_export(folder)
    mae = build_geo_mae(from_dict(GeoModelConfig, config["model"]), [b["name"] for b in config["bands"]],
                        config["window"], config["patch"])
    load_weights(mae, state)
    return mae, config


def composite(x: torch.Tensor, names: list[str]) -> np.ndarray:
    """[G, h, w] (NaN = no data) -> an RGB image [h, w, 3] stretched to the 2-98 percentiles; no data magenta."""
    idx = [names.index(c) for c in ("R", "G", "B")] if {"R", "G", "B"} <= set(names) else [0, 1, 2][: len(names)]
    rgb = x[idx].numpy().transpose(1, 2, 0)
    rgb = np.repeat(rgb, 3 // rgb.shape[2], axis=2) if rgb.shape[2] < 3 else rgb
    finite = np.isfinite(rgb).all(-1)
    if finite.any():
        lo, hi = np.percentile(rgb[finite], [2, 98])
        rgb = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb[~finite] = (1.0, 0.0, 1.0)
    return rgb


@torch.no_grad()
def save_figure(model: MaskedAutoencoder, batch: dict, path) -> None:
    """PNG of the first window as a composite: original | masked input | reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = model(batch, torch.Generator().manual_seed(0))
    tok = model.encoder.tokenizer
    names = tok.groups
    original, masked, recon = (tok.unpatchify(v[:1])[0, :, 0].cpu() for v in model.reconstruction(out))
    invalid = ~batch["patch_valid"][0].cpu().repeat_interleave(tok.patch[0], 1).repeat_interleave(tok.patch[1], 2)
    original = original.masked_fill(invalid, float("nan"))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, title, img in zip(axes, ("original", "masked", "reconstruction"), (original, masked, recon)):
        ax.imshow(composite(img, names))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"loss {float(out['loss']):.3f} (magenta: no data or hidden)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
