"""GAP-pooled Recipro-CAM vectors, computed without materialising the mosaic.

``P[n, c] = sum_q m_p(q) * F[b, c, q] / (H*W)`` for every cell
``n = b*H*W + i*W + j``: a depthwise correlation of each channel plane with
the mask kernel (zero padding), divided by ``H*W`` and laid out cell-major
``[B*H*W, C]`` (ready to feed the classifier head).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._compat import JIT_OPTS, check_feature, njit, pick_backend, prange
from .masks import resolve_kernel

__all__ = ["gap_pool_numba", "gap_pool_torch", "gap_pooled"]

#: Channels per parallel task in :func:`gap_pool_numba`.
CHANNEL_BLOCK = 64


@njit(**JIT_OPTS)
def gap_pool_numba(feature, kernel, out):
    """Numba kernel.  feature: f32 C-contig [B, C, H, W]; kernel: f32 [k, k];
    out: f32 C-contig [B*H*W, C] (fully overwritten).

    Parallel over (image, block of CHANNEL_BLOCK channels); per task:

    1. transpose the block's planes into a channels-last buffer ``T[HW, cb]``
       (cb read streams, contiguous writes; L1/L2 resident);
    2. for each kernel tap (u, v) and each grid row i, the valid cells of the
       row map to one contiguous span of ``T`` and of the accumulator
       ``A[HW, cb]``, so ``A[span] += w * T[span shifted]`` is a single long
       unit-stride loop (vectorised, loop overhead amortised);
    3. store ``A / (H*W)`` as contiguous runs ``out[n, c0:c0+cb]``.

    Each output sums its window taps in row-major order, in float32.
    """
    B, C, H, W = feature.shape
    HW = H * W
    k = kernel.shape[0]
    r = k // 2
    hw = np.float32(HW)
    CB = CHANNEL_BLOCK
    nblk = (C + CB - 1) // CB
    f3 = feature.reshape(B, C, HW)
    for task in prange(B * nblk):
        b = task // nblk
        c0 = (task - b * nblk) * CB
        cb = min(CB, C - c0)
        src = f3[b, c0:c0 + cb]
        T = np.empty(HW * cb, dtype=np.float32)
        for q in range(HW):
            for c in range(cb):
                T[q * cb + c] = src[c, q]
        A = np.zeros(HW * cb, dtype=np.float32)
        for u in range(k):
            du = u - r
            i_lo = max(0, -du)
            i_hi = min(H, H - du)
            for v in range(k):
                dv = v - r
                j_lo = max(0, -dv)
                j_hi = min(W, W - dv)
                if j_hi <= j_lo or i_hi <= i_lo:
                    continue
                w = kernel[u, v]
                span = (j_hi - j_lo) * cb
                for i in range(i_lo, i_hi):
                    a0 = (i * W + j_lo) * cb
                    t0 = ((i + du) * W + j_lo + dv) * cb
                    Ad = A[a0:a0 + span]
                    Ts = T[t0:t0 + span]
                    for x in range(span):
                        Ad[x] += w * Ts[x]
        for q in range(HW):
            orow = out[b * HW + q, c0:c0 + cb]
            Aq = A[q * cb:(q + 1) * cb]
            for c in range(cb):
                orow[c] = Aq[c] / hw


def gap_pool_torch(feature: torch.Tensor, kernel) -> torch.Tensor:
    """PyTorch twin of :func:`gap_pool_numba` (depthwise ``conv2d``); any device
    / floating dtype.  Returns a contiguous ``[B*H*W, C]`` tensor."""
    B, C, H, W = (int(s) for s in feature.shape)
    kt = torch.as_tensor(np.asarray(kernel) if not isinstance(kernel, torch.Tensor) else kernel)
    kt = kt.to(device=feature.device, dtype=feature.dtype)
    k = int(kt.shape[0])
    if k == 1:
        pooled = feature * kt[0, 0]
    else:
        weight = kt.expand(C, 1, k, k).contiguous()
        pooled = F.conv2d(feature, weight, padding=k // 2, groups=C)
    pooled = pooled / (H * W)
    return pooled.permute(0, 2, 3, 1).reshape(B * H * W, C)


def gap_pooled(feature: torch.Tensor, mask, *, backend: str = "auto") -> torch.Tensor:
    """GAP-pooled vectors ``[B*H*W, C]`` for every cell of every image.

    ``mask``: ``"1x1"`` | ``"gaussian"`` (``"3x3"``) | a square odd ``[k, k]`` array.
    ``backend``: "auto" | "numba" | "torch" | "triton".  "auto": CUDA float32/16/bf16 ->
    Triton kernel (result in the feature's dtype), CPU float32 (not requiring grad) -> Numba;
    anything else -> torch twin.  "triton" runs on CPU tensors under TRITON_INTERPRET=1.
    """
    B, C, H, W = check_feature(feature)
    kernel = resolve_kernel(mask)
    path = pick_backend(backend, feature)
    if path == "torch":
        return gap_pool_torch(feature, kernel)
    if path == "triton":
        from .triton_gap_pool import gap_pool_triton

        return gap_pool_triton(feature.detach(), kernel)
    out = torch.empty((B * H * W, C), dtype=torch.float32)
    gap_pool_numba(feature.detach().contiguous().numpy(), kernel, out.numpy())
    return out
