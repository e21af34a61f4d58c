"""Insertion and deletion AUC (Petsiuk et al. 2018, as OpenVINO XAI 1.1 computes them), batched.

For one map of class k on input x [C, H, W] (the map resized to H x W first):
  pixels sorted by descending saliency (ties: raster order, a stable sort);
  for i = 0..steps: n_i = int(i * H * W / steps), P_i = the top n_i pixels (all channels);
  insertion_i = baseline with x at P_i,  deletion_i = x with baseline at P_i;
  a_i = score_k(insertion_i) (resp. deletion_i);  AUC = |(sum_i a_i - a_0 / 2 - a_steps / 2) / steps|.
The baseline is 0 in the model's input space unless given (evaluate passes a black pixel after
preprocessing, which is what OpenVINO XAI's zeroing of the raw image is).

Every perturbed input of every map goes through the model in chunks of `batch_size`, built on
the fly from the pixel ranks (no [steps, C, H, W] stack per map is kept). insertion_steps and
deletion_0 are the image itself and insertion_0 and deletion_steps the baseline image: those are
scored once per image (and once in all), not once per map.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from ._common import Baseline, MetricError, baseline_of, check_map, prepare, resize_map


def auc(curve) -> float:
    """|(sum(a) - a_0/2 - a_last/2) / (len(a) - 1)|: the trapezoid area under a curve on [0, 1]."""
    a = np.asarray(curve, dtype=np.float64)
    return float(abs((a.sum() - a[0] / 2 - a[-1] / 2) / (a.shape[-1] - 1)))


def pixel_ranks(m: np.ndarray) -> torch.Tensor:
    """rank[p] = position of pixel p (raster order) among pixels by descending value (stable)."""
    flat = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64).reshape(-1))
    order = torch.sort(flat, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks


def step_counts(num_pixels: int, steps: int) -> List[int]:
    return [int(i * num_pixels / steps) for i in range(steps + 1)]


def insertion_deletion_auc(model, images, explanations, steps: int = 30, *, targets=None, score: Optional[str] = None,
                           batch_size: int = 64, baseline: Baseline = None, return_curves: bool = False) -> dict:
    """Insertion and deletion AUC of saliency maps.

    model: anything `xaifast.engines.scorer.as_scorer` takes (nn.Module, Engine, .xml / .onnx,
        Python callable on numpy batches); score: softmax (default) | sigmoid | none.
    images: model inputs [B, C, H, W] (preprocessed, as the model takes them).
    explanations: maps [B, K, h, w] with targets= (per image a class or a list; None: the
        predicted class), or per image a {class or "image": map} dict / xaifast Explanation.
        Class-agnostic maps are scored on the predicted class.
    baseline: what removed pixels become (None: 0; a number, per-channel values, or an image).
    Returns {"insertion": mean, "deletion": mean, "delta": insertion - deletion, "per_map":
    [{"image", "class", "insertion", "deletion"}]} (+ "curves": [N, 2, steps + 1] with return_curves).
    """
    if int(steps) < 1:
        raise MetricError(f"steps must be >= 1, got {steps}")
    steps = int(steps)
    scorer, x, entries, scores_x = prepare(model, images, explanations, targets, score, batch_size)
    b_count, c, h, w = x.shape
    base = baseline_of(baseline, x).expand(c, h, w)
    hw = h * w
    counts = torch.tensor(step_counts(hw, steps))
    ranks = torch.stack([pixel_ranks(resize_map(check_map(e.map, f"image {e.image}, map {e.key!r}"), (h, w)))
                         for e in entries])  # [N, HW]
    classes = torch.tensor([e.cls for e in entries])
    image_of = torch.tensor([e.image for e in entries])
    n = len(entries)
    curves = torch.empty(n, 2, steps + 1, dtype=torch.float64)

    # the shared points: the image (insertion_steps, deletion_0) and the baseline (insertion_0, deletion_steps)
    if scores_x is None:
        scores_x = scorer(x)
    if classes.max() >= scores_x.shape[1] or classes.min() < 0:
        raise MetricError(f"a map's class is out of range for a model with {scores_x.shape[1]} classes")
    scores_base = scorer(base[None])[0]
    y = scores_x[image_of, classes].double()
    b0 = scores_base[classes].double()
    curves[:, 0, steps], curves[:, 1, 0] = y, y
    curves[:, 0, 0], curves[:, 1, steps] = b0, b0

    # the interior points, (map, step, insertion | deletion) rows, scored chunk by chunk
    if steps > 1:
        rows_map = torch.arange(n).repeat_interleave(2 * (steps - 1))
        rows_step = torch.arange(1, steps).repeat_interleave(2).repeat(n)
        rows_kind = torch.tensor([0, 1]).repeat(n * (steps - 1))
        x_flat, base_flat = x.reshape(b_count, c, hw), base.reshape(c, hw)
        chunk = max(1, scorer.batch_size)
        for start in range(0, rows_map.numel(), chunk):
            rm, rs, rk = (t[start:start + chunk] for t in (rows_map, rows_step, rows_kind))
            kept = ranks[rm] < counts[rs][:, None]  # [R, HW]: the top n_i pixels
            take_image = kept ^ rk.bool()[:, None]  # insertion: image where kept; deletion: where not kept
            batch = torch.where(take_image[:, None, :], x_flat[image_of[rm]], base_flat[None])
            s = scorer(batch.reshape(-1, c, h, w))
            curves[rm, rk, rs] = s[torch.arange(rm.numel()), classes[rm]].double()

    a = curves
    aucs = ((a.sum(-1) - a[..., 0] / 2 - a[..., -1] / 2) / steps).abs()  # [N, 2]
    per_map = [{"image": e.image, "class": e.cls, "key": e.key, "insertion": float(aucs[i, 0]),
                "deletion": float(aucs[i, 1])} for i, e in enumerate(entries)]
    ins, dele = float(aucs[:, 0].mean()), float(aucs[:, 1].mean())
    out = {"insertion": ins, "deletion": dele, "delta": ins - dele, "per_map": per_map}
    if return_curves:
        out["curves"] = curves.numpy()
    return out
