"""Cardiac models: the channel tokenizer, the MAE, fine-tuning heads, exports and the figure."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from scimae.core.checkpoint import Exportable, from_pretrained
from scimae.core.config import from_dict
from scimae.core.embed import GridTokenizer
from scimae.core.heads import LinearProbe, MLPHead, Pooler
from scimae.core.losses import PatchTarget
from scimae.core.mae import MAEEncoder, MaskedAutoencoder, SmallMAEConfig, build_mae, figure_panels, pyplot
from scimae.core.masking import MaskConfig
from scimae.domains.cardiac.io import CHANNELS


@dataclass
class CardiacModelConfig(SmallMAEConfig):
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(strategy="random", ratio=0.75))


def build_cardiac_mae(cfg: CardiacModelConfig, window_length: int, patch: int) -> MaskedAutoencoder:
    """1D patches per channel, a channel-type embedding (12 leads + PPG) and a time embedding; an
    absent channel is invalid slots, so any subset in any order is one model's input."""
    tok = GridTokenizer(CHANNELS, (window_length,), (patch,), cfg.dim)
    return build_mae(cfg, tok, CHANNELS, PatchTarget(CHANNELS, cfg.loss, cfg.norm_pix), tok.patch_values)


def export_config(model_cfg: CardiacModelConfig, data_cfg, **extra) -> dict:
    """Everything a script needs to feed the model: channel vocabulary, rate, window, patch, normalisation."""
    return {"domain": "cardiac", "model": dataclasses.asdict(model_cfg), "channels": list(CHANNELS),
            "fs": data_cfg.fs, "window_s": data_cfg.window_s, "stride_s": data_cfg.stride_s,
            "patch": data_cfg.patch, "max_gap_s": data_cfg.max_gap_s,
            "filters": {"ECG": [0.5, 40.0], "PPG": [0.5, 8.0]},
            "normalization": "per window and channel: zero mean, unit variance", **extra}


EXPORT_KEYS = ("model", "fs", "window_s", "stride_s", "patch", "max_gap_s")  # what a loader reads


def mae_from_config(config: dict) -> MaskedAutoencoder:
    cfg = from_dict(CardiacModelConfig, config["model"], "model.")
    return build_cardiac_mae(cfg, int(round(config["window_s"] * config["fs"])), config["patch"])


def load_cardiac_mae(folder) -> tuple[MaskedAutoencoder, dict]:
    return from_pretrained(folder, mae_from_config, "cardiac", EXPORT_KEYS)


@dataclass
class CardiacTaskConfig:
    kind: str = "diagnosis"  # diagnosis (multi-label), classification (one class per record) or regression
    target: str = "hr"  # regression target (a header comment key)
    label: str = "morphology"  # classification: the header comment key that names the class
    labels_per_class: int | None = None  # classification: train on the first this many windows of each class
    head: str = "mlp"  # mlp, or linear (with freeze_encoder: a linear probe)
    pooler: str = "mean"  # cls, mean or attention
    freeze_encoder: bool = False  # train the head only (a probe of frozen features)
    by_channels: bool = True  # after training, also score each channel configuration (12-lead, lead I, ...)

    def __post_init__(self):
        if self.kind not in ("diagnosis", "classification", "regression"):
            raise ValueError(f"task.kind must be diagnosis, classification or regression, got {self.kind!r}")
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"task.head must be mlp or linear, got {self.head!r}")


class CardiacFineTuner(Exportable, nn.Module):
    """The pretrained encoder, a pooler and a head; the same weights take any channel subset."""

    def __init__(self, encoder: MAEEncoder, task: CardiacTaskConfig, n_out: int):
        super().__init__()
        self.encoder, self.task = encoder, task
        self.pool = Pooler(encoder.dim, task.pooler)
        self.head = LinearProbe(encoder.dim, n_out) if task.head == "linear" else MLPHead(encoder.dim, n_out)
        if task.freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.pool(self.encoder(batch)))


def task_step(task: CardiacTaskConfig, pos_weight: torch.Tensor | None = None, hr_scale: float = 1.0):
    from scimae.core.heads import classification_loss, regression_loss

    def step(model, batch, generator):
        out = model(batch)
        if task.kind == "classification":
            return {"loss": classification_loss(out, batch["y"])}
        if task.kind == "diagnosis":
            pw = pos_weight.to(out.device) if pos_weight is not None else None
            return {"loss": classification_loss(out, batch["y"], multilabel=True, pos_weight=pw)}
        return {"loss": regression_loss(out, batch["hr"] / hr_scale)}

    return step


@torch.no_grad()
def task_evaluate(task: CardiacTaskConfig, diagnoses: list[str], hr_scale: float = 1.0):
    """Macro AUROC over the diagnoses present in both classes, accuracy and macro-F1 of the classes, or mean
    absolute error in the target's units."""
    from scimae.core.metrics import auroc, classification_scores

    def evaluate(model, batches) -> dict:
        outs, ys, hrs = [], [], []
        for batch in batches:
            outs.append(model(batch).float().cpu())
            ys.append(batch["y"].cpu())
            hrs.append(batch["hr"].cpu())
        out, y, hr = torch.cat(outs), torch.cat(ys), torch.cat(hrs)
        if task.kind == "classification":
            return classification_scores(out.argmax(1), y)
        if task.kind == "regression":
            return {"mae": float((out.reshape(-1) * hr_scale - hr).abs().mean())}
        both = [i for i in range(y.shape[1]) if 0 < y[:, i].sum() < len(y)]
        if not both:
            return {"macro_auroc": float("nan")}
        scores = {f"auroc_{diagnoses[i]}": auroc(out[:, i], y[:, i]) for i in both}
        return {"macro_auroc": sum(scores.values()) / len(scores), **scores}

    return evaluate


@torch.no_grad()
def save_figure(model: MaskedAutoencoder, batch: dict, path) -> None:
    """PNG of the first window: per present channel, the signal, the masked input and the reconstruction."""
    plt = pyplot()
    loss, orig, masked, recon = figure_panels(model, batch)  # [13, L] each
    rows = [i for i, ch in enumerate(CHANNELS) if bool(batch["present"][0, i])]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.1 * len(rows) + 0.6), squeeze=False, sharex=True)
    for ax, i in zip(axes[:, 0], rows):
        ax.plot(orig[i], color="0.75", lw=0.8, label="signal")
        ax.plot(masked[i], color="k", lw=0.8, label="masked input")
        ax.plot(torch.where(torch.isnan(masked[i]), recon[i], torch.nan), color="tab:red", lw=0.8,
                label="reconstruction")
        ax.set_ylabel(CHANNELS[i], rotation=0, ha="right", fontsize=8)
        ax.set_yticks([])
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(f"loss {loss:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
