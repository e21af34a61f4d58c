"""Triton twins of the fused epilogue (:func:`kernels.epilogue.epilogue_numba`) and of the
per-map normalisation (:func:`kernels.normalize.normalize_numba`).

Epilogue, one launch: logits ``[B*H*W, K]`` (any float dtype and strides) -> score
(softmax / sigmoid / none, computed in float32) -> transposed raw maps ``[B, K, H, W]`` float32
-> per-map min-max -> uint8 ``[B, K, H, W]`` (the exact float32 formula of
:mod:`kernels.normalize`, NaNs ignored for min/max and mapped to 0).

Grid ``(B, G)``: program ``(b, g)`` owns image ``b`` and a contiguous group of the
``NKB = cdiv(K, BLOCK_K)`` class blocks (``G`` groups; ``G = NKB`` unless softmax, see below).

1. softmax only: row statistics of the image's ``H*W`` cells, max and sum of ``exp(x - max)``
   over all ``K`` classes (two passes over ``[BLOCK_Q, BLOCK_KS]`` tiles), stored in a small
   float32 scratch ``[B, G, H*W, 2]`` private to the program.  Every group of an image recomputes
   them, so ``G`` trades parallelism against re-reading the logits: the launcher picks
   ``G ~ 4 * SMs / B`` (at most ``NKB``).
2. per class block (``BLOCK_K`` classes) of the group: walk the cells in ``BLOCK_Q`` tiles,
   score the ``[BLOCK_Q, BLOCK_K]`` tile, store it transposed into the raw maps (``q`` is the
   contiguous axis of ``[B, K, H*W]``), keep running per-class min/max in registers;
3. then (after a CTA barrier, so the program's own raw stores are visible to all its threads)
   walk the tiles again: reload the raw values, write uint8.

Division is IEEE (``div_rn``) and FMA contraction is off, as in the float32 contract.  ``exp``
is Triton's (on NVIDIA ``ex2.approx`` based), so scores may differ from torch's by an ulp or
two: raw maps agree to ~1e-6 relative, uint8 within 1.

Normalize: grid ``(M,)``, one program per map ``[H*W]``: min/max over ``BLOCK`` tiles, then the
uint8 pass.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import LAUNCH_OPTS, next_pow2

__all__ = ["epilogue_triton", "normalize_triton", "launch_groups"]

SCORE_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}
BLOCK_Q_MAX = 64
BLOCK_K_MAX = 64
STATS_TILE = 8192  # elements of a [BLOCK_Q, BLOCK_KS] row-statistics tile
NORMALIZE_BLOCK_MAX = 1024


@triton.jit
def _to_u8(y, mn, denom):
    """u = clamp(floor(((y - mn) / denom) * 255), 0, 255) -> uint8; NaN -> 0 (float32)."""
    u = tl.floor(tl.math.div_rn(y - mn, tl.zeros_like(y) + denom) * 255.0)
    u = tl.where(u >= 0.0, u, 0.0)  # negative or NaN -> 0
    u = tl.minimum(u, 255.0)
    return u.to(tl.uint8)


@triton.jit
def _epilogue_kernel(x_ptr, raw_ptr, u8_ptr, st_ptr, K, HW, sxn, sxk, NKB, KB_PER_GROUP,
                     SCORE: tl.constexpr, NORMALIZE: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_KS: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    G = tl.num_programs(1)
    row0 = b.to(tl.int64) * HW
    st_base = st_ptr + (b.to(tl.int64) * G + g) * HW * 2
    if SCORE == 1:
        for q0 in range(0, HW, BLOCK_Q):
            q = q0 + tl.arange(0, BLOCK_Q)
            qmask = q < HW
            rows = (row0 + q) * sxn
            m = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
            for k0 in range(0, K, BLOCK_KS):
                kk = k0 + tl.arange(0, BLOCK_KS)
                t = tl.load(x_ptr + rows[:, None] + kk[None, :].to(tl.int64) * sxk,
                            mask=qmask[:, None] & (kk < K)[None, :], other=float("-inf")).to(tl.float32)
                m = tl.maximum(m, tl.max(t, axis=1))
            m = tl.where(qmask, m, 0.0)  # padding rows: keep them finite (no inf - inf)
            s = tl.zeros((BLOCK_Q,), tl.float32)
            for k0 in range(0, K, BLOCK_KS):
                kk = k0 + tl.arange(0, BLOCK_KS)
                t = tl.load(x_ptr + rows[:, None] + kk[None, :].to(tl.int64) * sxk,
                            mask=qmask[:, None] & (kk < K)[None, :], other=float("-inf")).to(tl.float32)
                s += tl.sum(tl.exp(t - m[:, None]), axis=1)
            tl.store(st_base + q * 2, m, mask=qmask)
            tl.store(st_base + q * 2 + 1, s, mask=qmask)
        tl.debug_barrier()
    kb_lo = g * KB_PER_GROUP
    kb_hi = tl.minimum(kb_lo + KB_PER_GROUP, NKB)
    for kb in range(kb_lo, kb_hi):
        k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        kmask = k < K
        maps = (b.to(tl.int64) * K + k) * HW  # offset of map (b, k) in [B, K, HW]
        mn = tl.full((BLOCK_K,), float("inf"), tl.float32)
        mx = tl.full((BLOCK_K,), float("-inf"), tl.float32)
        for q0 in range(0, HW, BLOCK_Q):
            q = q0 + tl.arange(0, BLOCK_Q)
            qmask = q < HW
            valid = qmask[:, None] & kmask[None, :]
            x = tl.load(x_ptr + ((row0 + q) * sxn)[:, None] + k[None, :].to(tl.int64) * sxk,
                        mask=valid, other=0.0).to(tl.float32)
            if SCORE == 1:
                m = tl.load(st_base + q * 2, mask=qmask, other=0.0)
                s = tl.load(st_base + q * 2 + 1, mask=qmask, other=1.0)
                y = tl.math.div_rn(tl.exp(x - m[:, None]), tl.zeros_like(x) + s[:, None])
            elif SCORE == 2:
                y = tl.math.div_rn(tl.zeros_like(x) + 1.0, 1.0 + tl.exp(-x))
            else:
                y = x
            out = maps[None, :] + q[:, None]
            tl.store(raw_ptr + out, y, mask=valid)
            if NORMALIZE:
                ok = valid & (y == y)
                mn = tl.minimum(mn, tl.min(tl.where(ok, y, float("inf")), axis=0))
                mx = tl.maximum(mx, tl.max(tl.where(ok, y, float("-inf")), axis=0))
        if NORMALIZE:
            tl.debug_barrier()
            mn = tl.where(kmask, mn, 0.0)  # padding classes: keep them finite
            mx = tl.where(kmask, mx, 0.0)
            denom = (mx - mn) + 1e-12
            for q0 in range(0, HW, BLOCK_Q):
                q = q0 + tl.arange(0, BLOCK_Q)
                valid = (q < HW)[:, None] & kmask[None, :]
                out = maps[None, :] + q[:, None]
                y = tl.load(raw_ptr + out, mask=valid, other=0.0)
                tl.store(u8_ptr + out, _to_u8(y, mn[None, :], denom[None, :]), mask=valid)


@triton.jit
def _normalize_kernel(x_ptr, u8_ptr, HW, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * HW
    mn = tl.full((BLOCK,), float("inf"), tl.float32)
    mx = tl.full((BLOCK,), float("-inf"), tl.float32)
    for q0 in range(0, HW, BLOCK):
        q = q0 + tl.arange(0, BLOCK)
        qmask = q < HW
        y = tl.load(x_ptr + base + q, mask=qmask, other=0.0).to(tl.float32)
        ok = qmask & (y == y)
        mn = tl.minimum(mn, tl.where(ok, y, float("inf")))
        mx = tl.maximum(mx, tl.where(ok, y, float("-inf")))
    lo = tl.min(mn, axis=0)
    hi = tl.max(mx, axis=0)
    denom = (hi - lo) + 1e-12
    for q0 in range(0, HW, BLOCK):
        q = q0 + tl.arange(0, BLOCK)
        qmask = q < HW
        y = tl.load(x_ptr + base + q, mask=qmask, other=0.0).to(tl.float32)
        tl.store(u8_ptr + base + q, _to_u8(y, lo, denom), mask=qmask)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1  # interpreter: programs run one after another; fewest groups is fastest


def launch_groups(B: int, nkb: int, softmax: bool, device: torch.device, groups: int | None = None) -> tuple[int, int]:
    """(G, class blocks per group).  Softmax recomputes the row statistics once per group,
    so it uses about 4 programs per SM and no more; other scores use one block per program."""
    if groups is None:
        groups = min(nkb, max(1, -(-4 * _sm_count(device) // B))) if softmax else nkb
    groups = max(1, min(int(groups), nkb))
    per_group = -(-nkb // groups)
    return -(-nkb // per_group), per_group


def epilogue_triton(logits: torch.Tensor, B: int, H: int, W: int, score: str, normalize: bool = True,
                    *, groups: int | None = None, block_k: int | None = None,
                    block_q: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B*H*W, K] (float32/16/bf16, any strides) -> (raw float32 [B, K, H, W],
    uint8 [B, K, H, W] or None).  ``groups`` / ``block_k`` / ``block_q`` override the launch
    heuristics (tests use them to cover several groups, blocks and tiles on tiny shapes)."""
    code = SCORE_CODES[score]
    HW = H * W
    K = int(logits.shape[1])
    dev = logits.device
    raw = torch.empty((B, K, H, W), dtype=torch.float32, device=dev)
    u8 = torch.empty((B, K, H, W), dtype=torch.uint8, device=dev) if normalize else None
    if B * HW == 0 or K == 0:
        return raw, u8
    bq = block_q or min(next_pow2(HW), BLOCK_Q_MAX)
    bk = block_k or min(next_pow2(K), BLOCK_K_MAX)
    bks = min(next_pow2(K), max(16, STATS_TILE // bq))
    nkb = triton.cdiv(K, bk)
    G, per_group = launch_groups(B, nkb, code == 1, dev, groups)
    stats = torch.empty((B * G * HW * 2,) if code == 1 else (1,), dtype=torch.float32, device=dev)
    _epilogue_kernel[(B, G)](logits, raw, u8 if normalize else raw, stats, K, HW,
                             logits.stride(0), logits.stride(1), nkb, per_group,
                             SCORE=code, NORMALIZE=bool(normalize),
                             BLOCK_Q=bq, BLOCK_K=bk, BLOCK_KS=bks, **LAUNCH_OPTS)
    return raw, u8


def normalize_triton(maps: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
    """uint8 maps, per map over the last two dims (any leading shape); float32/16/bf16 input."""
    H, W = int(maps.shape[-2]), int(maps.shape[-1])
    out = torch.empty(maps.shape, dtype=torch.uint8, device=maps.device)
    M = maps.numel() // max(1, H * W)
    if maps.numel() == 0:
        return out.zero_()
    src = maps.contiguous()
    blk = block or min(next_pow2(H * W), NORMALIZE_BLOCK_MAX)
    _normalize_kernel[(M,)](src, out, H * W, BLOCK=blk, **LAUNCH_OPTS)
    return out
