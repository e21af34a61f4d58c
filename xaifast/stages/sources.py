"""Sources: what a dataset-scale run reads, as a list of `SourceItem`s (file, name, ground truth).

`list_sources(data)` accepts, for `data`:

1. a folder, walked recursively (symlinks followed, never twice into one real folder), image files
   only (`xaifast.data.IMAGE_EXTENSIONS`, any case), hidden files and folders skipped, sorted by
   `rel`. A class-folder tree (every image exactly one folder below the root) gives each image
   `gt={"label": <folder name>}`.
2. a COCO detection dataset: a folder holding `annotations/*.json` beside `images/`, or the path
   of the json itself. `gt={"boxes": [[x, y, w, h], ...], "labels": [...], "category_ids": [...],
   "image_id": ...}`; crowd annotations (`iscrowd: 1`) are included with the others.
3. a text file of image paths (one a line, relative to the text file's folder or absolute; blank
   lines and `#` comments skipped), in the file's order.
4. one image file.
5. a Python list or tuple of paths, in its order.

Listed files that are missing on disk (text file, list, COCO) are still items: decoding reports
them, a run never drops an image silently. Only when none of them exists is it a `DataError`
(the paths are almost certainly relative to the wrong folder).
"""
from __future__ import annotations

import codecs
import json
import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import PurePath
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..data import IMAGE_EXTENSIONS
from ..errors import DataError

ACCEPTED = ("a folder of images (walked recursively; class sub-folders give labels), a COCO dataset folder "
            "(annotations/*.json beside images/) or its annotation json, a text file listing image paths "
            "(one a line), an image file, or a list of image paths")


@dataclass(frozen=True)
class SourceItem:
    """One image of a run.

    path: the file to read (as resolvable from the current directory).
    rel: POSIX path relative to the data root ("n01440764/x.JPEG", or "x.jpg" in a flat folder);
        unique within a run, so outputs named after it never collide.
    gt: ground truth, or None: {"label": "n01440764"} for class-folder trees; for COCO
        {"boxes": [[x, y, w, h], ...] (float image pixels), "labels": ["cat", ...],
        "category_ids": [17, ...], "image_id": 139}.
    """

    path: str
    rel: str
    gt: Optional[dict] = None


