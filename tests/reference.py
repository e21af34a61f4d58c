"""Slow, obviously correct references (float64, explicit loops) that every fast path must equal."""
from __future__ import annotations

import math

import numpy as np
import torch

GAUSSIAN = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]


def mask_at(h: int, w: int, i: int, j: int, mask: str) -> torch.Tensor:
    """The spatial mask m_p of SPEC.md for cell p = (i, j), float64 [h, w]."""
    m = torch.zeros(h, w, dtype=torch.float64)
    if mask == "1x1":
        m[i, j] = 1.0
        return m
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            qi, qj = i + di, j + dj
            if 0 <= qi < h and 0 <= qj < w:
                m[qi, qj] = GAUSSIAN[di + 1][dj + 1] / 16.0  # zero outside, not renormalized
    return m


def score(logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def recipro_cam_reference(feature: torch.Tensor, head64, mask: str = "1x1", kind: str = "softmax") -> torch.Tensor:
    """S[b, k, i, j] = score(head(F[b] * m_p))[k], one head call per cell, all in float64."""
    f = feature.detach().to(torch.float64)
    b_, _, h, w = f.shape
    out = None
    with torch.no_grad():
        for b in range(b_):
            for i in range(h):
                for j in range(w):
                    logits = head64(f[b:b + 1] * mask_at(h, w, i, j, mask))
                    s = score(logits.to(torch.float64), kind)[0]
                    if out is None:
                        out = torch.zeros(b_, s.shape[0], h, w, dtype=torch.float64)
                    out[b, :, i, j] = s
    return out


def normalize_reference(maps) -> np.ndarray:
    """floor(255 (x - min) / (max - min + 1e-12)) per map over the last two dims, in float64."""
    x = np.asarray(maps, dtype=np.float64)
    out = np.zeros(x.shape, dtype=np.uint8)
    for idx in np.ndindex(*x.shape[:-2]):
        m = x[idx]
        lo, hi = m.min(), m.max()
        for pos in np.ndindex(*m.shape):
            out[idx + pos] = min(255, math.floor(255.0 * (m[pos] - lo) / (hi - lo + 1e-12)))
    return out


def activation_map_reference(feature: torch.Tensor) -> np.ndarray:
    f = feature.detach().to(torch.float64).numpy()
    b_, c, h, w = f.shape
    out = np.zeros((b_, h, w))
    for b in range(b_):
        for ch in range(c):
            out[b] += f[b, ch]
    return out / c


def eigen_cam_reference(feature: torch.Tensor) -> np.ndarray:
    """numpy float64 SVD of the centred [HW, C] matrix, sign chosen against the activation map."""
    f = feature.detach().to(torch.float64).numpy()
    b_, c, h, w = f.shape
    act = activation_map_reference(feature).reshape(b_, h * w)
    out = np.zeros((b_, h * w))
    for b in range(b_):
        x = f[b].reshape(c, h * w).T
        x = x - x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        a = x @ vt[0]
        if np.dot(a - a.mean(), act[b] - act[b].mean()) < 0:
            a = -a
        out[b] = a
    return out.reshape(b_, h, w)


def assert_maps_close(fast, ref, rtol: float = 1e-5) -> None:
    """Raw maps equal to `rtol` relative to the reference's largest magnitude."""
    fast = torch.as_tensor(fast).to(torch.float64)
    ref = torch.as_tensor(ref).to(torch.float64)
    assert fast.shape == ref.shape, (fast.shape, ref.shape)
    scale = ref.abs().max().clamp_min(1e-30)
    err = (fast - ref).abs().max() / scale
    assert err <= rtol, f"max relative error {err:.3g} > {rtol}"


def assert_u8_within_one(fast, ref) -> None:
    fast = np.asarray(fast).astype(np.int16)
    ref = np.asarray(ref).astype(np.int16)
    assert fast.shape == ref.shape, (fast.shape, ref.shape)
    diff = np.abs(fast - ref).max()
    assert diff <= 1, f"uint8 maps differ by {diff}"
