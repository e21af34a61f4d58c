"""`Explanation`: what `xaifast.explain` yields for each image."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import numpy as np

MapKey = Union[int, str]


@dataclass
class Explanation:
    """Saliency maps of one image.

    saliency_map: {class index or "image": uint8 map}. Low-resolution [h, w] maps when the run's
        `postprocess` is False; [H0, W0, 3] RGB JET heat maps at the image's size when True.
    overlay: {same keys: RGB overlay on the image} when postprocessed and the image is known.
    prediction: class scores [K] (softmax / sigmoid / raw logits, as configured).
    predicted: the predicted class indices (top-1, or score >= 0.5 for multilabel).
    source: the image path, or the running index of the image in the input.
    labels: {class index: label name} for the classes in `saliency_map`, when names are known.
    image: the original RGB image when it was read from a file.
    """

    source: Union[str, int]
    saliency_map: Dict[MapKey, np.ndarray]
    prediction: np.ndarray
    predicted: List[int]
    overlay: Dict[MapKey, np.ndarray] = field(default_factory=dict)
    labels: Dict[int, str] = field(default_factory=dict)
    image: Optional[np.ndarray] = field(default=None, repr=False)
    extras: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def targets(self) -> List[MapKey]:
        return list(self.saliency_map)
