"""EigenCAM: projection of the centred feature map on its first principal direction.

X = F.reshape(C, HW).T, columns centred; A = X @ v1 with v1 the first right singular vector.
SVD signs are arbitrary, so v1's sign is chosen to make A correlate non-negatively with the
activation map. Computed in float64 (the matrices are small: HW x C per image).
"""
from __future__ import annotations

import torch

from .base import SaliencyResult, check_feature


def eigen_cam(feature: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W] float32."""
    feature = check_feature(feature)
    b, c, h, w = feature.shape
    x = feature.detach().to(torch.float64).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
    x = x - x.mean(dim=1, keepdim=True)
    # First right singular vector of each [HW, C] matrix.
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    projection = torch.bmm(x, vh[:, 0, :].unsqueeze(2)).squeeze(2)  # [B, HW]
    activation = feature.detach().to(torch.float64).mean(dim=1).reshape(b, h * w)
    correlation = ((projection - projection.mean(1, keepdim=True))
                   * (activation - activation.mean(1, keepdim=True))).sum(1)
    sign = torch.where(correlation < 0, -1.0, 1.0).to(projection)
    return (projection * sign.unsqueeze(1)).reshape(b, h, w).to(torch.float32)


def explain_eigen_cam(feature: torch.Tensor) -> SaliencyResult:
    return SaliencyResult(eigen_cam(feature).unsqueeze(1), class_agnostic=True)
