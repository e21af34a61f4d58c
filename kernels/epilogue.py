"""Epilogue: head logits of every cell -> raw saliency maps (+ uint8 maps).

``logits`` is ``[B*H*W, K]`` with row ``n = b*H*W + i*W + j``.  Raw maps are
``R[b, k, i, j] = score(logits[n])[k]`` (float32 ``[B, K, H, W]``) with score
``softmax`` (max-subtracted) | ``sigmoid`` | ``none``; optionally normalised
per map to uint8 with the formula in :mod:`.normalize`.
"""
from __future__ import annotations

import numpy as np
import torch

from ._compat import JIT_OPTS, njit, pick_backend, prange
from ._vmath import lane_max, lane_sum, vexp
from .normalize import normalize_plane, normalize_torch

__all__ = ["SCORES", "score_code", "epilogue_numba", "epilogue_torch", "score_maps"]

#: score name -> integer code used by :func:`epilogue_numba`.
SCORES = {"none": 0, "softmax": 1, "sigmoid": 2}

#: Cells per phase-1 tile in :func:`epilogue_numba`.
ROW_TILE = 16

_ONE = np.float32(1.0)
_MINUS_ONE = np.float32(-1.0)
_ZERO = np.float32(0.0)


def score_code(score: str) -> int:
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid scores: {', '.join(repr(s) for s in SCORES)}")
    return SCORES[score]


@njit(**JIT_OPTS)
def epilogue_numba(logits, B, H, W, score_code, raw_out, u8_out, do_normalize):
    """Numba kernel.

    logits: f32 C-contig [B*H*W, K]; score_code: 0 none, 1 softmax, 2 sigmoid;
    raw_out: f32 C-contig [B, K, H, W]; u8_out: uint8 C-contig [B, K, H, W]
    (may be a 0-size 4-D dummy when ``do_normalize`` is False).

    Phase 1, parallel over tiles of ROW_TILE consecutive cells (rows) of one
    image: score each row into a contiguous tile buffer with vectorised
    helpers (:mod:`._vmath`: max, exp, sum), then transpose the tile into
    ``raw_out[b, k, q0:q0+tile]`` (contiguous runs instead of a stride-H*W
    scatter per value).  Phase 2, parallel over the B*K maps: min/max + uint8.
    """
    N, K = logits.shape
    HW = H * W
    TQ = ROW_TILE
    ntile = (HW + TQ - 1) // TQ
    raw3 = raw_out.reshape(B, K, HW)
    for task in prange(B * ntile):
        b = task // ntile
        q0 = (task - b * ntile) * TQ
        tq = min(TQ, HW - q0)
        buf = np.empty((tq, K), dtype=np.float32)
        ibits = np.empty(K, dtype=np.int32)
        fbits = ibits.view(np.float32)
        for t in range(tq):
            row = logits[b * HW + q0 + t]
            brow = buf[t]
            if score_code == 1:
                mx = lane_max(row)
                vexp(row, brow, ibits, fbits, _ONE, mx)
                s = lane_sum(brow)
                for kk in range(K):
                    brow[kk] = brow[kk] / s
            elif score_code == 2:
                vexp(row, brow, ibits, fbits, _MINUS_ONE, _ZERO)
                for kk in range(K):
                    brow[kk] = _ONE / (_ONE + brow[kk])
            else:
                for kk in range(K):
                    brow[kk] = row[kk]
        for kk in range(K):
            dst = raw3[b, kk]
            for t in range(tq):
                dst[q0 + t] = buf[t, kk]
    if do_normalize:
        u3 = u8_out.reshape(B, K, HW)
        for m in prange(B * K):
            b = m // K
            kk = m - b * K
            normalize_plane(raw3[b, kk], u3[b, kk])


def epilogue_torch(logits: torch.Tensor, B: int, H: int, W: int, score: str, normalize: bool = True):
    """PyTorch twin of :func:`epilogue_numba`; any device / floating dtype
    (computed in float32).  Returns ``(raw [B, K, H, W] f32, uint8 or None)``."""
    code = score_code(score)
    x = logits.to(torch.float32)
    if code == 1:
        s = torch.softmax(x, dim=1)
    elif code == 2:
        s = torch.sigmoid(x)
    else:
        s = x
    K = int(x.shape[1])
    raw = s.reshape(B, H, W, K).permute(0, 3, 1, 2).contiguous()
    return raw, (normalize_torch(raw) if normalize else None)


def score_maps(
    logits: torch.Tensor,
    B: int,
    H: int,
    W: int,
    score: str,
    normalize: bool = True,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``[B*H*W, K]`` -> ``(raw float32 [B, K, H, W], uint8 [B, K, H, W] or None)``.

    ``score``: "softmax" | "sigmoid" | "none".  ``backend``: "auto" | "numba" | "torch" |
    "triton".  "auto": CUDA float32/16/bf16 -> one fused Triton kernel; CPU float32 (not
    requiring grad) -> fused Numba kernel; anything else -> :func:`epilogue_torch`.  Scores are
    computed in float32 whatever the logits' dtype.  "triton" runs on CPU tensors under
    TRITON_INTERPRET=1.
    """
    code = score_code(score)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be a 2-D tensor [B*H*W, K], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    B, H, W = int(B), int(H), int(W)
    if B < 1 or H < 1 or W < 1:
        raise ValueError(f"B, H, W must be positive, got {(B, H, W)}")
    N, K = int(logits.shape[0]), int(logits.shape[1])
    if N != B * H * W:
        raise ValueError(f"logits has {N} rows but B*H*W = {B}*{H}*{W} = {B * H * W}")
    if K < 1:
        raise ValueError("logits must have at least one column (K >= 1)")
    path = pick_backend(backend, logits)
    if path == "torch":
        return epilogue_torch(logits, B, H, W, score, normalize)
    if path == "triton":
        from .triton_epilogue import epilogue_triton

        return epilogue_triton(logits.detach(), B, H, W, score, normalize)
    raw = torch.empty((B, K, H, W), dtype=torch.float32)
    if normalize:
        u8 = torch.empty((B, K, H, W), dtype=torch.uint8)
        u8_np = u8.numpy()
    else:
        u8 = None
        u8_np = np.empty((0, 0, 0, 0), dtype=np.uint8)
    epilogue_numba(logits.detach().contiguous().numpy(), B, H, W, code, raw.numpy(), u8_np, bool(normalize))
    return raw, u8
