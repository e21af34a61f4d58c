"""The render stage: one image's low-resolution uint8 maps -> heat maps at the image's size (JET)
and overlays on the image, with the predictions drawn (detections), a few maps at a time.

Memory is bounded by construction: `Renderer.chunks` renders `chunk` maps at once, never all K
of an image, and `RenderedMaps` (what `Explanation.saliency_map` / `.overlay` hold when the run
postprocesses) renders one map when it is read. So an ALL run of a 1000-class model on a
12-megapixel photo holds 1000 maps of 7x7 bytes, not 2 x 36 GB of pixels.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

#: Maps rendered at once: enough to amortize a call, few enough to keep memory flat.
RENDER_CHUNK = 4


class Renderer:
    """Renders one image's maps. maps: uint8 [n, h, w] in the order of `keys`; image: the
    original RGB image (overlays), or None with `size` (H, W) (heat maps only); shown: the
    detections drawn on the overlays (class k's on class k's overlay, all on "image"), or None.
    threads: the C++ postprocessor's threads per call (1 inside a worker pool)."""

    def __init__(self, keys: Sequence, maps: np.ndarray, image: Optional[np.ndarray], size: Tuple[int, int],
                 alpha: float = 0.5, shown=None, labels: Optional[Sequence[str]] = None, threads: int = 0,
                 index: Optional[dict] = None):
        self.keys = keys if isinstance(keys, list) else list(keys)
        self.maps = maps
        self.image = image
        self.size = tuple(size) if image is None else tuple(image.shape[:2])
        self.alpha = alpha
        self.shown = shown
        self.labels = labels
        self.threads = threads
        # {key: row}; `index` shares one among images with the same keys (an ALL run: 1000 keys an image)
        self._index = index if index is not None else {k: i for i, k in enumerate(self.keys)}

    def render(self, keys: Sequence) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(heat [c, H, W, 3], overlay [c, H, W, 3] or None) of the given keys."""
        from ..postprocess import postprocess

        idx = [self._index[k] for k in keys]
        maps = np.ascontiguousarray(self.maps[idx])
        target = self.image if self.image is not None else self.size
        heat, over = postprocess(maps, target, self.alpha, num_threads=self.threads)
        if over is not None and self.shown is not None and len(self.shown):
            from ..draw import draw_predictions

            for i, k in enumerate(keys):
                over[i] = draw_predictions(over[i], self.shown, self.labels, None if k == "image" else int(k))
        return heat, over

    def chunks(self, chunk: int = RENDER_CHUNK) -> Iterator[Tuple[List, np.ndarray, Optional[np.ndarray]]]:
        """(keys, heat, overlay) for every `chunk` maps, in key order."""
        for start in range(0, len(self.keys), max(1, chunk)):
            keys = self.keys[start:start + chunk]
            heat, over = self.render(keys)
            yield keys, heat, over

    def low_res(self, key) -> np.ndarray:
        return self.maps[self._index[key]]

    def files(self, postprocessed: bool, chunk: int = RENDER_CHUNK) -> Iterator[Tuple[object, str, np.ndarray]]:
        """What a dump holds, as (key, kind, pixels), kind "saliency_map" or "overlay": the heat map
        at the image's size (postprocessed) or the low-resolution map, and the overlay when the
        image is known; rendered `chunk` maps at a time."""
        if not postprocessed and self.image is None:
            for k in self.keys:
                yield k, "saliency_map", self.low_res(k)
            return
        for keys, heat, over in self.chunks(chunk):
            for i, k in enumerate(keys):
                yield k, "saliency_map", heat[i] if postprocessed else self.low_res(k)
                if over is not None:
                    yield k, "overlay", over[i]


class LowResMaps(Mapping):
    """{key: low-resolution uint8 map [h, w]} as views of one image's [K, h, w] array, in key
    order: what `Explanation.maps` holds (no dict of K entries built per image)."""

    __slots__ = ("_keys", "_index", "array")
    #: `Explanation.saliency_map` holding these becomes a dict when first read (OTX users get a dict)
    materialize_as_dict = True

    def __init__(self, keys: List, array: np.ndarray, index: Optional[dict] = None):
        self._keys = keys
        self._index = index if index is not None else {k: i for i, k in enumerate(keys)}
        self.array = array

    def __getitem__(self, key) -> np.ndarray:
        return self.array[self._index[key]]

    def __contains__(self, key) -> bool:
        try:
            return key in self._index
        except TypeError:
            return False

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        shape = "x".join(str(v) for v in self.array.shape[1:])
        return f"<{len(self)} low-resolution maps of {shape}: keys {self._keys[:8]}>"


class RenderedMaps(Mapping):
    """{key: heat map or overlay [H, W, 3]} rendered when read (not kept): what a postprocessed
    `Explanation` holds. `dict(m)` renders them all at once."""

    def __init__(self, renderer: Renderer, kind: str):
        self.renderer = renderer
        self.kind = kind

    def __getitem__(self, key) -> np.ndarray:
        if key not in self.renderer._index:
            raise KeyError(key)
        heat, over = self.renderer.render([key])
        return heat[0] if self.kind == "heat" else over[0]

    def __iter__(self):
        return iter(self.renderer.keys)

    def __len__(self) -> int:
        return len(self.renderer.keys)

    def __repr__(self) -> str:
        h, w = self.renderer.size
        return f"<{len(self)} {self.kind} maps of {h}x{w}, rendered on access: keys {self.renderer.keys[:8]}>"
