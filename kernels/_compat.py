"""Optional-Numba shim and shared validation helpers for the kernels package.

Numba is the CPU hot path.  If it cannot be imported, the ``*_numba`` kernels
still import (as slow pure-Python functions) and every dispatcher falls back
to the PyTorch twins, so the package keeps working.
"""
from __future__ import annotations

import operator

import torch

try:  # pragma: no cover - exercised implicitly
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a hard dependency in practice
    HAVE_NUMBA = False
    prange = range

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


# Every @njit kernel uses the same options: multithreaded, cached on disk
# (next to the source, or in numba's user cache dir if that is read-only),
# and strict IEEE float32 semantics (no reassociation / FMA contraction).
# Caveat: Numba's cache is keyed on the *defining* file only.  Editing a
# helper module (e.g. _vmath.py, normalize.normalize_plane) does not
# invalidate the cached kernels of other files that call it; during
# development delete kernels/__pycache__ after such an edit.
JIT_OPTS = dict(parallel=True, cache=True, fastmath=False, nogil=True)

BACKENDS = ("auto", "numba", "torch")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")


def use_numba(backend: str, *tensors: torch.Tensor) -> bool:
    """Decide whether the Numba kernel can serve these tensors.

    Numba serves CPU float32 tensors that do not need autograd.  ``backend``
    "auto" picks Numba when eligible, "torch" forces the twin, "numba" forces
    Numba and raises if the inputs are not eligible.
    """
    check_backend(backend)
    if backend == "torch":
        return False
    eligible = HAVE_NUMBA and all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and not (t.requires_grad and torch.is_grad_enabled())
        for t in tensors
    )
    if backend == "numba" and not eligible:
        if not HAVE_NUMBA:
            raise ValueError("backend='numba' requested but numba is not installed")
        raise ValueError(
            "backend='numba' requires CPU float32 tensors that do not require grad "
            f"(got {[(str(t.device), str(t.dtype), t.requires_grad) for t in tensors]})"
        )
    return eligible


def as_index(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def check_feature(feature) -> tuple[int, int, int, int]:
    if not isinstance(feature, torch.Tensor):
        raise TypeError(f"feature must be a torch.Tensor, got {type(feature).__name__}")
    if feature.dim() != 4:
        raise ValueError(
            f"feature must be a 4-D tensor [B, C, H, W], got shape {tuple(feature.shape)}"
        )
    if not feature.is_floating_point():
        raise TypeError(f"feature must have a floating dtype, got {feature.dtype}")
    B, C, H, W = (int(s) for s in feature.shape)
    return B, C, H, W
