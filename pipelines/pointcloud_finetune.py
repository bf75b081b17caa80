"""Shape classification from point clouds: a linear SVM on pooled encoder features (max + mean), then
full fine-tuning; accuracy and macro-F1 on the validation clouds.

Data: class subfolders of clouds or meshes, or HDF5 files with 'data' and 'label' (ModelNet40 /
ScanObjectNN). --init-from EXPORT starts from a pointcloud_pretrain export; without it, from scratch.
"""
import dataclasses
import json
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer
from scimae.core.errors import DataError
from scimae.core.data import first_per_class
from scimae.core.tasks import classification_evaluate, classification_step
from scimae.core.data import seeded_split
from scimae.domains.scene3d.data import PointClouds, PointDataConfig, cloud_root, find_clouds
from scimae.domains.scene3d.finetune import PointTaskConfig, point_classifier, svm_probe
from scimae.domains.scene3d.model import PointModelConfig, build_point_mae, export_config, load_point_mae

Config, DEFAULT = pipeline_config(__file__, data=PointDataConfig, model=PointModelConfig,
                                  task=PointTaskConfig, train=TrainConfig)


def main(argv=None):
    """Probe and fine-tune; return the fine-tuned classifier."""
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    d = cfg.data
    root = cloud_root(d)
    entries, classes = find_clouds(root, d.on_error)
    if any(e.label < 0 for e in entries):
        raise DataError(root, "clouds without a class", "class subfolders, or HDF5 files with a 'label' dataset")
    n_classes = len(classes) or max(e.label for e in entries) + 1
    if d.val_root:
        train, (val, val_classes) = entries, find_clouds(Path(d.val_root), d.on_error)
        if val_classes != classes:
            raise DataError(d.val_root, f"classes {val_classes}", f"the training classes {classes}")
    else:
        train, val = seeded_split(entries, d.val_fraction, d.split_seed)
    if cfg.task.labels_per_class:
        train = first_per_class(train, [e.label for e in train], cfg.task.labels_per_class)
    if cfg.train.init_from:
        mae, pre = load_point_mae(cfg.train.init_from)
        model_cfg, d.n_groups, d.group_size = pre["model"], pre["n_groups"], pre["group_size"]
    else:
        mae, model_cfg = build_point_mae(cfg.model, d.n_groups, d.group_size), dataclasses.asdict(cfg.model)
    model = point_classifier(mae.encoder, n_classes, cfg.task.freeze_encoder)
    model.export_config = export_config("point_cloud_classifier", model_cfg, d,
                                        classes=classes or [str(i) for i in range(n_classes)])
    trainer = Trainer(model, cfg.train, config=cfg, pipeline=Path(__file__).stem, step_fn=classification_step,
                      evaluate=classification_evaluate(n_classes))
    train_fixed, val_set = PointClouds(train, d, False), PointClouds(val, d, False)  # no augmentation
    if trainer.dist.main:
        svm = svm_probe(model.encoder.to(trainer.device), train_fixed, val_set, cfg.task.svm_c)
        (trainer.run_dir / "svm_probe.json").write_text(json.dumps({"accuracy": svm}) + "\n")
        print(f"linear SVM on pooled features: validation accuracy {svm:.3f}")
    trainer.fit(PointClouds(train, d, True, cfg.train.seed), val_set)
    if trainer.dist.main:
        scores = trainer.evaluate(val_set)
        print(f"run folder: {trainer.run_dir}\nfine-tuned ({len(val)} validation clouds): "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return model


if __name__ == "__main__":
    run_cli(main)
