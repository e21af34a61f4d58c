"""Thumbnails for the run report: one small JPEG per image holding the photo and a few of its
overlays side by side (a strip), written by the run (a sink beside the main one) so that
`report.html` never touches a full-size file.

    <run>/explain/thumbs/<index // 1000:04d>/<index:07d>.jpg     [photo | overlay | overlay ...]

Tiles of w x h pixels start every `stride` pixels (w rounded up to a multiple of 16, so JPEG's
4:2:0 blocks never straddle two tiles; the gap repeats the tile's last column); the journal
records the keys in strip order and [w, h, stride] (`"thumbs": ["input", 285], "thumb_strip":
[128, 96, 128]`), and the page shows each tile by cropping the strip. One file per image, not one
per thumbnail: a file costs about as much CPU to create as the thumbnail's encode, and a
million-image run keeps a million thumbnail files, not up to four million. Runs made before
the strips (one file per thumbnail, `thumb_rel`) still show.

Named by the image's input position, never by its file name (a name is data, not a path we
build on). Made at thumbnail size from the start: the photo is shrunk once (`shrink`: a box
filter close to INTER_AREA's, at a fraction of its cost) to at most THUMB_SIZE pixels on its longer side, and the low-resolution maps are resized, colored and
blended onto that small photo with the same C++ postprocessor as full-size overlays; detections are
drawn as their boxes (no text: it would not be readable at this size). Without the photo (tensor
inputs) the thumbnails are the heat maps. Cost per image: one resize of the photo and 1 + up to
MAX_OVERLAYS small renders and JPEG encodes (well under a millisecond each at 128 px).

Which overlays: the class-agnostic map when there is one, then the predicted classes that were
explained, then the other explained classes in order, MAX_OVERLAYS at most (an ALL run of a
1000-class model gets thumbnails of its predictions, not 1000).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .files import InlineWriter

THUMB_SIZE = 128      # longer side, pixels
MAX_OVERLAYS = 3      # overlays per image
QUALITY = 80          # JPEG quality
THUMBS_DIR = "explain/thumbs"  # (assets/report.html builds the same paths: thumbPath)


def thumb_tag(key) -> str:
    if key == "input":
        return "input"
    return "image" if key == "image" else f"class_{int(key)}"


def strip_rel(index: int) -> str:
    """The image's thumbnail strip, relative to the run folder."""
    index = int(index)
    return f"{THUMBS_DIR}/{index // 1000:04d}/{index:07d}.jpg"


def thumb_rel(index: int, key) -> str:
    """A thumbnail of a run made before the strips (one file per thumbnail), relative to the run folder."""
    index = int(index)
    return f"{THUMBS_DIR}/{index // 1000:04d}/{index:07d}_{thumb_tag(key)}.jpg"


