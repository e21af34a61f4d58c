"""Mosaic construction: one masked copy of the feature map per grid cell.

For the flattened cell index ``n = b*H*W + i*W + j`` (over the whole batch)
the mosaic entry is ``M[n] = F[b] * m_p`` with shape ``[C, H, W]``.  A chunk
``[start, start + count)`` of cells may span several images.
"""
from __future__ import annotations

import numpy as np
import torch

from ._compat import JIT_OPTS, as_index, check_feature, njit, pick_backend, prange
from .masks import resolve_kernel

__all__ = ["mosaic_numba", "mosaic_torch", "build_mosaic"]


@njit(**JIT_OPTS)
def mosaic_numba(feature, start, count, kernel, out):
    """Numba kernel.  feature: f32 C-contig [B, C, H, W]; kernel: f32 [k, k];
    out: f32 C-contig [count, C, H, W] (fully overwritten).

    Parallel over (cell, channel) planes: each plane is zero-filled (a memset
    LLVM emits for the contiguous loop) and then only the <= k*k window is
    written.  Consecutive iterations touch consecutive planes, so the output
    is streamed sequentially by each thread.
    """
    B, C, H, W = feature.shape
    HW = H * W
    k = kernel.shape[0]
    r = k // 2
    f3 = feature.reshape(B, C, HW)
    o3 = out.reshape(count, C, HW)
    for t in prange(count * C):
        cell = t // C
        c = t - cell * C
        n = start + cell
        b = n // HW
        p = n - b * HW
        i = p // W
        j = p - i * W
        for q in range(HW):
            o3[cell, c, q] = np.float32(0.0)
        for u in range(k):
            qi = i + u - r
            if qi < 0 or qi >= H:
                continue
            for v in range(k):
                qj = j + v - r
                if qj < 0 or qj >= W:
                    continue
                q = qi * W + qj
                o3[cell, c, q] = f3[b, c, q] * kernel[u, v]


def _cell_masks(H: int, W: int, start: int, count: int, kernel: torch.Tensor) -> torch.Tensor:
    """[count, H, W] masks for cells start..start+count-1 (torch ops only)."""
    dev, dt = kernel.device, kernel.dtype
    k = int(kernel.shape[0])
    r = k // 2
    n = torch.arange(start, start + count, device=dev)
    p = n % (H * W)
    i = p // W
    j = p % W
    # Scatter the kernel into a zero-padded canvas, then crop: the padded
    # position (i + u, j + v) is grid cell (i + u - r, j + v - r).
    canvas = torch.zeros((count, H + 2 * r, W + 2 * r), dtype=dt, device=dev)
    ar = torch.arange(k, device=dev)
    rows = (i[:, None, None] + ar[None, :, None]).expand(count, k, k)
    cols = (j[:, None, None] + ar[None, None, :]).expand(count, k, k)
    idx = torch.arange(count, device=dev)[:, None, None].expand(count, k, k)
    canvas[idx, rows, cols] = kernel.expand(count, k, k)
    return canvas[:, r:r + H, r:r + W]


