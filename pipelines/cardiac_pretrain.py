"""Masked-autoencoder pretraining on ECG and PPG with any channel configuration (CSFM style).

With no arguments it writes a synthetic set of WFDB records (once) and pretrains on it; with
--data DIR it reads every WFDB record or EDF file under DIR. The run folder gets config.yaml,
metrics.csv, recon_epochNNN.png (signal | masked input | reconstruction per channel), last.pt and export/.
"""
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer, mae_validation
from scimae.domains.cardiac.data import CardiacDataConfig, load_splits, train_val_records
from scimae.domains.cardiac.figures import save_figure
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae, export_config, load_cardiac_mae

Config, DEFAULT = pipeline_config(__file__, data=CardiacDataConfig, model=CardiacModelConfig, train=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    train_set, val_set = load_splits(cfg.data)
    mae = (load_cardiac_mae(cfg.train.init_from)[0] if cfg.train.init_from
           else build_cardiac_mae(cfg.model, cfg.data.window_length, cfg.data.patch))
    mae.export_config = export_config(cfg.model, cfg.data, held_out=[str(p) for p in train_val_records(cfg.data)[1]])
    trainer = Trainer(mae, cfg.train, config=cfg, pipeline=Path(__file__).stem, evaluate=mae_validation, figure=save_figure)
    trainer.fit(train_set, val_set)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}")


if __name__ == "__main__":
    run_cli(main)
