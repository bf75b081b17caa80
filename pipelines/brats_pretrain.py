"""Masked-autoencoder pretraining on brain MRI with any subset of T1, T1ce, T2 and FLAIR (BM-MAE style).

With no arguments it writes a synthetic BraTS-like NIfTI dataset (once) and pretrains on it; with
--data DIR it reads a BraTS folder (2020/2021 or 2023 names) or a CSV manifest.
The run folder gets config.yaml, metrics.csv, recon_epochNNN.png, last.pt and export/.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.config import parse_cli, run_cli, save_config  # noqa: E402
from core.engine import Trainer, TrainConfig, mae_validation  # noqa: E402
from domains.brain_mri.data import BrainDataConfig, collate, load_splits  # noqa: E402
from domains.brain_mri.model import (BrainModelConfig, build_brain_mae, load_brain_mae, save_brain_export,  # noqa: E402
                                     save_figure)

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "brats_pretrain.yaml"


@dataclass
class Config:
    data: BrainDataConfig = field(default_factory=BrainDataConfig)
    model: BrainModelConfig = field(default_factory=BrainModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    roi, spacing = cfg.data.grid()
    train_set, val_set, _, _ = load_splits(cfg.data, cfg.train.seed)
    mae = load_brain_mae(cfg.train.init_from)[0] if cfg.train.init_from else build_brain_mae(cfg.model, roi)
    trainer = Trainer(mae, cfg.train, collate=collate, evaluate=mae_validation, figure=save_figure,
                      export=lambda m, folder: save_brain_export(m, folder, cfg.model, roi, spacing))
    if trainer.dist.main:
        save_config(cfg, trainer.run_dir / "config.yaml")
    trainer.fit(train_set, val_set)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}")


if __name__ == "__main__":
    run_cli(main)
