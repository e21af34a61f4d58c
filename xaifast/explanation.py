"""`Explanation`: what `xaifast.explain` yields for each image."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

MapKey = Union[int, str]


@dataclass
class Explanation:
    """Saliency maps of one image.

    saliency_map: {class index or "image": uint8 map}. Low-resolution [h, w] maps when the run's
        `postprocess` is False; [H0, W0, 3] RGB JET heat maps at the image's size when True, then
        rendered when read (a mapping that keeps nothing: `dict(ex.saliency_map)` keeps them all).
    overlay: {same keys: RGB overlay on the image} when postprocessed and the image is known.
    maps: the low-resolution uint8 maps {key: [h, w]}, whatever `postprocess`.
    prediction: class scores [K] (softmax / sigmoid / raw logits, as configured), or detections.
    predicted: the predicted class indices (top-1, or score >= 0.5 for multilabel).
    source: the image path, or the running index of the image in the input.
    rel: the path relative to the data root (files), gt: the ground truth the data gives (class
        folder {"label"}, COCO {"boxes", "labels", "category_ids"}), index: position in the input.
    labels: {class index: label name} for the classes in `saliency_map`, when names are known.
    image: the original RGB image when it was read from a file.
    """

    source: Union[str, int]
    saliency_map: Mapping[MapKey, np.ndarray]
    prediction: Any
    predicted: List[int]
    overlay: Mapping[MapKey, np.ndarray] = field(default_factory=dict)
    labels: Dict[int, str] = field(default_factory=dict)
    image: Optional[np.ndarray] = field(default=None, repr=False)
    extras: Dict[str, Any] = field(default_factory=dict, repr=False)
    index: int = -1
    rel: Optional[str] = None
    gt: Optional[dict] = None
    maps: Dict[MapKey, np.ndarray] = field(default_factory=dict, repr=False)
    name: str = field(default="", repr=False)  # output stem path: <rel dir>/<stem>
    renderer: Any = field(default=None, repr=False)
    postprocessed: bool = field(default=False, repr=False)

    @property
    def targets(self) -> List[MapKey]:
        return list(self.saliency_map)

    @property
    def key(self):
        """What identifies the image in a run (and its journal): rel path, or the input index."""
        return self.rel if self.rel is not None else self.index

    def files(self) -> Iterator[Tuple[MapKey, str, np.ndarray]]:
        """(key, "saliency_map" | "overlay", pixels) of everything a dump writes, rendered a few
        maps at a time (see `xaifast.stages.render`)."""
        return self.renderer.files(self.postprocessed)


def _get_saliency_map(self) -> Mapping[MapKey, np.ndarray]:
    value = self.__dict__["_saliency_map"]
    if getattr(value, "materialize_as_dict", False):  # low-resolution maps: a plain dict when first read
        value = self.__dict__["_saliency_map"] = dict(value)
    return value


def _set_saliency_map(self, value) -> None:
    self.__dict__["_saliency_map"] = value


# `saliency_map` of maps that are not postprocessed is a dict, as OTX users expect; it is built
# from `maps` (a mapping over the image's [K, h, w] rows) only when read: a run that only writes
# files or a store never builds K-entry dicts (1000 per image for ALL).
Explanation.saliency_map = property(_get_saliency_map, _set_saliency_map,
                                    doc="{class index or \"image\": uint8 map} (see the class doc)")
