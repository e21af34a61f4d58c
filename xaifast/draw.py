"""Drawing predictions on overlays: boxes, labels with scores, and instance masks.

Used on detection / instance-segmentation overlays (the API's `Explanation.overlay` and the dumps).
Class k's overlay shows the predictions of class k; a class-agnostic ("image") overlay shows all.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

# Distinct RGB colours, one per class (cycled); chosen to stay readable on the JET overlay.
PALETTE = np.array([(255, 255, 255), (255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 255, 255),
                    (255, 128, 0), (128, 0, 255), (0, 128, 255)], dtype=np.uint8)


def class_color(k: int) -> tuple:
    return tuple(int(c) for c in PALETTE[int(k) % len(PALETTE)])


def draw_predictions(image: np.ndarray, detections, labels: Optional[Sequence[str]] = None,
                     only_class: Optional[int] = None, mask_alpha: float = 0.35) -> np.ndarray:
    """A copy of RGB `image` [H, W, 3] with the detections drawn (boxes in its pixel coordinates;
    masks [N, H, W] outlined and tinted). only_class: draw that class's predictions only."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 200))
    scale = max(0.35, min(h, w) / 600)
    for n in range(len(detections)):
        k = int(detections.labels[n])
        if only_class is not None and k != only_class:
            continue
        color = class_color(k)
        if detections.masks is not None:
            mask = detections.masks[n] >= 0.5
            if mask.shape == (h, w) and mask.any():
                tint = out[mask].astype(np.float32) * (1 - mask_alpha) + np.float32(color) * mask_alpha
                out[mask] = np.round(tint).astype(np.uint8)
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(out, contours, -1, color, thickness)
        x1, y1, x2, y2 = (int(round(float(v))) for v in detections.boxes[n])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        name = labels[k] if labels is not None and 0 <= k < len(labels) else f"class {k}"
        text = f"{name} {float(detections.scores[n]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - 1, y1 + th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return out
