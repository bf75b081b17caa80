"""Pretraining step time of the scimae core against MONAI's MaskedAutoEncoderViT, from one run.

Prints, for 2D (224^2, patch 16) and 3D (96^3, patch 16) at equal width, depth, tokens and mask ratio:
the core/MONAI speed ratio, the core's step time at mask 0.75 over mask 0.0, and the core's achieved
FLOP/s over this machine's measured fp32 matmul FLOP/s. Usage: python benchmarks/core_step.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.embed import GridTokenizer, patchify  # noqa: E402
from core.engine import make_optimizer  # noqa: E402
from core.losses import PatchTarget  # noqa: E402
from core.mae import MAEEncoder, MaskedAutoencoder  # noqa: E402
from core.masking import build_masking, plan_from_scores  # noqa: E402


class _NoMasking:
    """Mask ratio 0: every slot visible, nothing to reconstruct."""

    def __call__(self, valid, generator, group=None, grid=None):
        return plan_from_scores(torch.zeros(valid.shape), valid, 0.0)


def core_model(spatial, patch, w, ratio):
    tok = GridTokenizer(["x"], spatial, patch, w["dim"])
    enc = MAEEncoder(tok, ["x"], w["dim"], w["depth"], w["heads"])
    masking = build_masking("random", ratio) if ratio > 0 else _NoMasking()
    return MaskedAutoencoder(enc, masking, PatchTarget(["x"], norm_pix=False), tok.patch_values, w["dec_dim"],
                             w["dec_depth"], w["heads"])


def monai_model(spatial, patch, w):
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(1, spatial, patch, hidden_size=w["dim"], mlp_dim=4 * w["dim"], num_layers=w["depth"],
                                num_heads=w["heads"], decoder_hidden_size=w["dec_dim"], decoder_mlp_dim=4 * w["dec_dim"],
                                decoder_num_layers=w["dec_depth"], decoder_num_heads=w["heads"],
                                spatial_dims=len(spatial), qkv_bias=True)


def time_steps(model, step, n, opt) -> float:

    def once():
        opt.zero_grad(set_to_none=True)
        step().backward()
        opt.step()

    once()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        once()
    return (time.perf_counter() - t) / n


def matmul_flops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t)


def bench(name, spatial, patch, batch, w, n):
    x = torch.randn(batch, 1, *spatial)
    g = torch.Generator().manual_seed(0)
    core = core_model(spatial, patch, w, 0.75)
    core_batch = {"image": x[:, None], "present": torch.ones(batch, 1, dtype=torch.bool)}

    def core_step(m=core):
        return m(core_batch, g)["loss"]

    mon = monai_model(spatial, patch, w)
    target = patchify(x, patch)

    def monai_step():
        pred, mask = mon(x, 0.75)
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()

    # each with its own training loop's optimizer: the core engine's fused AdamW, MONAI's usual AdamW
    t_core = time_steps(core, core_step, n, make_optimizer(core.parameters(), 1e-4))
    t_monai = time_steps(mon, monai_step, n, torch.optim.AdamW(mon.parameters(), lr=1e-4))
    full = core_model(spatial, patch, w, 0.0)
    t_full = time_steps(full, lambda: core_step(full), n, make_optimizer(full.parameters(), 1e-4))
    with FlopCounterMode(display=False) as fc:
        core_step().backward()
    flops = fc.get_total_flops()
    return {"name": name, "core_s": t_core, "monai_s": t_monai, "full_s": t_full, "flops": flops}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller models and fewer steps")
    args = ap.parse_args()
    torch.manual_seed(0)
    w = ({"dim": 192, "depth": 4, "heads": 3, "dec_dim": 128, "dec_depth": 2} if args.quick
         else {"dim": 384, "depth": 8, "heads": 6, "dec_dim": 192, "dec_depth": 4})
    n = 2 if args.quick else 5
    peak = matmul_flops()
    print(f"threads {torch.get_num_threads()}; fp32 matmul {peak / 1e9:.0f} GFLOP/s; width {w}")
    for name, spatial, patch, batch in [("2D 224^2/16", (224, 224), (16, 16), 16),
                                         ("3D 96^3/16", (96, 96, 96), (16, 16, 16), 4)]:
        r = bench(name, spatial, patch, batch, w, n)
        print(f"{name}: core {r['core_s'] * 1e3:.0f} ms/step, MONAI {r['monai_s'] * 1e3:.0f} ms/step -> "
              f"{r['monai_s'] / r['core_s']:.2f}x faster (target >= 1.3); "
              f"mask 0.75 / mask 0.0 step time {r['core_s'] / r['full_s']:.2f} (target <= 0.35); "
              f"achieved {r['flops'] / r['core_s'] / 1e9:.0f} GFLOP/s = {r['flops'] / r['core_s'] / peak:.0%} "
              f"of matmul (target >= 50%)")


if __name__ == "__main__":
    main()
