"""The encoder's mask-free path as an ONNX graph (torch.onnx), and onnxruntime embeddings from it."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scimae.core.errors import DataError, require
from scimae.core.heads import Pooler

OUTPUTS = ["embedding", "tokens", "valid"]


class _Embedder(nn.Module):
    """The batch's tensors, in ``keys`` order -> (pooled embedding [B, D'], tokens [B, N, D], valid [B, N])."""

    def __init__(self, encoder: nn.Module, keys: list[str], pooling: str):
        super().__init__()
        self.encoder, self.keys, self.pool = encoder, keys, Pooler(encoder.dim, pooling)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.encoder(dict(zip(self.keys, inputs)), dense=True)
        return self.pool(feats), feats["tokens"], feats["valid"]


def export_onnx(encoder: nn.Module, path: str | Path, pooling: str = "mean") -> Path:
    """Write ``encoder`` (an MAEEncoder whose tokenizer has ``example_inputs``) as an ONNX graph with a dynamic
    batch axis: inputs named as the domain's batch keys, outputs :data:`OUTPUTS` (``pooling`` as
    :class:`~scimae.core.heads.Pooler`). The graph encodes every slot with the invalid ones as padding, so one graph
    serves any set of present groups and valid patches."""
    require("ONNX export", "onnx", "onnx", "onnxscript")
    if not hasattr(encoder.tokenizer, "example_inputs"):
        raise ValueError(f"{type(encoder.tokenizer).__name__} has no fixed input layout (example_inputs) to export")
    path = Path(path)
    if path.exists():
        raise DataError(path, "an existing file", "a new path to write the ONNX graph to (nothing is overwritten)")
    example = encoder.tokenizer.example_inputs(2)
    model = _Embedder(encoder, list(example), pooling).eval()
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]  # the exporter's chatter
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, tuple(example.values()), input_names=list(example),
                                        output_names=OUTPUTS,
                                        dynamic_shapes=(tuple({0: "batch"} for _ in example),), dynamo=True,
                                        verbose=False)
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


class OnnxEncoder:
    """An exported encoder run by onnxruntime on CPU: ``embed(batch)`` -> the pooled embedding [B, D'] (numpy)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        require("ONNX inference", "onnx", "onnxruntime")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def embed(self, batch: dict) -> np.ndarray:
        feed = {k: np.ascontiguousarray(torch.as_tensor(batch[k]).cpu().numpy()) for k in self.inputs}
        return self.session.run(["embedding"], feed)[0]
