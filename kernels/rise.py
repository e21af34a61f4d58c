"""RISE masks (Petsiuk et al. 2018) as OpenVINO XAI 1.1 draws them, generated and applied in batches.

One mask, for an input of H x W, `n` cells a side, cell probability `p`:
  cell = (ceil(H / n), ceil(W / n));  grid G [n, n] = (uniform < p) as float;
  shift (sy, sx): sy uniform in [0, cell_h), sx in [0, cell_w)  (integers);
  U = G upsampled to ((n + 1) * cell_h, (n + 1) * cell_w), bilinear with half-pixel centers
      (OpenCV INTER_LINEAR), and the mask is U[sy : sy + H, sx : sx + W], clipped to [0, 1].
The random draws per mask are, in this order, exactly OpenVINO XAI's with the same numpy
`default_rng(seed)`: G = rng.random((n, n)) < p, sy = rng.integers(0, cell_h), sx = rng.integers(0, cell_w).

Upsampling is linear in G, so a whole batch of masks is two small batched matmuls:
  mask_m = clip(Ry_m @ G_m @ Rx_m^T, 0, 1),  Ry_m = Wy[sy_m : sy_m + H],  Rx_m = Wx[sx_m : sx_m + W],
with Wy [(n+1) cell_h, n], Wx the interpolation matrices. Torch ops only: the same code runs on
CPU and CUDA. `rise_masks_reference` is the plain per-mask loop with OpenCV (the test oracle).
`rise_masked_batch_torch` makes the masks and applies them to one image (the masked batch the model
sees); `kernels/triton_rise.py` is its fused Triton twin (CUDA): each row of Wy / Wx has two
nonzero taps (`linear_tap_table`), so it computes every mask pixel from four grid values.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch


def cell_size(input_hw: Tuple[int, int], num_cells: int) -> Tuple[int, int]:
    return int(math.ceil(input_hw[0] / num_cells)), int(math.ceil(input_hw[1] / num_cells))


def draw_masks(rng: np.random.Generator, count: int, input_hw: Tuple[int, int], num_cells: int, prob: float
               ) -> Tuple[np.ndarray, np.ndarray]:
    """The next `count` masks' grids [count, n, n] float32 and shifts [count, 2] int64 (sy, sx), drawn
    from `rng` in OpenVINO XAI's order."""
    ch, cw = cell_size(input_hw, num_cells)
    grids = np.empty((count, num_cells, num_cells), dtype=np.float32)
    shifts = np.empty((count, 2), dtype=np.int64)
    for i in range(count):
        grids[i] = rng.random((num_cells, num_cells)) < prob
        shifts[i, 0] = rng.integers(0, ch)
        shifts[i, 1] = rng.integers(0, cw)
    return grids, shifts


