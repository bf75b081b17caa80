"""Pre-norm transformer blocks on ``F.scaled_dot_product_attention`` with key padding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention; ``head_dim`` sets each head's width (default dim / heads), so the heads' total
    width may differ from ``dim`` (ST-MEM's heads are always 64 wide)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__()
        if head_dim is None and dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, head_dim or dim // heads
        inner = heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, n_out: int | None = None) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D], or with ``n_out`` only the last n_out rows attend (as queries): [B, n_out, D]."""
        B, N, _ = x.shape
        H, d = self.heads, self.head_dim
        inner = H * d
        if n_out is None:
            q, k, v = self.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # [B, H, N, d]
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, N - n_out:], w[:inner], None if b is None else b[:inner])  # [B, n_out, H * d]
            q = q.reshape(B, n_out, H, d).transpose(1, 2)  # [B, H, n_out, d]
            k, v = F.linear(x, w[inner:], None if b is None else b[inner:]).reshape(B, N, 2, H, d).permute(2, 0, 3, 1, 4)
            if attn_mask is not None and attn_mask.shape[-2] == N:
                attn_mask = attn_mask[..., N - n_out:, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, n_out or N, d]
        return self.proj(x.transpose(1, 2).reshape(B, -1, inner))


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)), each with drop-path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, eps: float = 1e-5,
                 qkv_bias: bool = True, head_dim: int | None = None):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias, head_dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, n_out: int | None = None) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]; with ``n_out``, only the last n_out rows are computed: [B, n_out, D]."""
        h = self.norm1(x)
        if n_out is not None:
            x = x[:, x.shape[1] - n_out:]
        x = x + self.drop_path(self.attn(h, attn_mask, n_out))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def key_padding_mask(pad: torch.Tensor | None, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """[B, N] bool (True = padding) -> SDPA mask [B, 1, 1, N] (True = attend), or None if nothing is padded.
    With an additive ``bias`` [B, H or 1, N, N]: the bias with padded keys at -inf."""
    padded = pad is not None and (torch.compiler.is_exporting() or bool(pad.any()))  # an export keeps the mask
    if bias is not None:
        return bias.masked_fill(pad[:, None, None, :], float("-inf")) if padded else bias
    return ~pad[:, None, None, :] if padded else None


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final norm (eps ``norm_eps``, default the blocks' ``eps``); drop-path
    rises linearly with depth."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 checkpointing: bool = False, eps: float = 1e-5, qkv_bias: bool = True, head_dim: int | None = None,
                 norm_eps: float | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, drop_path * i / max(depth - 1, 1), eps, qkv_bias, head_dim)
            for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps if norm_eps is None else norm_eps)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None, return_layers: tuple[int, ...] = (),
                bias: torch.Tensor | None = None, n_out: int | None = None, pos: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, N, D], pad [B, N] True = ignore as a key, ``bias`` [B, H or 1, N, N] added to the attention
        logits (e.g. a graph-distance bias). With ``return_layers``, also the outputs of those blocks (1-based; 0
        is the input).
        With ``n_out``, only the last n_out rows of the output [B, n_out, D] are wanted: the last block computes
        just those (every row still serves as a key). ``pos`` [B, N, D] is added again before every block after the
        first (Point-MAE's per-block positions; ``x`` already holds it once)."""
        mask = key_padding_mask(pad, bias)
        layers = [x] if 0 in return_layers else []
        for i, blk in enumerate(self.blocks, 1):
            n = n_out if i == len(self.blocks) else None
            if pos is not None and i > 1:
                x = x + pos
            if self.checkpointing and self.training:
                x = checkpoint(blk, x, mask, n, use_reentrant=False)
            else:
                x = blk(x, mask, n)
            if i in return_layers:
                layers.append(x)
        x = self.norm(x)
        return (x, layers) if return_layers else x
