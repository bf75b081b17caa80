"""Skeleton models: joint-segment tokens on the body graph, graph-biased attention, body-part and
motion-aware masking, position (and motion) targets, exports and loading."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from scimae.core.checkpoint import from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import GroupEmbed, sincos_1d
from scimae.core.losses import PatchTarget
from scimae.core.mae import MaskedAutoencoder, SmallMAEConfig, build_mae
from scimae.core.config import POSITIVE, check_ranges
from scimae.core.masking import MaskConfig, MaskingStrategy, plan_from_scores
from scimae.core.tokens import TokenSet, gather_slots
from scimae.domains.skeleton.transforms import hop_distance, part_of_joint

TARGETS = ("position", "position_motion")


def _uniform(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


class SkeletonTokenizer(nn.Module):
    """Tokens per body, temporal segment and joint: the joint's ``segment`` frames of x, y, z, linearly
    embedded, plus a learned joint embedding, the segment's 1-D sin-cos time embedding and a body embedding.

    The graph enters the encoder as an attention bias by hop distance (``TokenSet.attn_bias``): a learned
    value per head for each number of bones between two tokens' joints (and one for joints of different
    bodies). We chose the bias over graph convolutions because it acts on whichever tokens the encoder sees:
    a graph convolution before masking would mix hidden joints into visible tokens (the MAE would see what
    it must predict), and one over the visible tokens alone would see a broken graph. It keeps the standard
    attention blocks and lets each head learn how local to the body graph it should be.

    Positions are divided by ``unit`` (metres) first, so that a token's values are about unit-sized like
    the slot embeddings they are added to; in metres a body's coordinates spread only ~0.3 and the
    positional and body embeddings drown them.

    Input: ``joints`` [B, M, T, V, 3], ``present`` [B, M]. Target: each token's positions [s * 3] and,
    for ``position_motion``, its frame-to-frame motion too [2 * s * 3]. For masking: ``unit`` (body x body
    part x segment, per slot) and ``salience`` (mean speed per slot).
    """

    def __init__(self, frames: int, segment: int, dim: int, heads: int, bodies: int = 2, joints: int = 25,
                 target: str = "position", max_hop: int = 6, unit: float = 1.0):
        super().__init__()
        if frames % segment:
            raise ValueError(f"segment {segment} must divide frames {frames}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.frames, self.segment, self.dim, self.bodies, self.joints = frames, segment, dim, bodies, joints
        self.target_kind, self.max_hop, self.unit = target, max_hop, unit
        self.n_seg = frames // segment
        self.proj = nn.Linear(segment * 3, dim)
        self.joint_embed = nn.Parameter(torch.randn(joints, dim) * 0.02)
        self.body_embed = GroupEmbed([f"body{m + 1}" for m in range(bodies)], dim)
        self.register_buffer("time_table", sincos_1d(dim, torch.arange(self.n_seg)), persistent=False)  # [S, D]
        hops = torch.from_numpy(hop_distance()).clamp(max=max_hop) if joints == 25 else torch.zeros(joints, joints, dtype=torch.long)
        self.register_buffer("hops", hops, persistent=False)  # [V, V]
        self.hop_bias = nn.Parameter(torch.zeros(max_hop + 2, heads))  # last row: joints of different bodies
        self.register_buffer("part", torch.from_numpy(part_of_joint()) if joints == 25 else torch.zeros(joints, dtype=torch.long),
                             persistent=False)

    @property
    def group_names(self) -> list[str]:
        return self.body_embed.names

    @property
    def pred_dim(self) -> int:
        return self.segment * 3 * (2 if self.target_kind == "position_motion" else 1)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, M, T, V, C] -> [B, M * S * V, s * C], slots ordered (body, segment, joint)."""
        B, M, T, V, C = x.shape
        x = x.reshape(B, M, self.n_seg, self.segment, V, C).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(B, M * self.n_seg * V, self.segment * C)

    def unpatch(self, values: torch.Tensor) -> torch.Tensor:
        """Position values [B, N, >= s * 3] -> joints [B, M, T, V, 3]."""
        B = values.shape[0]
        x = values[..., : self.segment * 3].reshape(B, self.bodies, self.n_seg, self.joints, self.segment, 3)
        return x.permute(0, 1, 2, 4, 3, 5).reshape(B, self.bodies, self.frames, self.joints, 3)

    def forward(self, batch: dict) -> TokenSet:
        x, present = batch["joints"] / self.unit, batch["present"]  # [B, M, T, V, 3], [B, M]
        B, M, T, V, _ = x.shape
        if (M, T, V) != (self.bodies, self.frames, self.joints):
            raise ValueError(f"SkeletonTokenizer expected joints [B, {self.bodies}, {self.frames}, {self.joints}, 3], "
                             f"got {list(x.shape)}")
        S = self.n_seg
        patches = self.patches(x)  # [B, N, s*3]
        motion = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, 1:] - x[:, :, :-1]], dim=2)  # [B, M, T, V, 3]
        move = self.patches(motion)  # [B, N, s*3]
        target = torch.cat([patches, move], -1) if self.target_kind == "position_motion" else patches
        slot = (self.body_embed(torch.arange(M, device=x.device))[:, None, None] + self.time_table[None, :, None]
                + self.joint_embed[None, None]).reshape(1, M * S * V, -1)  # [1, N, D]
        body = torch.arange(M, device=x.device).repeat_interleave(S * V)  # [N]
        joint = torch.arange(V, device=x.device).repeat(M * S)  # [N]

        def embed(idx: torch.Tensor | None) -> torch.Tensor:
            if idx is None:
                return self.proj(patches) + slot
            return self.proj(gather_slots(patches, idx)) + gather_slots(slot, idx)

        def attn_bias(idx: torch.Tensor) -> torch.Tensor:
            """Slots [B, K] -> the hop-distance bias between them [B, H, K, K]."""
            j, b = joint[idx], body[idx]  # [B, K]
            hop = self.hops[j[:, :, None], j[:, None, :]]  # [B, K, K]
            hop = torch.where(b[:, :, None] == b[:, None, :], hop, self.max_hop + 1)
            return self.hop_bias[hop].permute(0, 3, 1, 2)

        segment = torch.arange(M * S * V, device=x.device) // V % S  # [N]
        unit = (body * (int(self.part.max()) + 1) + self.part[joint]) * S + segment  # [N] body x part x segment
        speed = move.reshape(B, -1, self.segment, 3).norm(dim=-1).mean(-1)  # [B, N] mean speed
        return TokenSet(tokens=None, embed_fn=embed, group=body[None].expand(B, -1), valid=present[:, body], pos=slot,
                        target=target, attn_bias=attn_bias, unit=unit[None].expand(B, -1), salience=speed)


