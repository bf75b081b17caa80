"""Preprocessing with MONAI: load a case onto one grid, RAS, spacing, foreground crop, ROI, z-score."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (CenterSpatialCropd, Compose, ConvertToMultiChannelBasedOnBratsClassesd, CropForegroundd, EnsureTyped, NormalizeIntensityd,
                              Orientationd, RandFlipd, RandScaleIntensityd, RandShiftIntensityd, RandSpatialCropd,
                              ResampleToMatch, Spacingd, SpatialPadd, Transform)

from scimae.core.errors import DataError
from scimae.domains.brain_mri.io import MODALITIES, read_volume

log = logging.getLogger(__name__)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel affines map voxels to RAS+ world coordinates


def _same_grid(a: MetaTensor, b: MetaTensor) -> bool:
    return a.shape == b.shape and np.allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-3)


def _nonzero(x):
    return x != 0


class LoadCase(Transform):
    """Case dict (``paths``, ``seg``, ``labels``) -> ``image`` [4, X, Y, Z] MetaTensor on the grid of the
    first available modality (zeros for a missing one), ``present`` [4] bool and, if the case has one,
    ``seg`` [1, X, Y, Z] with BraTS labels (2023's enhancing label 3 becomes 4)."""

    def __init__(self, modalities: Sequence[str] = MODALITIES):
        self.modalities = list(modalities)

    def _load(self, path, label: bool = False) -> tuple[MetaTensor, object]:
        data, affine, header = read_volume(path, label)
        return MetaTensor(torch.from_numpy(data)[None], affine=torch.from_numpy(affine).double(),
                          meta={"filename_or_obj": str(path)}), header

    def __call__(self, case: dict) -> dict:
        vols = {}
        for mod in self.modalities:
            if mod in case["paths"]:
                vols[mod], _ = self._load(case["paths"][mod])
        if not vols:
            raise DataError(case["case_id"], "no readable modality", f"at least one of {self.modalities}")
        ref_mod = next(iter(vols))
        ref = vols[ref_mod]
        originals = dict(vols)
        for mod, vol in vols.items():
            if not _same_grid(vol, ref):
                log.warning("case %s: %s grid %s differs from %s grid %s; resampled onto it", case["case_id"], mod,
                            list(vol.shape[1:]), ref_mod, list(ref.shape[1:]))
                vols[mod] = ResampleToMatch(mode="bilinear")(vol, img_dst=ref)
        image = torch.zeros((len(self.modalities), *ref.shape[1:]))
        present = torch.zeros(len(self.modalities), dtype=torch.bool)
        for i, mod in enumerate(self.modalities):
            if mod in vols:
                image[i], present[i] = vols[mod][0].as_tensor(), True
        extra = {k: v for k, v in case.items() if k not in ("paths", "seg", "labels")}  # e.g. task targets
        out = {**extra, "case_id": case["case_id"], "present": present, "labels": case.get("labels", {}),
               "image": MetaTensor(image, affine=ref.affine, meta={"filename_or_obj": ref.meta["filename_or_obj"]})}
        if case.get("seg"):
            seg, _ = self._load(case["seg"], label=True)
            match = next((m for m, v in originals.items() if _same_grid(seg, v)), None)
            if match is None:
                raise DataError(case["seg"], f"a label grid {list(seg.shape[1:])} matching no modality of case "
                                f"{case['case_id']}", f"the grid of one of its images, e.g. {list(ref.shape[1:])}")
            if match != ref_mod:
                seg = ResampleToMatch(mode="nearest")(seg, img_dst=ref)
            if (seg == 3).any() and not (seg == 4).any():
                seg = torch.where(seg == 3, 4, seg)
            out["seg"] = seg
        return out


def preprocess(roi: Sequence[int], spacing: Sequence[float] | None, train: bool, seed: int = 0,
               modalities: Sequence[str] = MODALITIES, seg_regions: bool = False,
               flips: Sequence[int] = (0, 1, 2)) -> Compose:
    """The MONAI chain: LoadCase -> RAS -> spacing -> foreground crop -> z-score over non-zero voxels
    per modality -> pad/crop to ``roi`` (random crop, flips along the ``flips`` axes and intensity jitter
    when ``train``). ``seg_regions`` turns the label into the BraTS regions [TC, WT, ET]."""
    keys = ["image", "seg"]
    steps = [LoadCase(modalities), Orientationd(keys, axcodes="RAS", labels=RAS_LABELS, allow_missing_keys=True)]
    if spacing is not None:
        steps.append(Spacingd(keys, pixdim=spacing, mode=("bilinear", "nearest"), allow_missing_keys=True))
    steps += [CropForegroundd(keys, source_key="image", select_fn=_nonzero, allow_missing_keys=True),
              NormalizeIntensityd("image", nonzero=True, channel_wise=True),
              SpatialPadd(keys, roi, allow_missing_keys=True)]
    if train:
        steps += [RandSpatialCropd(keys, roi, random_size=False, allow_missing_keys=True),
                  *[RandFlipd(keys, prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in flips],
                  RandScaleIntensityd("image", factors=0.1, prob=1.0, channel_wise=True),
                  RandShiftIntensityd("image", offsets=0.1, prob=1.0, channel_wise=True)]
    else:
        steps.append(CenterSpatialCropd(keys, roi, allow_missing_keys=True))
    if seg_regions:
        steps.append(ConvertToMultiChannelBasedOnBratsClassesd("seg", allow_missing_keys=True))
    steps.append(EnsureTyped(keys, track_meta=False, allow_missing_keys=True))
    chain = Compose(steps)
    chain.set_random_state(seed)
    return chain


def inference_chain(spacing: Sequence[float] | None, modalities: Sequence[str] = MODALITIES) -> Compose:
    """The deterministic part of :func:`preprocess`, keeping MONAI's metadata so that a prediction
    can be inverted back onto the case's own grid (``chain.inverse({"image": pred})``)."""
    steps = [LoadCase(modalities), Orientationd("image", axcodes="RAS", labels=RAS_LABELS)]
    if spacing is not None:
        steps.append(Spacingd("image", pixdim=spacing, mode="bilinear"))
    steps += [CropForegroundd("image", source_key="image", select_fn=_nonzero),
              NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    return Compose(steps)


def summary_statistics(image: torch.Tensor) -> torch.Tensor:
    """The evaluation's ``simple`` baseline: per modality, the 1/10/50/90/99/99.9th percentiles of the
    brain's (non-zero) voxels, the intensities a histogram classifier sees. image [B, 4, X, Y, Z]
    (z-scored; a missing modality is zeros) -> [B, 4 * 6]."""
    x = image.flatten(2).masked_fill(image.flatten(2) == 0, float("nan"))  # [B, 4, X * Y * Z]
    q = torch.nanquantile(x, torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99, 0.999], dtype=x.dtype), dim=-1)  # [6, B, 4]
    return torch.nan_to_num(q.permute(1, 2, 0)).flatten(1)  # [B, 24]
