"""Optimizer parameter groups: layer-wise learning-rate decay read from the encoder's structure."""
from __future__ import annotations

from torch import nn

from scimae.core.mae import MAEEncoder


def _layers(model: nn.Module) -> tuple[dict[int, int], set[int], int]:
    """(layer of each encoder parameter by id, the ids of the cls/mask tokens, encoder depth) of the model's
    first MAEEncoder: its tokenizer and tokens are layer 0, block i is layer i + 1."""
    encoder = next((m for m in model.modules() if isinstance(m, MAEEncoder)), None)
    if encoder is None:
        return {}, set(), 0
    tokens = {id(t) for t in (encoder.cls_token, encoder.mask_token) if t is not None}
    layer = {id(p): 0 for p in encoder.tokenizer.parameters()} | dict.fromkeys(tokens, 0)
    for i, block in enumerate(encoder.blocks.blocks):
        layer |= {id(p): i + 1 for p in block.parameters()}
    return layer, tokens, len(encoder.blocks.blocks)


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                       depth: int | None = None) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay (BEiT/MAE fine-tuning).

    The encoder's tokenizer and cls/mask tokens are layer 0, its block i is layer i + 1, everything else
    (final norm, heads) layer depth + 1; layer l gets lr x layer_decay^(depth + 1 - l). ``depth``
    defaults to the number of encoder blocks. Biases, norms and tokens get no weight decay.
    """
    layer_of, tokens, blocks = _layers(model)
    depth = blocks if depth is None else depth
    groups: dict[tuple[int, bool], dict] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        layer = layer_of.get(id(p), depth + 1)
        decay = p.ndim > 1 and id(p) not in tokens
        g = groups.setdefault((layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                               "lr": lr * layer_decay ** (depth + 1 - layer)})
        g["params"].append(p)
    return list(groups.values())
