"""Sources: folder walk, file lists, COCO, single files."""
import json
import os
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from xaifast.errors import DataError
from xaifast.stages.sources import SourceItem, is_path_input, list_sources


def _img(path: Path, shape=(6, 8, 3), value=0, params=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8), list(params)), path
    return path


def _rels(items):
    return [it.rel for it in items]


# ------------------------------------------------------------------------------------------ folders

def test_nested_tree_sorted_images_only(tmp_path):
    for rel in ("b/x.jpg", "a/x.jpg", "a/sub/y.png", "z.PNG", "a/deep/er/w.BmP"):
        _img(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "README").write_text("")
    _img(tmp_path / ".hidden.jpg")
    _img(tmp_path / ".cache" / "c.jpg")
    _img(tmp_path / "a" / ".thumbs" / "t.png")
    items = list_sources(tmp_path)
    assert _rels(items) == ["a/deep/er/w.BmP", "a/sub/y.png", "a/x.jpg", "b/x.jpg", "z.PNG"]
    assert all(it.gt is None for it in items)  # mixed depths: no class labels
    assert [Path(it.path) for it in items] == [tmp_path / it.rel for it in items]
    assert items[2].path != items[3].path  # a/x.jpg and b/x.jpg are two items
    assert list_sources(str(tmp_path)) == items  # stable, str or Path


