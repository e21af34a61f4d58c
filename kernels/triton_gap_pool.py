"""Triton twin of :func:`kernels.gap_pool.gap_pool_numba`: the GAP shortcut's pooled vectors.

``P[n, c] = sum_q m_p(q) * F[b, c, q] / (H*W)`` for every cell ``n = b*H*W + i*W + j`` of the
batch, written cell-major ``[B*H*W, C]`` in the input dtype, in one pass over ``F``.

Grid ``(cdiv(B*H*W, BLOCK_P), cdiv(C, BLOCK_C))``: one program per tile of ``BLOCK_P`` cells
(they may span images) x ``BLOCK_C`` channels.  The ``k*k`` taps are unrolled at compile time
(``KS`` is a constexpr); per tap the program gathers ``F[b, c, i+du, j+dv]`` for its tile
(masked where the tap leaves the grid: zero padding, no renormalisation) and accumulates
``w * f`` in float32 registers, in row-major tap order, then divides by ``H*W`` (IEEE division)
and stores once.  Same float32 operations and order as the Numba kernel (FMA contraction is
off), so float32 results are bit-identical to it; half types are read, upcast, accumulated in
float32 and rounded once on store.  ``F`` may be contiguous or channels-last (strides).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .triton_common import LAUNCH_OPTS, device_kernel, flat_spatial, next_pow2

__all__ = ["gap_pool_triton"]

BLOCK_P_MAX = 32
BLOCK_C_MAX = 64


@triton.jit
def _gap_pool_kernel(f_ptr, k_ptr, o_ptr, N, C, H, W, sfb, sfc, sfq, son,
                     KS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    HW = H * W
    R: tl.constexpr = KS // 2
    n = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    nmask = n < N
    b = n // HW
    p = n - b * HW
    i = p // W
    j = p - i * W
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    base = f_ptr + b[:, None].to(tl.int64) * sfb + c[None, :].to(tl.int64) * sfc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for u in tl.static_range(KS):
        qi = i + (u - R)
        row_ok = nmask & (qi >= 0) & (qi < H)
        for v in tl.static_range(KS):
            qj = j + (v - R)
            ok = row_ok & (qj >= 0) & (qj < W)
            w = tl.load(k_ptr + (u * KS + v))
            f = tl.load(base + (qi * W + qj)[:, None].to(tl.int64) * sfq,
                        mask=ok[:, None] & cmask[None, :], other=0.0)
            acc += w * f.to(tl.float32)
    res = tl.math.div_rn(acc, (H * W) * 1.0)  # H*W is exact in float32
    tl.store(o_ptr + n[:, None].to(tl.int64) * son + c[None, :],
             res.to(o_ptr.dtype.element_ty), mask=nmask[:, None] & cmask[None, :])


def gap_pool_triton(feature: torch.Tensor, kernel: np.ndarray, out: torch.Tensor | None = None, *,
                    block_p: int | None = None, block_c: int | None = None) -> torch.Tensor:
    """Pooled vectors ``[B*H*W, C]`` (contiguous, ``feature``'s dtype and device).
    ``feature``: [B, C, H, W] float32/float16/bfloat16, contiguous or channels-last.
    ``block_p`` / ``block_c`` (powers of two) override the tile shape (tests)."""
    B, C, H, W = (int(s) for s in feature.shape)
    N = B * H * W
    if out is None:
        out = torch.empty((N, C), dtype=feature.dtype, device=feature.device)
    if N == 0 or C == 0:
        return out
    if not flat_spatial(feature):
        feature = feature.contiguous()
    kt = device_kernel(kernel, feature.device)
    block_p = block_p or min(next_pow2(N), BLOCK_P_MAX)
    block_c = block_c or min(next_pow2(C), BLOCK_C_MAX)
    grid = (triton.cdiv(N, block_p), triton.cdiv(C, block_c))
    _gap_pool_kernel[grid](feature, kt, out, N, C, H, W,
                           feature.stride(0), feature.stride(1), feature.stride(3), out.stride(0),
                           KS=int(kt.shape[0]), BLOCK_P=block_p, BLOCK_C=block_c, **LAUNCH_OPTS)
    return out
