"""Sinks: where a run's finished images go. Every sink has `write(explanation, done)` and
`close()`; the job calls `write` from its worker threads (one image per call, any order). A sink
calls `done(fields)` once the image's output is on disk (at once for files; when its shard is
written for the zarr store), with what the journal should record of it ({"files": [...]},
{"maps": {...}}); only then is the image journaled as finished.

- `FolderSink`: OTX's files, `<run>/explain/saliency_maps/<rel dir>/<stem>_class_<k>_saliency_map.png`
  and `..._overlay.png` (`_image_` for class-agnostic maps), PNG or JPEG (`.jpg`, quality 90),
  each written under a temporary name and renamed: no file ever holds a final name half-written;
  encoded on the calling (worker) thread, created by the job's `stages.files.FileWriter`.
- `CallbackSink`: a user's function gets every `Explanation`.
- `NullSink`: nothing (`--dump False`).
- `stages.zarr_store.ZarrSink`: the low-resolution maps in one Zarr store (`--dump_format zarr`).

Sinks never render: they take the pixels the render stage makes (`Explanation.files()`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from ..errors import XaifastError
from .encode import encode
from .files import GROUP_BYTES, InlineWriter, Parts

MAPS_DIR = "explain/saliency_maps"  # under the run folder
DUMP_FORMATS = ("png", "jpg")
EXTENSIONS = {"png": ".png", "jpg": ".jpg"}


def check_dump_format(fmt: str) -> str:
    name = str(fmt).lower().lstrip(".")
    name = "jpg" if name == "jpeg" else name
    if name not in DUMP_FORMATS + ("zarr",):
        raise XaifastError(f"unknown dump format {fmt!r}; use png (OTX's files), jpg (smaller, faster to write) "
                           "or zarr (every low-resolution map in one store, with a Parquet index)")
    return name


def output_names(rels: Sequence[str]) -> Dict[str, str]:
    """{rel path: output stem path}: `<rel dir>/<stem>`, so that files of different folders never
    collide; two files of one folder with one stem (x.jpg, x.png) get their extension in the name
    (x_jpg, x_png), whatever their order. A flat folder gives OTX's names."""
    by_stem: Dict[str, List[str]] = {}
    for rel in rels:
        p = Path(rel)
        by_stem.setdefault((p.parent / p.stem).as_posix(), []).append(rel)
    names = {}
    for stem, group in by_stem.items():
        if len(group) == 1:
            names[group[0]] = stem
        else:
            for rel in group:
                suffix = Path(rel).suffix.lstrip(".").lower() or "noext"
                names[rel] = f"{stem}_{suffix}"
    if len(set(names.values())) != len(names):  # x.JPG and x.jpg: fall back to the full name
        names = {rel: Path(rel).as_posix().replace(".", "_") for rel in rels}
    return names


def file_tag(key) -> str:
    return "image" if key == "image" else f"class_{key}"


class FolderSink:
    """OTX's PNG (or JPEG) files under `<run_dir>/explain/saliency_maps/`."""

    def __init__(self, run_dir, fmt: str = "png", quality: int = 90, writer=None):
        self.run_dir = Path(run_dir)
        self.writer = writer or InlineWriter()  # the job's stages.files.FileWriter, or this thread
        self.maps_dir = self.run_dir / MAPS_DIR
        self.maps_dir.mkdir(parents=True, exist_ok=True)
        self.fmt = check_dump_format(fmt)
        self.ext = EXTENSIONS[self.fmt]
        self.quality = quality

    def write(self, ex, done: Callable[[dict], None]) -> None:
        """Encode the image's files and hand them to the writer in parts of about GROUP_BYTES (one
        file more at most: an ALL run's 2000 files an image never wait at once); `done` once all
        are on disk."""
        written: List[str] = []
        parts = Parts(lambda: done({"files": written}))
        files, size = [], 0
        for key, kind, pixels in ex.files():
            rel = f"{MAPS_DIR}/{ex.name}_{file_tag(key)}_{kind}{self.ext}"
            data = encode(pixels, self.fmt, self.quality)
            files.append((self.run_dir / rel, data))
            written.append(rel)
            size += len(data)
            if size >= GROUP_BYTES:
                self.writer.write(files, parts.part())
                files, size = [], 0
        if files:
            self.writer.write(files, parts.part())
        parts.close()

    def close(self) -> None:
        pass


class CallbackSink:
    """Hands every Explanation to `fn` (from the job's worker threads)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def write(self, ex, done: Callable[[dict], None]) -> None:
        self.fn(ex)
        done({})

    def close(self) -> None:
        pass


class NullSink:
    def write(self, ex, done: Callable[[dict], None]) -> None:
        done({})

    def close(self) -> None:
        pass


def files_exist(run_dir, files: Sequence[str]) -> bool:
    """A journaled image's files are all there (a resumed run trusts the journal line only then)."""
    return all(os.path.isfile(os.path.join(run_dir, f)) for f in files)
