"""Instance-segmentation maps (Mask R-CNN-like models), as SPEC.md and OTX define them.

For every class k: S[k] = (sum over the instances n with label k and score_n >= threshold of
score_n * mask_n) / max(count_k, 1). A class without instances gets an all-zero map (which the
uint8 normalization keeps at zero), never an error.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import XaifastError
from .base import SaliencyResult

Array = Union[np.ndarray, torch.Tensor]


def _tensor(value, name: str, dtype) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise XaifastError(f"instseg_maps: {name} must be a tensor or a numpy array, got {type(value).__name__}")
    return value.to(dtype)


def instseg_maps(masks: Array, scores: Array, labels: Array, num_classes: int, score_threshold: float = 0.0,
                 size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """One image: masks [N, H, W] (probabilities or booleans), scores [N], labels [N] -> [K, H, W] float32.

    size: (H, W) of the maps when there are no instances and masks carries no size (N = 0, masks of
    shape [0]); otherwise the masks' size.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise XaifastError(f"instseg_maps: num_classes must be a positive int, got {num_classes!r}")
    masks = _tensor(masks, "masks", torch.float32)
    scores = _tensor(scores, "scores", torch.float32).reshape(-1)
    labels = _tensor(labels, "labels", torch.int64).reshape(-1)
    n = scores.shape[0]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if n == 0 and masks.ndim != 3:
        if size is None:
            raise XaifastError("instseg_maps: no instances and no map size; pass size=(H, W)")
        masks = masks.reshape(0, *size)
    if masks.ndim != 3 or masks.shape[0] != n or labels.shape[0] != n:
        raise XaifastError(f"instseg_maps: masks {list(masks.shape)}, scores [{n}] and labels "
                           f"[{labels.shape[0]}] must describe the same N instances (masks [N, H, W])")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise XaifastError(f"instseg_maps: labels must be within 0..{num_classes - 1}, got "
                           f"{int(labels.min())}..{int(labels.max())}; check num_classes")
    keep = scores >= score_threshold
    masks, scores, labels = masks[keep], scores[keep], labels[keep]
    h, w = masks.shape[1:]
    total = torch.zeros(num_classes, h * w, dtype=torch.float32, device=masks.device)
    total.index_add_(0, labels, masks.reshape(-1, h * w) * scores[:, None])
    count = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(total)
    return (total / count[:, None]).reshape(num_classes, h, w)


def explain_instseg(detections: Sequence, num_classes: int, score_threshold: float, size) -> SaliencyResult:
    """Maps of a batch of `Detections` (masks at the model input's size) -> [B, K, H, W]."""
    maps = [instseg_maps(d.masks, d.scores, d.labels, num_classes, score_threshold, size) for d in detections]
    return SaliencyResult(torch.stack(maps))
