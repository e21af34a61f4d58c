"""A deterministic synthetic "shapes" dataset for the built-in detector and instance segmenter.

Every image (RGB uint8, `size` x `size`, 128 by default) shows 1-4 filled shapes of the classes
SHAPE_CLASSES = circle, square, triangle, 16-60 px across, on a textured, noisy random background.
Colours are drawn independently of the class (only the outline tells the class), squares and
triangles are rotated a little. Shapes do not overlap (their boxes keep a small gap), so every
instance is fully visible.

Per image: `boxes` [N, 4] float32 x1, y1, x2, y2 in pixel-edge coordinates, tight to the instance's
mask (x2 = last mask column + 1), `labels` [N] int64 (index into SHAPE_CLASSES), `masks` [N, H, W]
bool. The same seed gives the same images on every machine (numpy's PCG64 and integer drawing
with OpenCV, no anti-aliasing).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import cv2
import numpy as np

SHAPE_CLASSES = ["circle", "square", "triangle"]

_MIN_SIZE, _MAX_SIZE = 16, 60


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured background: a colour gradient, smooth blotches, stripes or checks, noise."""
    base = rng.uniform(0, 255, size=3)
    other = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    strength = rng.uniform(0.0, 0.6)
    img = base[None, None, :] * (1 - strength * t[..., None]) + other[None, None, :] * (strength * t[..., None])
    # smooth blotches: a coarse random grid upsampled
    cells = int(rng.integers(2, 9))
    coarse = rng.normal(0, rng.uniform(5, 40), size=(cells, cells, 3)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    kind = int(rng.integers(0, 4))
    if kind == 1:  # stripes
        period = rng.uniform(4, 20)
        a = rng.uniform(0, np.pi)
        s = np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) * size / period)
        img += rng.uniform(10, 40) * s[..., None] * rng.uniform(-1, 1, size=3)[None, None, :]
    elif kind == 2:  # checks
        period = int(rng.integers(4, 17))
        c = ((np.arange(size)[:, None] // period + np.arange(size)[None, :] // period) % 2).astype(np.float32)
        img += rng.uniform(10, 35) * (c - 0.5)[..., None] * rng.uniform(-1, 1, size=3)[None, None, :]
    elif kind == 3:  # random line clutter
        clutter = np.zeros((size, size, 3), np.float32)
        for _ in range(int(rng.integers(2, 8))):
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            p2 = tuple(int(v) for v in rng.integers(0, size, 2))
            colour = tuple(float(v) for v in rng.uniform(-50, 50, 3))
            cv2.line(clutter, p1, p2, colour, int(rng.integers(1, 3)))
        img += clutter
    img += rng.normal(0, rng.uniform(2, 14), size=img.shape).astype(np.float32)
    return img.astype(np.float32)


def _shape_mask(rng: np.random.Generator, label: int, size: int, cx: float, cy: float, extent: float) -> np.ndarray:
    """A filled shape of class `label` centred at (cx, cy), about `extent` px across."""
    mask = np.zeros((size, size), np.uint8)
    sh = 4  # sub-pixel precision of cv2's fillPoly / circle (integer coordinates * 16)
    scale = 1 << sh
    if label == 0:  # circle
        cv2.circle(mask, (int(round(cx * scale)), int(round(cy * scale))), int(round(extent / 2 * scale)), 1, -1,
                   lineType=cv2.LINE_8, shift=sh)
        return mask.astype(bool)
    if label == 1:  # square, rotated by at most 20 degrees
        half = extent / 2
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        theta = rng.uniform(-20, 20) * np.pi / 180
    else:  # triangle: roughly equilateral, any rotation, slightly irregular
        r = extent / 2
        base_angles = np.array([-90, 30, 150], np.float64) + rng.uniform(-10, 10, size=3)
        pts = np.stack([r * np.cos(np.deg2rad(base_angles)), r * np.sin(np.deg2rad(base_angles))], axis=1)
        theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = pts @ rot.T + np.array([cx, cy])
    cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=sh)
    return mask.astype(bool)


def _box_of(mask: np.ndarray) -> Optional[np.ndarray]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _colour_far_from(rng: np.random.Generator, ref: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        d = float(np.linalg.norm(c - ref))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def make_sample(rng: np.random.Generator, size: int = 128) -> Dict[str, np.ndarray]:
    """One random image and its annotations, drawn from `rng` (a numpy Generator).

    Returns dict(image uint8 [size, size, 3] RGB, boxes float32 [N, 4] xyxy, labels int64 [N],
    masks bool [N, size, size]) with 1 <= N <= 4.
    """
    img = _background(rng, size)
    n_want = int(rng.integers(1, 5))
    boxes: List[np.ndarray] = []
    labels: List[int] = []
    masks: List[np.ndarray] = []
    max_extent = min(_MAX_SIZE, size - 4)
    min_extent = min(_MIN_SIZE, max_extent)
    for _ in range(60):  # placement attempts
        if len(labels) == n_want:
            break
        label = int(rng.integers(0, len(SHAPE_CLASSES)))
        extent = float(rng.uniform(min_extent, max_extent))
        margin = extent / 2 + 1
        cx = float(rng.uniform(margin, size - margin))
        cy = float(rng.uniform(margin, size - margin))
        mask = _shape_mask(rng, label, size, cx, cy, extent)
        box = _box_of(mask)
        if box is None or min(box[2] - box[0], box[3] - box[1]) < 8:
            continue
        gap = 3.0
        if any(box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap
               for b in boxes):
            continue
        boxes.append(box)
        labels.append(label)
        masks.append(mask)
    for label, mask in zip(labels, masks):
        ys, xs = np.nonzero(mask)
        ref = img[ys, xs].mean(axis=0)
        colour = _colour_far_from(rng, ref)
        # a little shading so shapes are not flat, plus the image noise on top
        shade = rng.normal(0, rng.uniform(0, 12), size=(len(ys), 3))
        grad = rng.uniform(-0.4, 0.4, size=2)
        g = (xs - xs.mean()) * grad[0] + (ys - ys.mean()) * grad[1]
        img[ys, xs] = colour[None, :] + shade + g[:, None]
    img += rng.normal(0, 3, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if labels:
        return dict(image=image, boxes=np.stack(boxes).astype(np.float32), labels=np.asarray(labels, np.int64),
                    masks=np.stack(masks))
    return dict(image=image, boxes=np.zeros((0, 4), np.float32), labels=np.zeros((0,), np.int64),
                masks=np.zeros((0, size, size), bool))


class ShapesDataset:
    """`n` images; item i is `make_sample(np.random.default_rng([seed, i]), size)`, so any item can be
    drawn on its own, in any order, and always gives the same image."""

    def __init__(self, n: int = 1000, seed: int = 0, size: int = 128):
        self.n, self.seed, self.size = int(n), int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"ShapesDataset index {index} out of range for {self.n} images")
        return make_sample(np.random.default_rng([self.seed, index]), self.size)


def write_shapes_images(folder, n: int = 4, seed: int = 0, size: int = 128) -> List[str]:
    """Write `n` dataset images as PNG files `shapes_<i>.png` into `folder`; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    ds = ShapesDataset(n, seed, size)
    paths = []
    for i in range(n):
        path = os.path.join(os.fspath(folder), f"shapes_{i:03d}.png")
        if not cv2.imwrite(path, cv2.cvtColor(ds[i]["image"], cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths
