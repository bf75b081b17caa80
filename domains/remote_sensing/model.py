"""Remote-sensing models: the band-group tokenizer, the MAE, its export config (with the band layout),
loading, facebookresearch/mae ViT and Prithvi-EO checkpoints converted into it, and channel surgery from an
export's bands to other data's."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scimae.core.checkpoint import from_pretrained, save_export
from scimae.core.config import NON_NEGATIVE, check_ranges, from_dict
from scimae.core.convert import load_mapped, mae_vit, prithvi, read_checkpoint
from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae
from scimae.core.masking import MaskConfig
from scimae.core.tokens import TokenSet
from scimae.core.errors import DataError
from scimae.domains.remote_sensing.data import GeoDataConfig, band_layout, layout_bands
from scimae.domains.remote_sensing.io import Band

log = logging.getLogger(__name__)


# Bands of different sensors that sample the same part of the spectrum (centre wavelengths in nm): an export's
# band takes a data band of its own name, else one of its class here. NAIP B/G/R/NIR (456/560/634/876), HLS as
# Prithvi names it (482/561/655/865/1609/2201), Sentinel-2 (490/560/665/842 and 865/1610/2190).
SPECTRAL_CLASSES = [{"B", "BLUE", "B02"}, {"G", "GREEN", "B03"}, {"R", "RED", "B04"}, {"NIR", "NIR_NARROW", "B08", "B8A"},
                    {"SWIR_1", "SWIR1", "B11"}, {"SWIR_2", "SWIR2", "B12"}]


def match_bands(data: list[str], model: list[str]) -> dict[str, str | None]:
    """Each data band -> the model band it feeds: the same name, else the first free model band of its
    spectral class (:data:`SPECTRAL_CLASSES`), else None (a band the model has not seen)."""
    spectral = {name: i for i, names in enumerate(SPECTRAL_CLASSES) for name in names}
    free = [m for m in model if m not in data]
    out = {}
    for d in data:
        if d in model:
            out[d] = d
            continue
        cls = spectral.get(d.upper())
        out[d] = next((m for m in free if cls is not None and spectral.get(m.upper()) == cls), None)
        if out[d] is not None:
            free.remove(out[d])
    return out


@dataclass
class GeoModelConfig(SmallMAEConfig):
    frames: int = 0  # 0: 2D patches of one date; N >= 1: a time axis of N dates (Prithvi's layout)
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="group_independent", ratio=0.75))

    def __post_init__(self):
        super().__post_init__()
        check_ranges("model", self, {"frames": NON_NEGATIVE})


class GeoTokenizer(GridTokenizer):
    """Band-group tokens of a window: image [B, G, C, H, W]. With ``frames`` N >= 1 the image has a time axis
    [B, G, C, N, H, W], patched one date at a time, with Prithvi's (time, height, width) sin-cos positions; a
    model of one frame also takes a window without that axis (a GeoTIFF tile is one date)."""

    def __init__(self, groups: list[str], window: int, patch: int, dim: int, sizes: list[int], frames: int = 0):
        spatial, patches = ((frames, window, window), (1, patch, patch)) if frames else ((window, window), (patch, patch))
        super().__init__(groups, spatial, patches, dim, max(sizes), sizes, "prithvi" if frames else "equal")
        self.frames = frames

    def forward(self, batch: dict) -> TokenSet:
        if self.frames == 1 and batch["image"].ndim == 5:
            batch = {**batch, "image": batch["image"].unsqueeze(3)}  # [B, G, C, 1, H, W]
        return super().forward(batch)

    def unpatchify(self, values: torch.Tensor) -> torch.Tensor:
        x = super().unpatchify(values)  # [B, G, C, (N,) H, W]
        return x.squeeze(3) if self.frames == 1 else x


def build_geo_mae(cfg: GeoModelConfig, layout: dict[str, list[str]], window: int, patch: int) -> MaskedAutoencoder:
    """One token group per spectral group of ``layout`` (group -> bands; 2D patches, a group embedding,
    2D sin-cos positions, or a time axis of ``cfg.frames`` dates): any band subset by name."""
    tok = GeoTokenizer(list(layout), window, patch, cfg.dim, [len(m) for m in layout.values()], cfg.frames)
    return build_mae(cfg, tok, PatchTarget(cfg.loss, cfg.norm_pix), tok.patch_values, load_geo_mae)


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


def load_geo_mae(folder, frames: int | None = None) -> tuple[MaskedAutoencoder, dict]:
    """A geo_pretrain (or converted) export: the MAE and its config. ``frames`` builds a model with a time axis
    for that many dates instead of the export's (its weights do not depend on it: one date per patch, fixed
    sin-cos positions); models without a time axis are built as exported."""

    def build(config: dict) -> MaskedAutoencoder:
        if frames is not None and config["model"].get("frames"):
            config["model"]["frames"] = frames
        return mae_from_config(config)

    return from_pretrained(folder, build, "remote_sensing", EXPORT_KEYS)


def layout_record(layout: dict[str, list[str]]) -> list[dict]:
    """The band layout as an ordered JSON list (exports sort mapping keys; group order is the model's)."""
    return [{"name": g, "bands": members} for g, members in layout.items()]


def export_layout(config: dict) -> dict[str, list[str]]:
    return {g["name"]: g["bands"] for g in config["groups"]}


def adapt_bands(mae: MaskedAutoencoder, config: dict, bands: list[str]) -> tuple[MaskedAutoencoder, dict, dict]:
    """Channel surgery: an export's model for data of other ``bands``. A data band feeds the export band of its
    name or spectral class (:func:`match_bands`) and keeps its weights;
    export bands the data lacks stay empty (their channel is 0, the band's mean, or their group is absent); a
    band the export has not seen becomes a group of its own, started fresh. Returns the model, its band
    layout (data band names in the export's channel places) and the record of what was matched, absent and new."""
    layout = export_layout(config)
    match = match_bands(bands, layout_bands(layout))
    fed = {e: d for d, e in match.items() if e is not None}
    new_layout = {g: [fed.get(b, b) for b in members] for g, members in layout.items()}
    new = [d for d, e in match.items() if e is None]
    new_layout.update({d: [d] for d in new})
    record = {"matched": {d: e for d, e in match.items() if e is not None and d != e},
              "absent": [b for b in layout_bands(layout) if b not in fed], "new": new}
    if new:
        grown = mae_from_config({**config, "groups": layout_record(new_layout)})
        state = grown.state_dict()
        for k, v in mae.state_dict().items():  # per-group tables grow: the export's groups first, new ones fresh
            state[k] = v if state[k].shape == v.shape else torch.cat([v, state[k][len(v):]])
        grown.load_state_dict(state)
        mae = grown
    if any(record.values()):
        log.warning("bands adapted to the export: %s", record)
    return mae, new_layout, record


IMAGENET = {"R": (0.485, 0.229), "G": (0.456, 0.224), "B": (0.406, 0.225)}  # MAE's RGB mean, std on [0, 1]
# Prithvi-EO-2.0's six HLS bands (surface reflectance x 10,000) and the released models' mean, std
HLS = {"BLUE": (1087.0, 2248.0), "GREEN": (1342.0, 2179.0), "RED": (1433.0, 2178.0), "NIR_NARROW": (2734.0, 1850.0),
       "SWIR_1": (1958.0, 1242.0), "SWIR_2": (1363.0, 1049.0)}


def _write_converted(out, checkpoint, model: dict, image: dict, tensors: dict, left_out: list, mask: dict,
                     bands: list[Band], layout: dict, source: dict) -> Path:
    """Build the remote-sensing MAE of ``model`` settings, load the mapped ``tensors`` and write the export."""
    cfg = from_dict(GeoModelConfig, {**model, "frames": image["frames"], "mask": mask}, "model.")
    mae = build_geo_mae(cfg, layout, image["img_size"], image["patch"])
    fresh = load_mapped(mae, tensors)  # a fine-tuned classifier's decoder
    data = GeoDataConfig(bands=bands, groups=layout, window=image["img_size"], patch=image["patch"])
    source = {"file": Path(checkpoint).name, "left_out": left_out, "fresh": fresh, **source}
    return save_export(out, mae, export_config(cfg, data, layout, source=source))


def _new(out) -> Path:
    out = Path(out)
    if out.exists():
        raise DataError(out, "an existing path", "a new folder for the converted export (nothing is overwritten)")
    return out


def convert_mae(checkpoint, out, heads: int | None = None, decoder_heads: int | None = None) -> Path:
    """A facebookresearch/mae ViT checkpoint -> a remote-sensing export of one RGB group: bands R, G, B of
    8-bit values, normalised as MAE normalises its inputs (ImageNet statistics, here in 8-bit units), MAE's
    conventions set in the model config (LayerNorm eps 1e-6, norm-pix, fixed sin-cos decoder positions, the
    visible count int(L x (1 - ratio))). Writes ``out`` (which must not exist yet) and returns it."""
    out = _new(out)
    model, image, tensors, left_out = mae_vit(read_checkpoint(checkpoint), checkpoint, heads, decoder_heads)
    if image["channels"] != 3 or image["frames"]:
        raise DataError(checkpoint, f"a MAE ViT of {image['channels']} input channels" + (" and frames" * bool(image["frames"])),
                        "an RGB MAE ViT (3 channels, 2D patches)")
    bands = [Band(b, mean=round(255 * m, 4), std=round(255 * s, 4)) for b, (m, s) in IMAGENET.items()]
    source = {"format": "mae", "conventions": "facebookresearch/mae: LayerNorm eps 1e-6, norm-pix target with the "
              "unbiased variance, fixed 2D sin-cos positions in encoder and decoder, int(L x (1 - ratio)) visible patches"}
    return _write_converted(out, checkpoint, model, image, tensors, left_out, {"strategy": "random", "ratio": 0.75,
                            "count": "floor"}, bands, {"rgb": list(IMAGENET)}, source)


def convert_prithvi(checkpoint, out, heads: int | None = None, decoder_heads: int | None = None,
                    norm_eps: float = 1e-6) -> Path:
    """A Prithvi-EO-1.0/2.0 MAE checkpoint -> a remote-sensing export of one group of the six HLS bands
    (:data:`HLS`, with the released models' normalisation) and a time axis of the checkpoint's frames
    (Prithvi's (1, p, p) patches and 3-d sin-cos split), MAE's masking (int(L x (1 - ratio)) visible), a
    plain pixel target, LayerNorm eps ``norm_eps`` (1e-6 in the released code; TerraTorch's file default is
    1e-5). Writes ``out`` (which must not exist yet) and returns it."""
    out = _new(out)
    model, image, tensors, left_out = prithvi(read_checkpoint(checkpoint), checkpoint, heads, decoder_heads)
    if image["channels"] != len(HLS) or image["tubelet"] != 1:
        raise DataError(checkpoint, f"a Prithvi MAE of {image['channels']} bands and patches of {image['tubelet']} frames",
                        f"Prithvi's {len(HLS)} HLS bands, patched one frame at a time")
    bands = [Band(b, mean=m, std=s) for b, (m, s) in HLS.items()]
    source = {"format": "prithvi", "conventions": f"Prithvi-EO (TerraTorch PrithviMAE): HLS reflectance x 10,000 "
              f"standardised per band by the released mean and std; {image['frames']} frames patched one at a time; "
              f"3-d sin-cos positions (4/16 time, 6/16 height, 6/16 width) in encoder and decoder; LayerNorm eps "
              f"{norm_eps:g}; int(L x (1 - ratio)) visible patches; plain pixel MSE on hidden patches"}
    return _write_converted(out, checkpoint, {**model, "norm_eps": norm_eps}, image, tensors, left_out,
                            {"strategy": "random", "ratio": 0.75, "count": "floor"}, bands, {"hls": list(HLS)}, source)
