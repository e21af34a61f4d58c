"""Per-map min-max normalisation of saliency maps to uint8.

The contract (identical float32 arithmetic in every backend, in this order)::

    mn = min(x); mx = max(x)                    # over the H*W values of one map, NaNs ignored
    denom = (mx - mn) + float32(1e-12)
    u = floor(((x - mn) / denom) * float32(255))  # OTX's order: the maximum becomes 255
    u = clamp(u, 0, 255) -> uint8                 # NaN -> 0

A constant map, and a map of NaNs only, give all zeros (as the C++ normalizer).
"""
from __future__ import annotations

import numpy as np
import torch

from ._compat import JIT_OPTS, njit, pick_backend, prange

__all__ = ["normalize_numba", "normalize_torch", "normalize_maps", "normalize_plane"]

_EPS = np.float32(1e-12)
_SCALE = np.float32(255.0)


@njit(cache=True, fastmath=False, nogil=True)
def normalize_plane(src, dst):
    """One map: src f32 [HW] -> dst uint8 [HW] (1-D views).  Serial helper,
    shared by :func:`normalize_numba` and the fused epilogue."""
    n = src.shape[0]
    if n == 0:
        return
    mn = np.float32(np.inf)
    mx = np.float32(-np.inf)
    for q in range(n):
        x = src[q]
        if x < mn:  # False for NaN: NaNs are ignored
            mn = x
        if x > mx:
            mx = x
    if not mx >= mn:  # no finite-or-inf value at all (all NaN)
        for q in range(n):
            dst[q] = np.uint8(0)
        return
    denom = (mx - mn) + _EPS
    for q in range(n):
        u = np.floor(((src[q] - mn) / denom) * _SCALE)
        if not u >= np.float32(0.0):  # negative or NaN
            u = np.float32(0.0)
        elif u > _SCALE:
            u = _SCALE
        dst[q] = np.uint8(u)


@njit(**JIT_OPTS)
def normalize_numba(maps, out):
    """maps: f32 C-contig [M, H, W]; out: uint8 C-contig [M, H, W].  Parallel over maps."""
    M, H, W = maps.shape
    m2 = maps.reshape(M, H * W)
    o2 = out.reshape(M, H * W)
    for m in prange(M):
        normalize_plane(m2[m], o2[m])


def normalize_torch(maps: torch.Tensor) -> torch.Tensor:
    """PyTorch twin: per-map over the last two dims, any leading shape / device.

    Input is converted to float32 first (the formula is defined in float32);
    returns uint8 with the same shape.  Bit-identical to the Numba version
    (sub, mul, div are correctly rounded IEEE ops; floor/min/max are exact).
    """
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() < 2:
        raise ValueError(f"maps must have at least 2 dims [..., H, W], got shape {tuple(maps.shape)}")
    x = maps.detach().to(torch.float32)
    if x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    nan = torch.isnan(x)
    mn = torch.where(nan, torch.inf, x).amin(dim=(-2, -1), keepdim=True)  # NaNs ignored
    mx = torch.where(nan, -torch.inf, x).amax(dim=(-2, -1), keepdim=True)
    # float32 0-dim tensors, so the constants are float32 before the op.
    eps = torch.tensor(_EPS, dtype=torch.float32, device=x.device)
    scale = torch.tensor(_SCALE, dtype=torch.float32, device=x.device)
    denom = (mx - mn) + eps
    u = torch.floor(((x - mn) / denom) * scale)
    return torch.nan_to_num_(u, nan=0.0).clamp_(0.0, 255.0).to(torch.uint8)


def normalize_maps(maps: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Dispatcher: uint8 maps ``[..., H, W]``.  ``backend``: "auto" | "numba" | "torch" |
    "triton"; "auto": CUDA float32/16/bf16 -> Triton kernel, CPU float32 -> Numba, else the
    torch twin.  "triton" runs on CPU tensors under TRITON_INTERPRET=1."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() < 2:
        raise ValueError(f"maps must have at least 2 dims [..., H, W], got shape {tuple(maps.shape)}")
    path = pick_backend(backend, maps)
    if path == "torch":
        return normalize_torch(maps)
    if path == "triton":
        from .triton_epilogue import normalize_triton

        return normalize_triton(maps.detach())
    H, W = int(maps.shape[-2]), int(maps.shape[-1])
    src = maps.detach().contiguous().reshape(-1, H, W)
    out = torch.empty(maps.shape, dtype=torch.uint8)
    normalize_numba(src.numpy(), out.view(-1, H, W).numpy())
    return out