def is_path_input(data) -> bool:
    """True for a str / PathLike, or a non-empty list or tuple of them."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return (isinstance(data, (list, tuple)) and len(data) > 0
            and all(isinstance(d, (str, os.PathLike)) for d in data))


def is_image_name(name: str) -> bool:
    """Whether a file name has one of `xaifast.data.IMAGE_EXTENSIONS`, in any case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_sources(data) -> List[SourceItem]:
    """The images `data` names, as `SourceItem`s (see the module docstring for what is accepted)."""
    if isinstance(data, (list, tuple)):
        return _list_paths(data)
    if not isinstance(data, (str, os.PathLike)):
        raise DataError(f"data of type {type(data).__name__} names no image files; pass {ACCEPTED}")
    path = os.fspath(data)
    if isinstance(path, bytes):
        raise DataError(f"data {data!r} is a bytes path; pass it as a str")
    if not path:
        raise DataError(f"data is an empty string; pass {ACCEPTED}")
    if os.path.isdir(path):
        coco = _find_coco_json(path)
        if coco is not None:
            return _list_coco(coco)
        return _walk_folder(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; check the path (relative paths start at the "
                        f"current folder {os.getcwd()})")
    if path.lower().endswith(".json"):
        return _list_coco(path)
    if is_image_name(path):
        return [SourceItem(path, os.path.basename(path))]
    return _list_text_file(path)


# --------------------------------------------------------------------------------------------- folders

def _walk_folder(root: str) -> List[SourceItem]:
    """Image files under `root`, recursively, following symlinks but entering each real folder once.

    Real sub-folders are walked before symlinked ones, so a folder reachable both ways is listed under
    its real name; a symlink to an ancestor (a loop) is skipped.
    """
    visited = set()
    items: List[Tuple[str, str]] = []  # (path, rel)
    unreadable: List[str] = []
    real_dirs: List[Tuple[str, str]] = [(root, "")]  # (folder, rel prefix)
    linked_dirs: List[Tuple[str, str]] = []
    while real_dirs or linked_dirs:
        folder, prefix = real_dirs.pop() if real_dirs else linked_dirs.pop(0)
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            unreadable.append(folder)
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
                is_link = entry.is_symlink()
            except OSError:  # a symlink loop onto itself, a vanished entry
                continue
            if is_dir:
                subdirs.append((entry.path, prefix + name + "/", is_link))
            elif is_file and is_image_name(name):
                items.append((entry.path, prefix + name))
        # reversed: the stack pops sub-folders in name order
        for path, rel, is_link in reversed(subdirs):
            if is_link:
                linked_dirs.append((path, rel))
            else:
                real_dirs.append((path, rel))
        linked_dirs.sort(key=lambda d: d[1])
    if unreadable:
        warnings.warn(f"xaifast: {len(unreadable)} folder(s) under {root} could not be read and were skipped "
                      f"(first: {unreadable[0]}); check their permissions", stacklevel=3)
    if not items:
        raise DataError(f"no images found in folder {root} (looked recursively for "
                        f"{', '.join(IMAGE_EXTENSIONS)}, any case; hidden files and folders are skipped); "
                        "point --data_root (data=) at a folder of images, a COCO dataset folder, a text file "
                        "listing image paths, or an image file")
    items.sort(key=lambda it: it[1])
    classes = all(rel.count("/") == 1 for _, rel in items)
    return [SourceItem(path, rel, {"label": rel.split("/", 1)[0]} if classes else None) for path, rel in items]


# ------------------------------------------------------------------------------------ lists of files

def _list_text_file(path: str) -> List[SourceItem]:
    try:
        with open(path, "rb") as f:  # a binary file (a video, weights) fails on its first bytes, unread
            head = f.read(8192)
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        with open(path, "r", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is neither an image (extensions {', '.join(IMAGE_EXTENSIONS)}) nor a text "
                        "file listing image paths (it is not UTF-8 text); pass an image, a folder, or a "
                        "list file with one image path a line") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the list of images ({exc.strerror or exc})") from None
    base = os.path.dirname(path)
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line if os.path.isabs(line) else os.path.join(base, line))
    if not entries:
        raise DataError(f"{path} lists no image paths (blank lines and lines starting with # are skipped); "
                        "write one image path a line, relative to the list file's folder or absolute")
    return _items_from_paths(entries, f"the list file {path}",
                             f"paths in a list file are relative to its folder ({os.path.abspath(base)})")


def _list_paths(data: Sequence) -> List[SourceItem]:
    if not data:
        raise DataError(f"the list of images is empty; pass at least one image path, or {ACCEPTED}")
    paths = []
    for n, p in enumerate(data):
        if not isinstance(p, (str, os.PathLike)) or isinstance(os.fspath(p), bytes):
            raise DataError(f"data[{n}] is a {type(p).__name__}; a list must hold image paths (str or "
                            "pathlib.Path) only")
        paths.append(os.fspath(p))
    return _items_from_paths(paths, "the list of images",
                             f"relative paths start at the current folder ({os.getcwd()})")


