"""Remote-sensing models: the band-group tokenizer, the MAE, its export config (with the band layout)
and loading."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


from scimae.core.checkpoint import from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae
from scimae.core.masking import MaskConfig
from scimae.domains.remote_sensing.data import band_layout


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
