"""Fine-tune a brain MRI encoder: classification (a label column), segmentation (UNETR-style decoder;
Dice for whole tumour, tumour core, enhancing tumour) or survival (logistic hazard; C-index).

--init-from EXPORT starts from a brats_pretrain export (modalities it was not trained on start fresh, logged and
recorded as modality_surgery); without it the encoder starts from scratch.
At the end it prints the validation score with every modality and with each one left out
(task.leave_one_out), and returns the fine-tuned model.
"""
from pathlib import Path

from torch.utils.data import Subset

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer
from scimae.core.data import first_per_class, group_changes
from scimae.domains.brain_mri.data import (
    BrainDataConfig,
    WithoutModalities,
    class_targets,
    collate,
    make_dataset,
    survival_targets,
    train_val_cases,
)
from scimae.domains.brain_mri.io import MODALITIES
from scimae.domains.brain_mri.finetune import brain_finetuner, TaskConfig, task_evaluate, task_outputs, task_step
from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae, export_config, load_brain_mae

Config, DEFAULT = pipeline_config(__file__, data=BrainDataConfig, model=BrainModelConfig,
                                  task=TaskConfig, train=TrainConfig)


def targets(task: TaskConfig, train_cases, val_cases):
    """Per-case targets and what the export must remember (class names or interval edges)."""
    if task.kind == "classification":
        classes, tr = class_targets(train_cases, task.label)
        return tr, class_targets(val_cases, task.label, classes)[1], {"classes": classes}
    if task.kind == "survival":
        edges, tr = survival_targets(train_cases, task.time, task.event, task.bins)
        return tr, survival_targets(val_cases, task.time, task.event, task.bins, edges)[1], {"edges": edges}
    return None, None, {}


def main(argv=None):
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    task, roi = cfg.task, cfg.data.grid()[0]
    train_cases, val_cases = train_val_cases(cfg.data)
    train_t, val_t, facts = targets(task, train_cases, val_cases)
    if task.kind == "classification" and task.labels_per_class:
        kept = first_per_class(list(range(len(train_cases))), [int(t["y"]) for t in train_t], task.labels_per_class)
        train_cases, train_t = [train_cases[i] for i in kept], [train_t[i] for i in kept]
    seg = task.kind == "segmentation"
    train_set = make_dataset(train_cases, cfg.data, True, cfg.train.seed, seg, train_t)
    val_set = make_dataset(val_cases, cfg.data, False, cfg.train.seed, seg, val_t)
    if cfg.train.init_from:
        mae, pre = load_brain_mae(cfg.train.init_from)
        if list(pre["roi"]) != list(roi):
            raise ValueError(f"the export was pretrained on roi {pre['roi']}, the data gives {roi}; set data.roi")
        model_cfg = BrainModelConfig(**{**vars(cfg.model), **{k: v for k, v in pre["model"].items() if k != "mask"}})
        surgery = group_changes(pre.get("trained_modalities", MODALITIES), cfg.data.modalities, "modalities")
    else:
        mae, model_cfg = build_brain_mae(cfg.model, roi), cfg.model
        surgery = {}
    n_out = task_outputs(task, len(facts.get("classes", [])), task.bins)
    model = brain_finetuner(mae.encoder, task, n_out)
    evaluate = task_evaluate(task)
    model.export_config = export_config(model_cfg, roi, cfg.data.grid()[1], task=vars(task), **facts,
                                        trained_modalities=list(cfg.data.modalities),
                                        **({"modality_surgery": surgery} if surgery else {}))
    trainer = Trainer(model, cfg.train, config=cfg, pipeline=Path(__file__).stem, step_fn=task_step(task), evaluate=evaluate,
                      collate=collate)
    trainer.fit(train_set, val_set)
    if not trainer.dist.main:
        return model
    print(f"run folder: {trainer.run_dir}\nvalidation by modality set ({len(val_cases)} cases):")
    subsets = [cfg.data.modalities] + [[m for m in cfg.data.modalities if m != x] for x in cfg.data.modalities]
    for subset in subsets if len(cfg.data.modalities) > 1 and task.leave_one_out else subsets[:1]:
        kept = [i for i, c in enumerate(val_cases) if set(c.paths) & set(subset)]  # cases left with a modality
        drop = [m for m in cfg.data.modalities if m not in subset]
        scores = trainer.evaluate(Subset(WithoutModalities(val_set, drop), kept))
        print(f"  {'+'.join(subset):24s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return model


if __name__ == "__main__":
    run_cli(main)