class BodyPartMasking(MaskingStrategy):
    """SkeletonMAE-style: whole body parts are hidden over a temporal segment (``TokenSet.unit`` names the
    unit of each slot), units in random order."""

    def scores(self, valid, generator, group, grid, coords=None):
        raise ValueError("body_part masking needs the tokenizer's body parts; use it through a MaskedAutoencoder")

    def for_tokens(self, ts, generator):
        if ts.unit is None:
            raise ValueError("body_part masking needs a tokenizer that gives TokenSet.unit (body parts)")
        unit = ts.unit  # [B, N] long
        n_units = int(unit.max()) + 1
        rank = _uniform((unit.shape[0], n_units), generator, unit.device).argsort(1).argsort(1).double()  # [B, U]
        tie = _uniform(unit.shape, generator, unit.device)
        return plan_from_scores(rank.gather(1, unit) + tie, ts.valid, self.ratio, self.count)


class MotionAwareMasking(MaskingStrategy):
    """MAMP-style: tokens that move more are more likely hidden (Gumbel top-k of log-motion / tau)."""

    def __init__(self, ratio: float = 0.9, tau: float = 0.75):
        super().__init__(ratio)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def scores(self, valid, generator, group, grid, coords=None):
        raise ValueError("motion masking needs the tokenizer's motion; use it through a MaskedAutoencoder")

    def for_tokens(self, ts, generator):
        if ts.salience is None:
            raise ValueError("motion masking needs a tokenizer that gives TokenSet.salience (motion)")
        motion = ts.salience.double()  # [B, N]
        motion = motion / motion.mean(1, keepdim=True).clamp_min(1e-12)
        gumbel = -torch.log(-torch.log(_uniform(motion.shape, generator, motion.device).clamp(1e-12, 1 - 1e-12)))
        return plan_from_scores(torch.log(motion + 1e-6) / self.tau + gumbel, ts.valid, self.ratio,
                                self.count)  # high: hidden


@dataclass
class SkeletonMaskConfig(MaskConfig):
    """The core strategies plus body_part and motion (MAMP), with motion's temperature."""

    STRATEGIES: ClassVar[dict[str, type[MaskingStrategy]]] = {"body_part": BodyPartMasking,
                                                              "motion": MotionAwareMasking}
    tau: float = 0.75  # motion: temperature of the motion scores

    def __post_init__(self):
        check_ranges("model.mask", self, {"tau": POSITIVE})
        super().__post_init__()


@dataclass
class SkeletonModelConfig(SmallMAEConfig):
    segment: int = 4  # frames per token
    target: str = "position"  # position, position_motion (MAMP's motion as well), or features (a teacher's; the
    # position loss beside them weighs pixel_weight)
    TARGETS = (*TARGETS, "features")
    unit: float = 0.25  # metres per input unit: positions are divided by it before tokenizing
    mask: SkeletonMaskConfig = field(default_factory=lambda: SkeletonMaskConfig(strategy="motion", ratio=0.75))


def build_skeleton_mae(cfg: SkeletonModelConfig, frames: int, bodies: int = 2, joints: int = 25) -> MaskedAutoencoder:
    kind = "position" if cfg.target == "features" else cfg.target
    tok = SkeletonTokenizer(frames, cfg.segment, cfg.dim, cfg.heads, bodies, joints, kind, unit=cfg.unit)
    return build_mae(cfg, tok, PatchTarget(cfg.loss, norm_pix=False), tok.pred_dim, load_skeleton_mae)


def export_config(model_cfg, data_cfg, **extra) -> dict:
    """What rebuilds the model and feeds it: the model section (a config or its dict), frames, bodies, joints."""
    model = model_cfg if isinstance(model_cfg, dict) else dataclasses.asdict(model_cfg)
    return {"domain": "skeleton", "model": model, "frames": data_cfg.frames, "bodies": data_cfg.bodies,
            "joints": data_cfg.joints, **extra}


EXPORT_KEYS = ("model", "frames", "bodies", "joints")


def mae_from_config(c: dict) -> MaskedAutoencoder:
    """The architecture an export's config describes; exports that predate ``unit`` took positions in metres
    (unit 1)."""
    cfg = from_dict(SkeletonModelConfig, {"unit": 1.0, **c["model"]}, "model.")
    return build_skeleton_mae(cfg, c["frames"], c["bodies"], c["joints"])


def load_skeleton_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    """An export of skeleton_pretrain: the MAE and its config."""
    return from_pretrained(folder, mae_from_config, "skeleton", EXPORT_KEYS)
