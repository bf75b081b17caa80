"""Masked-autoencoder pretraining on multispectral imagery (GeoTIFF tiles or NetCDF stacks).

With no arguments it writes synthetic georeferenced 4-band GeoTIFF tiles (once) and pretrains on them;
--data takes a folder of GeoTIFFs, a folder of per-band GeoTIFFs, or a NetCDF/zarr stack, read by the
band table in the config. The run folder gets config.yaml, metrics.csv, recon_epochNNN.png, last.pt, export/.
"""
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer, mae_validation
from scimae.domains.remote_sensing.data import GeoDataConfig, load_splits
from scimae.domains.remote_sensing.figures import save_figure
from scimae.domains.remote_sensing.model import GeoModelConfig, build_geo_mae, export_config, load_geo_mae

Config, DEFAULT = pipeline_config(__file__, data=GeoDataConfig, model=GeoModelConfig, train=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    train_set, val_set = load_splits(cfg.data, cfg.train.seed)
    layout = train_set.layout  # spectral group -> bands
    mae = (load_geo_mae(cfg.train.init_from)[0] if cfg.train.init_from
           else build_geo_mae(cfg.model, layout, cfg.data.window, cfg.data.patch))
    mae.export_config = export_config(cfg.model, cfg.data, held_out=[str(p) for p in val_set.paths] if val_set else [])
    trainer = Trainer(mae, cfg.train, config=cfg, pipeline=Path(__file__).stem, evaluate=mae_validation,
                      figure=lambda m, b, p: save_figure(m, b, p, layout))
    trainer.fit(train_set, val_set)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}; windows skipped as all nodata: {train_set.skipped}")


if __name__ == "__main__":
    run_cli(main)
