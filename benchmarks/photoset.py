"""A deterministic set of JPEG photos for dataset-scale benchmarks, made from the colour (and a few
gray) photos bundled with scikit-image: random crop, random horizontal flip, random scale so that
the longer side is in [min_side, max_side], saved as JPEG quality 90 (OpenCV) in class folders:

    <out_dir>/class_<i % classes>/<i:05d>_<source>.jpg        (i = 0 .. n-1)

Photo i depends only on (seed, i), so the first 400 photos of a 1600-photo set are the 400-photo
set. A finished set is recorded in <out_dir>/.photoset.json; asking again for the same set
returns the recorded files without re-encoding anything (missing files are made again).

    python benchmarks/photoset.py OUT_DIR [N] [--seed 0] [--min-side 150] [--max-side 1200] [--flat]
    python -m benchmarks.photoset OUT_DIR N
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

# scikit-image's bundled photos (files next to skimage/data/__init__.py); the gray ones are saved
# as 1-channel JPEGs, as datasets sometimes hold.
COLOR_SOURCES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg"]
GRAY_SOURCES = ["coins.png", "camera.png", "moon.png"]
VERSION = 1  # bump when the recipe changes, so cached sets are made again
MANIFEST = ".photoset.json"


def source_folder() -> Path:
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__))


def load_sources() -> List[tuple]:
    """[(stem, image)]: BGR uint8 for the colour photos, 2-D uint8 for the gray ones; files that
    this scikit-image does not have are left out (at least one must exist)."""
    folder = source_folder()
    out = []
    for names, flag in ((COLOR_SOURCES, cv2.IMREAD_COLOR), (GRAY_SOURCES, cv2.IMREAD_GRAYSCALE)):
        for name in names:
            path = folder / name
            if path.is_file():
                image = cv2.imread(str(path), flag)
                if image is not None:
                    out.append((path.stem, image))
    if not out:
        raise FileNotFoundError(f"none of scikit-image's photos were found in {folder}")
    return out


def make_photo(sources: Sequence[tuple], seed: int, i: int, min_side: int, max_side: int):
    """(stem, image) of photo i: a random source, crop, flip and scale, from rng (seed, i)."""
    rng = np.random.default_rng([seed, i])
    stem, src = sources[int(rng.integers(len(sources)))]
    H, W = src.shape[:2]
    h = int(rng.integers(max(1, H // 2), H + 1))  # crop: each side 50..100% of the source's
    w = int(rng.integers(max(1, W // 2), W + 1))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    image = src[y:y + h, x:x + w]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    side = int(rng.integers(min_side, max_side + 1))  # the longer side after scaling
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return stem, cv2.resize(np.ascontiguousarray(image), size, interpolation=interp)


def _write_jpg(path: Path, image: np.ndarray, quality: int = 90) -> None:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buf.tofile(str(tmp))
    os.replace(tmp, path)


def make_photoset(out_dir, n: int = 400, seed: int = 0, min_side: int = 150, max_side: int = 1200,
                  classes: int = 4, flat: bool = False) -> List[Path]:
    """Make (or reuse) n JPEG photos under out_dir; returns their paths in order. `flat` puts
    every photo directly in out_dir (for a reader that does not walk subfolders)."""
    if n < 0 or not 1 <= min_side <= max_side or classes < 1:
        raise ValueError(f"bad photoset parameters n={n}, min_side={min_side}, max_side={max_side}, classes={classes}")
    out_dir = Path(out_dir)
    params = dict(version=VERSION, n=n, seed=seed, min_side=min_side, max_side=max_side, classes=classes, flat=flat)
    manifest = out_dir / MANIFEST
    recorded = None
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except ValueError:
            recorded = None
    names = None
    if recorded and recorded.get("params") == params and len(recorded.get("files", [])) == n:
        names = recorded["files"]
    elif recorded:  # another set was made here: remove its photos, so a folder walk sees only this set
        for name in recorded.get("files", []):
            try:
                (out_dir / name).unlink()
            except OSError:
                pass
        manifest.unlink()
        recorded = None
    sources: Optional[list] = None
    paths = []
    for i in range(n):
        if names is not None and (out_dir / names[i]).is_file():
            paths.append(out_dir / names[i])
            continue
        if sources is None:
            sources = load_sources()
        stem, image = make_photo(sources, seed, i, min_side, max_side)
        folder = out_dir if flat else out_dir / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}_{stem}.jpg"
        _write_jpg(path, image)
        paths.append(path)
    files = [str(p.relative_to(out_dir)) for p in paths]
    if recorded is None or recorded.get("params") != params or recorded.get("files") != files:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_name(f".{manifest.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"params": params, "files": files}, indent=1))
        os.replace(tmp, manifest)
    return paths


def describe(paths: Sequence[Path]) -> str:
    """'n photos, longer side min..max (median), k gray, x MB'."""
    if not paths:
        return "0 photos"
    sides, gray, size = [], 0, 0
    for p in paths:
        size += p.stat().st_size
        image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        sides.append(max(image.shape[:2]))
        gray += image.ndim == 2
    return (f"{len(paths)} photos, longer side {min(sides)}..{max(sides)} px (median {int(np.median(sides))}), "
            f"{gray} gray, {size / 1e6:.1f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Make a deterministic JPEG photoset from scikit-image's photos.")
    ap.add_argument("out_dir")
    ap.add_argument("n", nargs="?", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-side", type=int, default=150)
    ap.add_argument("--max-side", type=int, default=1200)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--flat", action="store_true", help="no class folders")
    a = ap.parse_args(argv)
    paths = make_photoset(a.out_dir, a.n, a.seed, a.min_side, a.max_side, a.classes, a.flat)
    print(f"{a.out_dir}: {describe(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
