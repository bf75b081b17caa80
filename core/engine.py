"""The training loop for pretraining and fine-tuning: AdamW, warm-up + cosine, accumulation,
clipping, AMP on CUDA, DDP under torchrun, metrics.csv and curves.png, figures, exports and exact resume."""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from scimae.core.checkpoint import (atomic_write, load_training_state, match_weights, rng_state, save_export,
                                    save_training_state, set_rng_state)
from scimae.core import preflight
from scimae.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, check_ranges, run_folder, save_config
from scimae.core.errors import DataError
from scimae.core.optim import layer_decay_groups
from scimae.core.progress import save_curves, training_bar

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the data (see epoch_repeats)
    epoch_repeats: int = 1  # passes over the training set per epoch (small datasets: fewer evaluations and saves)
    batch_size: int = 8  # samples per step and process
    base_lr: float = 1.5e-4  # lr = base_lr x effective batch / 256 (the MAE rule), unless lr is set
    lr: float | None = None  # absolute learning rate; overrides base_lr
    min_lr: float = 0.0  # learning rate at the end of the cosine schedule
    weight_decay: float = 0.05  # AdamW weight decay (not on biases, norms and tokens)
    layer_decay: float = 1.0  # layer-wise lr decay for fine-tuning (1.0 = off)
    warmup_epochs: float = 1.0  # linear warm-up, in epochs
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    grad_clip: float | None = 1.0  # clip the gradient norm to this (None = no clipping)
    accum_steps: int = 1  # batches accumulated per optimizer step
    amp: str = "auto"  # auto: bf16 autocast on CUDA only; off; bf16; fp16
    seed: int = 0  # seeds model initialisation, masks, shuffling and augmentation
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 10  # optimizer steps between rows of metrics.csv
    figure_every: int = 1  # epochs between reconstruction figures (0 = none)
    val_every: int = 1  # epochs between validation passes, the last epoch always included (0 = none)
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule still spans all epochs)
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard package)
    out_dir: str = "runs"  # run folders are made under this folder
    run_name: str | None = None  # default: a timestamp
    resume: str | None = None  # a run folder (or its last.pt) to continue exactly (--resume)
    init_from: str | None = None  # an export whose weights initialise the model (--init-from)

    def __post_init__(self):
        check_ranges("train", self, {
            **dict.fromkeys(("epochs", "epoch_repeats", "batch_size", "accum_steps", "log_every"), AT_LEAST_1),
            **dict.fromkeys(("min_lr", "weight_decay", "warmup_epochs", "num_workers", "figure_every",
                              "val_every"), NON_NEGATIVE),
            "base_lr": POSITIVE, "lr": ("> 0 or null", lambda v: v is None or v > 0),
            "layer_decay": ("in (0, 1]", lambda v: 0 < v <= 1),
            "betas": ("two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
            "grad_clip": ("> 0 or null (no clipping)", lambda v: v is None or v > 0),
            "max_steps": (">= 1 or null", lambda v: v is None or v >= 1),
            "amp": ("one of auto, off, bf16, fp16", lambda v: v in ("auto", "off", "bf16", "fp16")),
        })


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """Distinct, reproducible streams per worker; a dataset with ``reseed(seed)`` reseeds its transforms."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    dataset = torch.utils.data.get_worker_info().dataset
    while not hasattr(dataset, "reseed") and hasattr(dataset, "dataset"):  # the loader's wrapper, a Subset
        dataset = dataset.dataset
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)


def to_device(batch, device):
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Distributed:
    """Process-group facts; with no WORLD_SIZE (or 1) no group is made."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


class _NoStopIteration(Dataset):
    """``dataset`` whose StopIteration is an error: a DataLoader would take it for the end of the epoch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except StopIteration as e:
            raise RuntimeError(f"item {i} of the {type(self.dataset).__name__} raised StopIteration") from e


def _sources(dataset: Dataset, items: list[int]) -> str:
    """What ``items`` of ``dataset`` are: its ``source(i)`` (a file) for each when it has one, else indices."""
    source = getattr(dataset, "source", None)
    if source is None:
        return f"items {items}"
    return ", ".join(dict.fromkeys(source(i) for i in items))


class _ListSampler(Sampler):
    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv (only those of ``kind``, e.g. 'train' or 'val', when given)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if kind is None or r["kind"] == kind]


class MetricsLog:
    """metrics.csv in the run folder: one row per logged step or evaluation. A row is appended; the file is
    rewritten (atomically) only when a row brings a new column, or on resume to drop rows past the step."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path, self.rows, self.keys = path, [], []
        if keep_until_step is not None and path.is_file():
            self.rows = [r for r in read_metrics(path.parent) if int(r["step"]) <= keep_until_step]
            self._rewrite()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.path.is_file() and set(row) <= set(self.keys):
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys).writerow(row)
        else:
            self._rewrite()

    def _rewrite(self) -> None:
        self.keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.keys)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write(self.path, lambda p: Path(p).write_text(buf.getvalue()))


