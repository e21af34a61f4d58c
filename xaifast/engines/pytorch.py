"""PyTorch engines: the model runs once per batch with a hook on the target layer; the algorithm
makes the maps from that feature (and the head, for Recipro-CAM).

`PyTorchEngine`: CNN classifiers (`ClassifierAdapter`) and transformers (`ViTAdapter`).
`DetectionEngine`: single-stage detectors and instance segmentation (`DetectionAdapter`): one
forward gives the detections, the classification-head levels and the pyramid features; the maps
are DetClassProbabilityMap / instseg, or a class-agnostic map of one pyramid level; PREDICTIONS
explains the classes of the detections above the confidence threshold, and the overlays show them.
"""
from __future__ import annotations

from typing import List

import torch

from ..adapters.vit import TokenFeature
from ..algorithms import (explain_activation_map, explain_det_class_probability_map, explain_eigen_cam,
                          explain_instseg, recipro_cam, vit_recipro_cam)
from ..algorithms.base import SaliencyResult
from ..errors import XaifastError
from .base import BatchResult, Engine, ImagePrediction, Request, classifier_predictions


class PyTorchEngine(Engine):
    """A CNN classifier or a transformer, run by PyTorch (CPU, or CUDA with the Triton kernels)."""

    def __init__(self, adapter):
        self.adapter = adapter

    def maps(self, feature, request: Request) -> SaliencyResult:
        """The request's maps from the target layer's feature (a TokenFeature for transformers)."""
        if request.algorithm in ("activationmap", "eigencam"):
            fmap = feature.feature_map() if isinstance(feature, TokenFeature) else feature
            return explain_activation_map(fmap) if request.algorithm == "activationmap" else explain_eigen_cam(fmap)
        if request.algorithm == "vit_recipro_cam":
            return vit_recipro_cam(feature, self.adapter.rest(), request.mask, request.score,
                                   normalize=request.normalize, memory_budget_mb=request.memory_budget_mb,
                                   **request.vit)
        return recipro_cam(feature, self.adapter.head(feature), request.mask, request.score,
                           normalize=request.normalize, memory_budget_mb=request.memory_budget_mb)

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        feature, logits = self.adapter.forward(x)
        predictions = classifier_predictions(logits, request)
        return BatchResult(self.maps(feature, request), predictions, int(logits.shape[1]))


class DetectionEngine(Engine):
    """A detector or instance-segmentation model, run by PyTorch."""

    def __init__(self, adapter):
        self.adapter = adapter

    def check(self, request: Request) -> None:
        if request.score == "sigmoid":
            raise XaifastError("detection maps take score 'softmax' (DetClassProbabilityMap with softmax over "
                               "classes, the default) or 'none' (no softmax); 'sigmoid' does not apply")

    def score_threshold(self, request: Request) -> float:
        value = request.detection.get("score_threshold")
        return float(value) if value is not None else self.adapter.score_threshold

    def maps(self, fwd, request: Request, input_hw) -> SaliencyResult:
        adapter, options = self.adapter, request.detection
        if request.algorithm == "det_class_probability_map":
            anchors = adapter.num_anchors(len(fwd.cls_levels))
            return explain_det_class_probability_map(fwd.cls_levels, anchors, size=options.get("map_size"),
                                                     softmax=request.score != "none")
        if request.algorithm == "instseg":
            if adapter.num_classes is None:
                raise XaifastError("instance-segmentation maps need the class count: "
                                   "InstanceSegmentationSpec(num_classes=K)")
            return explain_instseg(fwd.detections, adapter.num_classes, self.score_threshold(request),
                                   tuple(input_hw))
        feature = adapter.feature_level(fwd, options.get("feature_level", -1))
        return explain_activation_map(feature) if request.algorithm == "activationmap" else explain_eigen_cam(feature)

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        input_hw = tuple(x.shape[2:])
        fwd = self.adapter.forward(x)
        result = self.maps(fwd, request, input_hw)
        num_classes = self.adapter.num_classes if self.adapter.num_classes is not None else result.raw.shape[1]
        threshold = self.score_threshold(request)
        predictions: List[ImagePrediction] = []
        for detections in fwd.detections:
            predictions.append(_detection_prediction(detections.above(threshold), num_classes))
        return BatchResult(result, predictions, int(num_classes))


def _detection_prediction(kept, num_classes: int) -> ImagePrediction:
    """Detections above the threshold: shown on the overlays, their classes explained by PREDICTIONS.
    Rescaled to the original image's pixels by `in_image`."""
    predicted = [k for k in kept.classes() if 0 <= k < num_classes]
    return ImagePrediction(kept.as_dict(), predicted, shown=kept,
                           rescale=lambda src, dst: _detection_prediction(kept.scaled(src, dst), num_classes))
