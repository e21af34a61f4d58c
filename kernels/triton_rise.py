"""Triton twin of :func:`kernels.rise.rise_masked_batch_torch`: RISE masks made and applied in one pass.

For masks ``m`` with grids ``G_m`` [n, n] and shifts ``(sy_m, sx_m)``, and one image ``x`` [C, H, W]:

    mask_m[h, w] = clip(sum_{i,j} Wy[sy_m + h, i] * G_m[i, j] * Wx[sx_m + w, j], 0, 1)
    out[m, c, h, w] = mask_m[h, w] * x[c, h, w]

``Wy`` [(n+1) cell_h, n] and ``Wx`` are the bilinear interpolation matrices of
:func:`kernels.rise.linear_matrix` (OpenCV INTER_LINEAR: half-pixel centers, clamped edges), so
``mask_m`` is :class:`kernels.rise.MaskMaker`'s mask (= OpenCV's upsampled grid cropped at the shift,
clipped).  A row of ``Wy`` has two taps: output row ``Y`` reads grid rows ``y0 = left(Y)`` and
``y1 = min(y0 + 1, n - 1)`` with float32 weights ``wy0 = 1 - frac(Y)``, ``wy1 = frac(Y)``
(:func:`kernels.rise.linear_taps`, computed in float64 on the host and rounded to float32: the
same values as the float32 matrices).  The kernel gathers the four grid values per pixel and sums
in the order of the two matmuls (``Ry @ G`` first, then ``@ Rx^T``):

    t0 = wy0 * G[y0, x0] + wy1 * G[y1, x0];  t1 = wy0 * G[y0, x1] + wy1 * G[y1, x1]
    mask = clip(t0 * wx0 + t1 * wx1, 0, 1)

(no FMA contraction; the matmuls may contract, so float32 masks agree to an ulp or so, not bitwise).
The mask value is multiplied by ``float32(x)`` and rounded once to the output dtype.  No ``[m, H, W]``
mask tensor is needed: with ``out_masks`` the masks are also stored, ``[m, H*W]`` float32 (what
RISE's accumulation matmul reads), otherwise only the masked batch is written.

Grid ``(m * cdiv(H*W, BLOCK_Q),)``: one program per (mask, tile of ``BLOCK_Q`` pixels); it computes
the tile's mask values once and writes them for every channel.  Offsets that scale with ``m``
(outputs, grids, shifts) are int64.  Preconditions (checked by the wrapper where the shifts are on
the host): ``0 <= sy < cell_h``, ``0 <= sx < cell_w``, so ``sy + h`` stays inside ``Wy``.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
import triton
import triton.language as tl

from .rise import cell_size, linear_tap_table
from .triton_common import LAUNCH_OPTS, next_pow2

__all__ = ["rise_masked_batch_triton"]

BLOCK_Q_MAX = 1024

_TAPS: dict = {}
_LOCK = threading.Lock()


@triton.jit
def _rise_kernel(g_ptr, s_ptr, yi_ptr, yw_ptr, xi_ptr, xw_ptr, x_ptr, o_ptr, mk_ptr,
                 C, H, W, N, TILES,
                 STORE_MASKS: tl.constexpr, BLOCK_Q: tl.constexpr):
    pid = tl.program_id(0)
    mi = pid // TILES
    t = pid - mi * TILES
    m64 = mi.to(tl.int64)
    HW = H * W
    q = t * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < HW
    h = q // W
    w = q - h * W
    sy = tl.load(s_ptr + m64 * 2)
    sx = tl.load(s_ptr + m64 * 2 + 1)
    ry = (sy + h) * 2  # row of the [L, 2] tap tables
    rx = (sx + w) * 2
    y0 = tl.load(yi_ptr + ry, mask=qmask, other=0)
    y1 = tl.load(yi_ptr + ry + 1, mask=qmask, other=0)
    wy0 = tl.load(yw_ptr + ry, mask=qmask, other=0.0)
    wy1 = tl.load(yw_ptr + ry + 1, mask=qmask, other=0.0)
    x0 = tl.load(xi_ptr + rx, mask=qmask, other=0)
    x1 = tl.load(xi_ptr + rx + 1, mask=qmask, other=0)
    wx0 = tl.load(xw_ptr + rx, mask=qmask, other=0.0)
    wx1 = tl.load(xw_ptr + rx + 1, mask=qmask, other=0.0)
    g = g_ptr + m64 * N * N
    g00 = tl.load(g + (y0 * N + x0), mask=qmask, other=0.0)
    g01 = tl.load(g + (y0 * N + x1), mask=qmask, other=0.0)
    g10 = tl.load(g + (y1 * N + x0), mask=qmask, other=0.0)
    g11 = tl.load(g + (y1 * N + x1), mask=qmask, other=0.0)
    t0 = wy0 * g00 + wy1 * g10  # (Ry @ G)[h, x0]
    t1 = wy0 * g01 + wy1 * g11  # (Ry @ G)[h, x1]
    v = t0 * wx0 + t1 * wx1
    v = tl.minimum(tl.maximum(v, 0.0), 1.0)
    if STORE_MASKS:
        tl.store(mk_ptr + m64 * HW + q, v, mask=qmask)
    o_base = o_ptr + m64 * C * HW + q
    for c in range(0, C):
        xv = tl.load(x_ptr + c * HW + q, mask=qmask, other=0.0)
        tl.store(o_base + c * HW, (v * xv.to(tl.float32)).to(o_ptr.dtype.element_ty), mask=qmask)


def device_taps(input_hw, num_cells: int, device: torch.device):
    """(y index [Ly, 2] int32, y weights [Ly, 2] float32, x index, x weights) on ``device``, cached."""
    key = (int(input_hw[0]), int(input_hw[1]), int(num_cells), str(device))
    with _LOCK:
        taps = _TAPS.get(key)
        if taps is None:
            ch, cw = cell_size(input_hw, num_cells)
            taps = tuple(t.to(device) for t in (*linear_tap_table((num_cells + 1) * ch, num_cells),
                                                 *linear_tap_table((num_cells + 1) * cw, num_cells)))
            _TAPS[key] = taps
    return taps


def rise_masked_batch_triton(grids, shifts, x: torch.Tensor, num_cells: int, out_masks: bool = True, *,
                             out: torch.Tensor | None = None, block_q: int | None = None):
    """``(batch [m, C, H, W], masks [m, H*W] float32 or None)``: the masked images ``mask_m * x``
    in ``x``'s dtype (or ``out``'s: contiguous [m, C, H, W]) and, with ``out_masks``, the masks.
    ``grids``: [m, n, n] (numpy or tensor; 0/1 draws, any float values work), ``shifts``: [m, 2]
    integer (sy, sx) with ``0 <= sy < cell_h``, ``0 <= sx < cell_w``; ``x``: [C, H, W]
    float32/float16/bfloat16 on a CUDA device (or CPU under TRITON_INTERPRET=1).
    ``block_q`` (a power of two) overrides the tile (tests)."""
    if x.ndim != 3:
        raise ValueError(f"x must be one image [C, H, W], got shape {list(x.shape)}")
    C, H, W = (int(s) for s in x.shape)
    n = int(num_cells)
    device = x.device
    g = torch.as_tensor(grids)
    s = torch.as_tensor(shifts)
    m = int(g.shape[0])
    if g.shape != (m, n, n) or s.shape != (m, 2):
        raise ValueError(f"grids must be [m, {n}, {n}] and shifts [m, 2], got {list(g.shape)} and {list(s.shape)}")
    if s.device.type == "cpu" and m:  # cheap here; on the device it would cost a sync
        ch, cw = cell_size((H, W), n)
        sn = s.numpy()
        if sn.min() < 0 or sn[:, 0].max() >= ch or sn[:, 1].max() >= cw:
            raise ValueError(f"shifts must lie in [0, {ch}) x [0, {cw}) for {H}x{W} and {n} cells")
    g = g.to(device=device, dtype=torch.float32).contiguous()
    s = s.to(device=device, dtype=torch.int64).contiguous()
    x = x.contiguous()
    if out is None:
        out = torch.empty((m, C, H, W), dtype=x.dtype, device=device)
    elif tuple(out.shape) != (m, C, H, W) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [{m}, {C}, {H}, {W}] tensor")
    masks = torch.empty((m, H * W), dtype=torch.float32, device=device) if out_masks else None
    if m == 0 or H * W == 0:
        return out, masks
    yi, yw, xi, xw = device_taps((H, W), n, device)
    block_q = block_q or min(next_pow2(H * W), BLOCK_Q_MAX)
    tiles = triton.cdiv(H * W, block_q)
    _rise_kernel[(m * tiles,)](g, s, yi, yw, xi, xw, x, out, masks if out_masks else out,
                               C, H, W, n, tiles, STORE_MASKS=bool(out_masks), BLOCK_Q=block_q, **LAUNCH_OPTS)
    return out, masks
