"""Patch embedding (1D/2D/3D), N-d sin-cos positions, coordinate MLP and group embeddings."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scimae.core.tokens import TokenSet, gather_slots


def _check_patch(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    if len(spatial) != len(patch):
        raise ValueError(f"patch size {tuple(patch)} has {len(patch)} dims, input has {len(spatial)} spatial dims")
    for s, p in zip(spatial, patch):
        if p <= 0 or s % p:
            raise ValueError(f"patch size {tuple(patch)} must divide the input size {tuple(spatial)}")
    return tuple(s // p for s, p in zip(spatial, patch))


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """[B, C, *S] -> [B, N, prod(patch) * C], patches in row-major grid order, values (p..., c)."""
    B, C, *S = x.shape
    grid = _check_patch(S, patch)
    d = len(patch)
    shape = [B, C]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = x.reshape(shape)
    perm = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
    n = 1
    for g in grid:
        n *= g
    return x.permute(perm).reshape(B, n, -1)


def unpatchify(x: torch.Tensor, patch: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: [B, N, prod(patch) * C] -> [B, C, *S]."""
    B = x.shape[0]
    d = len(patch)
    x = x.reshape([B, *grid, *patch, channels])
    perm = [0, 2 * d + 1]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    return x.permute(perm).reshape([B, channels, *(g * p for g, p in zip(grid, patch))])


