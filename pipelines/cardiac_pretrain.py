"""Masked-autoencoder pretraining on ECG and PPG with any channel configuration (CSFM style).

With no arguments it writes a synthetic set of WFDB records (once) and pretrains on it; with
--data DIR it reads every WFDB record or EDF file under DIR. The run folder gets config.yaml,
metrics.csv, recon_epochNNN.png (signal | masked input | reconstruction per channel), last.pt and export/.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.config import parse_cli, run_cli, save_config  # noqa: E402
from core.engine import Trainer, TrainConfig, mae_validation  # noqa: E402
from domains.cardiac.data import CardiacDataConfig, load_splits  # noqa: E402
from domains.cardiac.model import (CardiacModelConfig, build_cardiac_mae, load_cardiac_mae,  # noqa: E402
                                   save_cardiac_export, save_figure)

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "cardiac_pretrain.yaml"


@dataclass
class Config:
    data: CardiacDataConfig = field(default_factory=CardiacDataConfig)
    model: CardiacModelConfig = field(default_factory=CardiacModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    train_set, val_set = load_splits(cfg.data)
    mae = (load_cardiac_mae(cfg.train.init_from)[0] if cfg.train.init_from
           else build_cardiac_mae(cfg.model, cfg.data.window_length, cfg.data.patch))
    trainer = Trainer(mae, cfg.train, evaluate=mae_validation, figure=save_figure,
                      export=lambda m, folder: save_cardiac_export(m, folder, cfg.model, cfg.data))
    if trainer.dist.main:
        save_config(cfg, trainer.run_dir / "config.yaml")
    trainer.fit(train_set, val_set)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}")


if __name__ == "__main__":
    run_cli(main)
