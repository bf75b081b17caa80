"""NeRF-MAE pretraining on radiance grids: 3D patches of RGB + opacity, masked and reconstructed with an
opacity-weighted RGB loss plus an opacity loss.

With no arguments it writes synthetic rooms (rgbsigma .npz grids with per-voxel labels, once) and
pretrains on them; --data takes a folder of .npz grids in the NeRF-RPN / NeRF-MAE layout. The run folder
gets config.yaml, metrics.csv, recon_epochNNN.png (a top view rendered by alpha compositing), last.pt, export/.
"""
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer, mae_validation
from scimae.core.data import seeded_split
from scimae.domains.scene3d.data import NerfDataConfig, NerfGrids, grid_paths
from scimae.domains.scene3d.figures import save_grid_figure
from scimae.domains.scene3d.model import NerfModelConfig, build_nerf_mae, export_config, load_nerf_mae

Config, DEFAULT = pipeline_config(__file__, data=NerfDataConfig, model=NerfModelConfig, train=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    d = cfg.data
    train, val = seeded_split(grid_paths(d), d.val_fraction, d.split_seed)
    mae = load_nerf_mae(cfg.train.init_from)[0] if cfg.train.init_from else build_nerf_mae(cfg.model, tuple(d.grid), d.patch)
    mae.export_config = export_config("nerf_grid", cfg.model, d, held_out=[str(p) for p in val])
    trainer = Trainer(mae, cfg.train, config=cfg, pipeline=Path(__file__).stem, evaluate=mae_validation, figure=save_grid_figure)
    trainer.fit(NerfGrids(train, d), NerfGrids(val, d) if val else None)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir}")


if __name__ == "__main__":
    run_cli(main)
