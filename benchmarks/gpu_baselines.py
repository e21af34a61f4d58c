"""Baselines for the GPU benchmarks (benchmarks/test_bench_gpu.py), on any device and dtype.

- `otx_style_recipro_cam`: baselines.otx_style_recipro_cam (OTX 1.x ReciproCAMHook, PyTorch path
  without the GAP optimization: a Python loop over images, per image the mosaic [H*W, C, H, W]
  materialized as the repeated feature map times a dense one-hot mask tensor built with H*W
  indexing ops, the head on it, softmax, transpose, per-map min-max to uint8), with the mask
  tensor made in the feature's dtype so that it also runs a bfloat16 model (baselines.py builds
  it in float32, which promotes the mosaic to float32 and breaks a bf16 head). Same algorithm,
  same number of operations.
- `grad_cam`: Grad-CAM with ONE backward pass per batch, written to be as cheap as Grad-CAM can
  be: the forward records the autograd graph only after the target layer (the feature map is
  detached and made a leaf in a forward hook), and `torch.autograd.grad` computes d(top-1 score
  summed over the batch) / d(feature) only, no weight gradients. cam = relu(sum_c mean_q(grad_c)
  * F_c), per-image min-max to uint8. One map per image (the predicted class), where Recipro-CAM
  gives one map per class.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import nn

from baselines import _otx_normalize


def _otx_mosaic(feature_map: torch.Tensor) -> torch.Tensor:
    """OTX's `_get_mosaic_feature_map` (non-GAP-optimized path): [C, H, W] -> [H*W, C, H, W];
    the dense mask in the feature's dtype and device."""
    c, h, w = feature_map.shape
    feature_map_repeated = feature_map.repeat(h * w, 1, 1, 1)
    mosaic_feature_map_mask = torch.zeros(h * w, c, h, w, device=feature_map.device, dtype=feature_map.dtype)
    spatial_order = torch.arange(h * w).reshape(h, w)
    for i in range(h):
        for j in range(w):
            k = spatial_order[i, j]
            mosaic_feature_map_mask[k, :, i, j] = torch.ones(c, device=feature_map.device, dtype=feature_map.dtype)
    return feature_map_repeated * mosaic_feature_map_mask


def otx_style_recipro_cam(feature: torch.Tensor, head: Callable, normalize: bool = True) -> torch.Tensor:
    """OTX 1.x-style Recipro-CAM. feature [B, C, H, W]; head [N, C, H, W] -> logits [N, K].
    Returns uint8 [B, K, H, W] (softmax maps in the head's dtype when normalize=False)."""
    _, _, h, w = feature.shape
    saliency_maps = []
    with torch.no_grad():
        for f in feature:  # per image, in Python
            mosaic = _otx_mosaic(f)
            scores = torch.softmax(head(mosaic), dim=1)  # [H*W, K]
            maps = scores.transpose(1, 0).reshape(-1, h * w)  # [K, H*W]
            if normalize:
                maps = _otx_normalize(maps)
            saliency_maps.append(maps.reshape(-1, h, w))
    return torch.stack(saliency_maps)


def grad_cam(model: nn.Module, target: str) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """x -> (uint8 Grad-CAM maps [B, h, w] of each image's top-1 class, logits [B, K])."""
    module = model.get_submodule(target)

    def run(x: torch.Tensor):
        captured: List[torch.Tensor] = []

        def hook(_m, _a, out):
            out = out.detach().requires_grad_(True)  # graph starts here: backward through the head only
            captured.append(out)
            return out

        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = model(x)
                logits = logits.logits if hasattr(logits, "logits") else logits
                top = logits.argmax(dim=1)
                score = logits.gather(1, top[:, None]).sum()
                (grad,) = torch.autograd.grad(score, captured[-1])
        finally:
            handle.remove()
        feature = captured[-1].detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feature).sum(dim=1)).float()  # [B, h, w]
        flat = cam.flatten(1)
        lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        u8 = (255 * (flat - lo) / (hi - lo + 1e-12)).to(torch.uint8).reshape(cam.shape)
        return u8, logits.detach()

    return run
