"""Baseline Recipro-CAM implementations the benchmarks compare xaifast against.

- `otx_style_recipro_cam`: how OpenVINO Training Extensions 1.x (ReciproCAMHook, PyTorch path
  without the GAP optimization) computes it: a Python loop over images; per image the mosaic
  feature map [H*W, C, H, W] is materialized explicitly (the feature repeated H*W times times a
  one-hot spatial mask tensor), the head runs on it, softmax, transpose/reshape to [K, H, W],
  then per-map min-max normalization to uint8 with torch ops.
- `slow_reference`: tests/reference.py's `recipro_cam_reference` (one head call per cell,
  float64), imported from the tests folder, not copied.

Both take the feature map of one backbone forward; `end_to_end` wraps a baseline so the timed
function includes that forward (forward with hook, then the baseline), like xaifast's explain.
"""
from __future__ import annotations

import copy
import importlib.util
import os
from typing import Callable

import torch
from torch import nn

from models import feature_and_logits

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def _load_reference():
    """tests/reference.py as a module (loaded by path under a private name, so it cannot clash
    with any other `reference` module on sys.path)."""
    path = os.path.join(_TESTS, "reference.py")
    spec = importlib.util.spec_from_file_location("_xaifast_tests_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


# ------------------------------------------------------------------------------ OTX style
def _otx_normalize(maps: torch.Tensor) -> torch.Tensor:
    """OTX's `_normalize_map`: [K, H*W] float -> uint8, 255 (x - min) / (max - min + 1e-12)."""
    max_values, _ = torch.max(maps, -1)
    min_values, _ = torch.min(maps, -1)
    maps = 255 * (maps - min_values[:, None]) / (max_values - min_values + 1e-12)[:, None]
    return maps.to(torch.uint8)


def _otx_mosaic(feature_map: torch.Tensor) -> torch.Tensor:
    """OTX's `_get_mosaic_feature_map` (non-GAP-optimized path): [C, H, W] -> [H*W, C, H, W].
    The dense mask is made in the feature's dtype, so a bfloat16 model runs it too."""
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
    Returns uint8 [B, K, H, W] (float32 softmax maps when normalize=False)."""
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


# ------------------------------------------------------------------------------ reference
def float64_head(head: nn.Module) -> nn.Module:
    """A float64 copy of `head` for the reference (made once, outside the timed region)."""
    return copy.deepcopy(head).double().eval()


def slow_reference(feature: torch.Tensor, head64: Callable, mask: str = "1x1", score: str = "softmax") -> torch.Tensor:
    """tests/reference.py's recipro_cam_reference: float64 raw maps [B, K, H, W], one head call
    per masked feature map."""
    return reference.recipro_cam_reference(feature, head64, mask, score)


# ------------------------------------------------------------------------------ end to end
def end_to_end(model: nn.Module, target: str, baseline: Callable, head: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> baseline(feature, head), where the feature comes from one forward with a hook."""
    forward = feature_and_logits(model, target)

    def run(x: torch.Tensor) -> torch.Tensor:
        feature, _ = forward(x)
        return baseline(feature, head)

    return run
