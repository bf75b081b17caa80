"""The masked autoencoder: tokenizer -> masking -> encoder -> light decoder -> target.

Where scimae's defaults differ from facebookresearch/mae, deliberately (each but the last is an option, and a
converted MAE checkpoint sets MAE's value):

- LayerNorm eps 1e-5, torch's default, where MAE's recipes use 1e-6 (``norm_eps``): exports trained before the
  option existed were trained with 1e-5 and must load unchanged.
- The decoder places a slot by a learned linear map of the encoder's slot embedding, where MAE adds a fixed
  sin-cos table (``decoder_pos``): scimae's slots belong to groups (modalities, leads, bands), and the
  decoder must know a hidden slot's group as well as its position.
- round((1 - ratio) x n) visible slots, where MAE keeps int(n x (1 - ratio)) (``model.mask.count``): samples
  have different numbers of valid slots, and rounding treats them alike; the two differ only when the
  fraction is one half or more (196 patches at ratio 0.75 keep 49 either way; 14 keep 4 against 3).
- cls and mask tokens are not weight-decayed (core/optim.py), where MAE decays them: as in timm and BEiT, a
  token is a learned input, not a weight whose size regularisation should shrink.

The norm-pix target is MAE's: per patch, mean and unbiased variance, eps 1e-6.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from scimae.core.checkpoint import Exportable
from scimae.core.config import AT_LEAST_1, POSITIVE, UNIT_INTERVAL, check_ranges, one_of
from scimae.core.embed import CoordEmbed, sincos_nd
from scimae.core.frequency import FrequencyMasking
from scimae.core.losses import PatchTarget, gaussian_nll, masked_mean, patch_errors, ranking_loss
from scimae.core.masking import HardPatchMasking, MaskConfig, MaskingStrategy, plan_from_scores
from scimae.core.teacher import TeacherFeatures, teacher_width
from scimae.core.tokens import MaskPlan, Target, Tokenizer, TokenSet, gather_slots
from scimae.core.transformer import Transformer


def full_plan(valid: torch.Tensor) -> MaskPlan:
    """A plan that shows every valid slot and hides none."""
    return plan_from_scores(torch.zeros(valid.shape, device=valid.device), valid, 0.0)


@dataclass
class MAEConfig:
    """Architecture and objective of a masked autoencoder (the tokenizer is the domain's)."""

    dim: int = 384  # encoder width
    depth: int = 8  # encoder blocks
    heads: int = 6  # encoder attention heads
    decoder_dim: int = 256  # decoder width
    decoder_depth: int = 4  # decoder blocks
    decoder_heads: int = 8  # decoder attention heads
    mlp_ratio: float = 4.0  # MLP hidden width over the block width
    drop_path: float = 0.0  # stochastic depth rate of the encoder's last block
    mode: str = "drop"  # drop (MAE) or mask_token (SimMIM)
    decoder_mask_ratio: float = 0.0  # VideoMAE V2 decoder masking
    checkpointing: bool = False  # activation checkpointing in the encoder
    loss: str = "mse"  # mse or l1
    norm_pix: bool = False  # normalise each target patch to zero mean and unit variance (MAE's norm-pix loss)
    group_heads: bool = False  # one prediction head per group (modality, lead, band) instead of one shared
    norm_eps: float = 1e-5  # LayerNorm eps (torch's default; MAE's recipes use 1e-6)
    decoder_pos: str = "learned"  # learned (a linear map of the encoder's slot embedding), sincos (MAE's fixed table)
    # or coords (an MLP of the slot coordinates, Point-MAE's)
    qkv_bias: bool = True  # attention's query/key/value projections have a bias (Point-MAE's have none)
    pos_every_block: bool = False  # add the slot positions before every block, not only to the tokens (Point-MAE)
    cls_token: bool = True  # False: no slot attends to the cls slot (Point-MAE has none); its output is then a read-out
    head_dim: int | None = None  # attention width per head, encoder and decoder (None: width / heads; ST-MEM: 64)
    decoder_norm_eps: float | None = None  # the decoder's final LayerNorm eps (None: norm_eps; ST-MEM: 1e-6)
    decoder_attention: str = "all"  # all, or group: a slot attends only to its own group's (ST-MEM decodes each
    # lead on its own)
    target: str = "pixels"  # pixels (the hidden slots' values), or frequency: MFM, a band of the image's spectrum
    # hidden instead of slots and scored on the predicted image's spectrum (core.frequency; no slot is masked), or
    # features: a frozen teacher export's features of the hidden slots (core.teacher)
    frequency_radius: list[float] = field(default_factory=lambda: [0.1, 0.5])  # target frequency: the hidden
    # band's radius range (1 = Nyquist on every axis), drawn per sample
    teacher: str | None = None  # target features: the teacher's export folder (a scimae export of this domain)
    teacher_dim: int | None = None  # target features: the teacher's width (read from its export when null)
    pixel_weight: float = 0.0  # target features: the weight of the pixel loss beside the feature loss
    uncertainty: bool = False  # a head on the detached decoder output predicts each predicted value's log-variance
    # (Gaussian likelihood of the error), so that a synthesis says how sure it is (MaskedAutoencoder.fill_spread)
    colocated: bool = False  # each predicted patch adds a mix, weighted per group by the decoder, of the patches
    # shown at the same place in the other groups (grid domains): a missing contrast, lead or band synthesised value
    # by value from the present ones, not only from their patch tokens
    mask: MaskConfig = field(default_factory=MaskConfig)
    TARGETS = ("pixels", "frequency", "features")  # the values of ``target`` (a domain with its own targets lists them)

    def __post_init__(self):
        check_ranges("model", self, {
            **dict.fromkeys(("dim", "depth", "heads", "decoder_dim", "decoder_depth", "decoder_heads"), AT_LEAST_1),
            "mlp_ratio": POSITIVE, "drop_path": UNIT_INTERVAL, "decoder_mask_ratio": UNIT_INTERVAL,
            "mode": one_of("drop", "mask_token"), "loss": one_of("mse", "l1"), "norm_eps": POSITIVE,
            "decoder_pos": one_of("learned", "sincos", "coords"), "decoder_attention": one_of("all", "group"),
            "target": one_of(*self.TARGETS),
            "head_dim": (">= 1 or null", lambda v: v is None or v >= 1),
            "decoder_norm_eps": ("> 0 or null", lambda v: v is None or v > 0),
            "pixel_weight": (">= 0", lambda v: v >= 0),
        })
        for width, heads in (("dim", "heads"), ("decoder_dim", "decoder_heads")):
            if self.head_dim is None and getattr(self, width) % getattr(self, heads):
                raise ValueError(f"model.{width} {getattr(self, width)} must be a multiple of model.{heads} "
                                 f"{getattr(self, heads)}")
        if self.target == "frequency" and self.norm_pix:
            raise ValueError("model.target=frequency scores the predicted image's spectrum: model.norm_pix does not apply")
        if self.colocated and (self.norm_pix or self.target == "frequency"):
            raise ValueError("model.colocated adds shown values to the prediction: it needs model.norm_pix=false and "
                             "a target of hidden slots (not frequency)")
        if self.target == "frequency" and self.mask.strategy == "hpm":
            raise ValueError("model.target=frequency hides no slots: model.mask.strategy=hpm does not apply")
        if self.target == "features" and not self.teacher:
            raise ValueError("model.target=features needs model.teacher=EXPORT, a scimae export of this domain")
        if self.target != "features" and self.teacher:
            raise ValueError(f"model.teacher is read with model.target=features only, not {self.target}")
        if self.teacher and self.teacher_dim is None:
            self.teacher_dim = teacher_width(self.teacher)
        if len(self.frequency_radius) != 2 or not 0 <= self.frequency_radius[0] < self.frequency_radius[1] <= 1:
            raise ValueError(f"model.frequency_radius must be [low, high] with 0 <= low < high <= 1, got "
                             f"{self.frequency_radius}")


@dataclass
class SmallMAEConfig(MAEConfig):
    """A CPU-sized encoder (128 wide, 4 deep) and decoder (96 wide, 2 deep) for signals of a few hundred tokens."""

    dim: int = 128
    depth: int = 4
    heads: int = 4
    decoder_dim: int = 96
    decoder_depth: int = 2
    decoder_heads: int = 4


def build_mae(cfg: MAEConfig, tokenizer: Tokenizer, target: Target, pred_dim: int,
              load_teacher=None) -> "MaskedAutoencoder":
    """A MaskedAutoencoder from its config, a domain tokenizer and a target; ``load_teacher(folder) -> (model,
    config)``, the domain's export loader, reads the teacher of ``model.target=features``."""
    encoder = MAEEncoder(tokenizer, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.drop_path,
                         cfg.checkpointing, mask_token=cfg.mode == "mask_token", eps=cfg.norm_eps,
                         qkv_bias=cfg.qkv_bias, pos_every_block=cfg.pos_every_block, cls_token=cfg.cls_token,
                         head_dim=cfg.head_dim)
    frequency = FrequencyMasking(*cfg.frequency_radius) if cfg.target == "frequency" else None
    teacher = None
    if cfg.target == "features":
        if load_teacher is None:
            raise ValueError(f"model.target=features: no export loader was given for {type(tokenizer).__name__}'s "
                             "teacher")
        teacher = TeacherFeatures(cfg.teacher, load_teacher, cfg.teacher_dim)
    return MaskedAutoencoder(encoder, cfg.mask.build(), target, pred_dim, cfg.decoder_dim, cfg.decoder_depth,
                             cfg.decoder_heads, cfg.mlp_ratio, cfg.mode, cfg.decoder_mask_ratio, cfg.group_heads,
                             cfg.norm_eps, cfg.decoder_pos, cfg.qkv_bias, cfg.head_dim, cfg.decoder_norm_eps,
                             cfg.decoder_attention, frequency, teacher, cfg.pixel_weight, cfg.uncertainty,
                             cfg.colocated)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MAEEncoder(nn.Module):
    """Tokenizer + transformer encoder with a cls token; the part that downstream models keep.

    The tokenizer's ``group_names`` name its group ids in order, so callers select groups by name.
    ``cls_token`` False keeps the cls slot out of every other slot's attention (Point-MAE has no cls token): it
    still reads the others, so its output is an attention read-out. ``pos_every_block`` adds the slot positions
    again before every block after the first.
    """

    def __init__(self, tokenizer: Tokenizer, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, checkpointing: bool = False,
                 mask_token: bool = False, eps: float = 1e-5, qkv_bias: bool = True, pos_every_block: bool = False,
                 cls_token: bool = True, head_dim: int | None = None):
        super().__init__()
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"{type(tokenizer).__name__} is not a Tokenizer: it needs dim, group_names and __call__")
        if tokenizer.dim != dim:
            raise ValueError(f"the tokenizer embeds to {tokenizer.dim}, the encoder expects {dim}")
        self.tokenizer = tokenizer
        self.dim, self.depth = dim, depth
        self.pos_every_block, self.attend_cls = pos_every_block, cls_token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # a learned mask token only for the SimMIM mode (unused parameters would stall DDP)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if mask_token else None
        self.blocks = Transformer(dim, depth, heads, mlp_ratio, drop_path, checkpointing, eps, qkv_bias, head_dim)
        self.blocks.apply(_init_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        if mask_token:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def group_names(self) -> list[str]:
        return list(self.tokenizer.group_names)

    def group_ids(self, groups: Sequence[str]) -> list[int]:
        unknown = [g for g in groups if g not in self.group_names]
        if unknown:
            raise ValueError(f"unknown groups {unknown}; expected names from {self.group_names}")
        return [self.group_names.index(g) for g in groups]

    def run(self, ts: TokenSet, plan: MaskPlan, mode: str = "drop",
            return_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode under a plan. drop: [B, 1 + K, D] over kept slots; mask_token: [B, 1 + N, D]; dense (no plan):
        [B, 1 + N, D], every slot with the invalid ones as padding."""
        B = ts.valid.shape[0]
        if mode == "drop":
            x, pad = ts.embed(plan.keep), plan.keep_pad  # [B, K, D], [B, K]
        elif mode == "dense":  # every slot, the invalid ones padding keys: shapes independent of the data
            x, pad = ts.embed(), ~ts.valid  # [B, N, D], [B, N]
        else:
            hidden = (plan.mask | ~ts.valid)[..., None]
            x = torch.where(hidden, self.mask_token + ts.pos, ts.embed())  # [B, N, D]
            pad = ~ts.valid
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        pad = torch.cat([pad.new_full((B, 1), not self.attend_cls), pad], dim=1)
        pos = None
        if self.pos_every_block:
            pos = nn.functional.pad(gather_slots(ts.pos, plan.keep) if mode == "drop" else ts.pos, (0, 0, 1, 0))
        bias = None
        if ts.attn_bias is not None:  # the tokenizer's attention bias between the slots the encoder sees
            slots = plan.keep if mode == "drop" else torch.arange(x.shape[1] - 1, device=x.device)[None].expand(B, -1)
            bias = nn.functional.pad(ts.attn_bias(slots), (1, 0, 1, 0))  # [B, H, 1 + L, 1 + L], cls unbiased
        out = self.blocks(x, pad, return_layers, bias, pos=pos)
        return out if return_layers else (out, [])

    def forward(self, batch, groups: Sequence[str] | None = None, return_layers: tuple[int, ...] = (),
                dense: bool = False) -> dict[str, torch.Tensor]:
        """Features with no masking, from all groups or the named subset.

        Returns tokens [B, N, D] (zeros where not valid), valid [B, N] (the tokenizer's ``fixed`` slots are seen
        but not valid features), cls [B, D], mean_norm [B, D] (the final norm of the mean of the last block's
        output over valid slots: ST-MEM's pooled feature), and, with ``return_layers``, layers: list of [B, N, D].
        ``dense`` encodes every slot with the invalid ones as padding keys instead of gathering the valid ones:
        the same features from shapes that do not depend on which slots are valid (ONNX export).
        """
        ts = self.tokenizer(batch)
        valid = ts.valid
        if groups is not None:
            ids = torch.tensor(self.group_ids(groups), device=valid.device)
            valid = valid & torch.isin(ts.group, ids)
        if dense:
            x, layers = self.run(ts.with_valid(valid), None, "dense", (*return_layers, self.depth))
            seen = valid

            def scatter(t):  # [B, 1 + N, D] -> [B, N, D], zeros where not valid
                return t[:, 1:] * seen[..., None]
        else:
            plan = full_plan(valid)
            x, layers = self.run(ts, plan, "drop", (*return_layers, self.depth))
            keep = ~plan.keep_pad

            def scatter(t):  # [B, 1 + K, D] -> [B, N, D]
                out = t.new_zeros(ts.shape)
                vals = t[:, 1:] * keep[..., None]
                return out.scatter(1, plan.keep[..., None].expand(-1, -1, t.shape[-1]), vals)

        if ts.fixed is not None:  # shown to the encoder, but not features of the data
            valid = valid & ~ts.fixed
        last = scatter(layers[-1]) * valid[..., None]  # [B, N, D]: the last block's output, before the final norm
        if self.depth not in return_layers:
            layers = layers[:-1]
        mean = last.sum(1) / valid.sum(1, keepdim=True).clamp_min(1)  # [B, D]
        return {"tokens": scatter(x), "valid": valid, "cls": x[:, 0], "group": ts.group,
                "mean_norm": self.blocks.norm(mean), "layers": [scatter(t) for t in layers], "tokenset": ts}


class GroupHeads(nn.Module):
    """One linear map per group: slot features [B, M, D] of groups [B, M] -> predictions [B, M, P]. A group may
    need the opposite sign or another contrast of what its neighbours show (ECG lead aVR, T1 against T2)."""

    def __init__(self, groups: int, dim: int, out: int):
        super().__init__()
        bound = (6 / (dim + out)) ** 0.5  # xavier-uniform, as the shared head
        self.weight = nn.Parameter(torch.empty(groups, dim, out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(groups, out))

    def forward(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((*x.shape[:-1], self.weight.shape[-1]))
        for g in range(len(self.weight)):  # a loop over groups (a handful), never over samples
            sel = group == g
            out[sel] = x[sel] @ self.weight[g] + self.bias[g]
        return out


class LossPredictor(nn.Module):
    """HPM's loss predictor: a decoder of its own, of the reconstruction decoder's shape, that scores each queried
    slot by how badly it will be reconstructed. It reads the encoder's output and the slot positions detached, so
    its ranking term trains it alone (sharing the reconstruction decoder held the cardiac pretraining on the mean
    prediction)."""

    def __init__(self, dim: int, width: int, decoder: Transformer):
        super().__init__()
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder = decoder
        self.head = nn.Linear(width, 1)


class MaskedAutoencoder(Exportable, nn.Module):
    """MAE / SimMIM with a light transformer decoder.

    mode ``drop``: the encoder sees only kept slots (MAE). mode ``mask_token``: it sees every valid slot
    with a learned mask token in hidden ones (SimMIM). ``decoder_mask_ratio`` > 0 decodes only a random
    fraction (1 - ratio) of the hidden slots while training (VideoMAE V2). ``group_heads`` gives each group
    its own prediction head. ``decoder_pos`` learned: the decoder places a slot by a linear map of the encoder's
    slot embedding (position and group); sincos: by MAE's fixed sin-cos table of the token grid, the same for
    every group (or the tokenizer's own ``decoder_table(width)`` [N, width] where it has one); coords: by an MLP
    of the slot coordinates (the tokenizer's ``coord_dim`` values per slot).
    ``decoder_attention`` group decodes each group on its own (ST-MEM decodes each lead so). ``head_dim`` sets
    the attention heads' width and ``decoder_norm_eps`` the decoder's final LayerNorm eps (ST-MEM's 64 and 1e-6).
    The decoder follows the encoder's ``cls_token`` and ``pos_every_block`` choices. With HPM masking
    (:class:`~scimae.core.masking.HardPatchMasking`) a loss predictor (:class:`LossPredictor`) learns to rank the
    predicted slots by reconstruction error (HPM's relative loss, added to 'loss' as 'loss/hardness'; it moves no
    other weight) and chooses the hard slots to hide. With a ``teacher``
    (:class:`~scimae.core.teacher.TeacherFeatures`) a linear feature head on the decoder regresses the teacher's
    standardised features of the hidden slots ('loss/features'); 'loss' is that plus ``pixel_weight`` x the target's.
    With ``uncertainty`` a head on the detached decoder output predicts each predicted value's log-variance
    ('logvar'), trained by the Gaussian likelihood of the detached error ('loss/uncertainty'): nothing else moves.
    """

    def __init__(self, encoder: MAEEncoder, masking: MaskingStrategy, target, pred_dim: int,
                 decoder_dim: int = 256, decoder_depth: int = 2, decoder_heads: int = 8, mlp_ratio: float = 4.0,
                 mode: str = "drop", decoder_mask_ratio: float = 0.0, group_heads: bool = False, eps: float = 1e-5,
                 decoder_pos: str = "learned", qkv_bias: bool = True, head_dim: int | None = None,
                 decoder_norm_eps: float | None = None, decoder_attention: str = "all",
                 frequency: FrequencyMasking | None = None, teacher: TeacherFeatures | None = None,
                 pixel_weight: float = 0.0, uncertainty: bool = False, colocated: bool = False):
        super().__init__()
        if mode not in ("drop", "mask_token"):
            raise ValueError(f"mode must be 'drop' or 'mask_token', got {mode!r}")
        if decoder_attention not in ("all", "group"):
            raise ValueError(f"decoder_attention must be 'all' or 'group', got {decoder_attention!r}")
        if mode == "mask_token" and encoder.mask_token is None:
            raise ValueError("mode 'mask_token' needs an encoder built with mask_token=True")
        if not 0.0 <= decoder_mask_ratio < 1.0:
            raise ValueError(f"decoder_mask_ratio must be in [0, 1), got {decoder_mask_ratio}")
        self.encoder, self.masking, self.target, self.frequency = encoder, masking, target, frequency
        if frequency is not None and not (hasattr(encoder.tokenizer, "unpatchify") and hasattr(encoder.tokenizer, "spatial")):
            raise ValueError(f"model.target=frequency needs a tokenizer on a grid (spatial, unpatchify); "
                             f"{type(encoder.tokenizer).__name__} has none")
        self.mode, self.decoder_mask_ratio, self.decoder_attention = mode, decoder_mask_ratio, decoder_attention
        D = encoder.dim
        self.decoder_embed = nn.Linear(D, decoder_dim)
        self.decoder_pos = nn.Linear(D, decoder_dim) if decoder_pos == "learned" else None
        if decoder_pos == "coords":
            self.decoder_pos = CoordEmbed(encoder.tokenizer.coord_dim, decoder_dim)
        elif decoder_pos == "sincos" and hasattr(encoder.tokenizer, "decoder_table"):
            self.register_buffer("decoder_pos_table", encoder.tokenizer.decoder_table(decoder_dim)[None], persistent=False)
        elif decoder_pos == "sincos":
            grid = getattr(encoder.tokenizer, "grid", None)
            if grid is None:
                raise ValueError("decoder_pos 'sincos' needs a tokenizer with a token grid")
            split = getattr(encoder.tokenizer, "pos_split", "equal")
            table = sincos_nd(decoder_dim, grid, split).repeat(len(encoder.group_names), 1)  # [N, Dd]
            self.register_buffer("decoder_pos_table", table[None], persistent=False)
        elif decoder_pos != "learned":
            raise ValueError(f"decoder_pos must be 'learned', 'sincos' or 'coords', got {decoder_pos!r}")
        self.decoder_mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        def decoder_stack():
            return Transformer(decoder_dim, decoder_depth, decoder_heads, mlp_ratio, eps=eps, qkv_bias=qkv_bias,
                               head_dim=head_dim, norm_eps=decoder_norm_eps)

        self.decoder = decoder_stack()
        self.decoder_pred = (GroupHeads(len(encoder.group_names), decoder_dim, pred_dim) if group_heads
                             else nn.Linear(decoder_dim, pred_dim))
        self.logvar_pred = None  # the log-variance of each predicted value, in the target's units
        if uncertainty:
            if not isinstance(target, PatchTarget):
                raise ValueError(f"model.uncertainty needs a patch target (values per slot), not {type(target).__name__}")
            self.logvar_pred = (GroupHeads(len(encoder.group_names), decoder_dim, pred_dim) if group_heads
                                else nn.Linear(decoder_dim, pred_dim))
        self.hardness = LossPredictor(D, decoder_dim, decoder_stack()) if isinstance(masking, HardPatchMasking) else None
        self.progress = 0.0  # share of training done (0 to 1), set by the Trainer each step: HPM's schedule
        self.teacher, self.pixel_weight = teacher, pixel_weight
        self.colocated = None  # per predicted slot, one weight per group for its shown patch at the same place
        self.colocated_logvar = None  # with uncertainty: weights of those values and their squares in the log-variance
        if colocated:
            if not (hasattr(encoder.tokenizer, "unpatchify") and hasattr(encoder.tokenizer, "spatial")):
                raise ValueError(f"model.colocated needs groups on one grid; {type(encoder.tokenizer).__name__} has none")
            self.colocated = nn.Linear(decoder_dim, len(encoder.group_names))
            if uncertainty:
                self.colocated_logvar = nn.Linear(decoder_dim, 2 * len(encoder.group_names))
        self.feature_pred = nn.Linear(decoder_dim, teacher.width) if teacher is not None else None
        for m in (self.decoder_embed, self.decoder_pos, self.decoder, self.decoder_pred, self.hardness,
                  self.feature_pred, self.logvar_pred):
            if m is not None:
                m.apply(_init_weights)
        nn.init.normal_(self.decoder_mask_token, std=0.02)
        for m in (self.colocated, self.colocated_logvar):  # starts as the plain MAE
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        if self.hardness is not None:
            nn.init.normal_(self.hardness.mask_token, std=0.02)

    @property
    def group_names(self) -> list[str]:
        return self.encoder.group_names

    def encode(self, batch, groups: Sequence[str] | None = None,
               return_layers: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
        """Features for downstream use, with no masking, from all groups or the named subset: tokens [B, N, D],
        valid [B, N], cls [B, D], group [B, N], the requested layers and the tokenset (:meth:`MAEEncoder.forward`)."""
        return self.encoder(batch, groups, return_layers)

    def forward(self, batch, generator: torch.Generator | None = None) -> dict:
        """Mask, encode, decode and score one batch.

        Returns the target's losses ('loss', 'loss/<group>'), 'pred' [B, M, P] for slots 'pred_idx'
        [B, M] ('pred_pad' marks padding), the 'plan' and the 'tokenset'.
        """
        generator = generator if generator is not None else torch.default_generator
        if self.frequency is not None:
            return self._forward_frequency(batch, generator)
        ts = self.encoder.tokenizer(batch)
        context = {}
        if self.hardness is not None:
            context = {"hardness": self.predicted_hardness(ts), "progress": self.progress}
        plan = self.masking.for_tokens(ts, generator, **context)
        query = plan.mask
        if self.training and self.decoder_mask_ratio > 0:
            noise = torch.rand(query.shape, generator=generator, device=generator.device).to(query.device)
            decoded = plan_from_scores(noise, query, self.decoder_mask_ratio)
        else:
            decoded = full_plan(query)
        features = self.teacher(batch, ts) if self.teacher is not None else None  # [B, N, D_teacher]
        return self.predict(ts, plan, decoded.keep, decoded.keep_pad, features)

    def _forward_frequency(self, batch, generator: torch.Generator) -> dict:
        """MFM: the encoder sees the image without a band of its spectrum (every valid slot shown), the decoder
        predicts every valid slot, and the predicted image's spectrum is scored on the hidden band ('loss')."""
        tok = self.encoder.tokenizer
        image = batch["image"]  # [B, G, (C,) *S]
        S = tuple(tok.spatial)
        hidden = self.frequency.hidden(image.shape[0], S, generator, image.device)  # [B, *S]
        ts = tok({**batch, "image": self.frequency.corrupt(image, hidden)})
        shown = full_plan(ts.valid)
        out = self.predict(replace(ts, target=None), shown, shown.keep, shown.keep_pad)
        values = ts.target.new_zeros(ts.target.shape).scatter(  # [B, N, P]: predictions in valid slots, 0 elsewhere
            1, out["pred_idx"][..., None].expand_as(out["pred"]), out["pred"] * ~out["pred_pad"][..., None])
        pred = tok.unpatchify(values).reshape(image.shape)  # [B, G, (C,) *S]
        used = batch["present"].to(image.dtype)  # [B, G]
        weight = used.view(*used.shape, *[1] * (image.ndim - len(S) - 2))  # [B, G, (1)]
        if getattr(tok, "group_channels", None) is not None and image.ndim - len(S) == 3:  # groups of fewer channels
            sizes = torch.tensor(tok.group_channels, device=image.device)[:, None]  # [G, 1]
            weight = weight * (torch.arange(image.shape[2], device=image.device) < sizes)  # [B, G, C]
        out["loss"] = self.frequency.loss(pred, image, hidden, weight.expand(image.shape[:image.ndim - len(S)]))
        out["tokenset"] = ts  # figures show the input the encoder saw (its slots' values) beside the prediction
        return out

    @torch.no_grad()
    def predicted_hardness(self, ts: TokenSet) -> torch.Tensor:
        """HPM: the loss predictor's score [B, N] of every valid slot (0 elsewhere), each slot queried with every
        valid slot shown (HPM asks its EMA teacher, unmasked; here the model itself answers)."""
        shown = full_plan(ts.valid)
        latent, _ = self.encoder.run(ts, shown, self.mode)  # [B, 1 + N', D]
        hardness = self._hardness(latent, ts, shown, shown.keep, shown.keep_pad).float()  # [B, K]
        hardness = hardness.masked_fill(shown.keep_pad, 0.0)
        return hardness.new_zeros(ts.valid.shape).scatter(1, shown.keep, hardness)  # [B, N]

    def _hardness(self, latent, ts: TokenSet, plan: MaskPlan, idx: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The loss predictor's score [B, M] of the slots ``idx`` from the detached encoder output."""
        p = self.hardness
        return p.head(self._decode(latent.detach(), ts, plan, idx, pad, p.embed, p.mask_token, p.decoder,
                                   detach_pos=True))[..., 0]

    def predict(self, ts: TokenSet, plan: MaskPlan, idx: torch.Tensor, pad: torch.Tensor,
                features: torch.Tensor | None = None) -> dict:
        """Encode what ``plan`` shows and predict the slots ``idx`` [B, M] (``pad`` [B, M] True = padding); with the
        teacher's ``features`` [B, N, D_teacher] the feature head is scored on them too."""
        latent, _ = self.encoder.run(ts, plan, self.mode)  # [B, 1 + L, D]
        out = self._decode(latent, ts, plan, idx, pad, self.decoder_embed, self.decoder_mask_token, self.decoder)
        group = ts.group.gather(1, idx)  # [B, M]
        pred = self.decoder_pred(out, group) if isinstance(self.decoder_pred, GroupHeads) else self.decoder_pred(out)
        here = self._colocated(ts, plan, idx) if self.colocated is not None else None  # [B, G, M, P]
        if here is not None:
            pred = pred + torch.einsum("bmg,bgmp->bmp", self.colocated(out), here)
        result = {"pred": pred, "pred_idx": idx, "pred_pad": pad, "plan": plan, "tokenset": ts}
        if ts.target is not None:
            result.update(self.target(pred, ts, idx, (~pad).float(), self.group_names))
            if features is not None:  # the feature errors, plus the pixel ones at their weight, are what HPM ranks
                errors = patch_errors(self.feature_pred(out), gather_slots(features, idx))  # [B, M]
                result["loss/features"] = masked_mean(errors, (~pad).to(errors.dtype))
                result["loss"] = result["loss/features"] + self.pixel_weight * result["loss"]
                if "errors" in result:
                    result["errors"] = errors + self.pixel_weight * result["errors"]
        if self.logvar_pred is not None:
            heads = self.logvar_pred
            frozen = out.detach()  # a read-out of the decoder: the reconstruction and the features stay as they are
            logvar = heads(frozen, group) if isinstance(heads, GroupHeads) else heads(frozen)  # [B, M, P]
            if here is not None:  # value by value: how sure a synthesis is may follow the values it is made from
                weights = self.colocated_logvar(frozen)  # [B, M, 2G]
                logvar = logvar + torch.einsum("bmg,bgmp->bmp", weights, torch.cat([here, here * here], 1))
            result["logvar"] = logvar.clamp(-12, 12)
            if ts.target is not None:  # the error in the target's units, detached: the prediction itself is unchanged
                error = self.target.to_values(pred, ts, idx).detach() - gather_slots(ts.target, idx)  # [B, M, P]
                nll = gaussian_nll(result["logvar"], error, PatchTarget.used_values(ts, group))  # [B, M]
                result["loss/uncertainty"] = masked_mean(nll, (~pad).to(nll.dtype))
                result["loss"] = result["loss"] + result["loss/uncertainty"]
        if self.hardness is not None:
            result["hardness"] = self._hardness(latent, ts, plan, idx, pad)  # [B, M]
            if ts.target is not None:
                if "errors" not in result:
                    raise ValueError(f"model.mask.strategy=hpm ranks slots by their reconstruction error; "
                                     f"{type(self.target).__name__} gives no per-slot errors")
                result["loss/hardness"] = ranking_loss(result["hardness"], result["errors"].detach(), (~pad).float())
                result["loss"] = result["loss"] + result["loss/hardness"]
        return result

    def _colocated(self, ts: TokenSet, plan: MaskPlan, idx: torch.Tensor) -> torch.Tensor:
        """For the slots ``idx`` [B, M], every group's patch at the same place [B, G, M, P] where ``plan`` shows it
        (0 where it is hidden or invalid, so a hidden value never enters)."""
        B, N, P = ts.target.shape
        G = len(self.group_names)
        shown = ts.valid & ~plan.mask  # [B, N]
        values = (ts.target * shown[..., None]).view(B, G, N // G, P)  # group-major slots
        return values.gather(2, (idx % (N // G))[:, None, :, None].expand(B, G, -1, P))  # [B, G, M, P]

    def _decode(self, latent: torch.Tensor, ts: TokenSet, plan: MaskPlan, idx: torch.Tensor, pad: torch.Tensor,
                embed: nn.Module, mask_token: torch.Tensor, decoder: Transformer, detach_pos: bool = False) -> torch.Tensor:
        """One decoder's output [B, M, Dd] for the slots ``idx`` from the encoder's ``latent`` [B, 1 + L, D] (its
        ``embed``, ``mask_token`` and blocks; the slot positions from ``decoder_pos``, detached with ``detach_pos``)."""
        y = embed(latent)  # [B, 1 + L, Dd]
        if self.decoder_pos is None:
            pos = self.decoder_pos_table
        else:
            pos = self.decoder_pos(ts.coords if isinstance(self.decoder_pos, CoordEmbed) else ts.pos)
        pos = pos.expand(y.shape[0], -1, -1)  # [B, N, Dd]
        if detach_pos:
            pos = pos.detach()
        cls_pad = pad.new_full((pad.shape[0], 1), not self.encoder.attend_cls)  # [B, 1]
        if self.mode == "drop":
            pos = torch.cat([torch.zeros_like(pos[:, :1]), gather_slots(pos, plan.keep), gather_slots(pos, idx)], 1)
            seq = torch.cat([y, mask_token.expand(*idx.shape, -1)], dim=1) + pos  # [B, 1 + L + M, Dd]
            seq_pad = torch.cat([cls_pad, plan.keep_pad, pad], dim=1)
            bias = self._group_bias(ts.group, torch.cat([plan.keep, idx], 1), seq_pad)
            out = decoder(seq, seq_pad, n_out=idx.shape[1], pos=pos if self.encoder.pos_every_block else None,
                          bias=bias)
        else:
            pos = nn.functional.pad(pos, (0, 0, 1, 0))  # [B, 1 + N, Dd], none for cls
            seq_pad = torch.cat([cls_pad, ~ts.valid], dim=1)
            out = decoder(y + pos, seq_pad, pos=pos if self.encoder.pos_every_block else None,
                          bias=self._group_bias(ts.group, None, seq_pad))
            out = gather_slots(out[:, 1:], idx)  # [B, M, Dd]
        return out

    def _group_bias(self, group: torch.Tensor, slots: torch.Tensor | None, pad: torch.Tensor) -> torch.Tensor | None:
        """With ``decoder_attention`` group: the decoder's attention bias [B, 1, 1 + L, 1 + L] over the cls slot and
        ``slots`` [B, L] (every slot when None): 0 within a group, -inf across groups; the cls slot is a group of
        its own that every slot reads as in the encoder. A row with no unpadded key of its own group (a padding
        entry, or the cls slot when no slot reads it) reads every unpadded key, so that no row is empty; no other
        row reads it. ``pad`` [B, 1 + L] marks padded keys. None with ``all``."""
        if self.decoder_attention == "all":
            return None
        g = group if slots is None else group.gather(1, slots)  # [B, L]
        g = nn.functional.pad(g, (1, 0), value=-1)  # [B, 1 + L], the cls slot is group -1
        allowed = g[:, :, None] == g[:, None, :]  # [B, 1 + L, 1 + L]
        allowed[:, :, 0] |= self.encoder.attend_cls
        allowed &= ~pad[:, None, :]
        allowed |= ~allowed.any(-1, keepdim=True) & ~pad[:, None, :]
        zero = torch.zeros((), dtype=self.decoder_mask_token.dtype, device=g.device)
        return torch.where(allowed, zero, float("-inf"))[:, None]

    @torch.no_grad()
    def fill(self, batch, groups: Sequence[str], context: torch.Tensor | None = None) -> dict:
        """Predict every slot of the named ``groups`` from all the other valid slots (no random masking), or from
        those of them that ``context`` [B, N] marks: how a missing modality, lead or band is synthesised."""
        ts = self.encoder.tokenizer(batch)
        ids = torch.tensor(self.encoder.group_ids(groups), device=ts.valid.device)
        wanted = torch.isin(ts.group, ids)  # [B, N]
        shown = ts.valid & ~wanted & (True if context is None else context)
        if ts.fixed is not None:  # the wanted groups' fixed slots (ST-MEM's separators) are shown, data or not
            shown |= ts.fixed & wanted
            wanted &= ~ts.fixed
        plan = full_plan(shown)
        plan.mask = wanted
        query = full_plan(wanted)
        return self.predict(ts.with_valid(shown | wanted), plan, query.keep, query.keep_pad)

    @torch.no_grad()
    def fill_spread(self, batch, groups: Sequence[str], draws: int = 8, drop: float = 0.25,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """How sure a synthesis is: the standard deviation per slot value [B, N, P] of the named ``groups``'
        prediction over ``draws`` fills, each from another random ``1 - drop`` of the context slots (0 elsewhere).
        Where the prediction hardly depends on which context it sees, the spread is small. A model with an
        uncertainty head (``model.uncertainty``) adds the mean of the fills' predicted variances: the standard
        deviation of the fills' mixture, which also counts what no context predicts (noise, fine detail)."""
        ts = self.encoder.tokenizer(batch)
        fills, variances = [], []
        for _ in range(draws):  # a loop over draws, each a batched fill
            keep = torch.rand(ts.valid.shape, generator=generator).to(ts.valid.device) >= drop  # [B, N]
            out = self.fill(batch, groups, keep)
            fills.append(torch.nan_to_num(self.reconstruction(out)[2]))
            if "logvar" in out:
                v = out["logvar"].exp() * ~out["pred_pad"][..., None]  # [B, M, P]
                variances.append(v.new_zeros(ts.target.shape).scatter(1, out["pred_idx"][..., None].expand_as(v), v))
        var = torch.stack(fills).var(0, correction=0)  # [B, N, P]
        if variances:
            var = var + torch.stack(variances).mean(0)
        ids = torch.tensor(self.encoder.group_ids(groups), device=ts.valid.device)
        return var.sqrt() * torch.isin(ts.group, ids)[..., None]  # [B, N, P]

    @torch.no_grad()
    def reconstruction(self, out: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(original, masked input, reconstruction) per slot [B, N, P] from a forward's output: hidden and
        invalid slots are NaN in the masked input; predicted slots take the prediction (in target units)."""
        ts, plan, idx, pad = out["tokenset"], out["plan"], out["pred_idx"], out["pred_pad"]
        original = ts.target
        nan = torch.tensor(float("nan"), device=original.device, dtype=original.dtype)
        masked = torch.where((plan.mask | ~ts.valid)[..., None], nan, original)
        recon = torch.where(ts.valid[..., None], original, nan)
        index = idx[..., None].expand(-1, -1, original.shape[-1])
        values = self.target.to_values(out["pred"], ts, idx)
        values = torch.where(pad[..., None], gather_slots(recon, idx), values)  # padding entries keep their slot
        return original, masked, recon.scatter(1, index, values)


@torch.no_grad()
def figure_panels(model: MaskedAutoencoder, batch, seed: int = 0) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a reconstruction figure of the batch's first sample: the loss and the original, masked input and
    reconstruction on the input grid, each [G * C, *S]: group-major channel slots (NaN = hidden or invalid)."""
    out = model(batch, torch.Generator().manual_seed(seed))
    tok = model.encoder.tokenizer
    panels = [tok.unpatchify(v[:1])[0].flatten(0, 1).cpu() for v in model.reconstruction(out)]
    return float(out["loss"]), *panels


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_panels(path, panels, show, caption: str) -> None:
    """A PNG of original | masked | reconstruction side by side; ``show(ax, panel)`` draws one panel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, title, panel in zip(axes, ("original", "masked", "reconstruction"), panels):
        show(ax, panel)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
