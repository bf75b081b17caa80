"""A synthetic BraTS-like dataset written as real NIfTI files (BraTS 2021 names, LPS affines).

Each case is a head (scalp, CSF, grey and white matter, ventricles) with a tumour whose appearance
follows the contrasts as in glioma MRI: high-grade cases (HGG) have contrast-enhancing tissue bright on
T1ce, low-grade ones (LGG) a non-enhancing solid part; every tumour has necrosis and oedema bright on
T2 and FLAIR. Independently of the grade, the tumour's ``pattern`` is ``ring`` (necrosis inside a shell
of solid tissue) or ``split`` (the same volumes of necrosis and solid tissue side by side), inside a
lesion of the same size: the voxel intensities are the same, only the arrangement tells them apart.
The lesion lies in the left or right hemisphere (``side``) of a head that is symmetric on average, so
the side too leaves every intensity statistic unchanged and only the layout tells it.
Tumour size and position vary; a segmentation (BraTS labels 1 necrosis/core, 2 oedema, 4 enhancing) and
``labels.csv`` (grade, pattern, side, survival_days, event) come with it; some cases lack a modality.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scimae.core.files import build_folder_once
from scimae.core.progress import progress
from scimae.domains.brain_mri.io import MODALITIES, write_volume

SHAPE = (72, 88, 72)
SPACING = 2.0
VERSION = 3
PATTERNS = ["ring", "split"]
SIDES = ["left", "right"]  # the lesion's hemisphere
NECROSIS = 0.6  # necrosis radius / tumour radius
#                 t1    t1ce  t2    flair
TISSUE = {
    "scalp":     (1.10, 1.15, 0.60, 0.50),
    "csf":       (0.25, 0.25, 1.50, 0.15),
    "gm":        (0.70, 0.72, 0.75, 0.80),
    "wm":        (1.00, 1.02, 0.50, 0.60),
    "oedema":    (0.55, 0.57, 1.25, 1.40),
    "core":      (0.50, 0.55, 1.05, 1.15),
    "necrosis":  (0.30, 0.30, 1.35, 0.55),
    "enhancing": (0.65, 1.70, 0.95, 1.10),
}
MISSING = {0: ["t1ce"], 2: ["flair"], 3: ["t1", "t2"]}  # (case index // 2) % 8 -> modalities left out, for both patterns


def _smooth_noise(rng, shape, scale=8) -> np.ndarray:
    """Unit-ish noise varying over about ``scale`` voxels (coarse noise, trilinearly upsampled)."""
    coarse = torch.from_numpy(rng.standard_normal([s // scale + 2 for s in shape]).astype(np.float32))
    return F.interpolate(coarse[None, None], size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def make_case(rng: np.random.Generator, hgg: bool, pattern: str = "ring") -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """One case: {modality: volume}, segmentation, facts (tumour radius in voxels, the lesion's side)."""
    z = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - s / 2 for s in SHAPE], indexing="ij"))  # [3, X, Y, Z]
    axes = np.array([28.0, 34.0, 28.0]) * rng.uniform(0.9, 1.05, 3)
    wobble = 0.04 * _smooth_noise(rng, SHAPE)
    r = np.sqrt(((z / axes[:, None, None, None]) ** 2).sum(0)) + wobble  # 1 at the scalp surface
    label = np.zeros(SHAPE, np.uint8)
    code = {name: i + 1 for i, name in enumerate(TISSUE)}  # 0 = air
    tissue = np.zeros(SHAPE, np.uint8)
    tissue[r < 1.0] = code["scalp"]
    tissue[r < 0.90] = code["csf"]
    tissue[r < 0.86] = code["gm"]
    tissue[r < 0.74] = code["wm"]
    for side in (-1, 1):  # lateral ventricles
        v = ((z[0] - side * 5) / 3) ** 2 + ((z[1] - 2) / 11) ** 2 + (z[2] / 5) ** 2
        tissue[v < 1] = code["csf"]
    # the lesion, a sphere in one hemisphere: oedema around a tumour whose solid part (enhancing in HGG,
    # non-enhancing in LGG) and necrosis have fixed volume shares, either nested (ring) or side by side
    # (split); both patterns fit well inside the same lesion, so they replace the same tissue
    radius = rng.uniform(4.0, 5.5)
    centre = np.array([rng.choice([-1, 1]) * rng.uniform(9, 11), rng.uniform(-8, 8), rng.uniform(-4, 4)])
    side = "right" if centre[0] > 0 else "left"  # voxel x grows towards the patient's right (:func:`affine`)
    bumps = 1.0 * _smooth_noise(rng, SHAPE, 6)

    def dist(c):
        return np.sqrt(((z - c[:, None, None, None]) ** 2).sum(0)) + bumps  # [X, Y, Z]

    inner = NECROSIS * radius
    d = dist(centre)
    if pattern == "ring":
        outer, necrotic = d < radius, d < inner
    else:
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        solid = radius * (1 - NECROSIS ** 3) ** (1 / 3)  # the ring's outer volume as one sphere
        necrotic = dist(centre + solid * u) < inner  # touching the solid part, the pair centred on the lesion
        outer = (dist(centre - inner * u) < solid) | necrotic
    inside = r < 0.86
    tumour = outer & inside
    lesion = d < radius * (rng.uniform(2.0, 2.4) if hgg else rng.uniform(1.6, 1.9))
    oedema = lesion & inside & ~tumour
    tissue[oedema] = code["oedema"]
    label[oedema] = 2
    tissue[tumour] = code["enhancing" if hgg else "core"]
    label[tumour] = 4 if hgg else 1
    tissue[necrotic & inside] = code["necrosis"]
    label[necrotic & inside] = 1
    bias = np.exp(0.1 * _smooth_noise(rng, SHAPE, 24))
    lut = np.array([(0.0,) * 4, *TISSUE.values()], np.float32)  # [tissues, modalities]
    volumes = {}
    for m, mod in enumerate(MODALITIES):
        img = lut[tissue, m]
        img = img * bias + 0.03 * rng.standard_normal(SHAPE) * (img > 0)
        volumes[mod] = np.clip(img * 1000 * rng.uniform(0.8, 1.2), 0, None).astype(np.int16)
    return volumes, label, {"radius": radius, "side": side}