class PatchEmbed(nn.Module):
    """Dimension-generic patch embedding: patchify then one linear map (a strided conv, as a matmul)."""

    def __init__(self, patch: Sequence[int], in_channels: int, dim: int):
        super().__init__()
        if in_channels <= 0 or dim <= 0:
            raise ValueError(f"in_channels and dim must be positive, got {in_channels} and {dim}")
        self.patch = tuple(int(p) for p in patch)
        self.in_channels = in_channels
        n = 1
        for p in self.patch:
            n *= p
        self.proj = nn.Linear(n * in_channels, dim)

    def grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return _check_patch(spatial, self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, *S] -> [B, N, D]
        if x.shape[1] != self.in_channels:
            raise ValueError(f"PatchEmbed expected {self.in_channels} channels, got {x.shape[1]}")
        return self.proj(patchify(x, self.patch))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] as in MAE: sin of the first half, cos of the second."""
    if dim % 2:
        raise ValueError(f"sin-cos dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1, 1) * omega  # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_nd(dim: int, grid: Sequence[int], split: str = "equal") -> torch.Tensor:
    """N-d sin-cos table [prod(grid), dim] for a row-major grid, the last axis's channels first.

    ``split`` equal: each axis gets an equal even share of ``dim`` (remainder zero-padded); for 2D this is
    exactly MAE's ``get_2d_sincos_pos_embed``. prithvi: a (time, height, width) grid shares it 4/16, 6/16,
    6/16 (of dim // 16), Prithvi's ``get_3d_sincos_pos_embed``.
    """
    n = len(grid)
    if split == "prithvi" and n == 3:
        shares = [dim // 16 * 4, dim // 16 * 6, dim // 16 * 6]
    elif split == "equal":
        shares = [2 * (dim // (2 * n))] * n
    else:
        raise ValueError(f"sin-cos split must be 'equal' or, for a 3-d grid, 'prithvi'; got {split!r} for {n} axes")
    if min(shares) <= 0:
        raise ValueError(f"sin-cos dim {dim} too small for a {n}-d grid (need >= {2 * n}, or 16 for 'prithvi')")
    coords = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")
    parts = [sincos_1d(shares[a], coords[a].reshape(-1)) for a in reversed(range(n))]
    table = torch.cat(parts, dim=1)
    return nn.functional.pad(table, (0, dim - table.shape[1]))


class CoordEmbed(nn.Module):
    """MLP embedding of continuous coordinates (e.g. point-group centres): [..., C] -> [..., D]."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.net(coords)


class GroupEmbed(nn.Module):
    """Learned embedding of named groups (modalities, leads, bands); ids are checked against the names."""

    def __init__(self, names: Sequence[str], dim: int):
        super().__init__()
        self.names = list(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"group names must be unique, got {self.names}")
        self.table = nn.Embedding(len(self.names), dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown group {name!r}; expected one of {self.names}") from None

    def forward(self, group: torch.Tensor) -> torch.Tensor:  # [...] long -> [..., D]
        if not torch.compiler.is_exporting() and group.numel() and (int(group.min()) < 0 or int(group.max()) >= len(self.names)):
            raise ValueError(f"group id out of range: expected 0..{len(self.names) - 1}, "
                             f"got {int(group.min())}..{int(group.max())}")
        return self.table(group)


class GridTokenizer(nn.Module):
    """Tokens of a named-group grid signal: MRI modalities, ECG leads, spectral band groups.

    Input batch: ``image`` [B, G, C, *S] (G named groups of C channels each) and ``present`` [B, G] bool
    (False for a missing group), optionally ``patch_valid`` [B, G, *grid] bool (e.g. nodata patches).
    Each group has its own patch projection (or, ``shared``, one for all groups); every slot gets the N-d sin-cos
    position of its patch and the learned embedding of its group, both in the encoder (and so in the decoder's
    slot embedding).
    Groups of fewer channels (``group_channels``, e.g. spectral groups of 3 and 1 bands) fill the first
    channels and leave the rest zero; the target then carries a ``value_mask`` so the loss skips them.
    """

    def __init__(self, groups: Sequence[str], spatial: Sequence[int], patch: Sequence[int], dim: int,
                 channels: int = 1, group_channels: Sequence[int] | None = None, pos_split: str = "equal",
                 shared: bool = False):
        super().__init__()
        self.group_names = list(groups)
        self.spatial, self.patch, self.channels = tuple(spatial), tuple(patch), channels
        group_channels = list(group_channels or [channels] * len(self.group_names))
        if len(group_channels) != len(self.group_names) or not all(0 < c <= channels for c in group_channels):
            raise ValueError(f"group_channels {group_channels} must give 1..{channels} channels for each of {self.group_names}")
        self.group_channels = group_channels
        self.grid = _check_patch(self.spatial, self.patch)
        self.dim = dim
        n_in = channels
        for p in self.patch:
            n_in *= p
        G = len(self.group_names)
        self.weight = nn.Parameter(torch.empty(1 if shared else G, n_in, dim))
        self.bias = nn.Parameter(torch.zeros(1 if shared else G, dim))
        bound = (6 / (n_in + dim)) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        self.group_embed = GroupEmbed(self.group_names, dim)
        self.pos_split = pos_split  # how the sin-cos table's channels are shared by the axes (sincos_nd)
        self.register_buffer("pos_table", sincos_nd(dim, self.grid, pos_split), persistent=False)  # [n, D]
        used = torch.arange(channels)[None] < torch.tensor(group_channels)[:, None]  # [G, C]
        value_mask = used[:, None, :].expand(G, n_in // channels, channels).reshape(G, n_in)  # [G, P], values (p..., c)
        self.register_buffer("value_mask", value_mask if not value_mask.all() else None, persistent=False)

    @property
    def patch_values(self) -> int:
        """Values per patch (the target's P)."""
        return self.weight.shape[1]

    def example_inputs(self, batch: int = 2) -> dict[str, torch.Tensor]:
        """A batch of the layout this tokenizer reads (random values, every group present, one slot invalid), for
        tracing: image [B, G, C, *S], present [B, G], patch_valid [B, G, *grid]."""
        G = len(self.group_names)
        patch_valid = torch.ones((batch, G, *self.grid), dtype=torch.bool)
        patch_valid.view(batch, -1)[:, -1] = False
        return {"image": torch.randn(batch, G, self.channels, *self.spatial),
                "present": torch.ones(batch, G, dtype=torch.bool), "patch_valid": patch_valid}

    def forward(self, batch: dict) -> TokenSet:
        x, present = batch["image"], batch["present"]  # [B, G, C, *S], [B, G]
        B, G = x.shape[:2]
        if G != len(self.group_names) or tuple(x.shape[3:]) != self.spatial or x.shape[2] != self.channels:
            raise ValueError(f"GridTokenizer expected image [B, {len(self.group_names)}, {self.channels}, "
                             f"{', '.join(map(str, self.spatial))}], got {list(x.shape)}")
        patches = patchify(x.reshape(B * G, *x.shape[2:]), self.patch)  # [B*G, n, P]
        n = patches.shape[1]
        patches = patches.reshape(B, G * n, -1)  # [B, N, P]
        gid = torch.arange(G, device=x.device)
        slot = (self.pos_table[None] + self.group_embed(gid)[:, None]).reshape(1, G * n, -1)  # [1, N, D]
        group = gid.repeat_interleave(n)[None].expand(B, -1)  # [B, N]
        valid = present[:, :, None].expand(B, G, n)
        if "patch_valid" in batch:
            valid = valid & batch["patch_valid"].reshape(B, G, n)

        def embed_all() -> torch.Tensor:
            """Every slot, group-major: one batched product, no data-dependent indexing."""
            grouped = patches.reshape(B, -1 if len(self.weight) == 1 else G, n, patches.shape[-1])  # [B, G, n, P]
            out = torch.einsum("bgnp,gpd->bgnd", grouped, self.weight) + self.bias[:, None]  # [B, G, n, D]
            return out.reshape(B, G * n, -1) + slot

        # embed must not call itself: a closure in its own cell is a reference cycle that keeps the batch's
        # patches alive until the garbage collector happens to run
        def embed(idx: torch.Tensor | None) -> torch.Tensor:
            """Each group's own projection of the patches at ``idx`` (all slots when None), plus slot embedding."""
            if idx is None:
                return embed_all()
            if 2 * idx.shape[1] >= G * n and len(self.weight) > 1:  # most slots (inference): all, then gather
                return gather_slots(embed_all(), idx)
            p = gather_slots(patches, idx)  # [B, K, P]
            gk = idx // n  # [B, K] group of each slot
            # unbind, not weight[g]: its backward stacks the groups' gradients once instead of zero-filling
            # a full [G, P, D] gradient for each group
            ws, bs = self.weight.unbind(0), self.bias.unbind(0)  # G x [P, D], G x [D]
            if len(ws) == 1:
                out = p @ ws[0] + bs[0]
            else:
                out = p.new_empty((*idx.shape, self.dim))
                for g in range(G):  # a loop over groups (a handful), never over samples
                    sel = gk == g
                    out[sel] = p[sel] @ ws[g] + bs[g]
            return out + gather_slots(slot, idx)  # [B, K, D]

        return TokenSet(tokens=None, embed_fn=embed, group=group, valid=valid.reshape(B, G * n), pos=slot,
                        target=patches, grid=self.grid, value_mask=self.value_mask)

    def unpatchify(self, values: torch.Tensor) -> torch.Tensor:
        """[B, G * n, P] slot values -> [B, G, C, *S]."""
        B, G = values.shape[0], len(self.group_names)
        x = unpatchify(values.reshape(B * G, -1, values.shape[-1]), self.patch, self.grid, self.channels)
        return x.reshape(B, G, *x.shape[1:])
