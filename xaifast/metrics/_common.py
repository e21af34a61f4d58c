"""What the metrics share: explanations in any of their forms as a flat list of maps, maps at the
input's size, the baseline pixel, the images as a tensor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ..errors import XaifastError


class MetricError(XaifastError, ValueError):
    """Inputs a metric cannot evaluate."""


@dataclass
class MapEntry:
    """One map to evaluate: image position, class (None: class-agnostic, the predicted class is
    used where one is needed), the key it came under, and the map [h, w] (float64)."""

    image: int
    cls: Optional[int]
    key: object
    map: np.ndarray


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _map_dict(ex) -> dict:
    """The {key: map} of one image: a dict, or an xaifast Explanation (its low-resolution maps)."""
    if isinstance(ex, dict):
        return ex
    maps = getattr(ex, "maps", None)
    if isinstance(maps, dict) and maps:
        return maps
    sal = getattr(ex, "saliency_map", None)
    if sal is not None:
        return dict(sal)
    raise MetricError(f"an explanation must be a dict {{class: map}} or an xaifast Explanation, got "
                      f"{type(ex).__name__}")


def _key_class(key) -> Optional[int]:
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, str) and key.lstrip("-").isdigit():
        return int(key)
    if key == "image" or key is None:
        return None
    raise MetricError(f"map key {key!r} is neither a class index nor 'image'")


def map_entries(explanations, targets=None, num_images: Optional[int] = None) -> List[MapEntry]:
    """Flatten explanations into MapEntry's.

    explanations: an array [B, K, h, w] (numpy or torch; K = 1 with targets=None: class-agnostic),
    or a list (one per image) of {class index or "image": map [h, w]} dicts or xaifast Explanations.
    targets (arrays only): per image a class index or a list of them; None: class-agnostic
    (K = 1) or the predicted class (filled in by the metric)."""
    entries: List[MapEntry] = []
    if isinstance(explanations, (np.ndarray, torch.Tensor)):
        arr = _as_numpy(explanations)
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.ndim != 4:
            raise MetricError(f"explanations as an array must be [B, K, h, w], got shape {list(arr.shape)}")
        if num_images is not None and arr.shape[0] != num_images:
            raise MetricError(f"{arr.shape[0]} explanations for {num_images} images; pass one per image")
        for b in range(arr.shape[0]):
            wanted = None if targets is None else targets[b]
            if wanted is None:
                entries.append(MapEntry(b, None, "image" if arr.shape[1] == 1 else None,
                                        arr[b, 0] if arr.shape[1] == 1 else arr[b]))
                continue
            for k in ([wanted] if np.isscalar(wanted) else list(wanted)):
                k = int(k)
                if not 0 <= k < arr.shape[1] and arr.shape[1] != 1:
                    raise MetricError(f"target class {k} of image {b} is out of range: the maps have {arr.shape[1]} "
                                      "classes")
                entries.append(MapEntry(b, k, k, arr[b, 0] if arr.shape[1] == 1 else arr[b, k]))
        return entries
    if targets is not None:
        raise MetricError("targets= applies to explanations given as an array [B, K, h, w]; dicts and "
                          "Explanations name their classes themselves")
    items = list(explanations)
    if num_images is not None and len(items) != num_images:
        raise MetricError(f"{len(items)} explanations for {num_images} images; pass one per image")
    for b, ex in enumerate(items):
        for key, m in _map_dict(ex).items():
            m = _as_numpy(m)
            if m.ndim != 2:
                raise MetricError(f"image {b}, map {key!r}: shape {list(m.shape)}; maps must be [h, w] (use "
                                  "low-resolution maps, postprocess=False, not the colored heat maps)")
            entries.append(MapEntry(b, _key_class(key), key, m))
    return entries


def check_map(m: np.ndarray, where: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        raise MetricError(f"{where}: empty map")
    if not np.isfinite(m).all():
        raise MetricError(f"{where}: the map has NaN or infinite values")
    return m


def resize_map(m: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """A map at (h, w): bilinear, half-pixel centers (OpenCV INTER_LINEAR, as the postprocessing
    resizes maps); float64 out. Unchanged when already that size."""
    h, w = int(hw[0]), int(hw[1])
    if m.shape == (h, w):
        return np.asarray(m, dtype=np.float64)
    return cv2.resize(np.asarray(m, dtype=np.float64), (w, h), interpolation=cv2.INTER_LINEAR)


def as_images(images) -> torch.Tensor:
    """Model inputs float32 [B, C, H, W] (a [C, H, W] image is one)."""
    x = torch.as_tensor(_as_numpy(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise MetricError(f"images must be model inputs [B, C, H, W], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise MetricError(f"images must be preprocessed float inputs [B, C, H, W], got {x.dtype}")
    return x.detach().to("cpu", torch.float32).contiguous()


Baseline = Union[None, float, Sequence[float], torch.Tensor, np.ndarray]


def baseline_of(baseline: Baseline, x: torch.Tensor) -> torch.Tensor:
    """The value a removed pixel takes, broadcastable to one image [C, H, W].

    None: 0 in the model's input space. A float, or one value per channel (e.g. what a black
    pixel becomes after preprocessing: `black_pixel(preprocess)`), or a full [C, H, W] image."""
    c, h, w = x.shape[1:]
    if baseline is None:
        return torch.zeros(c, 1, 1)
    b = torch.as_tensor(_as_numpy(baseline) if not isinstance(baseline, torch.Tensor) else baseline).float()
    if b.ndim == 0:
        return b.reshape(1, 1, 1).expand(c, 1, 1).clone()
    if b.ndim == 1 and b.shape[0] == c:
        return b.reshape(c, 1, 1)
    if tuple(b.shape) == (c, h, w):
        return b
    raise MetricError(f"baseline of shape {list(b.shape)}: use a number, {c} per-channel values or an image "
                      f"[{c}, {h}, {w}]")


def black_pixel(preprocess) -> torch.Tensor:
    """What a black pixel (0, 0, 0) becomes after `preprocess` (a `xaifast.Preprocess`): -mean / std.
    Perturbing the model input towards it is perturbing the photo towards black, as OpenVINO XAI
    does on the raw image."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32)
    std = torch.tensor(preprocess.std, dtype=torch.float32)
    return -mean / std


def fill_predicted(entries: List[MapEntry], scorer, x: torch.Tensor, scores: Optional[torch.Tensor] = None
                   ) -> Optional[torch.Tensor]:
    """Give class-agnostic entries the predicted class (argmax of the image's scores); return the
    scores of the images (computed once, when needed)."""
    if any(e.cls is None for e in entries) and scores is None:
        scores = scorer(x)
    for e in entries:
        if e.cls is None:
            if e.map.ndim == 3:  # all classes of an array with no targets: the predicted one
                k = int(torch.argmax(scores[e.image]))
                e.cls, e.key, e.map = k, k, e.map[k]
            else:
                e.cls = int(torch.argmax(scores[e.image]))
    return scores


def prepare(model, images, explanations, targets, score, batch_size):
    """What every model-based metric starts with: (scorer, images [B, C, H, W], the map entries,
    the images' scores when class-agnostic entries needed them to pick the predicted class)."""
    from ..engines.scorer import as_scorer

    scorer = as_scorer(model, score=score, batch_size=batch_size)
    x = as_images(images)
    entries = map_entries(explanations, targets, num_images=x.shape[0])
    if not entries:
        raise MetricError("no maps to evaluate")
    return scorer, x, entries, fill_predicted(entries, scorer, x)
