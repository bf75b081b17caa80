"""Masked pretraining on skeleton sequences (SkeletonMAE / MAMP): joint-segment tokens, attention biased
by distance on the body graph, random, body-part or motion-aware masking, position (and motion) targets.

With no arguments it writes synthetic NTU RGB+D .skeleton files (once) and pretrains on them; --data takes a
folder of .skeleton files (data.skip_list names samples to leave out) or a .npy/.npz array (N, C, T, V, M).
The run folder gets config.yaml, metrics.csv, recon_epochNNN.png, last.pt and export/.
"""
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer, mae_validation
from scimae.domains.skeleton.data import SkeletonDataConfig, Skeletons, load_samples
from scimae.domains.skeleton.figures import save_figure
from scimae.domains.skeleton.model import SkeletonModelConfig, build_skeleton_mae, export_config, load_skeleton_mae

Config, DEFAULT = pipeline_config(__file__, data=SkeletonDataConfig, model=SkeletonModelConfig, train=TrainConfig)


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    d = cfg.data
    train, val = load_samples(d)
    actions = sorted({s["action"] for s in train + val})
    mae = (load_skeleton_mae(cfg.train.init_from)[0] if cfg.train.init_from
           else build_skeleton_mae(cfg.model, d.frames, d.bodies, d.joints))
    mae.export_config = export_config(cfg.model, d, held_out=[s["name"] for s in val])
    trainer = Trainer(mae, cfg.train, config=cfg, pipeline=Path(__file__).stem, evaluate=mae_validation, figure=save_figure)
    trainer.fit(Skeletons(train, d, True, actions, cfg.train.seed), Skeletons(val, d, False, actions) if val else None)
    if trainer.dist.main:
        print(f"run folder: {trainer.run_dir} ({len(train)} training, {len(val)} validation sequences)")


if __name__ == "__main__":
    run_cli(main)
