"""What every saliency algorithm provides: raw float32 maps from a feature map (and a head)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

DEFAULT_MEMORY_BUDGET_MB = 1024


@dataclass
class SaliencyResult:
    """raw: float32 [B, K, h, w] (K = 1 for class-agnostic maps); normalized: uint8, same shape,
    when the algorithm produced it fused with the raw maps (else None: normalize later)."""

    raw: torch.Tensor
    normalized: Optional[torch.Tensor] = None
    class_agnostic: bool = False


def check_feature(feature: torch.Tensor, what: str = "feature") -> torch.Tensor:
    from ..errors import TargetLayerError

    if not isinstance(feature, torch.Tensor):
        raise TargetLayerError(f"{what} must be a torch.Tensor [B, C, H, W], got {type(feature).__name__}")
    if feature.ndim != 4:
        raise TargetLayerError(f"{what} has shape {list(feature.shape)} (rank {feature.ndim}); CNN saliency "
                               "needs a feature map [B, C, H, W]. Pick a convolutional target layer "
                               "(transformers: use vit_recipro_cam)")
    if not feature.is_floating_point():
        raise TargetLayerError(f"{what} must be a float tensor, got {feature.dtype}")
    return feature