def _items_from_paths(paths: List[str], what: str, relative_hint: str) -> List[SourceItem]:
    """Paths in the user's order, duplicates dropped, rel relative to their common ancestor folder."""
    seen = set()
    unique: List[Tuple[str, str]] = []  # (path as given, normalized absolute path)
    for p in paths:
        key = os.path.normcase(os.path.abspath(p))
        if key in seen:
            continue
        seen.add(key)
        unique.append((os.path.normpath(p), os.path.abspath(p)))
    dropped = len(paths) - len(unique)
    if dropped:
        warnings.warn(f"xaifast: {dropped} duplicate path(s) in {what} ignored; each image is explained once, "
                      "at its first occurrence", stacklevel=4)
    if not any(os.path.exists(p) for p, _ in unique):
        raise DataError(f"none of the {len(unique)} image path(s) in {what} exists (first: {unique[0][0]}); "
                        f"{relative_hint}")
    rels = _relative_to_common_ancestor([a for _, a in unique])
    return [SourceItem(p, rel) for (p, _), rel in zip(unique, rels)]


def _relative_to_common_ancestor(abs_paths: List[str]) -> List[str]:
    try:
        common = os.path.commonpath([os.path.dirname(a) for a in abs_paths])
    except ValueError:  # paths on different drives (Windows): no common folder
        return [PurePath(a).relative_to(PurePath(a).anchor).as_posix() for a in abs_paths]
    return [PurePath(os.path.relpath(a, common)).as_posix() for a in abs_paths]


# ---------------------------------------------------------------------------------------------- COCO

def _find_coco_json(folder: str) -> Optional[str]:
    """The annotation json of a COCO dataset folder (annotations/*.json beside images/), or None."""
    ann_dir = os.path.join(folder, "annotations")
    images_dir = os.path.join(folder, "images")
    if not (os.path.isdir(ann_dir) and os.path.isdir(images_dir)):
        return None
    candidates = sorted(os.path.join(ann_dir, n) for n in os.listdir(ann_dir)
                        if n.lower().endswith(".json") and not n.startswith(".")
                        and os.path.isfile(os.path.join(ann_dir, n)))
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    with_images = [c for c in candidates if _coco_images_present(c)]
    chosen = with_images or candidates
    if len(chosen) > 1:  # COCO ships captions_ / person_keypoints_ / instances_ files per split
        instances = [c for c in chosen if os.path.basename(c).lower().startswith("instances")]
        if len(instances) == 1:
            chosen = instances
    if len(chosen) == 1:
        return chosen[0]
    raise DataError(f"{folder} looks like a COCO dataset but holds several annotation files that match its "
                    f"images: {', '.join(os.path.basename(c) for c in chosen)}; pass the json to use as data "
                    f"(e.g. --data_root {chosen[0]})")


def _split_name(json_path: str) -> Optional[str]:
    stem = os.path.splitext(os.path.basename(json_path))[0]
    return stem.rsplit("_", 1)[1] if "_" in stem else None


