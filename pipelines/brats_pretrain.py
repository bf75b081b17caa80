"""Masked-autoencoder pretraining on brain MRI with any subset of T1, T1ce, T2 and FLAIR (BM-MAE style).

With no arguments it writes a synthetic BraTS-like NIfTI dataset (once) and pretrains on it; with
--data DIR it reads a BraTS folder (2020/2021 or 2023 names) or a CSV manifest.
The run folder gets config.yaml, metrics.csv, recon_epochNNN.png, last.pt and export/.
"""
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer, mae_validation
from scimae.domains.brain_mri.data import BrainDataConfig, collate, load_splits
from scimae.domains.brain_mri.figures import save_figure
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae, export_config, load_brain_mae

Config, DEFAULT = pipeline_config(__file__, data=BrainDataConfig, model=BrainModelConfig, train=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    roi, spacing = cfg.data.grid()
    train_set, val_set, _, val_cases = load_splits(cfg.data, cfg.train.seed)
    mae = load_brain_mae(cfg.train.init_from)[0] if cfg.train.init_from else build_brain_mae(cfg.model, roi)
    mae.export_config = export_config(cfg.model, roi, spacing, held_out=[c.case_id for c in val_cases],
                                      trained_modalities=list(cfg.data.modalities))
    trainer = Trainer(mae, cfg.train, config=cfg, pipeline=Path(__file__).stem, collate=collate, evaluate=mae_validation,
                      figure=save_figure)
    trainer.fit(train_set, val_set)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}")


if __name__ == "__main__":
    run_cli(main)
