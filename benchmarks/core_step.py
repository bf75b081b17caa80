"""Pretraining step time of the scimae core against MONAI's MaskedAutoEncoderViT, from one run.

Prints, for 2D (224^2, patch 16) and 3D (96^3 and 128^3, patch 16) at equal width, depth, tokens and mask ratio:
the core/MONAI speed ratio, the core's step time at mask 0.75 over mask 0.0, and the core's achieved
FLOP/s over this machine's measured fp32 matmul FLOP/s. Also the speed-up ceiling: MONAI's step time over the
time of the core step's matrix products run alone (same shapes and layouts), the ratio the core would reach if
nothing but its matmuls took time (equal architectures run near-equal matmuls, so where MONAI's own overhead is
small the ceiling is low).
Runs on CUDA when present (fp32), else on the CPU.
Usage: python benchmarks/core_step.py [--size base|small|tiny]

Sizes: ``base`` is MONAI's default MaskedAutoEncoderViT (a ViT-B/16 encoder, 768 wide and 12 deep, and a decoder
384 wide and 4 deep), with the usual 4x MLP; ``small`` a CPU-sized encoder (384 x 8, decoder 192 x 4), whose decoder
is a larger share of the step; ``tiny`` a quick look.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from scimae.core.embed import GridTokenizer, patchify
from scimae.core.engine import make_optimizer
from scimae.core.losses import PatchTarget
from scimae.core.mae import MAEEncoder, MaskedAutoencoder, full_plan
from scimae.core.masking import build_masking

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _NoMasking:
    """Mask ratio 0: every slot visible, nothing to reconstruct."""

    def for_tokens(self, ts, generator):
        return full_plan(ts.valid)


def core_model(spatial, patch, w, ratio):
    tok = GridTokenizer(["x"], spatial, patch, w["dim"])
    enc = MAEEncoder(tok, w["dim"], w["depth"], w["heads"])
    masking = build_masking("random", ratio) if ratio > 0 else _NoMasking()
    return MaskedAutoencoder(enc, masking, PatchTarget(norm_pix=False), tok.patch_values, w["dec_dim"],
                             w["dec_depth"], w["dec_heads"])


def monai_model(spatial, patch, w):
    from monai.networks.nets import MaskedAutoEncoderViT

    return MaskedAutoEncoderViT(1, spatial, patch, hidden_size=w["dim"], mlp_dim=4 * w["dim"], num_layers=w["depth"],
                                num_heads=w["heads"], decoder_hidden_size=w["dec_dim"], decoder_mlp_dim=4 * w["dec_dim"],
                                decoder_num_layers=w["dec_depth"], decoder_num_heads=w["dec_heads"],
                                spatial_dims=len(spatial), qkv_bias=True)


def stepper(model, loss_fn, opt):
    """One training step (forward, backward, optimizer) as a callable, warmed up twice."""

    def once():
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()

    once()
    once()
    return once


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved(steps: dict, rounds: int) -> dict[str, float]:
    """Best seconds per step of each runner, timed in alternating rounds so that a noisy neighbour
    slows every runner alike. The best, as for the matmul peak: on a shared machine noise only adds time."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, once in steps.items():
            _sync()
            t = time.perf_counter()
            once()
            _sync()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def time_steps(model, loss_fn, opt, n: int) -> float:
    """Best seconds per training step of ``loss_fn(model)`` over ``n`` steps."""
    return interleaved({"step": stepper(model, loss_fn, opt)}, n)["step"]


