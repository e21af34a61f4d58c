"""Shared helpers of the Triton kernels (imported only on the Triton path).

Importing this module imports ``triton``.  Whether ``@triton.jit`` compiles for
the GPU or runs Triton's CPU interpreter is decided when the kernel modules are
imported: set ``TRITON_INTERPRET=1`` before that to run them on CPU tensors.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
import triton  # noqa: F401  (the kernel modules import it through here first)

#: Compile options of every launch: exact float32 arithmetic (no mul+add -> FMA
#: contraction, as the Numba kernels), and 4 warps.
LAUNCH_OPTS = dict(num_warps=4, enable_fp_fusion=False)

_KERNEL_CACHE: dict = {}
_LOCK = threading.Lock()


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def device_kernel(kernel: np.ndarray, device: torch.device) -> torch.Tensor:
    """The float32 mask kernel [k, k] as a contiguous tensor on ``device`` (cached, so the
    host-to-device copy happens once per kernel and device)."""
    kernel = np.ascontiguousarray(kernel, dtype=np.float32)
    key = (str(device), kernel.shape, kernel.tobytes())
    with _LOCK:
        t = _KERNEL_CACHE.get(key)
        if t is None:
            t = torch.from_numpy(kernel.copy()).to(device)
            _KERNEL_CACHE[key] = t
    return t


def flat_spatial(t: torch.Tensor) -> bool:
    """Whether the [.., H, W] dims of a 4-D tensor can be addressed as one flat index q = i*W + j
    with stride t.stride(3) (true for contiguous and channels-last tensors)."""
    _, _, H, W = t.shape
    return H == 1 or t.stride(2) == W * t.stride(3)
