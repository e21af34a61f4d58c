"""Postprocessing: normalized map -> resize to the image -> JET colormap -> overlay.

This is the OpenCV chain SPEC.md defines (cv2.resize INTER_LINEAR, cv2.applyColorMap
COLORMAP_JET, overlay round((1 - a) * image + a * heat)).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import cv2
import numpy as np


def colorize(maps_u8: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """[K, h, w] uint8 -> [K, H, W, 3] RGB JET heat maps at size (H, W)."""
    maps_u8 = _check_maps(maps_u8)
    height, width = size
    out = np.empty((maps_u8.shape[0], height, width, 3), np.uint8)
    for k, m in enumerate(maps_u8):
        resized = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
        out[k] = cv2.cvtColor(cv2.applyColorMap(resized, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return out


def overlay(heat: np.ndarray, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """round((1 - alpha) * image + alpha * heat) for each of the K heat maps [K, H, W, 3]."""
    blend = (1.0 - alpha) * image.astype(np.float32)[None] + alpha * heat.astype(np.float32)
    return np.floor(blend + 0.5).clip(0, 255).astype(np.uint8)


def postprocess(maps_u8: np.ndarray, image: Union[np.ndarray, Tuple[int, int]], alpha: float = 0.5
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """maps [K, h, w] uint8 and an RGB image [H, W, 3] -> (heat [K, H, W, 3], overlay [K, H, W, 3]).

    `image` may also be a size (H, W): then only heat maps are made and overlay is None.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        heat = colorize(maps_u8, image.shape[:2])
        return heat, overlay(heat, image, alpha)
    return colorize(maps_u8, tuple(int(s) for s in image)), None


def _check_maps(maps_u8: np.ndarray) -> np.ndarray:
    if not isinstance(maps_u8, np.ndarray) or maps_u8.dtype != np.uint8:
        raise TypeError("maps must be a uint8 numpy array [K, h, w] (normalize them with xaifast.functional.normalize)")
    if maps_u8.ndim == 2:
        maps_u8 = maps_u8[None]
    if maps_u8.ndim != 3:
        raise ValueError(f"maps must be [K, h, w], got shape {maps_u8.shape}")
    return np.ascontiguousarray(maps_u8)