def _coco_images_present(json_path: str) -> bool:
    """Whether the images of a COCO json are on disk: images/<split>/ is there, else (parsing the json)
    its first image resolves."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(json_path)))
    split = _split_name(json_path)
    if split and os.path.isdir(os.path.join(root, "images", split)):
        return True
    try:
        images = _load_coco(json_path)["images"]
    except DataError:
        return False
    return any(os.path.isfile(_resolve_coco_file(json_path, im.get("file_name", ""))[0]) for im in images[:8])


def _load_coco(json_path: str) -> dict:
    try:
        with open(json_path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{json_path}: not a readable COCO annotation file ({type(exc).__name__}: {exc}); "
                        "pass a COCO instances json (images, annotations, categories)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{json_path} is not a COCO annotation file (no \"images\" list); pass a COCO "
                        "instances json (images, annotations, categories), or a folder of images")
    return doc


def _resolve_coco_file(json_path: str, file_name: str) -> Tuple[str, str]:
    """(path, rel) of a COCO `file_name`: images/<file_name>, images/<split>/<file_name>,
    <json dir>/../<file_name>, then <json dir>/<file_name> (exports that keep the json beside the
    images); a file found nowhere gets images/<split>/<file_name> when that folder exists, else
    images/<file_name>."""
    json_dir = os.path.dirname(json_path)
    root = os.path.dirname(json_dir) if json_dir else ".."
    images = os.path.join(root, "images")
    split = _split_name(json_path)
    name = posixpath.normpath(file_name.replace("\\", "/"))
    # rel names outputs: never absolute, never climbing out of the output folder
    rel = "/".join(part for part in name.split("/") if part not in ("", ".", ".."))
    candidates = [(os.path.join(images, name), rel)]
    if split:
        candidates.append((os.path.join(images, split, name), f"{split}/{rel}"))
    candidates.append((os.path.join(root, name), rel))
    candidates.append((os.path.join(json_dir, name), rel))
    for path, rel in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path), rel
    path, rel = candidates[1] if split and os.path.isdir(os.path.join(images, split)) else candidates[0]
    return os.path.normpath(path), rel


def _list_coco(json_path: str) -> List[SourceItem]:
    doc = _load_coco(json_path)
    names: Dict[int, str] = {}
    for cat in doc.get("categories") or []:
        if isinstance(cat, dict) and "id" in cat:
            names[cat["id"]] = str(cat.get("name", cat["id"]))
    has_annotations = "annotations" in doc
    per_image: Dict[object, List[dict]] = {}
    for n, ann in enumerate(doc.get("annotations") or []):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DataError(f"{json_path}: annotation {n} has no image_id; a COCO annotation needs image_id, "
                            "bbox [x, y, w, h] and category_id")
        per_image.setdefault(ann["image_id"], []).append(ann)
    items: List[SourceItem] = []
    seen_rel = set()
    duplicates = 0
    image_ids = set()
    for n, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            raise DataError(f"{json_path}: images[{n}] needs an id and a file_name; fix the annotation file")
        path, rel = _resolve_coco_file(json_path, im["file_name"])
        if rel in seen_rel:
            duplicates += 1
            continue
        seen_rel.add(rel)
        image_ids.add(im["id"])
        gt = None
        if has_annotations:
            boxes, labels, cats = [], [], []
            for ann in per_image.get(im["id"], ()):
                bbox = ann.get("bbox")
                try:
                    box = [float(v) for v in bbox]
                except (TypeError, ValueError):
                    box = []
                if len(box) != 4:
                    raise DataError(f"{json_path}: annotation {ann.get('id', '?')} has bbox {bbox!r}; "
                                    "COCO boxes are [x, y, width, height] in image pixels")
                cid = ann.get("category_id")
                boxes.append(box)
                cats.append(cid)
                labels.append(names.get(cid, str(cid)))
            gt = {"boxes": boxes, "labels": labels, "category_ids": cats, "image_id": im["id"]}
        items.append(SourceItem(path, rel, gt))
    if duplicates:
        warnings.warn(f"xaifast: {duplicates} image(s) of {json_path} repeat a file_name already listed and "
                      "were ignored", stacklevel=3)
    orphans = sum(len(v) for k, v in per_image.items() if k not in image_ids)
    if orphans:
        warnings.warn(f"xaifast: {orphans} annotation(s) of {json_path} refer to no listed image and were "
                      "ignored", stacklevel=3)
    if not items:
        raise DataError(f"{json_path} lists no images; pass a COCO json whose \"images\" is not empty")
    if not any(os.path.isfile(it.path) for it in items):
        json_dir = os.path.dirname(os.path.abspath(json_path))
        root = os.path.dirname(json_dir)
        split = _split_name(json_path) or "<split>"
        raise DataError(f"none of the {len(items)} images of {json_path} is on disk (first: "
                        f"{doc['images'][0]['file_name']}; looked in {os.path.join(root, 'images')}/, "
                        f"{os.path.join(root, 'images', split)}/, {root}/ and {json_dir}/); put the images in "
                        "an images/ folder beside annotations/")
    items.sort(key=lambda it: it.rel)
    return items


__all__ = ["SourceItem", "list_sources", "is_path_input", "is_image_name"]
