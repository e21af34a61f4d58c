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


def recipro_cam_reference(feature: torch.Tensor, head64, mask: str = "1x1", kind: str = "none") -> torch.Tensor:
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


def _bilinear_taps(dst: int, n_in: int, n_out: int, align_corners: bool = False):
    """One axis of a bilinear resize: ((index, weight), (index, weight)) for output index `dst`."""
    if align_corners:  # only for the mutation checks: corners pinned (not the DetClassProbabilityMap semantics)
        src = dst * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:  # half-pixel centers, as torch.nn.functional.interpolate(mode="bilinear", align_corners=False)
        src = (dst + 0.5) * n_in / n_out - 0.5
        if src < 0.0:
            src = 0.0
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    return (i0, 1.0 - lam), (i1, lam)


def det_class_map_reference(levels, num_anchors, size=None, softmax: bool = True,
                            align_corners: bool = False) -> np.ndarray:
    """DetClassProbabilityMap in float64 with explicit loops: per image, class and output pixel,
    for every level the four bilinear taps of the maximum over anchors (channel a*K + k),
    the mean over levels, then a max-subtracted softmax over classes per pixel.
    levels: list of [B, A_l*K, H_l, W_l] (tensors or arrays); returns float64 [B, K, h, w]."""
    xs = [np.asarray(torch.as_tensor(x).detach().cpu().to(torch.float64)) for x in levels]
    L = len(xs)
    anchors = list(num_anchors) if isinstance(num_anchors, (list, tuple)) else [num_anchors] * L
    B = xs[0].shape[0]
    K = xs[0].shape[1] // anchors[0]
    h, w = size if size is not None else xs[L // 2].shape[2:]
    out = np.zeros((B, K, h, w))
    for b in range(B):
        for k in range(K):
            for i in range(h):
                for j in range(w):
                    total = 0.0
                    for x, A in zip(xs, anchors):
                        H, W = x.shape[2], x.shape[3]

                        def anchor_max(y, xx):
                            return max(x[b, a * K + k, y, xx] for a in range(A))

                        value = 0.0
                        for y, wy in _bilinear_taps(i, H, h, align_corners):
                            for xx, wx in _bilinear_taps(j, W, w, align_corners):
                                value += wy * wx * anchor_max(y, xx)
                        total += value
                    out[b, k, i, j] = total / L
    if softmax:
        for b in range(B):
            for i in range(h):
                for j in range(w):
                    logits = [out[b, k, i, j] for k in range(K)]
                    m = max(logits)
                    e = [math.exp(v - m) for v in logits]
                    s = sum(e)
                    for k in range(K):
                        out[b, k, i, j] = e[k] / s
    return out


def aise_reference(score_one, image: np.ndarray, target: int, iterations: int, widths, eps: float = 0.1,
                   locally_biased: bool = False) -> np.ndarray:
    """OpenVINO XAI 1.1's AISEClassification, sequential and written out: for each kernel width one
    scipy DIRECT run over Gaussian-mask centres, one inference per perturbed image (score_one:
    float32 [1, C, H, W] -> scores [K]); KDE of the first `iterations` masks weighted by
    preservation - deletion; float64 [H, W] (before uint8 scaling)."""
    from scipy.optimize import Bounds, direct

    h, w = image.shape[-2:]
    cols, rows = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))

    def gaussian(a, b, sigma):
        g = 1 / (2 * math.pi * sigma * sigma) * np.exp(-((cols - a) ** 2 / (2 * sigma ** 2)
                                                         + (rows - b) ** 2 / (2 * sigma ** 2)))
        return g / g.max()

    per_width = []
    for sigma in widths:
        params, values = [], []

        def objective(p):
            mask = np.clip(gaussian(p[0], p[1], sigma), 0, 1)
            keep = np.float32(score_one((image * mask)[None].astype(np.float32))[target])
            drop = np.float32(score_one((image * (1 - mask))[None].astype(np.float32))[target])
            params.append((p[0], p[1]))
            values.append(keep - drop)
            return -float(keep - drop)

        direct(objective, Bounds([0.0, 0.0], [1.0, 1.0]), eps=eps, maxfun=iterations, locally_biased=locally_biased)
        k = np.zeros((h, w))
        for i in range(iterations):
            k += gaussian(params[i][0], params[i][1], sigma) * np.float64(values[i])
        if k.max() > 0:
            k = k / k.max()
        per_width.append(k)
    total = np.sum(per_width, axis=0)
    return total / total.max()