def default_step(model: nn.Module, batch, generator: torch.Generator) -> dict:
    """Pretraining: the MAE's own losses."""
    return model(batch, generator)


class Means:
    """Running means of the scalar losses and metrics of step outputs. A 'loss/<g>' is weighted by the
    'slots/<g>' beside it (see core.losses.grouped_losses), so a batch without group g's slots does not pull
    its mean towards 0; a mean that got no weight at all is left out."""

    def __init__(self):
        self.num: dict[str, torch.Tensor] = {}
        self.den: dict[str, torch.Tensor | float] = {}

    def add(self, out: dict) -> None:
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.ndim == 0 and k.startswith(("loss", "metric")):
                w = out.get(f"slots/{k[5:]}", 1.0) if k.startswith("loss/") else 1.0
                w = w.detach() if isinstance(w, torch.Tensor) else w
                self.num[k] = self.num.get(k, 0.0) + v.detach() * w
                self.den[k] = self.den.get(k, 0.0) + w

    def result(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: float(self.num[k]) / float(self.den[k]) for k in self.num if float(self.den[k]) > 0}


@torch.no_grad()
def mae_validation(model: nn.Module, batches) -> dict:
    """Mean MAE losses over a validation set, with the same masks at every evaluation."""
    g = torch.Generator().manual_seed(0)
    means = Means()
    for batch in batches:
        means.add(model(batch, g))
    return means.result("val_")


