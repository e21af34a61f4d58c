"""The black-box engine: RISE and AISE on any classifier, seen only through its scores.

`BlackBoxEngine` serves `explain(model, data, algorithm="rise" | "aise")` for an nn.Module, an .xml / .onnx
file (exported by xaifast or not) or a Python callable on numpy batches. Predictions are the
model's scores on the image (softmax, or sigmoid for multilabel requests); the maps use the
request's score (softmax by default); a Python callable's outputs are taken as its scores for both; maps are RISE's (or AISE's) at the input's size, of the classes the run asks for only (ALL: [B, K, H, W];
PREDICTIONS: the batch's predicted classes; custom: those classes; `BatchResult.map_classes`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..adapters.base import ModelAdapter
from ..algorithms.base import SaliencyResult
from ..data import Preprocess
from .base import BatchResult, Engine, ImagePrediction, Request, predicted_classes


class BlackBoxAdapter(ModelAdapter):
    """A classifier known only as a function of its inputs: preprocessing and labels come from the
    user (or from the metadata of a model xaifast exported)."""

    kind = "cnn_classifier"

    def __init__(self, model, *, preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None):
        self.model = model
        meta = {}
        if isinstance(model, (str, Path)) and Path(model).suffix.lower() in (".xml", ".onnx") and Path(model).is_file():
            meta = _exported_meta(Path(model))
        if preprocess is None and meta.get("input_size"):
            preprocess = Preprocess(tuple(meta["input_size"]), tuple(meta.get("mean", Preprocess().mean)),
                                    tuple(meta.get("std", Preprocess().std)))
        self.preprocess = preprocess or Preprocess()
        labels = labels if labels is not None else meta.get("labels")
        self.labels = list(labels) if labels is not None else None
        if isinstance(model, torch.nn.Module):
            model.eval()

    @property
    def device(self) -> torch.device:
        if isinstance(self.model, torch.nn.Module):
            for p in self.model.parameters():
                return p.device
        return torch.device("cpu")


def _exported_meta(path: Path) -> dict:
    try:
        import openvino as ov

        from .exported import _metadata

        return _metadata(path, ov.Core().read_model(str(path))) or {}
    except Exception:
        return {}


def _method(algorithm: str):
    """(the black-box function, its defaults, the check of its options dict) of a resolved name."""
    if algorithm == "aise":
        from ..algorithms.aise import DEFAULTS, aise, check_options

        return aise, DEFAULTS, lambda o: check_options(**o)
    from ..algorithms.rise import DEFAULTS, check_options, rise

    return rise, DEFAULTS, lambda o: check_options(o["num_masks"], o["num_cells"], o["prob"])


class BlackBoxEngine(Engine):
    """RISE / AISE maps of the asked classes; batch_size: masked inputs per model call (default 64)."""

    def __init__(self, adapter: BlackBoxAdapter, batch_size: int = 64, engine: Optional[str] = None):
        self.adapter = adapter
        self.batch_size = batch_size
        self.scoring_engine = engine  # nn.Modules on the CPU: auto (OpenVINO for long scoring work) | openvino | pytorch
        self._scorers = {}

    def scorer(self, score: Optional[str]):
        from .scorer import as_scorer

        key = score
        if key not in self._scorers:
            self._scorers[key] = as_scorer(self.adapter.model, score=score, batch_size=self.batch_size,
                                           engine=self.scoring_engine)
        return self._scorers[key]

    @staticmethod
    def options(request: Request) -> dict:
        """The request's options of its black-box method, over the method's defaults."""
        _, defaults, _ = _method(request.algorithm)
        return {**defaults, **(request.aise if request.algorithm == "aise" else request.rise)}

    def check(self, request: Request) -> None:
        _, _, check = _method(request.algorithm)
        options = self.options(request)
        options.pop("classes", None)
        check(options)

    def map_classes(self, classes, predictions, num_classes: int) -> Optional[List[int]]:
        """The classes to accumulate (the same for every image of the batch), None for all:
        classes = None (ALL), "predicted" (the union of the batch's predicted classes) or
        class references (indices or label names; CUSTOM)."""
        if classes is None:
            return None
        if classes == "predicted":
            return sorted({int(k) for p in predictions for k in p.predicted})
        from ..pipeline import resolve_classes

        return sorted(set(resolve_classes(classes, num_classes, self.adapter.labels)))

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        method, _, _ = _method(request.algorithm)
        options = self.options(request)
        classes = options.pop("classes", None)
        if callable(self.adapter.model) and not isinstance(self.adapter.model, (torch.nn.Module, Engine)):
            map_scorer = pred_scorer = self.scorer(None)  # a callable's outputs are its scores
        else:
            map_scorer = self.scorer(request.score)
            pred_scorer = self.scorer("sigmoid" if request.multilabel else "softmax")
        probs = pred_scorer(x)
        rows = probs.numpy()
        predictions = [ImagePrediction(row, predicted_classes(row, request.multilabel)) for row in rows]
        wanted = self.map_classes(classes, predictions, int(rows.shape[1]))
        if wanted is not None and not wanted:  # nothing predicted in the whole batch: no maps to make
            b, _, h, w = x.shape
            raw = torch.zeros(b, 0, h, w)
            result = SaliencyResult(raw=raw, normalized=raw.to(torch.uint8) if request.normalize else None)
        else:
            scores = probs if map_scorer is pred_scorer else map_scorer(x)
            result = method(map_scorer, x, targets=wanted, scores=scores, normalize=request.normalize,
                            batch_size=self.batch_size, **options)
        return BatchResult(result, predictions, int(rows.shape[1]), map_classes=wanted)


RiseEngine = BlackBoxEngine  # its earlier name