def mosaic_torch(feature: torch.Tensor, start: int, count: int, kernel, out: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch twin of :func:`mosaic_numba`: any device / floating dtype.

    Returns ``[count, C, H, W]`` in ``feature``'s dtype and device (written
    into ``out`` when given).  Note: non-window positions are ``F * 0``, so a
    non-finite feature value yields NaN there (Numba writes exact zeros).
    """
    B, C, H, W = (int(s) for s in feature.shape)
    HW = H * W
    kt = torch.as_tensor(np.asarray(kernel) if not isinstance(kernel, torch.Tensor) else kernel)
    kt = kt.to(device=feature.device, dtype=feature.dtype)
    if count == 0:
        if out is None:
            out = torch.empty((0, C, H, W), dtype=feature.dtype, device=feature.device)
        return out
    masks = _cell_masks(H, W, start, count, kt)
    # One broadcast multiply per image the chunk touches (no gathered copy of F).
    segments = []
    for b in range(start // HW, (start + count - 1) // HW + 1):
        s = max(start, b * HW) - start
        e = min(start + count, (b + 1) * HW) - start
        segments.append((b, s, e))
    if out is None and feature.requires_grad and torch.is_grad_enabled():
        # out= is not differentiable: build the pieces and concatenate.
        pieces = [feature[b].unsqueeze(0) * masks[s:e].unsqueeze(1) for b, s, e in segments]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if out is None:
        out = torch.empty((count, C, H, W), dtype=feature.dtype, device=feature.device)
    for b, s, e in segments:
        torch.mul(feature[b].unsqueeze(0), masks[s:e].unsqueeze(1), out=out[s:e])
    return out


def build_mosaic(
    feature: torch.Tensor,
    start: int,
    count: int,
    mask,
    out: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """Mosaic for cells ``[start, start + count)`` -> tensor ``[count, C, H, W]``.

    ``mask``: ``"1x1"`` | ``"gaussian"`` (``"3x3"``) | a square odd ``[k, k]`` array.
    ``backend``: "auto" | "numba" | "torch" | "triton".  "auto": CUDA float32/16/bf16 ->
    Triton kernel (when triton is installed), CPU float32 with a contiguous output -> Numba
    kernel, zero-copy; anything else -> :func:`mosaic_torch`.  "triton" also runs on CPU
    tensors when TRITON_INTERPRET=1 (Triton's interpreter, for tests).
    ``out``, if given, must be ``[count, C, H, W]`` with the feature's dtype and device; it is
    filled in its own layout (contiguous or channels-last) and returned.  Without ``out`` the
    result is allocated in ``memory_format`` (default ``torch.contiguous_format``; pass
    ``torch.channels_last`` when the head runs channels-last).
    """
    B, C, H, W = check_feature(feature)
    N = B * H * W
    start = as_index(start, "start")
    count = as_index(count, "count")
    if not (0 <= start <= N) or count < 0 or start + count > N:
        raise ValueError(
            f"cell range [start={start}, start+count={start + count}) is outside [0, {N}] "
            f"(B*H*W = {B}*{H}*{W})"
        )
    kernel = resolve_kernel(mask)
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != (count, C, H, W) or out.dtype != feature.dtype or out.device != feature.device:
            raise ValueError(
                f"out must be a {feature.dtype} tensor of shape {(count, C, H, W)} on {feature.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
    fmt = torch.contiguous_format if memory_format is None else memory_format
    path = pick_backend(backend, feature, *(() if out is None else (out,)))
    if path == "numba":
        contiguous_out = out.is_contiguous() if out is not None else fmt == torch.contiguous_format
        if not contiguous_out:
            if backend == "numba":
                raise ValueError("out must be contiguous for the numba backend")
            path = "torch"  # auto: the twin writes any layout
    if path == "triton":
        from .triton_common import flat_spatial

        if out is not None and not flat_spatial(out):
            if backend == "triton":
                raise ValueError("out must be contiguous or channels-last for the triton backend")
            path = "torch"
    if path == "torch":
        if out is None and fmt != torch.contiguous_format and not (feature.requires_grad and torch.is_grad_enabled()):
            out = torch.empty((count, C, H, W), dtype=feature.dtype, device=feature.device, memory_format=fmt)
        return mosaic_torch(feature, start, count, kernel, out=out)
    if path == "triton":
        from .triton_mosaic import mosaic_triton

        if out is None:
            out = torch.empty((count, C, H, W), dtype=feature.dtype, device=feature.device, memory_format=fmt)
        return mosaic_triton(feature.detach(), start, count, kernel, out)
    f = feature.detach().contiguous().numpy()
    if out is None:
        out = torch.empty((count, C, H, W), dtype=torch.float32)
    mosaic_numba(f, start, count, kernel, out.detach().numpy())
    return out
