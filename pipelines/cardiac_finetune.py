"""Fine-tune a cardiac encoder: multi-label diagnosis (BCE with pos_weight; macro AUROC), classification
(one class per record from a header comment, e.g. the synthetic conduction pattern; accuracy) or
regression (heart rate by default; mean absolute error), as a linear probe or a full fine-tune.

--init-from EXPORT starts from a cardiac_pretrain export (or a converted ST-MEM checkpoint), whose sampling rate,
window, patch and preprocessing the data then follow; channels it was not trained on start fresh (logged and
recorded in the export as channel_surgery). At the end it prints the validation score
per channel configuration (12-lead, limb leads, lead I, lead II, PPG only, ECG + PPG), same weights.
"""
import dataclasses
from pathlib import Path

from torch.utils.data import Subset

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer
from scimae.core.errors import DataError
from scimae.core.data import first_per_class, group_changes
from scimae.core.tasks import pos_weight_from_labels
from scimae.domains.cardiac.data import CardiacDataConfig, CardiacWindows, record_classes, train_val_records
from scimae.domains.cardiac.io import CHANNELS, LEADS
from scimae.domains.cardiac.finetune import cardiac_finetuner, CardiacTaskConfig, task_evaluate, task_step
from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae, export_config, load_cardiac_mae

Config, DEFAULT = pipeline_config(__file__, data=CardiacDataConfig, model=CardiacModelConfig,
                                  task=CardiacTaskConfig, train=TrainConfig)
CONFIGURATIONS = {"12-lead": LEADS, "limb leads": ["I", "II", "III", "aVR", "aVL", "aVF"], "lead I": ["I"],
                  "lead II": ["II"], "PPG only": ["PPG"], "ECG + PPG": LEADS + ["PPG"]}


def main(argv=None):
    """Fine-tune and return the trained model."""
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    task = cfg.task
    if cfg.train.init_from:  # the export fixes what its encoder reads: rate, window, patch and preprocessing
        mae, pre = load_cardiac_mae(cfg.train.init_from)
        read = mae.encoder.group_names  # ST-MEM's tokens read the 12 leads alone
        cfg.data = dataclasses.replace(cfg.data, **{k: pre[k] for k in ("fs", "window_s", "patch")},
                                       preprocessing=pre.get("preprocessing", "scimae"),
                                       channels=[c for c in cfg.data.channels if c in read])
    train_records, val_records = train_val_records(cfg.data)
    classes = record_classes(train_records, task.label) if task.kind == "classification" else None
    by_class = {"label": task.label, "classes": classes} if classes else {}

    def windows(records, channels=None) -> CardiacWindows:
        return CardiacWindows(records, cfg.data, channels, **by_class)

    train_set, val_set = windows(train_records), windows(val_records)
    if task.kind == "regression" and train_set.hr.isnan().any():
        raise DataError(cfg.data.root or "synthetic", "records without an 'hr' header comment", "a value per record")
    if cfg.train.init_from:
        model_cfg = CardiacModelConfig(**{**vars(cfg.model), **{k: v for k, v in pre["model"].items() if k != "mask"}})
        surgery = group_changes(pre.get("trained_channels", CHANNELS), cfg.data.channels, "channels")
    else:
        mae, model_cfg = build_cardiac_mae(cfg.model, cfg.data.window_length, cfg.data.patch), cfg.model
        surgery = {}
    n_out = {"diagnosis": len(cfg.data.diagnoses), "classification": len(classes or [])}.get(task.kind, 1)
    hr_scale = float(train_set.hr.nanmean()) if task.kind == "regression" else 1.0
    model = cardiac_finetuner(mae.encoder, task, n_out)
    pos_weight = pos_weight_from_labels(train_set.y) if task.kind == "diagnosis" else None
    model.export_config = export_config(model_cfg, cfg.data, task=vars(task), n_out=n_out, classes=classes,
                                        diagnoses=cfg.data.diagnoses, target_scale=hr_scale,
                                        **({"channel_surgery": surgery} if surgery else {}))
    if classes and task.labels_per_class:
        train_set = Subset(train_set, first_per_class(list(range(len(train_set))), train_set.y.tolist(),
                                                      task.labels_per_class))
    trainer = Trainer(model, cfg.train, config=cfg, pipeline=Path(__file__).stem, step_fn=task_step(task, pos_weight, hr_scale),
                      evaluate=task_evaluate(task, cfg.data.diagnoses, hr_scale))
    trainer.fit(train_set, val_set)
    if not trainer.dist.main or not task.by_channels:
        return model
    print(f"run folder: {trainer.run_dir}\nvalidation by channel configuration ({len(val_records)} records):")
    for name, channels in CONFIGURATIONS.items():
        if not set(channels) <= set(mae.encoder.group_names):
            print(f"  {name:12s} not channels this model reads")
            continue
        try:
            data = windows(val_records, channels)
        except DataError:
            print(f"  {name:12s} no validation record has these channels")
            continue
        scores = trainer.evaluate(data)
        print(f"  {name:12s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items() if not k.startswith("auroc_")))
    return model


if __name__ == "__main__":
    run_cli(main)
