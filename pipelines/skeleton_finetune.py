"""Action classification from skeleton sequences: a linear probe on the frozen encoder
(task.linear_probe=true) or full fine-tuning; accuracy and macro-F1 on the split's test side (data.split:
xsub or xview). --init-from EXPORT starts from a skeleton_pretrain export; without it, from scratch.
"""
import dataclasses
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer
from scimae.core.errors import DataError
from scimae.core.data import first_per_class, resolve_root
from scimae.core.tasks import classification_evaluate, classification_step
from scimae.domains.skeleton.data import SkeletonDataConfig, Skeletons, load_samples
from scimae.domains.skeleton.finetune import SkeletonTaskConfig, skeleton_classifier
from scimae.domains.skeleton.model import SkeletonModelConfig, build_skeleton_mae, export_config, load_skeleton_mae

Config, DEFAULT = pipeline_config(__file__, data=SkeletonDataConfig, model=SkeletonModelConfig,
                                  task=SkeletonTaskConfig, train=TrainConfig)


def main(argv=None):
    """Fine-tune (or probe) and return the trained classifier."""
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    d = cfg.data
    train, val = load_samples(d)
    if not val or any(s["action"] < 1 for s in train + val):
        raise DataError(resolve_root(d.root, d.synthetic), "no test side of the split, or samples without an action",
                        "NTU file names (S...C...P...R...A...) or arrays with labels")
    actions = sorted({s["action"] for s in train})
    if cfg.task.labels_per_class:
        train = first_per_class(train, [s["action"] for s in train], cfg.task.labels_per_class)
    if cfg.train.init_from:
        mae, pre = load_skeleton_mae(cfg.train.init_from)
        model_cfg = pre["model"]
    else:
        mae, model_cfg = build_skeleton_mae(cfg.model, d.frames, d.bodies, d.joints), dataclasses.asdict(cfg.model)
    model = skeleton_classifier(mae.encoder, len(actions), cfg.task.linear_probe)
    model.export_config = export_config(model_cfg, d, actions=actions, task=dataclasses.asdict(cfg.task))
    trainer = Trainer(model, cfg.train, config=cfg, pipeline=Path(__file__).stem, step_fn=classification_step,
                      evaluate=classification_evaluate(len(actions)))
    val_set = Skeletons(val, d, False, actions)
    trainer.fit(Skeletons(train, d, True, actions, cfg.train.seed), val_set)
    if trainer.dist.main:
        scores = trainer.evaluate(val_set)
        kind = "linear probe" if cfg.task.linear_probe else "fine-tuned"
        print(f"run folder: {trainer.run_dir}\n{kind}, {d.split} test side ({len(val)} sequences): "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return model


if __name__ == "__main__":
    run_cli(main)
