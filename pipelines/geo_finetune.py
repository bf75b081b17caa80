"""Fine-tune a remote-sensing encoder: scene classification from class subfolders of GeoTIFF tiles
(the FireRisk layout) or segmentation from image tiles with label rasters; accuracy, macro-F1, mIoU.

--init-from EXPORT starts from a geo_pretrain or converted export. Data of other bands is adapted (channel
surgery): a band feeds the export's band of its name or spectral class (NAIP B/G/R/NIR onto HLS BLUE/GREEN/
RED/NIR_NARROW...), export bands the data lacks stay empty, unseen bands get a fresh group of their own; all
of it is logged and recorded in the fine-tuned export (band_surgery).
"""
import dataclasses
from pathlib import Path

from scimae.core.config import parse_cli, pipeline_config, run_cli
from scimae.core.engine import TrainConfig, Trainer
from scimae.core.errors import DataError
from scimae.core.files import find_files
from scimae.core.data import first_per_class
from scimae.core.data import seeded_split
from scimae.domains.remote_sensing.data import GeoDataConfig, GeoTasks, band_layout
from scimae.domains.remote_sensing.io import labelled_tiles
from scimae.domains.remote_sensing.io import Band
from scimae.domains.remote_sensing.finetune import geo_finetuner, GeoTaskConfig, task_evaluate, task_step
from scimae.domains.remote_sensing.model import GeoModelConfig, adapt_bands, build_geo_mae, export_config, load_geo_mae

Config, DEFAULT = pipeline_config(__file__, data=GeoDataConfig, model=GeoModelConfig,
                                  task=GeoTaskConfig, train=TrainConfig)


def main(argv=None):
    """Fine-tune and return the trained model."""
    cfg = parse_cli(Config, DEFAULT, __doc__, argv)
    task = cfg.task
    root = Path(cfg.data.root) if cfg.data.root else cfg.data.synthetic.write() / "tiles"
    if cfg.train.init_from:
        mae, pre = load_geo_mae(cfg.train.init_from, frames=1)  # a GeoTIFF tile is one date
        model_cfg = pre["model"]
        if cfg.data.bands == GeoDataConfig().bands and pre.get("bands"):  # none given: the export's, normalisation too
            cfg.data.bands = [Band(**b) for b in pre["bands"]]
        mae, layout, surgery = adapt_bands(mae, pre, [b.name for b in cfg.data.bands])
    else:
        layout = band_layout([b.name for b in cfg.data.bands], cfg.data.groups)
        mae = build_geo_mae(cfg.model, layout, cfg.data.window, cfg.data.patch)
        model_cfg, surgery = dataclasses.asdict(cfg.model), {}
    val_root = Path(cfg.data.val_root) if cfg.data.val_root else None
    if task.kind == "classification":
        tiles, names = labelled_tiles(root)
        classes = sorted(set(names))
        val_tiles, val_names = labelled_tiles(val_root) if val_root else ([], [])
        unknown = sorted(set(val_names) - set(classes))
        if unknown:
            raise DataError(val_root, f"validation classes {unknown} with no training tiles", f"classes among {classes}")
        targets = {p: classes.index(n) for p, n in zip(tiles + val_tiles, names + val_names)}
        n_out, labels_root = len(classes), None
    else:
        tif = lambda p: p.suffix == ".tif"  # noqa: E731
        tiles, val_tiles = find_files(root, tif), find_files(val_root, tif) if val_root else []
        labels_root = Path(task.labels) if task.labels else root.parent / "labels"
        classes, targets, n_out = [str(i) for i in range(task.classes)], None, task.classes
    train_paths, val_paths = ((tiles, val_tiles) if val_root
                              else seeded_split(tiles, cfg.data.val_fraction, cfg.data.split_seed))
    if targets and task.labels_per_class:
        train_paths = first_per_class(train_paths, [targets[p] for p in train_paths], task.labels_per_class)

    def dataset(paths, train):
        y = [targets[p] for p in paths] if targets else None
        return GeoTasks(paths, cfg.data, train, cfg.train.seed, layout, y, labels_root)

    model = geo_finetuner(mae.encoder, task, n_out)
    model.export_config = export_config(model_cfg, cfg.data, layout, data_bands=[vars(b) for b in cfg.data.bands],
                                        task=vars(task), classes=classes,
                                        **({"band_surgery": surgery} if any(surgery.values()) else {}))
    trainer = Trainer(model, cfg.train, config=cfg, pipeline=Path(__file__).stem, step_fn=task_step(task),
                      evaluate=task_evaluate(task, n_out))
    trainer.fit(dataset(train_paths, True), dataset(val_paths, False))
    if trainer.dist.main:
        scores = trainer.evaluate(dataset(val_paths, False))
        print(f"run folder: {trainer.run_dir}\nvalidation ({len(val_paths)} tiles, bands {[b.name for b in cfg.data.bands]}): "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return model


if __name__ == "__main__":
    run_cli(main)