def test_symlink_loop_does_not_hang_or_duplicate(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _img(root / "a" / "img.jpg")
    _img(root / "top.png")
    _img(outside / "o.jpg")
    os.symlink(root, root / "a" / "loop")            # to an ancestor
    os.symlink(root / "a", root / "a" / "self")       # to itself
    os.symlink(root / "a", root / "alias")            # a second name of a real folder
    os.symlink(outside, root / "ext")                 # a folder outside the root
    os.symlink(outside / "o.jpg", root / "link.jpg")  # a symlink to a file is a file
    os.symlink(root / "nowhere.jpg", root / "broken.jpg")
    os.symlink(root / "knot.jpg", root / "knot.jpg")  # a symlink to itself
    result = []
    worker = threading.Thread(target=lambda: result.append(list_sources(root)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the folder walk loops on symlinks"
    # the real folder a/ is listed under its own name, not under alias/ or a/loop/...
    assert _rels(result[0]) == ["a/img.jpg", "ext/o.jpg", "link.jpg", "top.png"]


def test_class_folder_labels(tmp_path):
    for rel in ("n01440764/x.JPEG", "n01440764/y.jpg", "tabby/z.png"):
        _img(tmp_path / rel)
    items = list_sources(tmp_path)
    assert [(it.rel, it.gt) for it in items] == [("n01440764/x.JPEG", {"label": "n01440764"}),
                                                 ("n01440764/y.jpg", {"label": "n01440764"}),
                                                 ("tabby/z.png", {"label": "tabby"})]
    _img(tmp_path / "loose.jpg")  # one image in the root: not a class tree
    assert all(it.gt is None for it in list_sources(tmp_path))
    (tmp_path / "loose.jpg").unlink()
    _img(tmp_path / "tabby" / "deeper" / "d.jpg")  # one image two levels down: not a class tree
    assert all(it.gt is None for it in list_sources(tmp_path))


def test_flat_folder_and_single_file(tmp_path):
    _img(tmp_path / "b.jpg")
    _img(tmp_path / "a.png")
    assert list_sources(tmp_path) == [SourceItem(str(tmp_path / "a.png"), "a.png"),
                                      SourceItem(str(tmp_path / "b.jpg"), "b.jpg")]
    assert list_sources(tmp_path / "b.jpg") == [SourceItem(str(tmp_path / "b.jpg"), "b.jpg")]


# ---------------------------------------------------------------------------------- lists of files

def test_text_file_list(tmp_path):
    _img(tmp_path / "imgs" / "a" / "x.jpg")
    _img(tmp_path / "imgs" / "b" / "x.jpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "val.txt"
    listing.write_text("\n".join([
        "# validation images", "", "../imgs/b/x.jpg", f"  {tmp_path / 'imgs' / 'a' / 'x.jpg'}  ",
        "../imgs/b/x.jpg", "   # indented comment", "../imgs/b/../b/x.jpg", "../imgs/missing.jpg", ""]) + "\r\n")
    with pytest.warns(UserWarning, match="2 duplicate path"):
        items = list_sources(listing)
    assert _rels(items) == ["b/x.jpg", "a/x.jpg", "missing.jpg"]  # the file's order, not sorted
    assert [os.path.abspath(it.path) for it in items] == [
        str(tmp_path / "imgs" / "b" / "x.jpg"), str(tmp_path / "imgs" / "a" / "x.jpg"),
        str(tmp_path / "imgs" / "missing.jpg")]
    assert not os.path.exists(items[2].path)  # still an item: decoding reports it
    assert all(it.gt is None for it in items)


def test_text_file_in_one_folder_gives_bare_names(tmp_path, monkeypatch):
    for name in ("c.jpg", "a.jpg"):
        _img(tmp_path / name)
    (tmp_path / "list.txt").write_text("c.jpg\na.jpg\n")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicates: no warning
        items = list_sources("list.txt")
    assert items == [SourceItem("c.jpg", "c.jpg"), SourceItem("a.jpg", "a.jpg")]  # resolvable from the cwd


def test_text_file_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no image paths"):
        list_sources(empty)
    wrong = tmp_path / "sub" / "list.txt"
    wrong.parent.mkdir()
    _img(tmp_path / "x.jpg")
    wrong.write_text("x.jpg\n")  # relative to the list's folder: sub/x.jpg does not exist
    with pytest.raises(DataError, match="relative to its folder"):
        list_sources(wrong)
    binary = tmp_path / "weights.pth"
    for content in (bytes(range(256)) * 4, b"\0" * 10, b"abc\n" * 5000 + b"\xff\xfe"):
        binary.write_bytes(content)
        with pytest.raises(DataError, match="neither an image .* nor a text file"):
            list_sources(binary)
    utf8 = tmp_path / "utf8.txt"
    _img(tmp_path / "é" / "ü.jpg")
    utf8.write_bytes(b"\xef\xbb\xbf" + "é/ü.jpg\n".encode())  # a BOM, non-ASCII names
    assert _rels(list_sources(utf8)) == ["ü.jpg"]


def test_python_list(tmp_path):
    a = _img(tmp_path / "d1" / "x.jpg")
    b = _img(tmp_path / "d2" / "x.jpg")
    with pytest.warns(UserWarning, match="1 duplicate path"):
        items = list_sources([b, str(a), str(b), tmp_path / "d1" / "gone.png"])
    assert _rels(items) == ["d2/x.jpg", "d1/x.jpg", "d1/gone.png"]
    assert items[0].path == str(b)
    assert list_sources((str(a),)) == [SourceItem(str(a), "x.jpg")]
    with pytest.raises(DataError, match="empty"):
        list_sources([])
    with pytest.raises(DataError, match=r"data\[1\] is a int"):
        list_sources([a, 3])
    with pytest.raises(DataError, match="none of the 1 image path"):
        list_sources([tmp_path / "nope.jpg"])


def test_is_path_input(tmp_path):
    assert is_path_input("x") and is_path_input(tmp_path) and is_path_input([tmp_path, "y.jpg"])
    assert not is_path_input([]) and not is_path_input([1]) and not is_path_input(3)
    assert not is_path_input(np.zeros((1, 3, 4, 4)))


# --------------------------------------------------------------------------------------------- COCO

CATEGORIES = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]


def _coco(root: Path, name="instances_val2017.json", images=(), annotations=(), categories=CATEGORIES) -> Path:
    path = root / "annotations" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


def _coco_image(image_id, file_name):
    return {"id": image_id, "file_name": file_name, "width": 8, "height": 6}


def test_coco_folder_and_json(tmp_path):
    root = tmp_path / "coco"
    _img(root / "images" / "val2017" / "000000000139.jpg")
    _img(root / "images" / "val2017" / "000000000285.jpg")
    ann = _coco(root, images=[_coco_image(285, "000000000285.jpg"), _coco_image(139, "000000000139.jpg"),
                              _coco_image(632, "000000000632.jpg")],
                annotations=[{"id": 1, "image_id": 139, "bbox": [1, 2, 3, 4], "category_id": 18},
                             {"id": 2, "image_id": 285, "bbox": [0.5, 0, 2, 2.5], "category_id": 17,
                              "iscrowd": 1},
                             {"id": 3, "image_id": 139, "bbox": [0, 0, 8, 6], "category_id": 17}])
    items = list_sources(root)
    assert _rels(items) == ["val2017/000000000139.jpg", "val2017/000000000285.jpg", "val2017/000000000632.jpg"]
    assert items[0].gt == {"boxes": [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 8.0, 6.0]], "labels": ["dog", "cat"],
                           "category_ids": [18, 17], "image_id": 139}
    assert items[1].gt["boxes"] == [[0.5, 0.0, 2.0, 2.5]] and items[1].gt["labels"] == ["cat"]  # crowd kept
    assert all(isinstance(v, float) for box in items[0].gt["boxes"] for v in box)
    assert items[2].gt["boxes"] == [] and not os.path.exists(items[2].path)  # missing: still an item
    assert Path(items[2].path) == root / "images" / "val2017" / "000000000632.jpg"
    assert Path(items[0].path) == root / "images" / "val2017" / "000000000139.jpg"
    assert list_sources(ann) == items == list_sources(str(ann))  # the json itself


def test_coco_flat_images_and_json_choice(tmp_path):
    root = tmp_path / "det"
    _img(root / "images" / "b.jpg")
    _img(root / "images" / "a.jpg")
    images = [_coco_image(1, "b.jpg"), _coco_image(2, "a.jpg")]
    _coco(root, name="instances_default.json", images=images,
          annotations=[{"image_id": 2, "bbox": [1, 1, 2, 2], "category_id": 99}])
    items = list_sources(root)
    assert _rels(items) == ["a.jpg", "b.jpg"]
    assert Path(items[0].path) == root / "images" / "a.jpg"
    assert items[0].gt["labels"] == ["99"] and items[1].gt["boxes"] == []  # unknown category: its id

    # several jsons: the one whose images are there wins; the COCO per-split set prefers instances_
    _coco(root, name="instances_train2017.json", images=[_coco_image(1, "t.jpg")])
    assert _rels(list_sources(root)) == ["a.jpg", "b.jpg"]
    _coco(root, name="captions_default.json", images=images)
    assert _rels(list_sources(root)) == ["a.jpg", "b.jpg"]
    _coco(root, name="instances_other.json", images=images[:1])
    with pytest.raises(DataError, match=r"several annotation files .*instances_default\.json.*instances_other\.json"
                                        r".*pass the json"):
        list_sources(root)
    assert _rels(list_sources(root / "annotations" / "instances_other.json")) == ["b.jpg"]


def test_coco_errors_and_non_coco_folders(tmp_path):
    root = tmp_path / "det"
    _img(root / "images" / "a.jpg")
    (root / "annotations").mkdir()
    # no json in annotations/: a plain folder of images
    assert _rels(list_sources(root)) == ["images/a.jpg"]
    ann = _coco(root, images=[_coco_image(1, "elsewhere/a.jpg")])
    with pytest.raises(DataError, match="none of the 1 images .* on disk"):
        list_sources(root)
    # file_name climbing out of images/: found, but its rel stays inside the output folder
    _img(root / "extra" / "e.jpg")
    _coco(root, images=[_coco_image(1, "../extra/e.jpg"), _coco_image(2, "/abs/gone.jpg")])
    items = list_sources(root)
    assert [(os.path.normpath(it.path), it.rel) for it in items] == [
        ("/abs/gone.jpg", "abs/gone.jpg"), (str(root / "extra" / "e.jpg"), "extra/e.jpg")]
    ann.write_text(json.dumps({"info": {}}))
    with pytest.raises(DataError, match="not a COCO annotation file"):
        list_sources(ann)
    ann.write_text("{broken")
    with pytest.raises(DataError, match="not a readable COCO annotation file"):
        list_sources(ann)


# ------------------------------------------------------------------------------------------- errors

def test_errors_name_the_problem_and_the_fix(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    _img(tmp_path / ".hidden" / "x.jpg")
    with pytest.raises(DataError) as info:
        list_sources(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and ".jpg" in message and ".png" in message and "data_root" in message
    with pytest.raises(DataError, match="no such file or folder"):
        list_sources(tmp_path / "nope")
    for bad in (42, {"a": 1}, None):
        with pytest.raises(DataError, match="a folder of images"):
            list_sources(bad)
