"""A toy two-group image dataset and model builder for the core's tests."""
import torch
from torch.utils.data import Dataset

from scimae.core.embed import GridTokenizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MAEEncoder, MaskedAutoencoder
from scimae.core.masking import build_masking

GROUPS = ["a", "b"]


class ToyImages(Dataset):
    """Two 1-channel 16x16 images per sample: b is a shifted copy of a, both smooth blobs."""

    def __init__(self, n: int = 32, seed: int = 0, missing_every: int = 0):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        c = torch.rand(n, 2, generator=g) * 10 + 3
        a = torch.exp(-((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2) / 8)  # [n, 16, 16]
        self.images = torch.stack([a, a.roll(2, dims=-1)], 1)[:, :, None]  # [n, 2, 1, 16, 16]
        self.present = torch.ones(n, 2, dtype=torch.bool)
        if missing_every:
            self.present[::missing_every, 1] = False
        self.label = (c[:, 0] > 8).long()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "present": self.present[i], "label": self.label[i]}


def toy_mae(mode="drop", strategy="random", dim=32, decoder_mask_ratio=0.0, group_heads=False, uncertainty=False,
            colocated=False, **mask_opts) -> MaskedAutoencoder:
    tok = GridTokenizer(GROUPS, (16, 16), (4, 4), dim)
    enc = MAEEncoder(tok, dim, depth=2, heads=4, mask_token=mode == "mask_token")
    return MaskedAutoencoder(enc, build_masking(strategy, 0.75, **mask_opts), PatchTarget(norm_pix=False),
                             pred_dim=tok.patch_values, decoder_dim=32, decoder_depth=1, decoder_heads=4, mode=mode,
                             decoder_mask_ratio=decoder_mask_ratio, group_heads=group_heads, uncertainty=uncertainty,
                             colocated=colocated)
