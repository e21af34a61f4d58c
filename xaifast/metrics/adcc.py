"""ADCC: Average Drop, Coherency, Complexity (Poppi et al. 2021, as OpenVINO XAI 1.1 computes it).

For one map of class k on input x (the map resized to the input's H x W):
  S = the map, min-max scaled to [0, 1] unless it already lies in [0, 1] (OpenVINO XAI's rule);
  masked = baseline + S * (x - baseline)   (with a black-pixel baseline: the photo times S);
  y, o = score_k(x), score_k(masked);  AvgDrop = max(0, y - o) / y;
  S' = the explainer's map of class k on `masked`, resized, min-max scaled to [0, 1];
  Coherency = (Pearson(S, S') + 1) / 2;  Complexity = mean(S);
  ADCC = 3 / (1 / Coherency + 1 / (1 - Complexity) + 1 / (1 - AvgDrop))   (0 when a term is <= 0).
The dataset figures are the means of AvgDrop, Coherency and Complexity, and ADCC of those means
(as OpenVINO XAI's evaluate); per-map ADCC is reported too. A constant S or S' has no Pearson
correlation: its coherency is NaN and it is left out of the means (nan-means).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch

from ._common import Baseline, MetricError, baseline_of, check_map, prepare, resize_map


def scale01(m: np.ndarray) -> np.ndarray:
    """(m - min) / (max - min + 1e-12), float64 (OpenVINO XAI's `scaling(max_value=1)`)."""
    m = np.asarray(m, dtype=np.float64)
    return (m - m.min()) / (m.max() - m.min() + 1e-12)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel() - np.mean(a)
    b = np.asarray(b, dtype=np.float64).ravel() - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def harmonic3(coherency: float, complexity: float, drop: float) -> float:
    terms = (coherency, 1.0 - complexity, 1.0 - drop)
    if any(np.isnan(t) for t in terms):
        return float("nan")
    if min(terms) <= 0:
        return 0.0
    return float(3.0 / sum(1.0 / t for t in terms))


def adcc(model, images, explanations, *, explainer: Union[str, Callable], targets=None, score: Optional[str] = None,
         batch_size: int = 64, baseline: Baseline = None, explainer_options: Optional[dict] = None) -> dict:
    """ADCC of saliency maps.

    model, images, explanations, targets, score, batch_size, baseline: as `insertion_deletion_auc`.
    explainer: how the masked images are re-explained: a callable (x [N, C, H, W], classes [N])
        -> maps [N, h, w], or an algorithm name (recipro_cam, activationmap, eigencam, rise, ...)
        run on `model` (`xaifast.metrics.make_explainer`, with explainer_options).
    Returns {"adcc", "coherency", "complexity", "average_drop", "per_map": [...]}."""
    from .explainers import make_explainer

    scorer, x, entries, scores_x = prepare(model, images, explanations, targets, score, batch_size)
    _, c, h, w = x.shape
    if scores_x is None:
        scores_x = scorer(x)
    explain = explainer if callable(explainer) else make_explainer(model, explainer, **(explainer_options or {}))
    base = baseline_of(baseline, x).expand(c, h, w)
    saliency = []
    for e in entries:
        m = resize_map(check_map(e.map, f"image {e.image}, map {e.key!r}"), (h, w))
        saliency.append(m if (m.min() >= 0 and m.max() <= 1) else scale01(m))
    s_t = torch.from_numpy(np.stack(saliency)).float()  # [N, H, W]
    image_of = torch.tensor([e.image for e in entries])
    classes = [e.cls for e in entries]
    masked = base[None] + s_t[:, None] * (x[image_of] - base[None])
    scores_m = scorer(masked)
    again = explain(masked, classes)
    again = again.detach().cpu().numpy() if isinstance(again, torch.Tensor) else np.asarray(again)
    if again.shape[0] != len(entries) or again.ndim != 3:
        raise MetricError(f"the explainer returned maps of shape {list(again.shape)} for {len(entries)} masked "
                          "images; it must return [N, h, w]")
    per_map, rows = [], []
    for i, e in enumerate(entries):
        y = float(scores_x[e.image, e.cls])
        o = float(scores_m[i, e.cls])
        drop = max(0.0, y - o) / y if y != 0 else float("nan")
        s2 = scale01(resize_map(check_map(again[i], f"re-explained map {i}"), (h, w)))
        coh = (pearson(saliency[i], s2) + 1.0) / 2.0
        com = float(saliency[i].mean())
        rows.append((coh, com, drop))
        per_map.append({"image": e.image, "class": e.cls, "key": e.key, "adcc": harmonic3(coh, com, drop),
                        "coherency": coh, "complexity": com, "average_drop": drop})
    coh, com, drop = (float(v) for v in np.nanmean(np.asarray(rows, dtype=np.float64), axis=0))
    return {"adcc": harmonic3(coh, com, drop), "coherency": coh, "complexity": com, "average_drop": drop,
            "per_map": per_map}