def affine() -> np.ndarray:
    """BraTS-like LPS voxel axes: x and y point left-to-right and back-to-front negated."""
    a = np.diag([-SPACING, -SPACING, SPACING, 1.0])
    a[:3, 3] = [SPACING * SHAPE[0] / 2, SPACING * SHAPE[1] / 2, -SPACING * SHAPE[2] / 2]
    return a


def write_dataset(root: str | Path | None = None, n_cases: int = 32, seed: int = 0) -> Path:
    """Write the dataset once (complete or not at all) and return its folder."""
    key = f"{n_cases} cases, seed {seed}"
    return build_folder_once(root, key, lambda tmp: _write(tmp, n_cases, seed), f"brats_synthetic_v{VERSION}")


def _write(tmp: Path, n_cases: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in progress(range(n_cases), "writing synthetic BraTS cases"):
        case = f"SynBraTS_{i:05d}"
        hgg = bool(i // 2 % 2 == 0) if i < 8 else bool(rng.random() < 0.5)
        pattern = PATTERNS[i % 2]
        volumes, label, facts = make_case(rng, hgg, pattern)
        folder = tmp / case
        folder.mkdir(parents=True)
        for mod, vol in volumes.items():
            if mod not in MISSING.get(i // 2 % 8, []):
                write_volume(folder / f"{case}_{mod}.nii.gz", vol, affine())
        write_volume(folder / f"{case}_seg.nii.gz", label, affine())
        days = (420 if hgg else 1500) * np.exp(-0.08 * (facts["radius"] - 6) + 0.25 * rng.standard_normal())
        rows.append({"case_id": case, "grade": "HGG" if hgg else "LGG", "pattern": pattern, "side": facts["side"],
                     "survival_days": int(days), "event": int(rng.random() < 0.8)})
    with (tmp / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
