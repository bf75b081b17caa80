"""Point-MAE pretraining on point clouds: FPS centres, kNN groups, masked groups reconstructed (Chamfer-L2).

With no arguments it writes synthetic shape clouds (PLY and PCD, once) and pretrains on them; --data takes
a folder of clouds or meshes (PLY, PCD, XYZ, PTS, OFF, OBJ, .npy; class subfolders or not) or HDF5 files.
The run folder gets config.yaml, metrics.csv, recon_epochNNN.png, last.pt and export/.
"""
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer, mae_validation
from scimae.core.data import seeded_split
from scimae.domains.scene3d.data import PointClouds, PointDataConfig, cloud_root, find_clouds
from scimae.domains.scene3d.figures import save_point_figure
from scimae.domains.scene3d.model import PointModelConfig, build_point_mae, export_config, load_point_mae

Config, DEFAULT = pipeline_config(__file__, data=PointDataConfig, model=PointModelConfig, train=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    d = cfg.data
    train, val = seeded_split(find_clouds(cloud_root(d), d.on_error)[0], d.val_fraction, d.split_seed)
    mae = load_point_mae(cfg.train.init_from)[0] if cfg.train.init_from else build_point_mae(cfg.model, d.n_groups, d.group_size)
    held_out = [str(e.path) if e.index is None else f"{e.path}[{e.index}]" for e in val]
    mae.export_config = export_config("point_cloud", cfg.model, d, held_out=held_out)
    trainer = Trainer(mae, cfg.train, config=cfg, pipeline=Path(__file__).stem, evaluate=mae_validation, figure=save_point_figure)
    train_set = PointClouds(train, d, True, cfg.train.seed)
    trainer.fit(train_set, PointClouds(val, d, False) if val else None)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}; non-finite points dropped: {train_set.dropped}")


if __name__ == "__main__":
    run_cli(main)
