"""Cardiac models: the channel tokenizer (or ST-MEM's lead tokenizer), the MAE, its export config and loading."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scimae.core.checkpoint import from_pretrained
from scimae.core.config import check_ranges, from_dict, one_of
from scimae.core.embed import GridTokenizer, GroupEmbed, sincos_1d
from scimae.core.errors import DataError
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae
from scimae.core.masking import MaskConfig
from scimae.core.tokens import TokenSet, gather_slots
from scimae.domains.cardiac.io import CHANNELS, LEADS


STMEM_FS = 250.0  # ST-MEM's sampling rate
STMEM_PREPROCESSING = {  # what ST-MEM's code does to a record before its model sees it, in order
    "leads": list(LEADS), "resample": "FFT (scipy.signal.resample) to 250 Hz",
    "highpass": {"cutoff_hz": 0.67, "order": 5, "zero_phase": True},
    "lowpass": {"cutoff_hz": 40.0, "order": 5, "zero_phase": True},
    "standardise": "one mean and one population std over all leads and samples of the window (zero std: zeros)"}


@dataclass
class CardiacModelConfig(SmallMAEConfig):
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="random", ratio=0.75))
    layout: str = "channels"  # channels: a patch projection per channel (12 leads + PPG); stmem: ST-MEM's lead tokens
    shared_projection: bool = False  # channels layout: one patch projection for every channel

    def __post_init__(self):
        super().__post_init__()
        check_ranges("model", self, {"layout": one_of("channels", "stmem")})


def stmem_table(n: int, dim: int) -> torch.Tensor:
    """ST-MEM's position table [n + 2, dim]: zero rows for the two separators, MAE's 1-d sin-cos of 0..n-1 between."""
    return nn.functional.pad(sincos_1d(dim, torch.arange(n)), (0, 0, 1, 1))


class LeadTokenizer(nn.Module):
    """ST-MEM's token layout. Each of the 12 leads is cut on its own into ``n`` patches of ``patch`` samples,
    embedded by one LayerNorm -> Linear -> LayerNorm shared by all leads, plus a sin-cos position shared by all
    leads and the lead's learned embedding. Each lead is framed by two separator slots (a learned vector plus the
    lead's embedding; their positions are zero rows), always shown and never scored (``TokenSet.fixed``).

    Input batch: ``image`` [B, 13, 1, L] on the cardiac vocabulary (PPG is not read), ``present`` [B, 13],
    optionally ``patch_valid`` [B, 13, n]. Slots: lead-major, [separator, n patches, separator] per lead.
    """

    def __init__(self, window: int, patch: int, dim: int):
        super().__init__()
        if window % patch:
            raise ValueError(f"patch {patch} must divide the window of {window} samples")
        self.group_names, self.dim, self.patch, self.n = list(LEADS), dim, patch, window // patch
        self.grid = (self.n + 2,)
        self.patch_norm, self.proj, self.token_norm = nn.LayerNorm(patch), nn.Linear(patch, dim), nn.LayerNorm(dim)
        self.sep = nn.Parameter(torch.randn(dim) * 0.02)
        self.lead_embed = GroupEmbed(LEADS, dim)
        self.register_buffer("pos_table", stmem_table(self.n, dim))  # [n + 2, D], stored: a converted model's own

    @property
    def patch_values(self) -> int:
        return self.patch

    def decoder_table(self, dim: int) -> torch.Tensor:
        """The decoder's positions [N, dim]: the same table for every lead, no lead embedding."""
        return stmem_table(self.n, dim).repeat(len(LEADS), 1)

    def forward(self, batch: dict) -> TokenSet:
        x, present = batch["image"][:, :len(LEADS), 0], batch["present"][:, :len(LEADS)]  # [B, 12, L], [B, 12]
        B, G, n = x.shape[0], len(LEADS), self.n
        patches = nn.functional.pad(x.reshape(B, G, n, self.patch), (0, 0, 1, 1))  # [B, 12, n + 2, P], zero separators
        ok = batch["patch_valid"][:, :G] if "patch_valid" in batch else present[..., None].expand(B, G, n)
        valid = present[..., None] & nn.functional.pad(ok, (1, 1), value=True)  # [B, 12, n + 2]
        sep = torch.zeros(n + 2, dtype=torch.bool, device=x.device)
        sep[[0, -1]] = True
        gid = torch.arange(G, device=x.device)
        lead = self.lead_embed(gid)  # [12, D]
        slot = (self.pos_table[None] + lead[:, None]).reshape(1, G * (n + 2), -1)  # [1, N, D]
        patches = patches.reshape(B, G * (n + 2), self.patch)  # [B, N, P]
        is_sep = sep.repeat(G)  # [N]

        def embed(idx: torch.Tensor | None) -> torch.Tensor:
            """Patch embedding plus position, or the separator vector, then the lead's embedding."""
            if idx is None:
                idx = torch.arange(G * (n + 2), device=x.device)[None].expand(B, -1)
            tokens = self.token_norm(self.proj(self.patch_norm(gather_slots(patches, idx))))  # [B, K, D]
            where = idx % (n + 2)
            tokens = torch.where(is_sep[idx][..., None], self.sep, tokens + self.pos_table[where])
            return tokens + lead[idx // (n + 2)]

        return TokenSet(tokens=None, embed_fn=embed, group=gid.repeat_interleave(n + 2)[None].expand(B, -1),
                        valid=valid.reshape(B, -1), pos=slot, target=patches, grid=self.grid,
                        fixed=is_sep[None].expand(B, -1))

    def unpatchify(self, values: torch.Tensor) -> torch.Tensor:
        """[B, N, P] slot values -> [B, 13, 1, L] (separators dropped; PPG zero)."""
        B = values.shape[0]
        x = values.reshape(B, len(LEADS), self.n + 2, self.patch)[:, :, 1:-1].reshape(B, len(LEADS), 1, -1)
        return nn.functional.pad(x, (0, 0, 0, 0, 0, len(CHANNELS) - len(LEADS)))


def build_cardiac_mae(cfg: CardiacModelConfig, window_length: int, patch: int) -> MaskedAutoencoder:
    """1D patches per channel, a channel-type embedding (12 leads + PPG) and a time embedding; an
    absent channel is invalid slots, so any subset in any order is one model's input. ``layout`` stmem:
    ST-MEM's lead tokens (:class:`LeadTokenizer`)."""
    if cfg.layout == "stmem":
        tok = LeadTokenizer(window_length, patch, cfg.dim)
    else:
        tok = GridTokenizer(CHANNELS, (window_length,), (patch,), cfg.dim, shared=cfg.shared_projection)
    return build_mae(cfg, tok, PatchTarget(cfg.loss, cfg.norm_pix), tok.patch_values, load_cardiac_mae)


def export_config(model_cfg: CardiacModelConfig, data_cfg, **extra) -> dict:
    """Everything a script needs to feed the model: channel vocabulary, rate, window, patch, normalisation."""
    read = LEADS if model_cfg.layout == "stmem" else CHANNELS  # the channels the model has tokens for
    return {"domain": "cardiac", "model": dataclasses.asdict(model_cfg), "channels": list(read),
            "trained_channels": list(data_cfg.channels),
            "fs": data_cfg.fs, "window_s": data_cfg.window_s, "stride_s": data_cfg.stride_s,
            "patch": data_cfg.patch, "max_gap_s": data_cfg.max_gap_s, "preprocessing": data_cfg.preprocessing,
            **PREPROCESSING[data_cfg.preprocessing], **extra}


PREPROCESSING = {  # how each preprocessing filters and normalises, as config.json tells a reader
    "scimae": {"filters": {"ECG": [0.5, 40.0], "PPG": [0.5, 8.0]},
               "normalization": "per window and channel: zero mean, unit variance"},
    "stmem": {"filters": {"ECG": [0.67, 40.0]}, "normalization": "per crop: one mean and one std over all leads",
              "preprocessing_steps": STMEM_PREPROCESSING}}
EXPORT_KEYS = ("model", "fs", "window_s", "stride_s", "patch", "max_gap_s")  # what a loader reads


def mae_from_config(config: dict) -> MaskedAutoencoder:
    cfg = from_dict(CardiacModelConfig, config["model"], "model.")
    return build_cardiac_mae(cfg, int(round(config["window_s"] * config["fs"])), config["patch"])


def load_cardiac_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    return from_pretrained(folder, mae_from_config, "cardiac", EXPORT_KEYS)


def convert_stmem(checkpoint, out) -> Path:
    """An ST-MEM pretraining checkpoint -> a cardiac_pretrain export of ST-MEM's layout and conventions
    (:func:`scimae.core.convert.st_mem`), its input (12 leads at 250 Hz in windows of the checkpoint's length)
    and the preprocessing its code applies recorded in config.json. Writes ``out`` (which must not exist yet)."""
    from scimae.core.checkpoint import save_export
    from scimae.core.convert import load_mapped, read_checkpoint, st_mem
    from scimae.domains.cardiac.data import CardiacDataConfig

    out = Path(out)
    if out.exists():
        raise DataError(out, "an existing path", "a new folder for the converted export (nothing is overwritten)")
    model, facts, tensors, left_out = st_mem(read_checkpoint(checkpoint), checkpoint)
    if facts["leads"] != len(LEADS):
        raise DataError(checkpoint, f"{facts['leads']} lead embeddings", f"ST-MEM's {len(LEADS)} ({', '.join(LEADS)})")
    cfg = from_dict(CardiacModelConfig, {**model, "mask": {"strategy": "random", "ratio": 0.75, "count": "group_floor"}},
                    "model.")
    fs = STMEM_FS
    window = facts["patch"] * facts["patches"]
    data = CardiacDataConfig(fs=fs, window_s=window / fs, stride_s=10.0, patch=facts["patch"], channels=list(LEADS),
                             preprocessing="stmem")
    mae = build_cardiac_mae(cfg, window, facts["patch"])
    table = mae.encoder.tokenizer.decoder_table(cfg.decoder_dim)[: facts["patches"] + 2]
    if not torch.allclose(facts["decoder_pos"].float(), table, atol=1e-5):
        raise DataError(checkpoint, "a decoder_pos_embed that is not ST-MEM's fixed sin-cos table",
                        "the table ST-MEM's code builds")
    fresh = load_mapped(mae, tensors)  # the cls slot: no slot attends to it
    source = {"format": "stmem", "file": Path(checkpoint).name, "left_out": left_out, "fresh": fresh,
              "conventions": "ST-MEM: 12 leads (I, II, III, aVR, aVL, aVF, V1-V6) at 250 Hz, each cut into patches of "
                             f"{facts['patch']} samples embedded by LayerNorm -> Linear -> LayerNorm, positions shared by "
                             "the leads, a lead embedding and two separator tokens per lead, heads 64 wide, no cls "
                             "token, each lead decoded on its own, int(n x (1 - ratio)) visible patches per lead, "
                             "norm-pix MSE; pooled feature: the final norm of the mean over patch tokens"}
    return save_export(out, mae, export_config(cfg, data, source=source))
