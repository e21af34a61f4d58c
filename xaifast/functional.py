"""The algorithms as plain functions on tensors (CPU and CUDA dispatch inside).

    from xaifast import functional as XF
    XF.recipro_cam(feature, head, mask="1x1", score="none")  # [B,C,H,W] -> [B,K,H,W]
    XF.vit_recipro_cam(tokens, rest, grid=(H, W))               # [B,A+H*W,D] -> [B,K,H,W]
    XF.activation_map(feature); XF.eigen_cam(feature)           # [B,C,H,W] -> [B,H,W]
    XF.det_class_probability_map(levels, num_anchors)           # [B,A_l*K,H_l,W_l] per level -> [B,K,h,w]
    XF.instseg_maps(masks, scores, labels, num_classes)         # one image -> [K,H,W]
    XF.normalize(maps)                                          # [..., h, w] float -> uint8
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .algorithms import activation_map, eigen_cam, instseg_maps
from .algorithms import det_class_probability_map as _det_class_probability_map
from .algorithms import recipro_cam as _recipro_cam
from .algorithms import vit_recipro_cam as _vit_recipro_cam
from .config import normalize_mask_name

Array = Union[np.ndarray, torch.Tensor]


def recipro_cam(feature: torch.Tensor, head: Callable, mask: str = "1x1", score: str = "none", *,
                memory_budget_mb: Optional[float] = None, chunk_size: Optional[int] = None,
                use_gap_shortcut: bool = True) -> torch.Tensor:
    """Recipro-CAM raw maps [B, K, H, W] float32.

    feature: [B, C, H, W]; head: [N, C, H, W] -> logits [N, K] (an nn.Module head that starts
    with global average pooling runs through the exact GAP shortcut); mask: "1x1" | "gaussian";
    score: "softmax" | "sigmoid" | "none". chunk_size / memory_budget_mb bound how many masked maps
    the head sees at once.
    """
    result = _recipro_cam(feature, head, normalize_mask_name(mask), score, memory_budget_mb=memory_budget_mb,
                          chunk_size=chunk_size, use_gap_shortcut=use_gap_shortcut)
    return result.raw


def vit_recipro_cam(tokens, rest: Callable, grid=None, mask: str = "gaussian", score: str = "none", *,
                    num_aux: Optional[int] = None, cls_token: bool = True, use_fast_path: bool = True,
                    memory_budget_mb: Optional[float] = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """ViT Recipro-CAM raw maps [B, K, H, W] float32.

    tokens: the target block's LN1 output [B, A + H*W, D] (A auxiliary tokens, then row-major
    patches), or the `TokenFeature` that `xaifast.adapters.vit.ViTAdapter.forward` returns
    (grid and A included). rest: a `ViTRest` (`ViTAdapter(model, target_block=k).rest()`: exact
    fast path available) or any callable T_p [n, A + H*W, D] -> logits [n, K] (general path).
    grid: (H, W) for plain tokens; num_aux: A (default: N - H*W). mask: "gaussian" (default, as
    OTX's ViT Recipro-CAM) | "1x1"; cls_token: keep (True) or zero the auxiliary tokens.
    """
    result = _vit_recipro_cam(tokens, rest, normalize_mask_name(mask), score, grid=grid, num_aux=num_aux,
                              cls_token=cls_token, use_fast_path=use_fast_path, memory_budget_mb=memory_budget_mb,
                              chunk_size=chunk_size)
    return result.raw


def det_class_probability_map(levels: Sequence[torch.Tensor], num_anchors: Union[int, Sequence[int]],
                              size: Optional[Tuple[int, int]] = None, softmax: bool = True) -> torch.Tensor:
    """DetClassProbabilityMap raw maps [B, K, h, w] float32 of a single-stage detector.

    levels: the classification-head outputs per pyramid level, [B, A_l*K, H_l, W_l] (channel a*K + k);
    num_anchors: A_l (one int for all levels, or one per level). Max over anchors, bilinear resize
    (align_corners=False) to the middle level len(levels)//2 or to size=(h, w), mean over levels,
    softmax over classes per pixel (softmax=False: the mean of the raw scores). One fused kernel:
    Numba on CPU, Triton on CUDA.
    """
    return _det_class_probability_map(levels, num_anchors, size=size, softmax=softmax)


def normalize(maps: Array, num_threads: int = 0) -> Array:
    """Per-map min-max to uint8 over the last two dims: floor(255 (x - min) / (max - min + 1e-12)).

    Evaluated in float32 (as OTX), so a map's maximum becomes 255; a constant map becomes zeros.
    CPU float32 runs in the C++ extension (GIL released, threads over maps); other devices and
    dtypes use the PyTorch twin. Returns the same kind of array it was given.
    """
    from . import _C
    from .kernels.normalize import normalize_torch

    if isinstance(maps, np.ndarray):
        if maps.ndim < 2:
            raise ValueError(f"normalize needs maps [..., h, w], got shape {maps.shape}")
        return _C.normalize_u8(np.ascontiguousarray(maps, dtype=np.float32), num_threads)
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"normalize takes a numpy array or a torch tensor, got {type(maps).__name__}")
    if maps.ndim < 2:
        raise ValueError(f"normalize needs maps [..., h, w], got shape {list(maps.shape)}")
    if maps.device.type == "cpu":
        array = maps.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(_C.normalize_u8(array, num_threads))
    return normalize_torch(maps.detach())


__all__ = ["recipro_cam", "vit_recipro_cam", "activation_map", "eigen_cam", "det_class_probability_map",
           "instseg_maps", "normalize"]
