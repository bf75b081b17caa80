"""Brain MRI fine-tuning: modality fusion, the UNETR-style segmentation head, the fine-tuner
(segmentation, classification, survival), its training steps and evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scimae.core.checkpoint import from_pretrained
from scimae.core.config import check_ranges, from_dict, one_of
from scimae.core.heads import HEADS, FineTuner
from scimae.core.mae import MAEEncoder
from scimae.domains.brain_mri.io import MODALITIES
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae


def fuse_modalities(tokens: torch.Tensor, valid: torch.Tensor, n_mod: int, grid) -> torch.Tensor:
    """Mean over the available modalities at each patch: [B, M * n, D] -> [B, D, *grid]."""
    B, _, D = tokens.shape
    t = tokens.reshape(B, n_mod, -1, D)  # [B, M, n, D]
    w = valid.reshape(B, n_mod, -1, 1).to(t.dtype)
    fused = (t * w).sum(1) / w.sum(1).clamp_min(1)  # [B, n, D]
    return fused.transpose(1, 2).reshape(B, D, *grid)


class UNETRHead(nn.Module):
    """UNETR decoder (MONAI's blocks) on four encoder depths and the input image; patch size 16."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, grid: tuple[int, ...], feature_size: int = 16):
        super().__init__()
        self.grid = tuple(grid)
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

        fs, kw = feature_size, {"spatial_dims": 3, "kernel_size": 3, "norm_name": "instance"}
        self.enc1 = UnetrBasicBlock(in_channels=in_channels, out_channels=fs, stride=1, res_block=True, **kw)
        self.enc2 = UnetrPrUpBlock(in_channels=dim, out_channels=fs * 2, num_layer=2, stride=1, upsample_kernel_size=2,
                                   conv_block=True, res_block=True, **kw)
        self.enc3 = UnetrPrUpBlock(in_channels=dim, out_channels=fs * 4, num_layer=1, stride=1, upsample_kernel_size=2,
                                   conv_block=True, res_block=True, **kw)
        self.enc4 = UnetrPrUpBlock(in_channels=dim, out_channels=fs * 8, num_layer=0, stride=1, upsample_kernel_size=2,
                                   conv_block=True, res_block=True, **kw)
        self.dec5 = UnetrUpBlock(in_channels=dim, out_channels=fs * 8, upsample_kernel_size=2, res_block=True, **kw)
        self.dec4 = UnetrUpBlock(in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=2, res_block=True, **kw)
        self.dec3 = UnetrUpBlock(in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=2, res_block=True, **kw)
        self.dec2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=2, res_block=True, **kw)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def forward(self, features: dict, batch: dict) -> torch.Tensor:
        """The encoder's four tapped layers, each fused over the modalities present into a map
        [B, D, X/16, Y/16, Z/16] (shallow to deep), and the image [B, C, X, Y, Z] -> [B, out, X, Y, Z]."""
        image = batch["image"]
        z3, z6, z9, z12 = [fuse_modalities(t, features["valid"], len(MODALITIES), self.grid) for t in features["layers"]]
        x = self.dec5(z12, self.enc4(z9))
        x = self.dec4(x, self.enc3(z6))
        x = self.dec3(x, self.enc2(z3))
        return self.out(self.dec2(x, self.enc1(image)))


@dataclass
class TaskConfig:
    kind: str = "classification"  # classification, segmentation or survival
    label: str = "grade"  # label column (classification)
    labels_per_class: int | None = None  # classification: train on the first this many cases of each class
    time: str = "survival_days"  # survival columns
    event: str = "event"  # event column (1 = observed, 0 = censored)
    bins: int = 4  # survival intervals (quantiles of the training times)
    head: str = "mlp"  # mlp or linear (a linear probe on a frozen encoder)
    pooler: str = "mean"  # cls, mean or attention
    freeze_encoder: bool = False  # train the head only (a probe of frozen features)
    feature_size: int = 16  # segmentation decoder width
    leave_one_out: bool = True  # at the end, also score the validation set with each modality left out

    def __post_init__(self):
        check_ranges("task", self, {"kind": one_of("classification", "segmentation", "survival"), "head": HEADS})


