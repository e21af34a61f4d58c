"""Explaining an exported model (OpenVINO IR `.xml` or ONNX `.onnx`) with the OpenVINO runtime.

The model's own outputs carry the explanation (`saliency_map`, uint8, and `feature_map`), so one
inference gives logits and maps; the preprocessing, labels and explain settings come from the
metadata `xaifast.export` recorded. Class-agnostic maps for the IMAGE group are computed from
`feature_map`, exactly as for a PyTorch model.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..algorithms.base import SaliencyResult
from .base import BatchResult, Engine, Request, classifier_predictions
from ..data import Preprocess
from ..errors import XaifastError
from ..adapters.base import ModelAdapter

PRECISIONS = ("f32", "bf16", "f16", "auto")
EXPORTED_SUFFIXES = (".xml", ".onnx")


class ExportedModelError(XaifastError, ValueError):
    """An exported model that cannot be explained as it is."""


def is_exported_model(model) -> bool:
    return isinstance(model, (str, Path)) and Path(model).suffix.lower() in EXPORTED_SUFFIXES


def _metadata(path: Path, ov_model) -> Optional[dict]:
    if path.suffix.lower() == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        for entry in proto.metadata_props:
            if entry.key == "xaifast":
                return json.loads(entry.value)
        return None
    if ov_model.has_rt_info(["model_info", "xaifast"]):
        return json.loads(ov_model.get_rt_info(["model_info", "xaifast"]).astype(str))
    return None


class OpenVINOAdapter(ModelAdapter):
    """Runs an exported model; `explain_batch` returns logits and the model's own maps."""

    def __init__(self, path: Union[str, Path], *, precision: str = "f32", device: str = "CPU",
                 preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None):
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportedModelError(f"exported model {self.path}: no such file")
        if precision not in PRECISIONS:
            raise ExportedModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:
            raise ExportedModelError(f"{self.path}: OpenVINO cannot read it ({str(exc).splitlines()[0]})") from None
        names = [o.get_any_name() for o in model.outputs]
        meta = _metadata(self.path, model) or {}
        if "saliency_map" not in names or "feature_map" not in names:
            raise ExportedModelError(
                f"{self.path} was exported without explain outputs (its outputs: {', '.join(names)}). "
                "Re-export it with them: xaifast export --config RECIPE --checkpoint WEIGHTS --explain True "
                "(or xaifast.export(model, path, explain=True))")
        self.meta = meta
        self.kind = meta.get("model_type", "cnn_classifier")
        self.algorithm = meta.get("algorithm", "recipro_cam")
        self.score = meta.get("score", "none")
        size = tuple(meta.get("input_size") or _static_size(model))
        self.preprocess = preprocess or Preprocess(size, tuple(meta.get("mean", Preprocess().mean)),
                                                   tuple(meta.get("std", Preprocess().std)))
        self.labels = list(labels) if labels is not None else meta.get("labels")
        config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}
        self.precision = precision
        self.compiled = core.compile_model(model, device, config)
        self._outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        self._request = self.compiled.create_infer_request()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def infer(self, x: torch.Tensor) -> Dict[str, np.ndarray]:
        result = self._request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return {name: result[output] for name, output in self._outputs.items()}

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.infer(x)
        return torch.from_numpy(out["feature_map"].copy()), torch.from_numpy(out["logits"].copy())

    def explain_batch(self, x: torch.Tensor, algorithm: str) -> Tuple[torch.Tensor, SaliencyResult]:
        """(logits, maps) of one batch: the exported maps, or class-agnostic maps from feature_map."""
        from ..algorithms import explain_activation_map, explain_eigen_cam

        out = self.infer(x)
        logits = torch.from_numpy(out["logits"].copy())
        if algorithm in ("activationmap", "eigencam") and self.algorithm != algorithm:
            feature = torch.from_numpy(out["feature_map"].copy())
            result = explain_activation_map(feature) if algorithm == "activationmap" else explain_eigen_cam(feature)
            return logits, result
        if algorithm != self.algorithm:
            raise ExportedModelError(f"{self.path} was exported with {self.algorithm}; it cannot give {algorithm} "
                                     "maps. Re-export with that algorithm, or use auto")
        maps = torch.from_numpy(out["saliency_map"].copy())
        return logits, SaliencyResult(raw=None, normalized=maps, class_agnostic=self.algorithm == "activationmap")


class ExportedEngine(Engine):
    """The engine of an exported model: one inference gives the logits and the exported maps."""

    def __init__(self, adapter: OpenVINOAdapter):
        self.adapter = adapter

    def resolve(self, request: Request) -> Request:
        if request.algorithm in ("activationmap", "eigencam"):
            return request
        return replace(request, algorithm=self.adapter.algorithm)  # what the exported graph computes

    def check(self, request: Request) -> None:
        if not request.normalize and request.algorithm not in ("activationmap", "eigencam"):
            raise ExportedModelError("an exported model carries normalized uint8 maps, not raw ones: use "
                                     "xaifast.explain(path, data) for them, or saliency_maps on the PyTorch model")

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        logits, maps = self.adapter.explain_batch(x, request.algorithm)
        return BatchResult(maps, classifier_predictions(logits, request), int(logits.shape[1]))


def _static_size(model) -> List[int]:
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.get_length() == 4 and shape[2].is_static and shape[3].is_static:
        return [shape[2].get_length(), shape[3].get_length()]
    raise ExportedModelError("the exported model records no input size; pass preprocess=xaifast.Preprocess(...)")
