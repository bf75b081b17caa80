"""Published checkpoints in scimae's layout: reading them safely, inferring the architecture from their tensors
and renaming every tensor onto a scimae MaskedAutoencoder. Formats: facebookresearch/mae's ViT (its pretraining
checkpoint, or a fine-tuned classifier's encoder), Prithvi-EO's MAE (the same ViT with time x space patches)
and Point-MAE's pretraining checkpoint. A domain wraps the result into its export."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from scimae.core.embed import sincos_nd
from scimae.core.errors import DataError

HEADS = {768: 12, 1024: 16, 1280: 16}  # encoder heads of MAE's ViT-B/L/H
DECODER_HEADS = {512: 16}  # decoder heads of MAE's recipes
POINT_MAE_HEADS = {384: 6}  # encoder and decoder heads of Point-MAE's recipe (trans_dim 384)
POINTNET_HIDDEN = 128  # Point-MAE's group encoder: 3 -> 128 -> 256, then 512 -> 512 -> width
FINETUNED_ONLY = ("head.", "fc_norm.")  # a fine-tuned classifier's parts beyond the encoder (left out)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint: a .safetensors file, or ``torch.load(weights_only=True)`` of a .pth/.pt,
    unwrapped from its ``model`` / ``state_dict`` / ``base_model`` entry where it has one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file", "a checkpoint file (.pth, .pt, .ckpt or .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix, named
        raise DataError(path, f"a file torch.load(weights_only=True) cannot read ({type(e).__name__}: {e})",
                        "a PyTorch checkpoint of tensors") from None
    for key in ("model", "state_dict", "base_model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(path, "no dictionary of tensors", "a state dict, or one under 'model', 'state_dict' or 'base_model'")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # saved from a DistributedDataParallel model


def load_mapped(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Load the mapped ``tensors`` into ``model``; return the model's tensors they left fresh (a name the model
    lacks is a mapping error, raised)."""
    fresh = sorted(set(model.state_dict()) - set(tensors))
    unexpected = model.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"the mapping produced names the model lacks: {unexpected}")
    return fresh


