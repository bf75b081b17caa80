"""Dataset helpers every domain shares: the data folder (the user's or the synthetic default), the seeded
split, few-label subsets and the synthetic-dataset settings."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass
class SyntheticBase(ABC):
    """Where and from which seed a domain's embedded default dataset is generated; each domain adds its
    sizes."""

    seed: int = 0  # generator seed (another seed, another dataset)
    folder: str | None = None  # default: the user cache (~/.cache/scimae or $SCIMAE_CACHE)

    @abstractmethod
    def write(self) -> Path:
        """Write the dataset once (the domain's generator at these settings) and return its folder."""


def resolve_root(root: str | None, synthetic: SyntheticBase) -> Path:
    """The data folder: the user's ``root``, or the domain's synthetic dataset (written on first use)."""
    return Path(root) if root else synthetic.write()


def seeded_split(items: list[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """A reproducible split of ``items`` (records, scenes, clouds...) into (train, val), each in its original
    order; at least one validation item when ``val_fraction`` > 0 and there are two or more."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(len(items) * val_fraction)) if val_fraction > 0 and len(items) > 1 else 0
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]


def first_per_class(items: list[T], labels: list[int], k: int) -> list[T]:
    """The first ``k`` items of each class, in order: a fixed few-label training set."""
    count: dict[int, int] = {}
    kept = []
    for item, label in zip(items, labels):
        count[label] = count.get(label, 0) + 1
        if count[label] <= k:
            kept.append(item)
    return kept


def group_changes(trained: list[str], used: list[str], what: str) -> dict[str, list[str]]:
    """What fine-tuning on the ``used`` groups (leads, modalities) changes against those an export was
    ``trained`` on: {'absent': trained but not used, 'new': used but never trained (they start fresh)}, logged;
    empty when they are the same."""
    changes = {"absent": [g for g in trained if g not in used], "new": [g for g in used if g not in trained]}
    if not any(changes.values()):
        return {}
    logging.getLogger(__name__).warning("%s adapted to the export: %s", what, changes)
    return changes