class Trainer:
    """Runs ``step_fn(model, batch, generator) -> {'loss': tensor, ...}`` over a dataset.

    Optional hooks: ``evaluate(model, loader) -> {name: float}`` after each epoch and ``figure(model, batch,
    path)`` for a reconstruction figure. A model with an ``export_config`` (see ``checkpoint.Exportable``) is
    exported beside ``last.pt``, with ``pipeline`` and the step that wrote it. ``config``, the pipeline's whole
    config, is written to the new run folder's config.yaml (a resumed run keeps its own).
    With ``cfg.layer_decay`` < 1 the encoder's blocks get layer-wise decayed learning rates.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, run_dir: str | Path | None = None,
                 step_fn: Callable = default_step, evaluate: Callable | None = None,
                 figure: Callable | None = None, collate: Callable | None = None, pipeline: str | None = None,
                 config=None):
        self.cfg, self.step_fn, self.evaluate_fn, self.pipeline = cfg, step_fn, evaluate, pipeline
        self.figure_fn, self.collate = figure, collate
        self.dist = Distributed()
        self.device = self.dist.device
        seed_everything(cfg.seed + self.dist.rank)
        self.model = model.to(self.device)
        self.run_dir = self._run_dir(run_dir)
        if config is not None and self.dist.main and not cfg.resume:
            save_config(config, self.run_dir / "config.yaml")
        if preflight.SKIPPED and self.dist.main:  # what the dataset preflight left out, one line per file
            text = "\n".join(preflight.SKIPPED) + "\n"
            atomic_write(self.run_dir / "skipped_files.txt", lambda p: Path(p).write_text(text))
        self.lr = cfg.lr if cfg.lr is not None else cfg.base_lr * cfg.batch_size * cfg.accum_steps * self.dist.world / 256
        groups = (layer_decay_groups(self.model, self.lr, cfg.weight_decay, cfg.layer_decay) if cfg.layer_decay < 1
                  else _default_groups(self.model, cfg.weight_decay, self.lr))
        self.optimizer = make_optimizer(groups, self.lr, cfg.betas, cfg.weight_decay)
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
                    if self.dist.world > 1 else self.model)
        self.mask_gen = torch.Generator().manual_seed(cfg.seed + 7919 * self.dist.rank)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0

    def _run_dir(self, run_dir) -> Path:
        cfg = self.cfg
        if cfg.resume:
            return run_folder(cfg.resume)
        if run_dir is None:
            run_dir = Path(cfg.out_dir) / (cfg.run_name or time.strftime("%Y%m%d-%H%M%S"))
        run_dir = Path(run_dir)
        if self.dist.main:
            if (run_dir / "last.pt").exists():
                raise ValueError(f"run folder {run_dir} already holds a run; pass --resume {run_dir} or another train.run_name")
            run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "rng": rng_state(), "mask_gen": self.mask_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        set_rng_state(state["rng"])
        self.mask_gen.set_state(state["mask_gen"])

    def save(self) -> None:
        """last.pt (training state) and, for a model with an export config, export/ (on rank 0)."""
        if not self.dist.main:
            return
        save_training_state(self.run_dir / "last.pt", self.state_dict())
        if getattr(self.model, "export_config", None) is not None:
            training = {"pipeline": self.pipeline, "step": self.step, "epoch": self.epoch}
            save_export(self.run_dir / "export", self.model, {**self.model.export_config, "training": training})

    # -- loop --------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, indices: list[int], seed: int, train: bool = False) -> DataLoader:
        """A loader over ``indices``; the training loader gets new indices and a new seed each epoch, and its
        workers start afresh each epoch from that seed, so an epoch draws the same after a resume."""
        return DataLoader(_NoStopIteration(dataset), batch_size=self.cfg.batch_size, sampler=_ListSampler(indices),
                          drop_last=train, num_workers=self.cfg.num_workers, collate_fn=self.collate,
                          worker_init_fn=_seed_worker,
                          generator=torch.Generator().manual_seed(seed), pin_memory=self.device.type == "cuda")

    def _epoch_indices(self, sampler: DistributedSampler, n: int) -> list[int]:
        """This process's sample order for the current epoch: ``epoch_repeats`` shuffles, ``n`` samples."""
        out = []
        for r in range(self.cfg.epoch_repeats):
            sampler.set_epoch(self.epoch * self.cfg.epoch_repeats + r)
            out += list(sampler)
        return out[:n]

    def fit(self, train_set: Dataset, val_set: Dataset | None = None) -> dict:
        """Train for ``cfg.epochs`` (or until ``max_steps``); returns the last logged metrics."""
        cfg = self.cfg
        sampler = DistributedSampler(train_set, num_replicas=self.dist.world, rank=self.dist.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        if len(sampler) == 0:
            raise ValueError(f"the training set has {len(train_set)} samples: none for each of {self.dist.world} processes")
        if len(sampler) * cfg.epoch_repeats < cfg.batch_size * cfg.accum_steps:
            log.warning("the training set has %d samples per process, fewer than a batch of %d: batches of %d",
                        len(sampler), cfg.batch_size, len(sampler))
            cfg = self.cfg = replace(cfg, batch_size=len(sampler))
        batches = len(sampler) * cfg.epoch_repeats // cfg.batch_size
        if batches < cfg.accum_steps:
            raise ValueError(f"the training set has {len(train_set)} samples: {batches} batches of {cfg.batch_size} "
                             f"per process; need at least accum_steps={cfg.accum_steps} (add data or lower "
                             f"train.accum_steps)")
        per_epoch = batches // cfg.accum_steps
        total = cfg.epochs * per_epoch
        warmup = min(int(cfg.warmup_epochs * per_epoch), total - 1)
        min_ratio = cfg.min_lr / self.lr if self.lr > 0 else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_schedule(s, total, warmup, min_ratio))
        if cfg.resume:
            path = self.run_dir / "last.pt" if Path(cfg.resume).is_dir() else Path(cfg.resume)
            state = load_training_state(path)
            _check_resumable(path, state, self.model, self.optimizer)
            self.load_state_dict(state)
            log.info("resumed %s at step %d (epoch %d)", self.run_dir, self.step, self.epoch)
        metrics = MetricsLog(self.run_dir / "metrics.csv", self.step if cfg.resume else None)
        if self.dist.main:
            log.info("run folder %s; lr %.3g; %d steps/epoch; device %s", self.run_dir, self.lr, per_epoch, self.device)
        writer = _tensorboard(self.run_dir) if cfg.tensorboard and self.dist.main else None
        stop = cfg.max_steps if cfg.max_steps is not None else total
        bar = training_bar(total=min(stop, total), initial=self.step, enabled=self.dist.main)
        last: dict = {}
        loader = self._loader(train_set, [], cfg.seed, train=True)
        while self.epoch < cfg.epochs and self.step < stop:
            indices = self._epoch_indices(sampler, batches * cfg.batch_size)
            epoch_seed = int(np.random.SeedSequence([cfg.seed, self.epoch, self.dist.rank]).generate_state(1)[0])
            loader.generator.manual_seed(epoch_seed)  # the workers' seeds: the epoch's augmentation, also after a resume
            if cfg.num_workers == 0 and hasattr(train_set, "reseed"):
                train_set.reseed(epoch_seed)
            start = self.batch_in_epoch
            loader.sampler.indices = indices[start * cfg.batch_size:]
            self.model.train()
            means = Means()
            for i, batch in enumerate(loader, start):
                if i >= per_epoch * cfg.accum_steps:
                    break
                sync = (i + 1) % cfg.accum_steps == 0
                if hasattr(self.model, "progress"):  # schedules inside the model (HPM's easy-to-hard masking)
                    self.model.progress = self.step / total
                try:
                    means.add(self._forward_backward(batch, sync))
                except FloatingPointError as e:  # nothing is saved over the last good checkpoint
                    items = indices[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                    raise ValueError(f"{e} on a batch of {_sources(train_set, items)}; lower the lr or check "
                                     f"those files") from None
                self.batch_in_epoch = i + 1
                if not sync:
                    continue
                self._optimizer_step()
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == stop:
                    last, means = means.result(), Means()
                    row = {"kind": "train", "epoch": self.epoch, "step": self.step,
                           "lr": max(g["lr"] for g in self.optimizer.param_groups), **last}
                    self._log(metrics, writer, row, bar)
                if self.step >= stop:
                    break
            if self.batch_in_epoch >= per_epoch * cfg.accum_steps:
                self._end_epoch(metrics, writer, val_set, train_set)
            elif self.step < stop:  # the loader ran dry: repeating the epoch would never end
                raise RuntimeError(f"the training loader gave {self.batch_in_epoch} of the {per_epoch * cfg.accum_steps} "
                                   f"batches of epoch {self.epoch}")
            self.save()
        bar.close()
        if writer:
            writer.close()
        if self.dist.main:
            save_curves(metrics.rows, self.run_dir / "curves.png")
        return last

    def _forward_backward(self, batch, sync: bool) -> dict:
        batch = to_device(batch, self.device)
        no_sync = self.ddp.no_sync if (self.dist.world > 1 and not sync) else contextlib.nullcontext
        with no_sync(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                       enabled=self.amp_dtype is not None):
            out = self.step_fn(self.ddp, batch, self.mask_gen)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {self.step}")
            self.scaler.scale(loss / self.cfg.accum_steps).backward()
        return out

    def _optimizer_step(self) -> None:
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _end_epoch(self, metrics, writer, val_set, train_set) -> None:
        epoch = self.epoch
        self.epoch += 1
        self.batch_in_epoch = 0
        due = self.cfg.val_every and ((epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs)
        if val_set is not None and self.evaluate_fn is not None and due:
            scores = self.evaluate(val_set)
            self._log(metrics, writer, {"kind": "val", "epoch": epoch, "step": self.step, **scores})
        if self.figure_fn and self.cfg.figure_every and self.dist.main and (epoch + 1) % self.cfg.figure_every == 0:
            data = val_set if val_set is not None else train_set
            batch = next(iter(self._loader(data, list(range(min(len(data), 2))), self.cfg.seed)))
            self.model.eval()
            with torch.no_grad():
                self.figure_fn(self.model, to_device(batch, self.device), self.run_dir / f"recon_epoch{epoch + 1:03d}.png")

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> dict:
        """Run the ``evaluate`` hook on ``dataset`` (every rank sees all of it; rank 0 logs)."""
        self.model.eval()
        loader = self._loader(dataset, list(range(len(dataset))), self.cfg.seed)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return self.evaluate_fn(self.model, (to_device(b, self.device) for b in loader))

    def _log(self, metrics, writer, row, bar=None) -> None:
        if not self.dist.main:
            return
        metrics.add(row)
        if writer:
            for k, v in row.items():
                if k not in ("kind", "epoch", "step") and isinstance(v, (int, float)):
                    writer.add_scalar(f"{row['kind']}/{k}", v, row["step"])
        if bar is not None and not bar.disable:
            bar.set_postfix_str(f"loss={row['loss']:.4g}" if "loss" in row else "")
        else:
            text = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            log.info("%s epoch %d step %d %s", row["kind"], row["epoch"], row["step"], text)


def _check_resumable(path: Path, state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A training state of another model or optimizer set-up than this config builds is a DataError."""
    saved, own = state["model"], model.state_dict()
    _, missing, unexpected = match_weights(model, saved)  # a resized tensor counts as missing there
    resized = [f"{k} {list(saved[k].shape)} here {list(own[k].shape)}" for k in missing if k in saved]
    missing = [k for k in missing if k not in saved]
    groups = ([len(g["params"]) for g in state["optimizer"]["param_groups"]],
              [len(g["params"]) for g in optimizer.param_groups])
    found = "; ".join(part for part in (
        f"{len(resized)} tensors of other shapes (e.g. {resized[0]})" if resized else "",
        f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
        f"{len(unexpected)} not in this model (e.g. {unexpected[0]})" if unexpected else "",
        f"optimizer parameter groups of {groups[0]} tensors, here {groups[1]}" if groups[0] != groups[1] else "")
        if part)
    if found:
        raise DataError(path, f"the state of another set-up: {found}",
                        "the model and optimizer this run was started with (resume with the settings in its config.yaml)")


def make_optimizer(params, lr: float, betas=(0.9, 0.95), weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA), which saves about a third of a small model's step."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)


def _default_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 and not name.endswith("_token") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr}]


def _amp_dtype(amp: str, device: torch.device):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("train.tensorboard=true needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
