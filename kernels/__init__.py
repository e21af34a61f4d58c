"""CPU/GPU kernels of the Recipro-CAM engine (``xaifast.kernels``).

Each kernel has a Numba implementation (the CPU float32 hot path), a plain
PyTorch twin (any device / dtype), and a dispatcher that picks between them.
"""
from ._compat import HAVE_NUMBA
from .epilogue import SCORES, epilogue_numba, epilogue_torch, score_code, score_maps
from .gap_pool import gap_pool_numba, gap_pool_torch, gap_pooled
from .masks import MASKS, mask_kernel, resolve_kernel
from .mosaic import build_mosaic, mosaic_numba, mosaic_torch
from .normalize import normalize_maps, normalize_numba, normalize_torch

__all__ = [
    "HAVE_NUMBA",
    "MASKS",
    "SCORES",
    "build_mosaic",
    "epilogue_numba",
    "epilogue_torch",
    "gap_pool_numba",
    "gap_pool_torch",
    "gap_pooled",
    "mask_kernel",
    "mosaic_numba",
    "mosaic_torch",
    "normalize_maps",
    "normalize_numba",
    "normalize_torch",
    "resolve_kernel",
    "score_code",
    "score_maps",
]