class _MatmulRecorder(TorchDispatchMode):
    """Records every matrix product that runs under it: the op, and each operand's shape and strides."""

    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            layout = [(tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args]
            self.calls.append((func, layout, kwargs or {}))
        return func(*args, **(kwargs or {}))


def record_step(model, loss_fn) -> tuple[int, list]:
    """The FLOPs of one forward and backward of ``loss_fn(model)`` and its matrix products (for
    :func:`matmul_replay`), from one pass; the model is left without gradients."""
    with FlopCounterMode(display=False) as fc, _MatmulRecorder() as rec:
        loss_fn(model).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops(), rec.calls


def matmul_replay(calls: list):
    """A callable that runs recorded matrix products alone, on stand-in operands of the same shapes and layouts
    (transposed views stay transposed): the time a step cannot go below on this machine, whatever else it does."""
    operands = {}

    def operand(a):
        if not isinstance(a, tuple):
            return a
        if a not in operands:
            operands[a] = torch.empty_strided(*a, device=DEVICE).normal_()
        return operands[a]

    calls = [(func, [operand(a) for a in layout], kwargs) for func, layout, kwargs in calls]

    def once():
        for func, args, kwargs in calls:
            func(*args, **kwargs)

    once()
    return once


def bench(spatial, patch, batch, w, rounds) -> dict:
    """Step times of the core at mask 0.75 and 0.0, of MONAI at 0.75 and of the core's matrix products alone
    (at 0.75), the core's FLOPs per step, and the machine's fp32 matmul FLOP/s (a 2048^3 product); all timed in
    the same rounds, so under the same load."""
    x = torch.randn(batch, 1, *spatial, device=DEVICE)
    g = torch.Generator().manual_seed(0)
    core_batch = {"image": x[:, None], "present": torch.ones(batch, 1, dtype=torch.bool, device=DEVICE)}
    target = patchify(x, patch)

    def core_loss(m):
        return m(core_batch, g)["loss"]

    def monai_loss(m):
        pred, mask = m(x, 0.75)
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()

    a, b = torch.randn(2048, 2048, device=DEVICE), torch.randn(2048, 2048, device=DEVICE)
    core, full = core_model(spatial, patch, w, 0.75).to(DEVICE), core_model(spatial, patch, w, 0.0).to(DEVICE)
    mon = monai_model(spatial, patch, w).to(DEVICE)
    flops, calls = record_step(core, core_loss)
    full_flops, full_calls = record_step(full, core_loss)
    # each with its own training loop's optimizer: the core engine's fused AdamW, MONAI's usual AdamW
    core_opt, full_opt = make_optimizer(core.parameters(), 1e-4), make_optimizer(full.parameters(), 1e-4)
    t = interleaved({"core": stepper(core, core_loss, core_opt),
                     "monai": stepper(mon, monai_loss, torch.optim.AdamW(mon.parameters(), lr=1e-4)),
                     "full": stepper(full, core_loss, full_opt),
                     "core_opt": core_opt.step, "full_opt": full_opt.step,  # the optimizer alone, on the last gradients
                     "core_matmuls": matmul_replay(calls), "full_matmuls": matmul_replay(full_calls),
                     "matmul": lambda: a @ b}, rounds)
    return {**t, "peak": 2 * 2048 ** 3 / t["matmul"], "flops": flops, "full_flops": full_flops}


def report(name: str, r: dict) -> str:
    peak = r["peak"]
    return (f"{name}: core {r['core'] * 1e3:.0f} ms/step, MONAI {r['monai'] * 1e3:.0f} ms/step -> "
            f"{r['monai'] / r['core']:.2f}x faster (target >= 1.3; ceiling {r['monai'] / r['core_matmuls']:.2f}x: "
            f"MONAI's step over the core's matrix products alone, {r['core_matmuls'] * 1e3:.0f} ms); "
            f"mask 0.75 / mask 0.0 step time {r['core'] / r['full']:.2f} (target <= 0.35; "
            f"FLOP ratio {r['flops'] / r['full_flops']:.2f}; the optimizer step, which no mask shrinks, "
            f"{r['core_opt'] * 1e3:.0f} ms = {r['core_opt'] / r['core']:.0%} of the masked step; without it "
            f"{(r['core'] - r['core_opt']) / (r['full'] - r['full_opt']):.2f}; the matrix products alone "
            f"{r['core_matmuls'] / r['full_matmuls']:.2f}: fewer rows run at fewer FLOP/s); "
            f"achieved {r['flops'] / r['core'] / 1e9:.0f} GFLOP/s = {r['flops'] / r['core'] / peak:.0%} "
            f"of matmul {peak / 1e9:.0f} GFLOP/s (target >= 50%)")


# widths and depths of each size, and the rounds of steps timed
SIZES = {"base": ({"dim": 768, "depth": 12, "heads": 12, "dec_dim": 384, "dec_depth": 4, "dec_heads": 12}, 5),
         "small": ({"dim": 384, "depth": 8, "heads": 6, "dec_dim": 192, "dec_depth": 4, "dec_heads": 6}, 9),
         "tiny": ({"dim": 192, "depth": 4, "heads": 3, "dec_dim": 96, "dec_depth": 2, "dec_heads": 3}, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=sorted(SIZES), default="base", help="model widths and depths (default: base)")
    args = ap.parse_args()
    torch.manual_seed(0)
    w, rounds = SIZES[args.size]
    print(f"{DEVICE}, {torch.get_num_threads()} threads; width {w}; best of {rounds} interleaved steps and fp32 matmuls")
    for name, spatial, patch, batch in [("2D 224^2/16", (224, 224), (16, 16), 16),
                                         ("3D 96^3/16", (96, 96, 96), (16, 16, 16), 4),
                                         ("3D 128^3/16 (the BraTS ROI)", (128, 128, 128), (16, 16, 16), 4)]:
        print(report(name, bench(spatial, patch, batch, w, rounds)), flush=True)


if __name__ == "__main__":
    main()
