"""Sources (folder walk, file lists, COCO, single files) and decode (header sizes, pixel limit, reasons)."""
import json
import os
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from xaifast.data import IMAGE_EXTENSIONS, read_image
from xaifast.errors import DataError, ImageReadError
from xaifast.stages import decode
from xaifast.stages.decode import DEFAULT_MAX_PIXELS, ImageTooLargeError, image_size, read_image_checked
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


# ----------------------------------------------------------------------------------- header sizes

def _formats(tmp_path):
    """(file, cv2 params) for every header parser, non-square odd sizes to catch w/h swaps."""
    rng = np.random.default_rng(0)
    color, gray = rng.integers(0, 255, (23, 37, 3), np.uint8), rng.integers(0, 255, (41, 19), np.uint8)
    rgba = rng.integers(0, 255, (17, 29, 4), np.uint8)
    cases = [("c.png", color, []), ("g16.png", (gray.astype(np.uint16) * 257), []), ("a.png", rgba, []),
             ("c.jpg", color, []), ("g.jpeg", gray, []), ("p.jpg", color, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
             ("c.bmp", color, []), ("g.bmp", gray, []), ("a.bmp", rgba, []),
             ("lossy.webp", color, [cv2.IMWRITE_WEBP_QUALITY, 80]),
             ("lossless.webp", color, [cv2.IMWRITE_WEBP_QUALITY, 101]),
             ("alpha.webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 80]),
             ("c.tif", color, []), ("g.tiff", gray, []), ("c.ppm", color, []), ("g.pgm", gray, []),
             ("b.pbm", gray, []), ("png_named.jpg", None, [])]
    files = []
    for name, array, params in cases:
        path = tmp_path / name
        if array is None:  # a PNG with a misleading extension: sizes come from the magic bytes
            path.write_bytes((tmp_path / "c.png").read_bytes())
        else:
            assert cv2.imwrite(str(path), array, params), name
        files.append(path)
    return files


def test_image_size_matches_decoded_shape(tmp_path):
    files = _formats(tmp_path)
    webp_chunks = set()
    for path in files:
        decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image_size(path) == (decoded.shape[1], decoded.shape[0]), path.name
        if path.suffix == ".webp":
            webp_chunks.add(path.read_bytes()[12:16])
    assert webp_chunks == {b"VP8 ", b"VP8L", b"VP8X"}


def test_image_size_agrees_with_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    files = _formats(tmp_path)
    Image.new("RGB", (31, 13)).save(tmp_path / "x.gif")
    Image.new("RGB", (33, 11)).save(tmp_path / "big.tif", big_tiff=True)
    Image.new("RGB", (35, 9)).save(tmp_path / "meta.webp", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00")
    Image.new("L", (5, 70000)).save(tmp_path / "tall.png")
    for path in files + [tmp_path / n for n in ("x.gif", "big.tif", "meta.webp", "tall.png")]:
        with Image.open(path) as im:
            assert image_size(path) == im.size, path.name
    assert (tmp_path / "big.tif").read_bytes()[2:4] == b"+\x00"  # BigTIFF


def test_image_size_unknown_or_broken_is_none(tmp_path):
    png = _img(tmp_path / "ok.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:12])
    jpg = _img(tmp_path / "ok.jpg")
    cut_jpg = tmp_path / "cut.jpg"
    cut_jpg.write_bytes(jpg.read_bytes()[:40])
    text = tmp_path / "text.jpg"
    text.write_text("hello, not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (cut, cut_jpg, text, empty, tmp_path / "missing.png", tmp_path):
        assert image_size(path) is None, path.name


# ------------------------------------------------------------------------------------------- decode

@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """12000 x 9000 zeros: 108 megapixels in ~120 kB."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    assert cv2.imwrite(str(path), np.zeros((9000, 12000), np.uint8))
    return path


def test_too_large_is_refused_before_decoding(huge_png, monkeypatch):
    assert image_size(huge_png) == (12000, 9000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("cv2.imdecode called on an image over the limit")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ImageTooLargeError) as info:
        read_image_checked(huge_png)
    assert str(info.value) == ("12000 x 9000 = 108.0 megapixels, over the limit of 100 megapixels; "
                               "raise it with --max_image_pixels / max_image_pixels=")
    assert isinstance(info.value, ImageReadError) and DEFAULT_MAX_PIXELS == 100_000_000
    with pytest.raises(ImageTooLargeError, match="108.0 megapixels, over the limit of 107.5 megapixels"):
        read_image_checked(huge_png, max_pixels=107_500_000)
    with pytest.raises(ImageTooLargeError, match="108.0 megapixels, over the limit of 107.999999 megapixels"):
        read_image_checked(huge_png, max_pixels=107_999_999)
    # too close for megapixels rounded to 0.1 to show the difference: in pixels
    assert decode.too_large_reason(10001, 10000, DEFAULT_MAX_PIXELS).startswith(
        "10001 x 10000 = 100010000 pixels, over the limit of 100000000 pixels; raise it with")


def test_too_large_decodes_without_limit(huge_png):
    image = read_image_checked(huge_png, max_pixels=None)
    assert image.shape == (9000, 12000, 3) and image.dtype == np.uint8 and not image.any()


def test_limit_raised_and_checked_after_decoding_when_header_unknown(tmp_path, monkeypatch):
    path = _img(tmp_path / "small.png", shape=(40, 50, 3), value=7)
    with pytest.raises(ImageTooLargeError, match=r"^50 x 40 = 2000 pixels, over the limit of 1000 pixels; raise"):
        read_image_checked(path, max_pixels=1000)
    assert read_image_checked(path, max_pixels=2000).shape == (40, 50, 3)
    assert read_image_checked(path, max_pixels=float("inf")).shape == (40, 50, 3)
    monkeypatch.setattr(decode, "image_size", lambda p: None)  # a format whose header is not parsed
    with pytest.raises(ImageTooLargeError, match="^50 x 40 "):
        read_image_checked(path, max_pixels=1000)
    for bad in (0, -5, "many", True):
        with pytest.raises(DataError, match="max_image_pixels must be a positive number"):
            read_image_checked(path, max_pixels=bad)


def test_decoding_matches_read_image(tmp_path):
    rng = np.random.default_rng(1)
    paths = [_img(tmp_path / "rgba.png", shape=(9, 11, 4)),
             tmp_path / "g16.png", tmp_path / "c.jpg"]
    cv2.imwrite(str(paths[1]), rng.integers(0, 65535, (5, 7), np.uint16))
    cv2.imwrite(str(paths[2]), rng.integers(0, 255, (13, 9, 3), np.uint8))
    for path in paths:
        np.testing.assert_array_equal(read_image_checked(path), read_image(path))


def test_unreadable_files_give_reasons_without_the_path(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(np.random.default_rng(2).integers(0, 255, 500, np.uint8).tobytes())
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_img(tmp_path / "full.png", shape=(64, 64, 3), value=9).read_bytes()[:60])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = {corrupt: "not a readable image (corrupt, truncated or unsupported format)",
             garbage: "not a readable image (corrupt, truncated or unsupported format)",
             truncated: "not a readable image (corrupt, truncated or unsupported format)",
             empty: "empty file (0 bytes)",
             tmp_path / "missing.jpg": "no such file",
             tmp_path: "is a folder, not an image file"}
    for path, reason in cases.items():
        with pytest.raises(ImageReadError) as info:
            read_image_checked(path)
        assert str(info.value) == reason and str(path) not in str(info.value) and path.name not in str(info.value)
        assert not isinstance(info.value, ImageTooLargeError)


def test_every_listed_extension_is_sized(tmp_path):
    """A folder's images all have header sizes, so the pixel limit applies before decoding."""
    for ext in IMAGE_EXTENSIONS:
        path = _img(tmp_path / f"x{ext}", shape=(3, 5, 3) if ext not in (".pgm", ".pbm") else (3, 5))
        assert image_size(path) == (5, 3), ext