def linear_taps(out_size: int, in_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two taps of a 1-D bilinear resize with half-pixel centers and clamped edges (OpenCV
    INTER_LINEAR), float64: output i reads in[left[i]] * (1 - frac[i]) + in[min(left[i] + 1, in_size - 1)]
    * frac[i]; left [out_size] int64, frac [out_size] float64 (0 where an edge is clamped)."""
    scale = in_size / out_size
    src = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5
    left = torch.floor(src)
    frac = src - left
    left = left.long()
    low = left < 0
    frac[low], left[low] = 0.0, 0
    high = left >= in_size - 1
    frac[high], left[high] = 0.0, in_size - 1
    return left, frac


def linear_matrix(out_size: int, in_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """[out_size, in_size] matrix of a 1-D bilinear resize with half-pixel centers and clamped edges
    (OpenCV INTER_LINEAR): out = M @ in."""
    left, frac = linear_taps(out_size, in_size)
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    m[rows, left] += 1.0 - frac
    m[rows, torch.clamp(left + 1, max=in_size - 1)] += frac
    return m.to(dtype=dtype, device=device)


def linear_tap_table(out_size: int, in_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """`linear_taps` as tables for a kernel: indices [out_size, 2] int32 (left, min(left + 1, in_size - 1))
    and weights [out_size, 2] float32 (1 - frac, frac), the nonzero entries of `linear_matrix`'s rows."""
    left, frac = linear_taps(out_size, in_size)
    idx = torch.stack([left, torch.clamp(left + 1, max=in_size - 1)], 1).to(torch.int32)
    wts = torch.stack([1.0 - frac, frac], 1).to(torch.float32)
    return idx.contiguous(), wts.contiguous()


class MaskMaker:
    """Masks [m, H, W] of given grids and shifts, on a device (interpolation matrices kept)."""

    def __init__(self, input_hw: Tuple[int, int], num_cells: int, device=None, dtype=torch.float32):
        self.h, self.w = int(input_hw[0]), int(input_hw[1])
        self.n = int(num_cells)
        ch, cw = cell_size(input_hw, num_cells)
        self.wy = linear_matrix((self.n + 1) * ch, self.n, dtype, device)
        self.wx = linear_matrix((self.n + 1) * cw, self.n, dtype, device)
        self.rows_y = torch.arange(self.h, device=device)
        self.rows_x = torch.arange(self.w, device=device)
        self.device, self.dtype = device, dtype

    def __call__(self, grids, shifts) -> torch.Tensor:
        g = torch.as_tensor(grids, dtype=self.dtype).to(self.device)
        s = torch.as_tensor(shifts).to(self.device)
        ry = self.wy[s[:, 0:1] + self.rows_y[None]]  # [m, H, n]
        rx = self.wx[s[:, 1:2] + self.rows_x[None]]  # [m, W, n]
        return torch.bmm(torch.bmm(ry, g), rx.transpose(1, 2)).clamp_(0.0, 1.0)


def rise_masked_batch_torch(grids, shifts, x: torch.Tensor, num_cells: int, out_masks: bool = True, *,
                            maker: "MaskMaker | None" = None):
    """PyTorch twin of `kernels.triton_rise.rise_masked_batch_triton` (any device): `(batch [m, C, H, W],
    masks [m, H*W] float32 or None)`, batch = mask_m * float32(x) rounded to x's dtype. `maker`: a
    MaskMaker of x's size, num_cells and device, to reuse its matrices."""
    c, h, w = x.shape
    make = maker if maker is not None else MaskMaker((h, w), num_cells, device=x.device)
    masks = make(grids, shifts)  # [m, H, W] float32
    batch = (masks[:, None] * x.float()[None]).to(x.dtype)
    return batch, (masks.reshape(masks.shape[0], h * w) if out_masks else None)


def rise_masks_reference(grids: np.ndarray, shifts: np.ndarray, input_hw: Tuple[int, int], num_cells: int
                         ) -> np.ndarray:
    """The plain loop: OpenCV bilinear upsampling of each grid, cropped at its shift, clipped."""
    import cv2

    h, w = input_hw
    ch, cw = cell_size(input_hw, num_cells)
    out = np.empty((len(grids), h, w), dtype=np.float64)
    for i, (g, (sy, sx)) in enumerate(zip(grids, shifts)):
        up = cv2.resize(np.asarray(g, dtype=np.float64), ((num_cells + 1) * cw, (num_cells + 1) * ch),
                        interpolation=cv2.INTER_LINEAR)
        out[i] = np.clip(up[sy:sy + h, sx:sx + w], 0.0, 1.0)
    return out


def rise_accumulate_reference(x: np.ndarray, masks: np.ndarray, score_fn, targets) -> np.ndarray:
    """Plain loop: sum over masks of score_k(mask * x) * mask, one inference per mask (float64)."""
    sal = np.zeros((len(targets),) + masks.shape[1:], dtype=np.float64)
    for m in masks:
        s = np.asarray(score_fn((m[None] * x)[None].astype(np.float32)), dtype=np.float64)[0]
        sal += s[list(targets)][:, None, None] * m[None]
    return sal
