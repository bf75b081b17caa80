"""Brain MRI inference: a missing modality synthesised from the present ones, on the model's grid or on a
case's own."""
from __future__ import annotations

import logging

import numpy as np
import torch

from scimae.core.errors import DataError
from scimae.core.mae import MaskedAutoencoder
from scimae.domains.brain_mri.io import MODALITIES, Case, read_volume
from scimae.domains.brain_mri.transforms import inference_chain

log = logging.getLogger(__name__)


@torch.no_grad()
def synthesise(model: MaskedAutoencoder, image: torch.Tensor, present: torch.Tensor, modality: str,
               roi, overlap: float = 0.25, uncertainty: int = 0) -> torch.Tensor:
    """Predict ``modality`` from the other present ones over a whole volume with sliding windows.

    image [4, X, Y, Z] (z-scored, any size), present [4] -> [X, Y, Z] in z-score units (0 outside the
    foreground of the inputs); with ``uncertainty`` K > 0, [2, X, Y, Z]: the synthesis and its spread over K
    syntheses from random three quarters of the context (:meth:`~scimae.core.mae.MaskedAutoencoder.fill_spread`).
    """
    from monai.inferers import sliding_window_inference

    idx = MODALITIES.index(modality)
    shown = present.clone()
    shown[idx] = False
    if not shown.any():
        raise ValueError(f"cannot synthesise {modality}: the case has no other modality")
    tok = model.encoder.tokenizer
    g = torch.Generator().manual_seed(0)

    def predict(window):  # [b, 4, *roi] -> [b, 1 or 2, *roi]
        batch = {"image": window, "present": shown[None].expand(window.shape[0], -1).to(window.device)}
        values = [torch.nan_to_num(model.reconstruction(model.fill(batch, [modality]))[2])]  # [b, N, P]
        if uncertainty:
            values.append(model.fill_spread(batch, [modality], uncertainty, generator=g))
        return torch.cat([tok.unpatchify(v)[:, idx] for v in values], 1)

    x = torch.where(shown[:, None, None, None], image, torch.zeros_like(image))
    out = sliding_window_inference(x[None], roi, 2, predict, overlap=overlap, mode="gaussian", padding_mode="constant")
    foreground = (x[shown] != 0).any(0)
    return (out[0] if uncertainty else out[0, 0]) * foreground


def reconstruct_case(model: MaskedAutoencoder, config: dict, case: Case, modality: str,
                     uncertainty: int = 0) -> tuple[np.ndarray, np.ndarray, object]:
    """``modality`` of ``case`` synthesised and resampled back onto the case's input grid: (volume [X, Y, Z],
    affine, NIfTI header) of the case's first other modality, inside that modality's foreground; with
    ``uncertainty`` K > 0 the volume is [2, X, Y, Z], the synthesis and its spread (:func:`synthesise`). Only
    modalities the model was trained on are shown to it or synthesised (others are left out, with a warning)."""
    trained = config.get("trained_modalities", MODALITIES)
    first = next(iter(case.paths.values()), case.case_id)
    if modality not in trained:
        raise DataError(first, f"a request for {modality}", f"a modality the model was trained on: {trained}")
    unseen = [m for m in case.paths if m not in trained]
    if unseen:
        log.warning("%s: %s left out: the model was trained on %s", case.case_id, unseen, trained)
    if not any(m in trained and m != modality for m in case.paths):
        raise DataError(first, f"modalities {sorted(case.paths)}", f"another modality the model was trained on: {trained}")
    chain = inference_chain(config["spacing"])
    data = chain(case.as_dict())
    present = data["present"] & torch.tensor([m in trained for m in MODALITIES])
    pred = synthesise(model, data["image"].as_tensor(), present, modality, config["roi"], uncertainty=uncertainty)
    meta_pred = data["image"][:len(pred) if uncertainty else 1].clone()  # a MetaTensor carrying the applied transforms
    meta_pred[:] = pred
    restored = chain.inverse({"image": meta_pred})["image"].numpy()  # on the case's input grid
    restored = restored if uncertainty else restored[0]
    ref_path = next(case.paths[m] for m in MODALITIES if m in case.paths and m != modality)
    ref, affine, header = read_volume(ref_path)
    return restored * (ref != 0), affine, header  # resampling back may blur past the head: the input's foreground
