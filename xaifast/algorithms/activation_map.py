"""ActivationMap: the channel mean of the feature map, one class-agnostic map per image."""
from __future__ import annotations

import torch

from .base import SaliencyResult, check_feature


def activation_map(feature: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W]: A = mean_c F[c]."""
    feature = check_feature(feature)
    return feature.float().mean(dim=1)


def explain_activation_map(feature: torch.Tensor) -> SaliencyResult:
    return SaliencyResult(activation_map(feature).unsqueeze(1), class_agnostic=True)
