"""Baseline DetClassProbabilityMap the detection benchmarks compare xaifast against.

`otx_det_class_probability_map` mirrors OpenVINO Training Extensions'
`DetClassProbabilityMapHook.func` (OTX 1.x, the mmdet adapter's hook, which runs the
classification head itself; OTX 2.x, the explain hook, which gets the head as a callable: the same
loop after the head has run): a Python loop over the images of the batch; per image
and pyramid level the level's scores are reshaped to [A, K, H, W] and maxed over anchors, every
level is resized with `F.interpolate(..., (height, width), mode="bilinear")` (align_corners=False,
PyTorch's default) to the middle level's size, the levels are concatenated and averaged into the
output; after the loop the softmax; then OTX's `_normalize_map` (per map min-max to uint8,
`255 * (x - min) / (max - min + 1e-12)`, truncated by `.to(torch.uint8)`).

One deliberate difference: OTX's softmax line is
`saliency_maps[0] = torch.stack([torch.softmax(t, dim=1) for t in saliency_maps[0]])`, which
softmaxes only the first image, along the width of every class map (a bug: the comment above it
speaks of class probabilities).  By default this baseline applies the softmax the way SPEC.md (and
the OTX docs) define it, over the classes of every pixel, so that it computes the same maps as
xaifast and the benchmark compares equal work; `otx_literal_softmax=True` runs OTX's line as is.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F


def otx_normalize_map(saliency_map: torch.Tensor) -> torch.Tensor:
    """OTX's `BaseRecordingForwardHook._normalize_map`: [B, K, h*w] float -> uint8."""
    max_values, _ = torch.max(saliency_map, -1)
    min_values, _ = torch.min(saliency_map, -1)
    saliency_map = 255 * (saliency_map - min_values[:, :, None]) / (max_values - min_values + 1e-12)[:, :, None]
    return saliency_map.to(torch.uint8)


def otx_det_class_probability_map(cls_scores: Sequence[torch.Tensor], num_anchors: Union[int, List[int]],
                                  softmax: bool = True, normalize: bool = True,
                                  otx_literal_softmax: bool = False) -> torch.Tensor:
    """OTX's per-image loop. cls_scores: list of [B, A_l*K, H_l, W_l] -> [B, K, h, w]
    (uint8 when `normalize`, float32 otherwise), (h, w) = the middle level's size."""
    if isinstance(num_anchors, int):
        num_anchors = [num_anchors] * len(cls_scores)
    num_classes = cls_scores[0].shape[1] // num_anchors[0]
    middle_idx = len(cls_scores) // 2
    # resize to the middle feature map
    batch_size, _, height, width = cls_scores[middle_idx].size()
    saliency_maps = torch.empty(batch_size, num_classes, height, width, device=cls_scores[0].device)
    for batch_idx in range(batch_size):
        cls_scores_anchorless = []
        for scale_idx, cls_scores_per_scale in enumerate(cls_scores):
            cls_scores_anchor_grouped = cls_scores_per_scale[batch_idx].reshape(
                num_anchors[scale_idx], num_classes, *cls_scores_per_scale.shape[-2:]
            )
            cls_scores_out, _ = cls_scores_anchor_grouped.max(dim=0)
            cls_scores_anchorless.append(cls_scores_out.unsqueeze(0))
        cls_scores_anchorless_resized = []
        for cls_scores_anchorless_per_level in cls_scores_anchorless:
            cls_scores_anchorless_resized.append(
                F.interpolate(cls_scores_anchorless_per_level, (height, width), mode="bilinear")
            )
        saliency_maps[batch_idx] = torch.cat(cls_scores_anchorless_resized, dim=0).mean(dim=0)

    if softmax:
        if otx_literal_softmax:
            saliency_maps[0] = torch.stack([torch.softmax(t, dim=1) for t in saliency_maps[0]])
        else:
            saliency_maps = torch.softmax(saliency_maps, dim=1)

    if normalize:
        saliency_maps = saliency_maps.reshape((batch_size, num_classes, -1))
        saliency_maps = otx_normalize_map(saliency_maps)
    return saliency_maps.reshape((batch_size, num_classes, height, width))
