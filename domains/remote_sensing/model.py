"""Remote-sensing models: the band-group tokenizer, the MAE, its export config (with the band layout),
loading, and facebookresearch/mae ViT checkpoints converted into it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from scimae.core.checkpoint import from_pretrained, save_export
from scimae.core.config import from_dict
from scimae.core.convert import mae_vit, read_checkpoint
from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae
from scimae.core.masking import MaskConfig
from scimae.core.errors import DataError
from scimae.domains.remote_sensing.data import GeoDataConfig, band_layout
from scimae.domains.remote_sensing.io import Band


@dataclass
class GeoModelConfig(SmallMAEConfig):
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="group_independent", ratio=0.75))


def build_geo_mae(cfg: GeoModelConfig, layout: dict[str, list[str]], window: int, patch: int) -> MaskedAutoencoder:
    """One token group per spectral group of ``layout`` (group -> bands; 2D patches, a group embedding,
    2D sin-cos positions): any band subset by name."""
    groups, sizes = list(layout), [len(m) for m in layout.values()]
    tok = GridTokenizer(groups, (window, window), (patch, patch), cfg.dim, max(sizes), sizes)
    return build_mae(cfg, tok, PatchTarget(cfg.loss, cfg.norm_pix), tok.patch_values)


def export_config(model_cfg, data_cfg, layout: dict[str, list[str]] | None = None, **extra) -> dict:
    """The band table (names, kinds, normalisation), spectral groups (``layout``, default: the data's),
    window and patch size of a model; ``model_cfg``: a config or its dict."""
    layout = layout or band_layout([b.name for b in data_cfg.bands], data_cfg.groups)
    model = model_cfg if isinstance(model_cfg, dict) else dataclasses.asdict(model_cfg)
    return {"domain": "remote_sensing", "model": model,
            "bands": [dataclasses.asdict(b) for b in data_cfg.bands], "groups": layout_record(layout),
            "window": data_cfg.window, "patch": data_cfg.patch, **extra}


EXPORT_KEYS = ("model", "groups", "window", "patch")  # what a loader reads


def mae_from_config(config: dict) -> MaskedAutoencoder:
    return build_geo_mae(from_dict(GeoModelConfig, config["model"], "model."), export_layout(config), config["window"],
                         config["patch"])


def load_geo_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    return from_pretrained(folder, mae_from_config, "remote_sensing", EXPORT_KEYS)


def layout_record(layout: dict[str, list[str]]) -> list[dict]:
    """The band layout as an ordered JSON list (exports sort mapping keys; group order is the model's)."""
    return [{"name": g, "bands": members} for g, members in layout.items()]


def export_layout(config: dict) -> dict[str, list[str]]:
    return {g["name"]: g["bands"] for g in config["groups"]}


IMAGENET = {"R": (0.485, 0.229), "G": (0.456, 0.224), "B": (0.406, 0.225)}  # MAE's RGB mean, std on [0, 1]


def convert_mae(checkpoint, out, heads: int | None = None, decoder_heads: int | None = None) -> Path:
    """A facebookresearch/mae ViT checkpoint -> a remote-sensing export of one RGB group: bands R, G, B of
    8-bit values, normalised as MAE normalises its inputs (ImageNet statistics, here in 8-bit units), MAE's
    conventions set in the model config (LayerNorm eps 1e-6, norm-pix, fixed sin-cos decoder positions, the
    visible count int(L x (1 - ratio))). Writes ``out`` (which must not exist yet) and returns it."""
    out = Path(out)
    if out.exists():
        raise DataError(out, "an existing path", "a new folder for the converted export (nothing is overwritten)")
    state = read_checkpoint(checkpoint)
    model, image, tensors, left_out = mae_vit(state, checkpoint, heads, decoder_heads)
    if image["channels"] != 3:
        raise DataError(checkpoint, f"a MAE ViT of {image['channels']} input channels", "an RGB MAE ViT (3 channels)")
    cfg = from_dict(GeoModelConfig, {**model, "mask": {"strategy": "random", "ratio": 0.75, "count": "floor"}}, "model.")
    layout = {"rgb": list(IMAGENET)}
    mae = build_geo_mae(cfg, layout, image["img_size"], image["patch"])
    fresh = sorted(set(mae.state_dict()) - set(tensors))  # a fine-tuned classifier's decoder
    unexpected = mae.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"the MAE ViT mapping produced names the model lacks: {unexpected}")
    data = GeoDataConfig(bands=[Band(b, mean=round(255 * m, 4), std=round(255 * s, 4)) for b, (m, s) in IMAGENET.items()],
                         groups=layout, window=image["img_size"], patch=image["patch"])
    source = {"format": "mae", "file": Path(checkpoint).name, "left_out": left_out, "fresh": fresh,
              "conventions": "facebookresearch/mae: LayerNorm eps 1e-6, norm-pix target with the unbiased variance, "
                             "fixed 2D sin-cos positions in encoder and decoder, int(L x (1 - ratio)) visible patches"}
    return save_export(out, mae, export_config(cfg, data, layout, source=source))