def brain_finetuner(encoder: MAEEncoder, task: TaskConfig, n_out: int) -> FineTuner:
    """The core fine-tuner: a pooled head (classification, survival) or the UNETR head on four encoder depths
    (segmentation); serves any subset of modalities with the same weights."""
    if task.kind != "segmentation":
        return FineTuner(encoder, n_out, task.pooler, task.head, task.freeze_encoder)
    if encoder.tokenizer.patch != (16, 16, 16):
        raise ValueError(f"the UNETR head needs patch 16, got {encoder.tokenizer.patch}")
    d = encoder.depth
    taps = tuple(sorted({max(1, round(d * f)) for f in (0.25, 0.5, 0.75)} | {d}))
    if len(taps) != 4:
        raise ValueError(f"segmentation needs an encoder depth >= 4, got {d}")
    head = UNETRHead(encoder.dim, len(MODALITIES), n_out, encoder.tokenizer.grid, task.feature_size)
    return FineTuner(encoder, n_out, freeze_encoder=task.freeze_encoder, dense=head, taps=taps)


def task_outputs(task: TaskConfig, n_classes: int = 2, bins: int = 4) -> int:
    return {"classification": n_classes, "segmentation": 3, "survival": bins}[task.kind]


def load_finetuned(folder) -> tuple[FineTuner, dict]:
    """An export of brats_finetune: the encoder and the task's head (in evaluation mode) and its config."""

    def build(c: dict) -> FineTuner:
        task = TaskConfig(**c["task"])
        mae = build_brain_mae(from_dict(BrainModelConfig, c["model"], "model."), c["roi"])
        return brain_finetuner(mae.encoder, task, task_outputs(task, len(c.get("classes", [])), task.bins))

    model, config = from_pretrained(folder, build, "brain_mri", ("model", "roi", "task"))
    return model.eval(), config


def task_step(task: TaskConfig):
    """step_fn for the engine: the task's loss."""
    from monai.losses import DiceCELoss

    from scimae.core.tasks import classification_loss, survival_loss

    dice_ce = DiceCELoss(sigmoid=True)

    def step(model, batch, generator):
        out = model(batch)
        if task.kind == "classification":
            return {"loss": classification_loss(out, batch["y"])}
        if task.kind == "survival":
            return {"loss": survival_loss(out, batch["time_bin"], batch["event"])}
        return {"loss": dice_ce(out, batch["seg"].float())}

    return step


@torch.no_grad()
def task_evaluate(task: TaskConfig):
    """evaluate hook: accuracy and AUROC, C-index, or Dice per BraTS region (TC, WT, ET)."""
    from monai.metrics import DiceMetric

    from scimae.core.tasks import survival_risk
    from scimae.core.metrics import auroc, concordance_index

    def evaluate(model, batches) -> dict:
        outs, refs = [], []
        dice = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False)
        for batch in batches:
            out = model(batch)
            if task.kind == "segmentation":
                dice(y_pred=(out.sigmoid() > 0.5).float(), y=batch["seg"].float())
            else:
                outs.append(out.float().cpu())
                refs.append({k: batch[k].cpu() for k in ("y", "time", "event") if k in batch})
        if task.kind == "segmentation":
            tc, wt, et = dice.aggregate().tolist()
            return {"dice_wt": wt, "dice_tc": tc, "dice_et": et, "dice_mean": (wt + tc + et) / 3}
        logits = torch.cat(outs)
        if task.kind == "survival":
            time, event = torch.cat([r["time"] for r in refs]), torch.cat([r["event"] for r in refs])
            return {"c_index": concordance_index(survival_risk(logits), time, event)}
        y = torch.cat([r["y"] for r in refs])
        probs = logits.softmax(1)
        return {"accuracy": float((probs.argmax(1) == y).float().mean()), "auroc": auroc(probs, y)}

    return evaluate
