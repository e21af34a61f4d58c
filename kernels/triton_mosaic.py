"""Triton twin of :func:`kernels.mosaic.mosaic_numba`: the mosaic of a chunk of cells.

``M[cell] = F[b] * m_p`` for cells ``n = start + cell`` (``b = n // HW``, ``p = n % HW``),
written straight into ``out`` in whatever layout it has (contiguous or channels-last): the
kernel takes the output's strides, so the head reads the mosaic with no layout conversion and
no dense ``[count, H, W]`` mask tensor is ever built (the mask value of a position is looked up
in the ``[k, k]`` kernel from its offset to the cell).

Grid ``(count, cdiv(C, BLOCK_C))``: one program per (cell, block of channels).  It walks the
cell's spatial plane in tiles of ``BLOCK_Q`` positions; per tile it loads ``F`` only inside the
``k x k`` window (masked load) and stores the full ``[BLOCK_C, BLOCK_Q]`` tile (zeros outside
the window).  The tile shape follows the output layout: contiguous -> long runs along q,
channels-last -> long runs along c, so stores are coalesced in both layouts.  Arithmetic: one
float32 product ``float32(F) * w`` rounded once to the output dtype (bit-identical to the Numba
kernel for float32; exact zeros outside the window, as Numba).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .triton_common import LAUNCH_OPTS, device_kernel, flat_spatial, next_pow2

__all__ = ["mosaic_triton"]

#: Elements per [BLOCK_C, BLOCK_Q] tile.
TILE = 4096


@triton.jit
def _mosaic_kernel(f_ptr, k_ptr, o_ptr, start, C, H, W,
                   sfb, sfc, sfq, son, soc, soq,
                   KS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr):
    cell = tl.program_id(0)
    cblk = tl.program_id(1)
    HW = H * W
    n = start + cell
    b = n // HW
    p = n - b * HW
    i = p // W
    j = p - i * W
    R: tl.constexpr = KS // 2
    c = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    f_base = f_ptr + b.to(tl.int64) * sfb + c[:, None].to(tl.int64) * sfc
    o_base = o_ptr + cell.to(tl.int64) * son + c[:, None].to(tl.int64) * soc
    for q0 in range(0, HW, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        qmask = q < HW
        qi = q // W
        qj = q - qi * W
        du = qi - i + R
        dv = qj - j + R
        inside = qmask & (du >= 0) & (du < KS) & (dv >= 0) & (dv < KS)
        w = tl.load(k_ptr + du * KS + dv, mask=inside, other=0.0)
        win = cmask[:, None] & inside[None, :]
        f = tl.load(f_base + q[None, :].to(tl.int64) * sfq, mask=win, other=0.0)
        v = tl.where(win, f.to(tl.float32) * w[None, :], 0.0)
        tl.store(o_base + q[None, :].to(tl.int64) * soq, v.to(o_ptr.dtype.element_ty),
                 mask=cmask[:, None] & qmask[None, :])


def tile_shape(C: int, HW: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_Q): the output's contiguous dimension gets the long side."""
    if channels_last:
        block_c = min(next_pow2(C), 256)
        block_q = max(1, min(next_pow2(HW), TILE // block_c))
    else:
        block_q = min(next_pow2(HW), 1024)
        block_c = max(1, min(next_pow2(C), TILE // block_q))
    return block_c, block_q


def mosaic_triton(feature: torch.Tensor, start: int, count: int, kernel: np.ndarray,
                  out: torch.Tensor, *, block_c: int | None = None, block_q: int | None = None) -> torch.Tensor:
    """Fill ``out`` [count, C, H, W] (any layout whose H, W dims flatten: contiguous or
    channels-last) with the mosaic of cells ``[start, start + count)``.  ``feature``: [B, C, H, W]
    float32/float16/bfloat16 on the same device; ``kernel``: float32 [k, k], k odd.
    ``block_c`` / ``block_q`` (powers of two) override the tile shape (tests)."""
    B, C, H, W = (int(s) for s in feature.shape)
    if count == 0:
        return out
    if not flat_spatial(feature):
        feature = feature.contiguous()
    if not flat_spatial(out):
        raise ValueError("out must be contiguous or channels-last for the triton backend")
    kt = device_kernel(kernel, feature.device)
    ks = int(kt.shape[0])
    channels_last = out.stride(1) == 1 and C > 1
    auto_c, auto_q = tile_shape(C, H * W, channels_last)
    block_c, block_q = block_c or auto_c, block_q or auto_q
    grid = (count, triton.cdiv(C, block_c))
    _mosaic_kernel[grid](feature, kt, out, start, C, H, W,
                         feature.stride(0), feature.stride(1), feature.stride(3),
                         out.stride(0), out.stride(1), out.stride(3),
                         KS=ks, BLOCK_C=block_c, BLOCK_Q=block_q, **LAUNCH_OPTS)
    return out
