"""The explain pipeline's detection and instance-segmentation branch: one forward gives the
detections, the classification-head levels and the pyramid features; the algorithm makes class
maps (DetClassProbabilityMap / instseg) or a class-agnostic map on a chosen pyramid level; targets
follow the predictions above the model's confidence threshold; overlays get the predicted boxes,
labels and masks drawn on them.

Detections in an `Explanation` are in the original image's pixel coordinates when the image was
read from a file (model-input coordinates for tensor inputs): `ex.prediction` is a dict with
`boxes` [N, 4] xyxy, `scores` [N], `labels` [N] (+ `masks` [N, H, W]), above the threshold.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from ..algorithms import explain_activation_map, explain_det_class_probability_map, explain_eigen_cam, explain_instseg
from ..algorithms.base import SaliencyResult
from ..config import TargetExplainGroup
from ..draw import draw_predictions
from ..errors import XaifastError
from ..explanation import Explanation
from ..functional import normalize
from ..adapters.detection import DetectionAdapter, DetectionForward, Detections


def check_detection_options(adapter: DetectionAdapter, score: str) -> None:
    if score == "sigmoid":
        raise XaifastError("detection maps take score 'softmax' (DetClassProbabilityMap with softmax over classes, "
                           "the default) or 'none' (no softmax); 'sigmoid' does not apply")


def detection_saliency(run, fwd: DetectionForward, input_hw) -> SaliencyResult:
    adapter: DetectionAdapter = run.adapter
    options = run.detection_options
    if run.algorithm == "det_class_probability_map":
        anchors = adapter.num_anchors(len(fwd.cls_levels))
        return explain_det_class_probability_map(fwd.cls_levels, anchors, size=options.get("map_size"),
                                                 softmax=run.config.score != "none")
    if run.algorithm == "instseg":
        if adapter.num_classes is None:
            raise XaifastError("instance-segmentation maps need the class count: InstanceSegmentationSpec(num_classes=K)")
        return explain_instseg(fwd.detections, adapter.num_classes, score_threshold(run), tuple(input_hw))
    feature = adapter.feature_level(fwd, options.get("feature_level", -1))
    return explain_activation_map(feature) if run.algorithm == "activationmap" else explain_eigen_cam(feature)


def score_threshold(run) -> float:
    value = run.detection_options.get("score_threshold")
    return float(value) if value is not None else run.adapter.score_threshold


def draw_on_overlays(overlays: Dict, detections: Optional[Detections], labels) -> Dict:
    """Overlays with the predictions drawn: class k's overlay gets class k's, "image" gets all."""
    if detections is None or not len(detections):
        return overlays
    return {key: draw_predictions(image, detections, labels, None if key == "image" else int(key))
            for key, image in overlays.items()}


def explain_detection_batch(run, batch) -> Iterator[Explanation]:
    from ..pipeline import attach_maps, resolve_classes

    cfg = run.config
    adapter: DetectionAdapter = run.adapter
    x = torch.stack([s.tensor for s in batch])
    input_hw = tuple(x.shape[2:])
    fwd = adapter.forward(x)
    result = detection_saliency(run, fwd, input_hw)
    num_classes = adapter.num_classes if adapter.num_classes is not None else result.raw.shape[1]
    if cfg.target_explain_group is TargetExplainGroup.CUSTOM:
        resolve_classes(cfg.target_classes, num_classes, adapter.labels)  # fail before the work
    u8 = normalize(result.raw).cpu().numpy()
    threshold = score_threshold(run)
    for b, sample in enumerate(batch):
        kept = fwd.detections[b].above(threshold)
        predicted = [k for k in kept.classes() if 0 <= k < num_classes]
        if result.class_agnostic:
            keys: List = ["image"]
            maps = u8[b, :1]
        else:
            keys = run._targets(None, predicted, num_classes)
            maps = u8[b, keys] if keys else np.zeros((0, *u8.shape[2:]), np.uint8)
        image_hw = sample.image.shape[:2] if sample.image is not None else input_hw
        shown = kept.scaled(input_hw, image_hw)
        explanation = Explanation(source=sample.source, saliency_map={}, prediction=shown.as_dict(),
                                  predicted=predicted, image=sample.image)
        explanation.extras["detections"] = shown
        attach_maps(explanation, keys, maps, sample.image if sample.image is not None else input_hw, cfg, adapter,
                    lambda overlays: draw_on_overlays(overlays, shown, adapter.labels))
        run.count += 1
        yield explanation
