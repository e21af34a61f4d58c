"""Triton kernels of ViT Recipro-CAM's fast path (imported only on the Triton path).

- :func:`token_mosaic_triton`: ``out[cell, s] = scale[p, s] * src[b, index[p, s]] (+ bias)``
  (see :mod:`.token_mosaic`); grid ``(count*U, cdiv(C, BLOCK_C))``, one program per output row
  and block of channels.
- :func:`weighted_attention_triton`: attention over distinct tokens with log-counts (see
  :mod:`.token_attention`); grid ``(n*h,)``, one program per (sequence, head): the whole
  ``[L, U]`` logit tile (L, U <= a few dozen in the fast path) in registers, float32 math.

Importing this module imports ``triton``; ``TRITON_INTERPRET=1`` set before that runs the
kernels on CPU tensors (the tests do).
"""
from __future__ import annotations

import threading

import numpy as np
import torch
import triton
import triton.language as tl

from .triton_common import LAUNCH_OPTS, next_pow2  # exact float32 (no FMA), 4 warps

__all__ = ["token_mosaic_triton", "weighted_attention_triton"]

_TABLES: dict = {}
_LOCK = threading.Lock()


def _device_table(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A layout table as a contiguous tensor on ``device``, copied once per table and device."""
    key = (str(device), id(array))
    with _LOCK:
        entry = _TABLES.get(key)
        if entry is None or entry[0] is not array:
            entry = (array, torch.from_numpy(np.array(array)).to(device))
            _TABLES[key] = entry
    return entry[1]


@triton.jit
def _token_mosaic_kernel(src_ptr, idx_ptr, scale_ptr, bias_ptr, out_ptr, start, U, HW, C,
                         ssb, ssn, ssc, son, sou, soc,
                         HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    cblk = tl.program_id(1)
    cell = row // U
    s = row - cell * U
    n = start + cell
    b = n // HW
    p = n - b * HW
    t = tl.load(idx_ptr + p * U + s)
    w = tl.load(scale_ptr + p * U + s)
    c = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    x = tl.load(src_ptr + b.to(tl.int64) * ssb + t.to(tl.int64) * ssn + c.to(tl.int64) * ssc, mask=cmask, other=0.0)
    y = x.to(tl.float32) * w
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + cell.to(tl.int64) * son + s.to(tl.int64) * sou + c.to(tl.int64) * soc,
             y.to(out_ptr.dtype.element_ty), mask=cmask)


def token_mosaic_triton(src: torch.Tensor, layout, start: int, count: int, bias, out: torch.Tensor) -> torch.Tensor:
    B, N, C = (int(s) for s in src.shape)
    U = layout.slots
    HW = layout.H * layout.W
    index = _device_table(layout.index, src.device)
    scale = _device_table(layout.scale, src.device)
    block_c = min(next_pow2(C), 1024)
    grid = (count * U, triton.cdiv(C, block_c))
    bias_t = bias.contiguous() if bias is not None else scale  # any pointer; unused without bias
    _token_mosaic_kernel[grid](src, index, scale, bias_t, out, start, U, HW, C,
                               src.stride(0), src.stride(1), src.stride(2),
                               out.stride(0), out.stride(1), out.stride(2),
                               HAS_BIAS=bias is not None, BLOCK_C=block_c, **LAUNCH_OPTS)
    return out


@triton.jit
def _weighted_attention_kernel(q_ptr, k_ptr, v_ptr, lc_ptr, o_ptr, H, L, U, D, scale,
                               sqn, sqh, sql, sqd, skn, skh, sku, skd, svn, svh, svu, svd,
                               sln, slu, son, soh, sol, sod,
                               BLOCK_L: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    seq = pid // H
    head = pid - seq * H
    l = tl.arange(0, BLOCK_L)
    u = tl.arange(0, BLOCK_U)
    d = tl.arange(0, BLOCK_D)
    lm = l < L
    um = u < U
    dm = d < D
    seq64 = seq.to(tl.int64)
    q = tl.load(q_ptr + seq64 * sqn + head * sqh + l[:, None] * sql + d[None, :] * sqd,
                mask=lm[:, None] & dm[None, :], other=0.0).to(tl.float32)
    k = tl.load(k_ptr + seq64 * skn + head * skh + u[:, None] * sku + d[None, :] * skd,
                mask=um[:, None] & dm[None, :], other=0.0).to(tl.float32)
    v = tl.load(v_ptr + seq64 * svn + head * svh + u[:, None] * svu + d[None, :] * svd,
                mask=um[:, None] & dm[None, :], other=0.0).to(tl.float32)
    lc = tl.load(lc_ptr + seq64 * sln + u * slu, mask=um, other=float("-inf"))
    logits = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale + lc[None, :]
    mx = tl.max(logits, axis=1)
    e = tl.exp(logits - mx[:, None])
    p = tl.math.div_rn(e, tl.zeros_like(e) + tl.sum(e, axis=1)[:, None])  # IEEE division
    out = tl.sum(p[:, :, None] * v[None, :, :], axis=1)
    tl.store(o_ptr + seq64 * son + head * soh + l[:, None] * sol + d[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=lm[:, None] & dm[None, :])


def weighted_attention_triton(q, k, v, log_count, scale: float) -> torch.Tensor:
    n, h, L, d = (int(s) for s in q.shape)
    U = int(k.shape[2])
    out = torch.empty((n, h, L, d), dtype=q.dtype, device=q.device)
    if n * h * L == 0:
        return out
    grid = (n * h,)
    _weighted_attention_kernel[grid](q, k, v, log_count, out, h, L, U, d, float(scale),
                                     *q.stride(), *k.stride(), *v.stride(), *log_count.stride(), *out.stride(),
                                     BLOCK_L=max(next_pow2(L), 2), BLOCK_U=max(next_pow2(U), 2),
                                     BLOCK_D=max(next_pow2(d), 2), **LAUNCH_OPTS)
    return out
