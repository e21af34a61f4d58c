"""Recipro-CAM spatial masks as small float32 kernels.

A mask ``m_p`` centred on cell ``p = (i, j)`` is represented by a ``[k, k]``
float32 kernel (k odd, radius ``r = k // 2``)::

    m_p(q) = kernel[qi - i + r, qj - j + r]   if |qi - i| <= r and |qj - j| <= r
           = 0                                 otherwise

Kernels are *not* renormalised where the window is clipped by the grid border.
"""
from __future__ import annotations

import numpy as np
import torch

_ONE = np.ones((1, 1), dtype=np.float32)
# Every entry is an exact multiple of 1/16, so this is exact in float32.
_GAUSS = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / np.float32(16)

#: Canonical mask kernels (read-only; use :func:`mask_kernel` for a private copy).
MASKS: dict[str, np.ndarray] = {"1x1": _ONE, "gaussian": _GAUSS}
for _k in MASKS.values():
    _k.setflags(write=False)

_ALIASES = {"3x3": "gaussian"}


def mask_kernel(name: str) -> np.ndarray:
    """Return a fresh, writable, C-contiguous float32 copy of the named kernel.

    Valid names: ``"1x1"``, ``"gaussian"`` (alias ``"3x3"``).
    """
    if not isinstance(name, str):
        raise TypeError(f"mask name must be a str, got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in MASKS:
        valid = ", ".join(repr(n) for n in (*MASKS, *_ALIASES))
        raise ValueError(f"unknown mask {name!r}; valid masks: {valid}")
    return MASKS[key].copy()


def resolve_kernel(mask) -> np.ndarray:
    """Mask name, numpy array or tensor -> writable C-contiguous float32 [k, k], k odd.

    A writable array matters: Numba compiles a separate specialisation for
    read-only arrays.
    """
    if isinstance(mask, str):
        return mask_kernel(mask)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(
            f"mask must be a mask name or a 2-D array, got {type(mask).__name__}"
        )
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or mask.shape[0] % 2 != 1:
        raise ValueError(f"mask kernel must be a square [k, k] array with k odd, got shape {mask.shape}")
    return np.array(mask, dtype=np.float32, order="C", copy=True)