def _depth(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _block_keys(src: str, dst: str, i: int, qkv_bias: bool = True) -> dict[str, str]:
    """timm ViT block i -> scimae Block i (the same pre-norm block; the MLP's two layers renamed)."""
    names = {"norm1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "norm2",
             "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
    return {f"{src}.{i}.{a}.{p}": f"{dst}.{i}.{b}.{p}" for a, b in names.items() for p in ("weight", "bias")
            if qkv_bias or (a, p) != ("attn.qkv", "bias")}


def _heads(given: int | None, width: int, table: dict[int, int], what: str, path) -> int:
    heads = given or table.get(width)
    if heads is None:
        raise DataError(path, f"a {what} of width {width}, whose head count the tensors do not tell",
                        f"the head count given (--{what.replace(' ', '-')}s); known widths: {sorted(table)}")
    if width % heads:
        raise DataError(path, f"{what} width {width} with {heads} heads", "a width that is a multiple of the heads")
    return heads


def _is_table(state: dict, key: str, table: torch.Tensor) -> bool:
    """Whether ``key`` holds this fixed sin-cos table (a zero row for cls, then the grid)."""
    stored = state[key][0].float()  # [1 + L, D]
    expected = torch.cat([torch.zeros(1, table.shape[1]), table])
    return stored.shape == expected.shape and torch.allclose(stored, expected, atol=1e-5)


def _grid(state: dict, key: str, n: int, dim: int, temporal: bool, path) -> tuple[int, ...]:
    """The token grid of a stored sin-cos table of ``n`` positions: (side, side), or with ``temporal`` the
    (frames, side, side) whose Prithvi table it is (the tensors alone leave frames x side^2 ambiguous)."""
    if key not in state:
        raise DataError(path, f"a checkpoint without {key}", "its fixed sin-cos position table")
    shapes = ([(t, round((n // t) ** 0.5)) for t in range(1, n + 1) if n % t == 0] if temporal
              else [(round(n ** 0.5),)])
    for shape in shapes:
        grid = (*shape, shape[-1])
        if grid[-1] ** 2 * (grid[0] if temporal else 1) == n and _is_table(state, key, sincos_nd(
                dim, grid, "prithvi" if temporal else "equal")):
            return grid
    raise DataError(path, f"a {key} of {n} positions that is not a fixed sin-cos table of a square grid"
                          + (" of frames" if temporal else ""), "the table MAE's (or Prithvi's) code builds")


def mae_vit(state: dict[str, torch.Tensor], path="checkpoint", heads: int | None = None,
            decoder_heads: int | None = None) -> tuple[dict, dict, dict[str, torch.Tensor], list[str]]:
    """A facebookresearch/mae ViT state dict -> (model settings, image facts {img_size, patch, channels,
    frames, tubelet}, the tensors under scimae's names, the keys left out). A pretraining checkpoint maps
    whole; a fine-tuned classifier maps its encoder (its head and fc_norm are left out, the decoder starts
    fresh). Patches of 3-d (time, height, width) weights with Prithvi's sin-cos tables make a model of frames
    (``frames`` 0 for 2-d patches). Any other key the mapping does not know is a DataError naming it."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise DataError(path, f"keys {sorted(state)[:6]}...", "a MAE ViT (patch_embed.proj.weight, pos_embed, blocks.*)")
    w = state["patch_embed.proj.weight"]  # [D, C, p, q] or [D, C, s, p, q]
    if w.ndim not in (4, 5) or w.shape[-1] != w.shape[-2]:
        raise DataError(path, f"a patch embedding of shape {list(w.shape)}", "square 2-d (or time x 2-d) patches")
    D, C, *patch = w.shape
    temporal = w.ndim == 5
    grid = _grid(state, "pos_embed", state["pos_embed"].shape[1] - 1, D, temporal, path)
    depth = _depth(state, "blocks")
    if not depth or "blocks.0.mlp.fc1.weight" not in state:
        raise DataError(path, "a MAE ViT without transformer blocks", "blocks.0.* ... blocks.N.*")
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / D
    model = {"dim": D, "depth": depth, "heads": _heads(heads, D, HEADS, "head", path), "mlp_ratio": mlp_ratio,
             "norm_eps": 1e-6, "norm_pix": True}
    names = {"cls_token": "encoder.cls_token", "norm.weight": "encoder.blocks.norm.weight", "norm.bias": "encoder.blocks.norm.bias"}
    for i in range(depth):
        names.update(_block_keys("blocks", "encoder.blocks.blocks", i))
    values = w.permute(*range(2, w.ndim), 1, 0).reshape(1, -1, D)  # values ([s,] p, q, c)
    out = {"encoder.tokenizer.weight": values,
           "encoder.tokenizer.bias": state["patch_embed.proj.bias"][None],  # [1, D]
           "encoder.tokenizer.group_embed.table.weight": torch.zeros(1, D)}  # one group; MAE has no group embedding
    used = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"}
    if "decoder_embed.weight" in state:
        Dd = state["decoder_embed.weight"].shape[0]
        decoder_depth = _depth(state, "decoder_blocks")
        if _grid(state, "decoder_pos_embed", state["decoder_pos_embed"].shape[1] - 1, Dd, temporal, path) != grid:
            raise DataError(path, "decoder positions of another grid than the encoder's", "one token grid")
        model.update(decoder_dim=Dd, decoder_depth=decoder_depth, decoder_pos="sincos",
                     decoder_heads=_heads(decoder_heads, Dd, DECODER_HEADS, "decoder head", path))
        names.update({"mask_token": "decoder_mask_token", "decoder_norm.weight": "decoder.norm.weight",
                      "decoder_norm.bias": "decoder.norm.bias", **{f"decoder_{a}.{b}": f"decoder_{a}.{b}"
                                                                   for a in ("embed", "pred") for b in ("weight", "bias")}})
        for i in range(decoder_depth):
            names.update(_block_keys("decoder_blocks", "decoder.blocks", i))
        used.add("decoder_pos_embed")
    left_out = sorted(k for k in state if k.startswith(FINETUNED_ONLY))
    unknown = sorted(set(state) - set(names) - used - set(left_out))
    if unknown:
        raise DataError(path, f"keys the MAE ViT mapping does not know: {unknown}", "a facebookresearch/mae ViT checkpoint")
    missing = sorted(k for k in names if k not in state and k not in ("norm.weight", "norm.bias"))
    if missing:
        raise DataError(path, f"a MAE ViT without {missing}", "every tensor of the encoder (and decoder)")
    out.update({names[k]: v for k, v in state.items() if k in names})
    image = {"img_size": grid[-1] * patch[-1], "patch": patch[-1], "channels": C,
             "frames": grid[0] * patch[0] if temporal else 0, "tubelet": patch[0] if temporal else 1}
    return model, image, out, left_out


def prithvi(state: dict[str, torch.Tensor], path="checkpoint", heads: int | None = None,
            decoder_heads: int | None = None) -> tuple[dict, dict, dict[str, torch.Tensor], list[str]]:
    """A Prithvi-EO MAE state dict (2.0's ``encoder.*``, ``decoder.*``: MAE's ViT under two prefixes; 1.0's
    MAE names without them), with (time, height, width) patches and Prithvi's 3-d sin-cos split -> what
    :func:`mae_vit` returns, with Prithvi's pixel target (no norm-pix). LayerNorm eps 1e-6 is the released
    models' (the caller may set another). Keys of the location/time-coordinate variants (TL) are not mapped:
    a DataError names them."""
    flat = {k.split(".", 1)[1] if k.startswith(("encoder.", "decoder.")) else k: v for k, v in state.items()}
    if "patch_embed.proj.weight" not in flat:
        raise DataError(path, f"keys {sorted(state)[:6]}...", "a Prithvi MAE (encoder.patch_embed.proj.weight, "
                                                              "encoder.pos_embed, encoder.blocks.*, decoder.*)")
    if len(flat) != len(state) or flat["patch_embed.proj.weight"].ndim != 5:
        raise DataError(path, "a Prithvi MAE whose encoder and decoder keys collide or whose patches are 2-d",
                        "encoder.* and decoder.* keys with Conv3d patches")
    model, image, out, left_out = mae_vit(flat, path, heads, decoder_heads)
    return {**model, "norm_pix": False}, image, out, left_out


def point_mae(state: dict[str, torch.Tensor], path="checkpoint", heads: int | None = None,
              decoder_heads: int | None = None) -> tuple[dict, dict, dict[str, torch.Tensor], list[str]]:
    """A Point-MAE (Pang-Yatian/Point-MAE) pretraining state dict -> (model settings, cloud facts {group_size},
    the tensors under scimae's names, the keys left out: none). Point-MAE's conventions become model options:
    BatchNorm + ReLU in the group encoder, positions added before every block, no qkv bias, no cls token, an
    MLP of the centres for the decoder's positions, n - int(ratio x n) visible groups. The number of groups is
    not in the tensors (the caller gives it). Any key the mapping does not know is a DataError naming it."""
    enc = "MAE_encoder.encoder."
    if f"{enc}first_conv.0.weight" not in state or "increase_dim.0.weight" not in state:
        raise DataError(path, f"keys {sorted(state)[:6]}...", "a Point-MAE pretraining checkpoint (MAE_encoder.*, "
                                                              "MAE_decoder.*, increase_dim.*)")
    widths = [state[f"{enc}{k}.weight"].shape[0] for k in ("first_conv.0", "first_conv.3", "second_conv.0")]
    if widths != [POINTNET_HIDDEN, 2 * POINTNET_HIDDEN, 4 * POINTNET_HIDDEN]:
        raise DataError(path, f"a group encoder of widths {widths}", f"Point-MAE's {[128, 256, 512]}")
    D = state[f"{enc}second_conv.3.weight"].shape[0]
    depth, decoder_depth = _depth(state, "MAE_encoder.blocks.blocks"), _depth(state, "MAE_decoder.blocks")
    if not depth or not decoder_depth:
        raise DataError(path, "a Point-MAE without encoder or decoder blocks", "MAE_encoder.blocks.blocks.N.*, MAE_decoder.blocks.N.*")
    qkv_bias = "MAE_encoder.blocks.blocks.0.attn.qkv.bias" in state
    model = {"dim": D, "depth": depth, "heads": _heads(heads, D, POINT_MAE_HEADS, "head", path),
             "decoder_dim": D, "decoder_depth": decoder_depth,
             "decoder_heads": _heads(decoder_heads, D, POINT_MAE_HEADS, "decoder head", path),
             "mlp_ratio": state["MAE_encoder.blocks.blocks.0.mlp.fc1.weight"].shape[0] / D, "norm_eps": 1e-5,
             "qkv_bias": qkv_bias, "pos_every_block": True, "cls_token": False, "decoder_pos": "coords",
             "pointnet": "batchnorm"}
    conv = {"first_conv.0": "first.0", "first_conv.3": "first.3", "second_conv.0": "second.0", "second_conv.3": "second.3"}
    norms = {"first_conv.1": "first.1", "second_conv.1": "second.1"}
    names = {f"{enc}{a}.{p}": f"encoder.tokenizer.embed.{b}.{p}" for a, b in conv.items() for p in ("weight", "bias")}
    names.update({f"{enc}{a}.{p}": f"encoder.tokenizer.embed.{b}.{p}" for a, b in norms.items()
                  for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
    for src, dst in (("MAE_encoder.pos_embed", "encoder.tokenizer.pos_embed.net"), ("decoder_pos_embed", "decoder_pos.net")):
        names.update({f"{src}.{i}.{p}": f"{dst}.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")})
    for src, dst in (("MAE_encoder.norm", "encoder.blocks.norm"), ("MAE_decoder.norm", "decoder.norm"),
                     ("increase_dim.0", "decoder_pred")):
        names.update({f"{src}.{p}": f"{dst}.{p}" for p in ("weight", "bias")})
    names["mask_token"] = "decoder_mask_token"
    for i in range(depth):
        names.update(_block_keys("MAE_encoder.blocks.blocks", "encoder.blocks.blocks", i, qkv_bias))
    for i in range(decoder_depth):
        names.update(_block_keys("MAE_decoder.blocks", "decoder.blocks", i, qkv_bias))
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise DataError(path, f"keys the Point-MAE mapping does not know: {unknown}", "a Point-MAE pretraining checkpoint")
    missing = sorted(set(names) - set(state))
    if missing:
        raise DataError(path, f"a Point-MAE without {missing}", "every tensor of the encoder and decoder")
    out = {names[k]: (v[..., 0] if v.ndim == 3 and k != "mask_token" else v) for k, v in state.items()}  # Conv1d k=1
    w = out["encoder.tokenizer.embed.second.0.weight"]  # [512, 512] acting on [global, point]
    out["encoder.tokenizer.embed.second.0.weight"] = torch.cat(w.chunk(2, dim=1)[::-1], dim=1)  # scimae's [point, global]
    out["decoder_embed.weight"], out["decoder_embed.bias"] = torch.eye(D), torch.zeros(D)  # Point-MAE has none
    return model, {"group_size": state["increase_dim.0.weight"].shape[0] // 3}, out, []


STMEM_HEAD_DIM = 64  # ST-MEM's attention heads are always 64 wide (its blocks never pass dim_head)


def _stmem_block_keys(src: str, dst: str) -> dict[str, str]:
    """ST-MEM's pre-norm block (``attn``/``ff`` each a PreNorm of its function) -> scimae Block."""
    names = {"attn.norm": "norm1", "attn.fn.to_qkv": "attn.qkv", "attn.fn.to_out.0": "attn.proj", "ff.norm": "norm2",
             "ff.fn.net.0": "mlp.0", "ff.fn.net.3": "mlp.2"}
    return {f"{src}.{a}.{p}": f"{dst}.{b}.{p}" for a, b in names.items() for p in ("weight", "bias")}


def st_mem(state: dict[str, torch.Tensor], path="checkpoint") -> tuple[dict, dict, dict[str, torch.Tensor], list[str]]:
    """An ST-MEM (bakqui/ST-MEM) pretraining state dict -> (model settings, signal facts {patch, patches, leads,
    decoder_pos: its fixed decoder table [n + 2, Dd]},
    the tensors under scimae's names, the keys left out: the top-level copy of the patch embedding). ST-MEM's
    conventions become options: lead tokens with separators (cardiac ``layout`` stmem), heads 64 wide, no cls
    token, each lead decoded on its own, decoder positions from the fixed table, the decoder's final norm at eps
    1e-6, int(n x (1 - ratio)) visible patches in every lead. Any key the mapping does not know is a DataError."""
    emb = "encoder.to_patch_embedding"
    if f"{emb}.2.weight" not in state or "encoder.pos_embedding" not in state:
        raise DataError(path, f"keys {sorted(state)[:6]}...", "an ST-MEM checkpoint (encoder.to_patch_embedding.*, "
                                                              "encoder.pos_embedding, encoder.block0.*, decoder_blocks.*)")
    D, patch = state[f"{emb}.2.weight"].shape
    leads = len({k for k in state if re.match(r"encoder\.lead_embeddings\.\d+$", k)})
    depth = len({m.group(1) for k in state if (m := re.match(r"encoder\.block(\d+)\.", k))})
    decoder_depth = _depth(state, "decoder_blocks")
    if not depth or not decoder_depth:
        raise DataError(path, "an ST-MEM without encoder or decoder blocks", "encoder.block0.* and decoder_blocks.0.*")
    Dd = state["to_decoder_embedding.weight"].shape[0]
    qkv, dqkv = state["encoder.block0.attn.fn.to_qkv.weight"].shape[0], state["decoder_blocks.0.attn.fn.to_qkv.weight"].shape[0]
    if qkv % (3 * STMEM_HEAD_DIM) or dqkv % (3 * STMEM_HEAD_DIM):
        raise DataError(path, f"attention projections of {qkv} and {dqkv} rows", f"multiples of 3 x {STMEM_HEAD_DIM}")
    model = {"dim": D, "depth": depth, "heads": qkv // (3 * STMEM_HEAD_DIM), "decoder_dim": Dd,
             "decoder_depth": decoder_depth, "decoder_heads": dqkv // (3 * STMEM_HEAD_DIM), "head_dim": STMEM_HEAD_DIM,
             "mlp_ratio": state["encoder.block0.ff.fn.net.0.weight"].shape[0] / D, "norm_eps": 1e-5,
             "decoder_norm_eps": 1e-6, "norm_pix": True, "cls_token": False, "decoder_pos": "sincos",
             "decoder_attention": "group", "layout": "stmem"}
    names = {f"{emb}.{a}.{p}": f"encoder.tokenizer.{b}.{p}" for a, b in (("1", "patch_norm"), ("2", "proj"),
                                                                          ("3", "token_norm")) for p in ("weight", "bias")}
    names.update({"encoder.sep_embedding": "encoder.tokenizer.sep", "encoder.norm.weight": "encoder.blocks.norm.weight",
                  "encoder.norm.bias": "encoder.blocks.norm.bias", "mask_embedding": "decoder_mask_token",
                  "decoder_norm.weight": "decoder.norm.weight", "decoder_norm.bias": "decoder.norm.bias",
                  **{f"to_decoder_embedding.{p}": f"decoder_embed.{p}" for p in ("weight", "bias")},
                  **{f"decoder_head.{p}": f"decoder_pred.{p}" for p in ("weight", "bias")}})
    for i in range(depth):
        names.update(_stmem_block_keys(f"encoder.block{i}", f"encoder.blocks.blocks.{i}"))
    for i in range(decoder_depth):
        names.update(_stmem_block_keys(f"decoder_blocks.{i}", f"decoder.blocks.{i}"))
    lead_keys = [f"encoder.lead_embeddings.{i}" for i in range(leads)]
    copies = [k for k in state if k.startswith("to_patch_embedding.")]  # ST-MEM registers its patch embedding twice
    for k in copies:
        if f"encoder.{k}" not in state or not torch.equal(state[k], state[f"encoder.{k}"]):
            raise DataError(path, f"{k} unlike encoder.{k}", "the top-level patch embedding to be the encoder's")
    unknown = sorted(set(state) - set(names) - set(lead_keys) - set(copies) - {"encoder.pos_embedding", "decoder_pos_embed"})
    if unknown:
        raise DataError(path, f"keys the ST-MEM mapping does not know: {unknown}", "an ST-MEM pretraining checkpoint")
    missing = sorted(set(names) - set(state) | {"decoder_pos_embed"} - set(state))
    if missing:
        raise DataError(path, f"an ST-MEM without {missing}", "every tensor of the encoder and decoder")
    pos = state["encoder.pos_embedding"][0]  # [n + 2, D]
    n = pos.shape[0] - 2
    out = {names[k]: v for k, v in state.items() if k in names}
    out["encoder.tokenizer.lead_embed.table.weight"] = torch.stack([state[k] for k in lead_keys])  # [leads, D]
    out["encoder.tokenizer.pos_table"] = pos
    facts = {"patch": patch, "patches": n, "leads": leads, "decoder_pos": state["decoder_pos_embed"][0]}
    return model, facts, out, sorted(copies)
