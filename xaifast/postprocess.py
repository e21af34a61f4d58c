"""Postprocessing: normalized map -> resize to the image -> JET colormap -> overlay.

SPEC.md's chain: cv2.resize INTER_LINEAR to the original image size, OpenCV's COLORMAP_JET
(as RGB), and the overlay round((1 - a) * image + a * heat) per channel.

`postprocess` runs it in the C++ extension (`xaifast._C.postprocess_u8`): resize, colormap and
overlay fused in one pass over the output pixels, a whole batch of maps at once, the GIL released
and the work split over threads by (map, block of rows). It reproduces the OpenCV chain:

- resize: OpenCV's 8-bit INTER_LINEAR arithmetic (half-pixel centers, 11-bit fixed-point
  weights, the same vertical rounding), bit-identical to cv2.resize in our tests;
- colormap: OpenCV's COLORMAP_JET table, hardcoded (`jet_lut()`; tests compare it to OpenCV);
- overlay: in float32, floor(float32(1 - a) * image + float32(a) * heat + 0.5), i.e. round half
  up, exactly what `overlay` below computes with numpy.

`postprocess_opencv` is the same chain written with OpenCV and numpy (the reference the tests
and benchmarks compare against).
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

ImageOrSize = Union[np.ndarray, Sequence[int]]


def jet_lut() -> np.ndarray:
    """The JET table `postprocess` uses: uint8 [256, 3], RGB (OpenCV's COLORMAP_JET, reversed channels)."""
    from . import _C

    return _C.jet_lut()


def postprocess(maps_u8: np.ndarray, image: ImageOrSize, alpha: float = 0.5, *, num_threads: int = 0
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """maps [K, h, w] uint8 and an RGB image [H, W, 3] -> (heat [K, H, W, 3], overlay [K, H, W, 3]).

    `image` may also be a size (H, W): then only heat maps are made and overlay is None. A single
    map [h, w] is taken as K = 1; K = 0 gives empty outputs. heat is JET(resize(map)) as RGB,
    overlay = round((1 - alpha) * image + alpha * heat) (float32, round half up). Runs in C++ on
    `num_threads` threads (0: all cores); the result does not depend on the thread count.
    """
    from . import _C

    maps = _check_maps(maps_u8)
    alpha = _check_alpha(alpha)
    num_threads = _check_threads(num_threads)
    if isinstance(image, np.ndarray):
        _check_image(image)
        return _C.postprocess_u8(maps, image, image.shape[0], image.shape[1], alpha, num_threads)
    height, width = _check_size(image)
    heat, _ = _C.postprocess_u8(maps, None, height, width, alpha, num_threads)
    return heat, None


def postprocess_opencv(maps_u8: np.ndarray, image: ImageOrSize, alpha: float = 0.5
                       ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The reference chain with OpenCV and numpy; same arguments and results as `postprocess`."""
    maps = _check_maps(maps_u8)
    alpha = _check_alpha(alpha)
    if isinstance(image, np.ndarray):
        _check_image(image)
        heat = colorize(maps, image.shape[:2])
        return heat, overlay(heat, image, alpha)
    return colorize(maps, _check_size(image)), None


def colorize(maps_u8: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """[K, h, w] uint8 -> [K, H, W, 3] RGB JET heat maps at size (H, W), with OpenCV."""
    maps_u8 = _check_maps(maps_u8)
    height, width = _check_size(size)
    out = np.empty((maps_u8.shape[0], height, width, 3), np.uint8)
    for k, m in enumerate(maps_u8):
        resized = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
        out[k] = cv2.cvtColor(cv2.applyColorMap(resized, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return out


def overlay(heat: np.ndarray, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """round((1 - alpha) * image + alpha * heat) for each of the K heat maps [K, H, W, 3], with numpy.

    In float32, round half up: floor(float32(1 - alpha) * image + float32(alpha) * heat + 0.5).
    """
    blend = (1.0 - alpha) * image.astype(np.float32)[None] + alpha * heat.astype(np.float32)
    return np.floor(blend + 0.5).clip(0, 255).astype(np.uint8)


def _check_maps(maps_u8: np.ndarray) -> np.ndarray:
    if not isinstance(maps_u8, np.ndarray) or maps_u8.dtype != np.uint8:
        got = f"{maps_u8.dtype} array" if isinstance(maps_u8, np.ndarray) else type(maps_u8).__name__
        raise TypeError(f"maps must be a uint8 numpy array [K, h, w], got {got} (normalize float maps "
                        "with xaifast.functional.normalize)")
    if maps_u8.ndim == 2:
        maps_u8 = maps_u8[None]
    if maps_u8.ndim != 3:
        raise ValueError(f"maps must be [K, h, w] (or one map [h, w]), got shape {maps_u8.shape}")
    if maps_u8.shape[1] < 1 or maps_u8.shape[2] < 1:
        raise ValueError(f"maps must be at least 1x1 pixels, got shape {maps_u8.shape}")
    return np.ascontiguousarray(maps_u8)


def _check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number within [0, 1], got {alpha!r}") from None
    if not (0.0 <= value <= 1.0):  # NaN fails too
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    return value


def _check_threads(num_threads: int) -> int:
    if isinstance(num_threads, bool):
        raise TypeError("num_threads must be an int (0: all cores), got a bool")
    try:
        return operator.index(num_threads)
    except TypeError:
        raise TypeError(f"num_threads must be an int (0: all cores), got {num_threads!r}") from None


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"image must be RGB uint8 [H, W, 3], got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got shape {image.shape}")


def _check_size(size: Sequence[int]) -> Tuple[int, int]:
    try:
        height, width = (operator.index(s) for s in size)
    except (TypeError, ValueError):
        raise TypeError(f"image must be an RGB uint8 array [H, W, 3] or a size (H, W) of two ints, got {size!r}"
                        ) from None
    if height < 1 or width < 1:
        raise ValueError(f"the output size (H, W) must be positive, got ({height}, {width})")
    return height, width


__all__ = ["postprocess", "postprocess_opencv", "colorize", "overlay", "jet_lut"]
