"""Triton twin of :func:`kernels.det_class_map.det_class_map_numba`: DetClassProbabilityMap in
one launch (anchor max + bilinear resize of every level + mean over levels + softmax).

Levels ``[B, A_l*K, H_l, W_l]`` (float32/16/bf16, any strides, each level its own dtype) ->
float32 ``[B, K, h, w]``.  Up to ``MAX_LEVELS`` (6) levels are separate pointer arguments with
their sizes, anchor counts and strides; the constexpr ``NUM_LEVELS`` prunes the unused ones at
compile time (they receive level 0 and zeros).

Grid ``(B, cdiv(h*w, BLOCK_P))``: program ``(b, t)`` owns image ``b`` and a tile of ``BLOCK_P``
output pixels ``p = i*w + j`` and walks the classes in ``BLOCK_K`` blocks.  Per level it computes
the source coordinates of its pixels in float32, as PyTorch does
(``src = max((dst + 0.5) * (in / out) - 0.5, 0)``, ``i0 = floor(src)``,
``i1 = min(i0 + 1, in - 1)``, ``lambda = src - i0``), gathers the four taps of every anchor
(``[BLOCK_K, BLOCK_P]`` tiles, upcast to float32) and keeps their running max, then blends
``ly0 * (lx0 * m00 + lx1 * m01) + ly1 * (lx0 * m10 + lx1 * m11)`` and adds it to the float32
level sum.  Then the mean (IEEE division by L) and, when asked, the softmax over classes:

- ``K <= BLOCK_K`` (one class block, the usual case): in registers, stored once;
- more classes: pass 1 stores the mean logits and keeps an online max / sum of exps per pixel,
  pass 2 (after a CTA barrier, so the program's own stores are visible to all its threads)
  rescales them in place.

More than ``MAX_LEVELS`` levels: the levels are chained over ``ceil(L / 6)`` launches on the
same stream; every launch but the last stores the float32 level sums, the next ones add to
them (``ACCUMULATE``) and the last divides by L and applies the softmax (``FINAL``).  So any
number of levels works; with L <= 6 it is exactly one launch.

FMA contraction is off and the divisions are IEEE (``div_rn``).  ``exp`` is Triton's (on NVIDIA
``ex2.approx`` based), so probabilities may differ from torch's by an ulp or two.  NaN inputs are
not propagated the way ``torch.amax`` does (Triton's max ignores them); the Numba kernel and the
twin propagate them.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl

from .triton_common import LAUNCH_OPTS, next_pow2

__all__ = ["det_class_map_triton", "MAX_LEVELS"]

MAX_LEVELS = 6
BLOCK_K_MAX = 128
TILE = 2048  # elements of a [BLOCK_K, BLOCK_P] tile


@triton.jit
def _level_value(x_ptr, b, k, kmask, i, j, pmask, K, H, W, A, sb, sc, sy, sx, fh, fw):
    """[BLOCK_K, BLOCK_P] float32: bilinear sample at output pixels (i, j) of the anchor max of one level."""
    syf = tl.maximum((i.to(tl.float32) + 0.5) * fh - 0.5, 0.0)
    sxf = tl.maximum((j.to(tl.float32) + 0.5) * fw - 0.5, 0.0)
    y0 = tl.minimum(syf.to(tl.int32), H - 1)  # src >= 0: truncation is floor
    x0 = tl.minimum(sxf.to(tl.int32), W - 1)
    ly1 = syf - y0.to(tl.float32)
    lx1 = sxf - x0.to(tl.float32)
    ly0 = 1.0 - ly1
    lx0 = 1.0 - lx1
    y1 = tl.minimum(y0 + 1, H - 1)
    x1 = tl.minimum(x0 + 1, W - 1)
    o00 = y0.to(tl.int64) * sy + x0.to(tl.int64) * sx
    o01 = y0.to(tl.int64) * sy + x1.to(tl.int64) * sx
    o10 = y1.to(tl.int64) * sy + x0.to(tl.int64) * sx
    o11 = y1.to(tl.int64) * sy + x1.to(tl.int64) * sx
    m2 = kmask[:, None] & pmask[None, :]
    img = x_ptr + b.to(tl.int64) * sb
    rows = img + (k.to(tl.int64) * sc)[:, None]  # anchor 0, class k
    m00 = tl.load(rows + o00[None, :], mask=m2, other=0.0).to(tl.float32)
    m01 = tl.load(rows + o01[None, :], mask=m2, other=0.0).to(tl.float32)
    m10 = tl.load(rows + o10[None, :], mask=m2, other=0.0).to(tl.float32)
    m11 = tl.load(rows + o11[None, :], mask=m2, other=0.0).to(tl.float32)
    for a in range(1, A):  # (no .to() on scalar arguments: Triton may specialize them to constexpr 1)
        ra = img + ((a * K + k).to(tl.int64) * sc)[:, None]
        m00 = tl.maximum(m00, tl.load(ra + o00[None, :], mask=m2, other=0.0).to(tl.float32))
        m01 = tl.maximum(m01, tl.load(ra + o01[None, :], mask=m2, other=0.0).to(tl.float32))
        m10 = tl.maximum(m10, tl.load(ra + o10[None, :], mask=m2, other=0.0).to(tl.float32))
        m11 = tl.maximum(m11, tl.load(ra + o11[None, :], mask=m2, other=0.0).to(tl.float32))
    top = lx0[None, :] * m00 + lx1[None, :] * m01
    bot = lx0[None, :] * m10 + lx1[None, :] * m11
    return ly0[None, :] * top + ly1[None, :] * bot


@triton.jit
def _det_class_map_kernel(
        out_ptr, K, h, w, nlev,
        x0_ptr, H0, W0, A0, sb0, sc0, sy0, sx0, fh0, fw0,
        x1_ptr, H1, W1, A1, sb1, sc1, sy1, sx1, fh1, fw1,
        x2_ptr, H2, W2, A2, sb2, sc2, sy2, sx2, fh2, fw2,
        x3_ptr, H3, W3, A3, sb3, sc3, sy3, sx3, fh3, fw3,
        x4_ptr, H4, W4, A4, sb4, sc4, sy4, sx4, fh4, fw4,
        x5_ptr, H5, W5, A5, sb5, sc5, sy5, sx5, fh5, fw5,
        NUM_LEVELS: tl.constexpr, ACCUMULATE: tl.constexpr, FINAL: tl.constexpr, SOFTMAX: tl.constexpr,
        ONE_BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0)
    hw = h * w
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < hw
    i = p // w
    j = p - i * w
    out_b = out_ptr + b.to(tl.int64) * K * hw
    m_run = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    s_run = tl.zeros((BLOCK_P,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        m2 = kmask[:, None] & pmask[None, :]
        acc = _level_value(x0_ptr, b, k, kmask, i, j, pmask, K, H0, W0, A0, sb0, sc0, sy0, sx0, fh0, fw0)
        if NUM_LEVELS > 1:
            acc += _level_value(x1_ptr, b, k, kmask, i, j, pmask, K, H1, W1, A1, sb1, sc1, sy1, sx1, fh1, fw1)
        if NUM_LEVELS > 2:
            acc += _level_value(x2_ptr, b, k, kmask, i, j, pmask, K, H2, W2, A2, sb2, sc2, sy2, sx2, fh2, fw2)
        if NUM_LEVELS > 3:
            acc += _level_value(x3_ptr, b, k, kmask, i, j, pmask, K, H3, W3, A3, sb3, sc3, sy3, sx3, fh3, fw3)
        if NUM_LEVELS > 4:
            acc += _level_value(x4_ptr, b, k, kmask, i, j, pmask, K, H4, W4, A4, sb4, sc4, sy4, sx4, fh4, fw4)
        if NUM_LEVELS > 5:
            acc += _level_value(x5_ptr, b, k, kmask, i, j, pmask, K, H5, W5, A5, sb5, sc5, sy5, sx5, fh5, fw5)
        offs = k[:, None].to(tl.int64) * hw + p[None, :]
        if ACCUMULATE:
            acc += tl.load(out_b + offs, mask=m2, other=0.0)
        if FINAL:
            acc = tl.math.div_rn(acc, tl.zeros_like(acc) + nlev)
            if SOFTMAX:
                t = tl.where(kmask[:, None], acc, float("-inf"))
                if ONE_BLOCK:
                    mx = tl.max(t, axis=0)
                    e = tl.exp(t - mx[None, :])
                    s = tl.sum(e, axis=0)
                    acc = tl.math.div_rn(e, tl.zeros_like(e) + s[None, :])
                else:
                    m_new = tl.maximum(m_run, tl.max(t, axis=0))
                    s_run = s_run * tl.exp(m_run - m_new) + tl.sum(tl.exp(t - m_new[None, :]), axis=0)
                    m_run = m_new
        tl.store(out_b + offs, acc, mask=m2)
    if FINAL:
        if SOFTMAX:
            if not ONE_BLOCK:
                tl.debug_barrier()
                for k0 in range(0, K, BLOCK_K):
                    k = k0 + tl.arange(0, BLOCK_K)
                    m2 = (k < K)[:, None] & pmask[None, :]
                    offs = k[:, None].to(tl.int64) * hw + p[None, :]
                    x = tl.load(out_b + offs, mask=m2, other=0.0)
                    y = tl.math.div_rn(tl.exp(x - m_run[None, :]), tl.zeros_like(x) + s_run[None, :])
                    tl.store(out_b + offs, y, mask=m2)


def _level_args(x: torch.Tensor, A: int, h: int, w: int) -> list:
    _, _, H, W = (int(s) for s in x.shape)
    # float32 scales in / out, as PyTorch computes them (the launcher passes Python floats as fp32)
    return [x, H, W, int(A), x.stride(0), x.stride(1), x.stride(2), x.stride(3), H / h, W / w]


def det_class_map_triton(levels: Sequence[torch.Tensor], anchors: Sequence[int], size: Tuple[int, int],
                         softmax: bool = True, *, block_k: int | None = None,
                         block_p: int | None = None) -> torch.Tensor:
    """Validated levels (see :func:`kernels.det_class_map.check_det_levels`), one anchor count per
    level and the output size ``(h, w)`` -> float32 ``[B, K, h, w]`` on the levels' device.
    ``block_k`` / ``block_p`` override the tile heuristics (tests use them to cover several class
    blocks and pixel tiles on tiny shapes).  More than 6 levels: chained launches (see the module
    docstring)."""
    levels = list(levels)
    h, w = int(size[0]), int(size[1])
    B = int(levels[0].shape[0])
    K = int(levels[0].shape[1]) // int(anchors[0])
    out = torch.empty((B, K, h, w), dtype=torch.float32, device=levels[0].device)
    if B == 0 or K == 0:
        return out
    bk = block_k or min(next_pow2(K), BLOCK_K_MAX)
    bp = block_p or min(next_pow2(h * w), max(16, TILE // bk))
    one_block = bk >= K
    grid = (B, triton.cdiv(h * w, bp))
    L = len(levels)
    for c0 in range(0, L, MAX_LEVELS):
        chunk = list(range(c0, min(c0 + MAX_LEVELS, L)))
        args = []
        for l in chunk:
            args += _level_args(levels[l], anchors[l], h, w)
        for _ in range(MAX_LEVELS - len(chunk)):  # unused slots: pruned at compile time
            args += [levels[chunk[0]], 1, 1, 1, 0, 0, 0, 0, 1.0, 1.0]
        _det_class_map_kernel[grid](out, K, h, w, float(L), *args,
                                    NUM_LEVELS=len(chunk), ACCUMULATE=c0 > 0, FINAL=c0 + MAX_LEVELS >= L,
                                    SOFTMAX=bool(softmax), ONE_BLOCK=one_block, BLOCK_K=bk, BLOCK_P=bp,
                                    **LAUNCH_OPTS)
    return out
