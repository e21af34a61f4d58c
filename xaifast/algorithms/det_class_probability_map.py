"""DetClassProbabilityMap (single-stage detectors), as SPEC.md and OTX define it.

Inputs: the classification-head outputs of every pyramid level, [B, A_l * K, H_l, W_l] with channel
a*K + k for anchor a and class k. Per level the maximum over anchors, every level resized
bilinearly (half-pixel centers) to the middle level `len(levels) // 2` (or a given size), the mean
over levels, and a softmax over classes per pixel (switchable). One fused kernel does it all:
Numba on CPU, Triton on CUDA, with a plain PyTorch twin (`xaifast.kernels.det_class_map`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .base import SaliencyResult


def det_class_probability_map(levels: Sequence[torch.Tensor], num_anchors: Union[int, Sequence[int]],
                              size: Optional[Tuple[int, int]] = None, softmax: bool = True) -> torch.Tensor:
    """list of [B, A_l*K, H_l, W_l] -> raw maps [B, K, h, w] float32 (h, w: the middle level's, or size)."""
    from ..kernels.det_class_map import det_class_map

    levels = list(levels)
    anchors = num_anchors if isinstance(num_anchors, int) else list(num_anchors)
    return det_class_map(levels, anchors, size=size, softmax=softmax)


def explain_det_class_probability_map(levels, num_anchors, size=None, softmax: bool = True) -> SaliencyResult:
    return SaliencyResult(det_class_probability_map(levels, num_anchors, size, softmax))
