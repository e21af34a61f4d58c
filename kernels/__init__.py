"""CPU/GPU kernels of the Recipro-CAM engine (``xaifast.kernels``).

Each kernel has a Numba implementation (the CPU float32 hot path), a Triton
implementation (the CUDA hot path, ``triton_*.py``), a plain PyTorch twin (any
device / dtype), and a dispatcher that picks between them by device
(``backend="auto"``; or "numba" | "torch" | "triton").

Triton is optional and never imported here: the ``*_triton`` names below are
loaded on first access (module ``__getattr__``), and the dispatchers import
the Triton modules only when they run a Triton kernel.
"""
from ._compat import BACKENDS, HAVE_NUMBA, have_triton, pick_backend
from .epilogue import SCORES, epilogue_numba, epilogue_torch, score_code, score_maps
from .det_class_map import det_class_map, det_class_map_numba, det_class_map_torch
from .gap_pool import gap_pool_numba, gap_pool_torch, gap_pooled
from .masks import MASKS, mask_kernel, resolve_kernel
from .mosaic import build_mosaic, mosaic_numba, mosaic_torch
from .token_attention import weighted_attention, weighted_attention_numba, weighted_attention_torch
from .token_mosaic import TokenLayout, token_layout, token_mosaic, token_mosaic_numba, token_mosaic_torch
from .normalize import normalize_maps, normalize_numba, normalize_torch

_TRITON_NAMES = {
    "mosaic_triton": "triton_mosaic",
    "gap_pool_triton": "triton_gap_pool",
    "epilogue_triton": "triton_epilogue",
    "normalize_triton": "triton_epilogue",
    "det_class_map_triton": "triton_det_class_map",
    "rise_masked_batch_triton": "triton_rise",
}


def __getattr__(name):
    if name in _TRITON_NAMES:
        import importlib

        module = importlib.import_module(f".{_TRITON_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TokenLayout",
    "token_layout",
    "token_mosaic",
    "token_mosaic_numba",
    "token_mosaic_torch",
    "weighted_attention",
    "weighted_attention_numba",
    "weighted_attention_torch",
    "BACKENDS",
    "HAVE_NUMBA",
    "MASKS",
    "SCORES",
    "build_mosaic",
    "det_class_map",
    "det_class_map_numba",
    "det_class_map_torch",
    "epilogue_numba",
    "epilogue_torch",
    "gap_pool_numba",
    "gap_pool_torch",
    "gap_pooled",
    "have_triton",
    "mask_kernel",
    "mosaic_numba",
    "mosaic_torch",
    "normalize_maps",
    "normalize_numba",
    "normalize_torch",
    "pick_backend",
    "resolve_kernel",
    "score_code",
    "score_maps",
]
