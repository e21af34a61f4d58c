"""Pointing game (Zhang et al. 2018, with boxes as OpenVINO XAI 1.1 evaluates it).

A map hits when any pixel equal to its maximum lies in a ground-truth box (x, y, w, h) of its
class: x <= px <= x + w and y <= py <= y + h (pixel coordinates, edges included). A class-agnostic
map ("image") is checked against every box of its image. Maps without a box for their class are
skipped. Score = hits / maps evaluated (0.0 when none is).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._common import MetricError, check_map, map_entries, resize_map


def _class_index(name, labels: Optional[Sequence[str]]) -> int:
    if isinstance(name, (int, np.integer)):
        return int(name)
    if isinstance(name, str) and name.lstrip("-").isdigit():
        return int(name)
    if labels is not None and name in list(labels):
        return list(labels).index(name)
    raise MetricError(f"ground-truth class {name!r} is not a class index and not one of the model's labels"
                      + ("" if labels is not None else " (pass labels= to name classes)"))


def boxes_by_class(gt, labels: Optional[Sequence[str]] = None) -> Dict[int, List[Tuple[float, float, float, float]]]:
    """One image's boxes as {class index: [(x, y, w, h), ...]}, from {class or label name: boxes} or
    a COCO ground truth of the dataset index ({"boxes": [...], "labels": [...]}). Labels unknown to
    the model are dropped (no map can be about them)."""
    if gt is None:
        return {}
    out: Dict[int, list] = {}
    if isinstance(gt, dict) and "boxes" in gt:
        names = gt.get("labels") or gt.get("category_ids") or []
        if len(names) != len(gt["boxes"]):
            raise MetricError(f"ground truth has {len(gt['boxes'])} boxes but {len(names)} labels")
        pairs = [(n, [b]) for n, b in zip(names, gt["boxes"])]
    elif isinstance(gt, dict):
        pairs = list(gt.items())
    else:
        raise MetricError(f"ground-truth boxes of an image must be a dict, got {type(gt).__name__}")
    for name, boxes in pairs:
        try:
            k = _class_index(name, labels)
        except MetricError:
            if labels is not None:
                continue  # a class the model does not know
            raise
        for box in boxes:
            box = tuple(float(v) for v in box)
            if len(box) != 4 or box[2] < 0 or box[3] < 0:
                raise MetricError(f"box {box} of class {name!r}: boxes are (x, y, w, h) with w, h >= 0")
            out.setdefault(k, []).append(box)
    return out


def hit(saliency_map: np.ndarray, boxes: Sequence[Tuple[float, float, float, float]]) -> bool:
    """Whether a pixel at the map's maximum lies in one of the boxes (x, y, w, h)."""
    m = np.asarray(saliency_map)
    ys, xs = np.nonzero(m == m.max())
    if not len(boxes):
        return False
    b = np.asarray(boxes, dtype=np.float64)
    x0, y0, x1, y1 = b[:, 0:1], b[:, 1:2], b[:, 0:1] + b[:, 2:3], b[:, 1:2] + b[:, 3:4]
    inside = (x0 <= xs) & (xs <= x1) & (y0 <= ys) & (ys <= y1)
    return bool(inside.any())


def pointing_game(explanations, gt_boxes, *, targets=None, image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
                  labels: Optional[Sequence[str]] = None) -> dict:
    """Pointing-game score of `explanations` against `gt_boxes`.

    explanations: [B, K, h, w] maps (with targets=: the classes to check per image; without: every
        class that has a box), or per image a {class or "image": map} dict / xaifast Explanation.
    gt_boxes: per image {class index or label name: [(x, y, w, h), ...]} or a COCO ground truth
        ({"boxes", "labels"}, as `Explanation.gt` and the dataset index give it).
    image_sizes: per image (height, width) the boxes refer to; maps of another size are resized
        to it first (bilinear, as the postprocessing does). None: the boxes are in map pixels.
    labels: the model's class names (to read label names in the ground truth).
    Returns {"pointing_game": hits / evaluated, "hits", "evaluated", "per_map": [(image, key, hit)]}.
    """
    gt_boxes = list(gt_boxes)
    if isinstance(explanations, np.ndarray) or hasattr(explanations, "detach"):
        arr = np.asarray(explanations.detach().cpu().numpy() if hasattr(explanations, "detach") else explanations)
        if targets is None and arr.ndim == 4 and arr.shape[1] > 1:
            targets = [sorted(boxes_by_class(g, labels)) for g in gt_boxes]
    entries = map_entries(explanations, targets, num_images=len(gt_boxes))
    if image_sizes is not None and len(image_sizes) != len(gt_boxes):
        raise MetricError(f"{len(image_sizes)} image sizes for {len(gt_boxes)} images")
    per_image = [boxes_by_class(g, labels) for g in gt_boxes]
    hits, evaluated, per_map = 0, 0, []
    for e in entries:
        boxes_of = per_image[e.image]
        boxes = [b for bs in boxes_of.values() for b in bs] if e.cls is None else boxes_of.get(e.cls, [])
        if not boxes:
            continue  # no box for this map's class: skipped, as OpenVINO XAI does
        m = check_map(e.map, f"image {e.image}, map {e.key!r}")
        if image_sizes is not None:
            m = resize_map(m, image_sizes[e.image])
        h = hit(m, boxes)
        hits += int(h)
        evaluated += 1
        per_map.append((e.image, e.key, h))
    return {"pointing_game": hits / evaluated if evaluated else 0.0, "hits": hits, "evaluated": evaluated,
            "per_map": per_map}