def strip_stride(width: int) -> int:
    return -(-int(width) // 16) * 16


def thumb_keys(targets: Sequence, predicted: Iterable, limit: int = MAX_OVERLAYS) -> List:
    """The explained keys that get an overlay thumbnail, in the order the report shows them."""
    targets = list(targets)
    known = set(targets)
    chosen: List = []
    for key in (["image"] if "image" in known else []) + [int(k) for k in predicted] + targets:
        if len(chosen) >= limit:
            break
        if key in known and key not in chosen:
            chosen.append(key)
    return chosen


def thumb_size(height: int, width: int, size: int = THUMB_SIZE) -> Tuple[int, int]:
    """(h, w) of the thumbnail of an h x w image: the longer side `size`, never enlarged."""
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` reduced to width x height, close to cv2's INTER_AREA (a box filter: every input
    pixel counts, no aliasing) at a fraction of its cost: INTER_AREA at a non-integer ratio costs
    ~2 ms for a 650 px photo here, more than the JPEG encode of the thumbnail, and its integer path
    is fast only for a factor of 2 (1200 x 900 by 2: 0.37 ms; by 3 or 4: 1.4-1.8 ms). So: halvings
    (INTER_AREA by exactly 2, an odd last row or column dropped) while the image is at least 4x the
    target, then INTER_LINEAR to twice the target (a ratio under 2: two taps see every pixel), then
    INTER_AREA by exactly 2. An image at most twice the target gets plain INTER_AREA. Each halving
    drops at most one row and one column of its input (1, 2, 4 ... pixels of the photo): together
    under half a thumbnail pixel at the bottom and right edges."""
    h0, w0 = image.shape[:2]
    if (h0, w0) == (height, width):
        return image
    while w0 >= 4 * width and h0 >= 4 * height:
        h0, w0 = h0 // 2, w0 // 2
        image = cv2.resize(image[: 2 * h0, : 2 * w0], (w0, h0), interpolation=cv2.INTER_AREA)
    if w0 > 2 * width and h0 > 2 * height:
        image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def make_thumbs(keys: Sequence, maps: Optional[np.ndarray], image: Optional[np.ndarray],
                image_hw: Tuple[int, int], alpha: float = 0.5, detections=None
                ) -> List[Tuple[object, np.ndarray]]:
    """[(key, RGB thumbnail)]: "input" (the photo, when known) then one per key of `keys` (maps:
    uint8 [len(keys), h, w] in that order): the overlay on the small photo, or the heat map."""
    from ..postprocess import postprocess

    h, w = thumb_size(*image_hw)
    out: List[Tuple[object, np.ndarray]] = []
    small = None
    if image is not None:
        small = np.ascontiguousarray(shrink(image, w, h))
        out.append(("input", small))
    if maps is None or not len(keys):
        return out
    maps = np.ascontiguousarray(maps, dtype=np.uint8)
    heat, over = postprocess(maps, small if small is not None else (h, w), alpha, num_threads=1)
    pictures = over if over is not None else heat
    scale_y, scale_x = h / image_hw[0], w / image_hw[1]
    for i, key in enumerate(keys):
        picture = pictures[i]
        if detections is not None and len(detections):
            picture = _boxes(picture, detections, None if key == "image" else int(key), scale_x, scale_y)
        out.append((key, picture))
    return out


def _boxes(picture: np.ndarray, detections, only_class: Optional[int], sx: float, sy: float) -> np.ndarray:
    from ..draw import class_color

    picture = np.ascontiguousarray(picture.copy())
    for n in range(len(detections)):
        k = int(detections.labels[n])
        if only_class is not None and k != only_class:
            continue
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[n])
        cv2.rectangle(picture, (int(round(x1 * sx)), int(round(y1 * sy))), (int(round(x2 * sx)), int(round(y2 * sy))),
                      class_color(k), 1)
    return picture


def strip(thumbs: Sequence[Tuple[object, np.ndarray]]) -> Tuple[np.ndarray, List[int]]:
    """(the strip RGB [h, n * stride], [w, h, stride]) of an image's thumbnails (all w x h: made at
    the image's thumbnail size); each tile's gap repeats its last column."""
    tiles = [np.asarray(p) for _, p in thumbs]
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError(f"thumbnails of one image differ in size: {[t.shape[:2] for t in tiles]}")
    stride = strip_stride(w)
    out = np.empty((h, stride * len(tiles), 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        t = t if t.ndim == 3 else cv2.cvtColor(t, cv2.COLOR_GRAY2RGB)
        out[:, i * stride:i * stride + w] = t[:, :, :3]
        out[:, i * stride + w:(i + 1) * stride] = t[:, w - 1:w, :3]
    return out, [w, h, stride]


def encode_thumbs(run_dir, index: int, thumbs: Sequence[Tuple[object, np.ndarray]]) -> Tuple[List, dict]:
    """([(path, JPEG bytes)], what the journal records: {"thumbs": keys, "thumb_strip": [w, h, stride]})
    of an image's thumbnails (no file and no keys when there are none)."""
    from .encode import encode_jpg

    if not thumbs:
        return [], {"thumbs": []}
    pixels, tile = strip(thumbs)
    return [(Path(run_dir) / strip_rel(index), encode_jpg(pixels, QUALITY))], \
        {"thumbs": [key for key, _ in thumbs], "thumb_strip": tile}


def write_thumbs(run_dir, index: int, thumbs: Sequence[Tuple[object, np.ndarray]], writer=None) -> dict:
    """Write the image's thumbnail strip (JPEG, atomically) on this thread; returns what the journal records."""
    files, record = encode_thumbs(run_dir, index, thumbs)
    (writer or InlineWriter()).write(files)
    return record


class ThumbSink:
    """The report's thumbnails of every image (see the module doc); journals {"thumbs": [keys]}."""

    def __init__(self, run_dir, writer=None):
        self.run_dir = Path(run_dir)
        self.writer = writer or InlineWriter()  # the job's stages.files.FileWriter, or this thread

    def write(self, ex, done: Callable[[dict], None]) -> None:
        r = ex.renderer
        if r is None:
            done({"thumbs": []})
            return
        keys = thumb_keys(r.keys, ex.predicted)
        maps = r.maps[[r._index[k] for k in keys]] if keys else None
        thumbs = make_thumbs(keys, maps, r.image, r.size, r.alpha, r.shown)
        files, record = encode_thumbs(self.run_dir, ex.index, thumbs)
        self.writer.write(files, lambda: done(record))

    def close(self) -> None:
        pass


def thumbs_exist(run_dir, record: dict) -> bool:
    """Whether the thumbnails a journal record names are on disk (a strip, or the files of a run made
    before the strips)."""
    if record.get("thumb_strip"):
        return os.path.isfile(os.path.join(run_dir, strip_rel(record["index"])))
    return all(os.path.isfile(os.path.join(run_dir, thumb_rel(record["index"], k))) for k in record.get("thumbs") or [])
