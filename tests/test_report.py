"""The run report: thumbnails written by the run (against a float64 reference), report.html opened
in headless Chromium (Debian's `chromium`; `make test` installs it) and what it shows: names and
labels as text (never markup), filter by class, sort by score, pages, its controls; `xaifast
report` rebuilding thumbnails from a zarr store and from a postprocessed PNG run's files; an
evaluate run's table and curves; a large run's files stay small and a far page loads alone."""
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import xaifast  # noqa: F401
from xaifast.cli import main as cli
from xaifast.stages.thumbs import (MAX_OVERLAYS, make_thumbs, shrink, strip, strip_rel, thumb_keys, thumb_rel,
                                   thumb_size)

from chromium import Browser, find_chromium

EVIL = "<img src=x onerror=alert(1)>"
EVIL_LABEL = "<b onmouseover=alert(3)>c1</b>"
NAMES = ["c0/a.jpg", "c0/b.jpg", f"c1/{EVIL}.jpg", "c1/d.png", "c2/e.jpg", "c2/f.jpg"]
BAD = "c2/<svg onload=alert(2)>.png"  # unreadable: listed as skipped, by name


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("headless Chromium is needed to open report.html: `make test` installs Debian's chromium "
                    "(apt-get install chromium), or set XAIFAST_CHROMIUM to a Chromium/Chrome binary")
    with Browser() as b:
        yield b


def _photo(rng, h, w):
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def data(tmp_path, rng):
    root = tmp_path / "data"
    for name in NAMES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(Path(name).suffix, _photo(rng, int(rng.integers(40, 200)), int(rng.integers(40, 200))))
        path.write_bytes(buf.tobytes())
    (root / BAD).write_bytes(b"not an image")
    return root


@pytest.fixture
def recipe(tmp_path):
    from xaifast.zoo import SmallCNN

    ckpt = tmp_path / "w.pth"
    model = SmallCNN(num_classes=3)
    with torch.no_grad():  # spread the scores (random features differ little from photo to photo)
        model.classifier.weight.mul_(300)
        model.classifier.bias.zero_()
    torch.save({"state_dict": model.state_dict()}, ckpt)
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  class_path: xaifast.zoo.builtin.SmallCNN\n  init_args: {num_classes: 3}\n"
                    f"input_size: [32, 32]\nlabels: [c0, {json.dumps(EVIL_LABEL)}, c2]\n")
    return path, ckpt


def explain(recipe, data, work, *extra):
    path, ckpt = recipe
    args = ["explain", "--config", path] + (["--checkpoint", ckpt] if ckpt else []) + ["--data_root", data, "--work_dir", work,
            "--engine", "pytorch", "--batch_size", 4, "--num_workers", 2, "--progress", False,
            *(extra if "--explain_config.target_explain_group" in extra else
              ("--explain_config.target_explain_group", "ALL", *extra))]
    assert cli([str(a) for a in args]) == 0
    return (Path(work) / ".latest").resolve()


def open_page(b, run_dir, hash_=""):
    b.open("about:blank")  # a new document (same URL but the hash would only fire hashchange)
    b.wait("document.readyState === 'complete' && location.href === 'about:blank'")
    b.open((Path(run_dir) / "report.html").as_uri() + hash_)
    b.wait("document.body && document.body.dataset.ready === '1'")


def goto(b, hash_):
    b.eval(f"document.body.dataset.ready = 'stale'; location.hash = {json.dumps(hash_)}; 1")
    b.wait("document.body.dataset.ready === '1'")


CARDS = """[...document.querySelectorAll('#grid .card')].map(c => ({
    name: c.querySelector('.name').textContent, id: +c.dataset.id, index: +c.dataset.index,
    score: c.dataset.score === '' ? null : +c.dataset.score,
    classes: [...c.querySelectorAll('.pred')].map(li => +li.dataset.class),
    gt: (c.querySelector('.gt') || {}).textContent || null,
    captions: [...c.querySelectorAll('figcaption')].map(f => f.textContent),
    imgs: [...c.querySelectorAll('img')].map(i => i.getAttribute('src'))}))"""

# elements the data must never create (parsed as markup, they would be here)
INJECTED = """document.querySelectorAll('img[src="x"], svg[onload], [onerror], [onmouseover], main b, main script, header script').length"""


def index_of(run_dir):
    return json.loads((Path(run_dir) / "explain" / "index.json").read_text())


def top_score(record):
    return record["top"][0][1]


def class_score(record, k):
    return dict((int(c), s) for c, s in record["top"])[k]


# ---------------------------------------------------------------------------------------- thumbnails
def _jet_overlay_reference(image_small, low, alpha):
    """SPEC's chain in float64 at thumbnail size: INTER_LINEAR resize of the map, JET, blend."""
    h, w = image_small.shape[:2]
    resized = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(resized, cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float64)
    return np.floor((1 - alpha) * image_small.astype(np.float64) + alpha * heat + 0.5).astype(np.uint8), heat


def _box_reference(image, w, h):
    """float64 area average: every output pixel is the mean of its footprint (fractional edges)."""
    def weights(n_in, n_out):
        m, s = np.zeros((n_out, n_in)), n_in / n_out
        for o in range(n_out):
            a, b = o * s, (o + 1) * s
            for i in range(int(np.floor(a)), min(n_in, int(np.ceil(b)))):
                m[o, i] = min(b, i + 1) - max(a, i)
        return m / s
    rows = np.tensordot(weights(image.shape[0], h), image.astype(np.float64), axes=(1, 0))  # [h, W, c]
    return np.einsum("pw,hwc->hpc", weights(image.shape[1], w), rows)


@pytest.mark.parametrize("hw", [(480, 640), (1198, 900), (2000, 1500), (300, 200), (257, 129), (131, 1000), (96, 128)])
def test_shrink_is_a_box_filter(rng, hw):
    """Thumbnails: `shrink` against a float64 box filter on photo-like (smooth + noise) images; at
    most 2x it is exactly cv2's INTER_AREA."""
    coarse = rng.uniform(0, 255, (max(2, hw[0] // 40), max(2, hw[1] // 40), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    image = np.clip(smooth + rng.normal(0, 8, (*hw, 3)), 0, 255).astype(np.uint8)
    h, w = thumb_size(*hw)
    out = shrink(image, w, h)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(np.float64) - _box_reference(image, w, h))
    assert err.mean() < 2.5 and np.percentile(err, 99) < 12, (err.mean(), np.percentile(err, 99))
    if max(hw[0] / h, hw[1] / w) <= 2:
        np.testing.assert_array_equal(out, cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))
    gray = shrink(image[:, :, 0], w, h)
    assert gray.shape == (h, w)


@pytest.mark.parametrize("hw,low_hw", [((480, 640), (7, 7)), ((97, 45), (3, 5)), ((64, 64), (8, 8)),
                                       ((1000, 130), (14, 14))])
def test_thumbnails_match_reference(rng, hw, low_hw):
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    maps = rng.integers(0, 256, (2, *low_hw), dtype=np.uint8)
    out = dict(make_thumbs([5, "image"], maps, image, hw, alpha=0.4))
    h, w = thumb_size(*hw)
    assert max(h, w) == min(128, max(hw)) and (h, w) == out["input"].shape[:2]
    small = shrink(image, w, h)
    np.testing.assert_array_equal(out["input"], small)
    for i, key in enumerate([5, "image"]):
        ref, heat = _jet_overlay_reference(small, maps[i], 0.4)
        assert np.abs(out[key].astype(int) - ref.astype(int)).max() <= 1  # float32 blend vs float64: ties
    no_image = dict(make_thumbs([5], maps[:1], None, hw))  # tensors: heat maps only
    assert list(no_image) == [5]
    _, heat = _jet_overlay_reference(small, maps[0], 0.0)
    np.testing.assert_array_equal(no_image[5], heat.astype(np.uint8))


def test_thumbnail_boxes_and_keys(rng):
    from xaifast.adapters.detection import Detections
    from xaifast.draw import class_color

    image = np.zeros((400, 800, 3), np.uint8)
    dets = Detections(np.array([[100, 40, 500, 300], [600, 200, 700, 380]], np.float32), np.array([0.9, 0.8], np.float32),
                      np.array([1, 2]))
    maps = np.zeros((2, 4, 4), np.uint8)
    out = dict(make_thumbs([1, 2], maps, image, (400, 800), alpha=0.0, detections=dets))
    assert out[1].shape == (64, 128, 3)
    # scale 0.16: class 1's box (16, 6)-(80, 48), class 2's (96, 32)-(112, 61)
    assert tuple(out[1][6, 48]) == class_color(1) and tuple(out[1][30, 16]) == class_color(1)
    assert tuple(out[1][40, 96]) == (0, 0, 0)  # class 1's overlay shows class 1's box only
    assert tuple(out[2][32, 96]) == class_color(2)   # (600, 200) / 6.25
    assert thumb_keys([0, 1, 2, 3, 4], [3]) == [3, 0, 1][:MAX_OVERLAYS]
    assert thumb_keys(["image"], [7]) == ["image"]
    assert thumb_keys([4, 9], [9, 4]) == [9, 4]
    assert thumb_size(50, 20) == (50, 20) and thumb_size(1000, 10) == (128, 1)
    assert thumb_rel(12345, "input") == "explain/thumbs/0012/0012345_input.jpg"
    assert strip_rel(12345) == "explain/thumbs/0012/0012345.jpg"


@pytest.mark.parametrize("w,h,n", [(128, 96, 3), (85, 128, 4), (1, 1, 1), (16, 7, 2)])
def test_strip_tiles(rng, w, h, n):
    """Tiles side by side every `stride` (w rounded up to 16) pixels, each gap the tile's last column."""
    tiles = [(k, rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for k in range(n)]
    pixels, (tw, th, stride) = strip(tiles)
    assert (tw, th) == (w, h) and stride % 16 == 0 and w <= stride < w + 16
    assert pixels.shape == (h, n * stride, 3)
    for i, (_, t) in enumerate(tiles):
        np.testing.assert_array_equal(pixels[:, i * stride:i * stride + w], t)
        np.testing.assert_array_equal(pixels[:, i * stride + w:(i + 1) * stride], np.repeat(t[:, -1:], stride - w, 1))
    with pytest.raises(ValueError, match="differ in size"):
        strip(tiles + [("x", np.zeros((h + 1, w, 3), np.uint8))])


# ---------------------------------------------------------------------------------------- the page
def test_report_page_in_chromium(browser, recipe, data, tmp_path):
    run_dir = explain(recipe, data, tmp_path / "work", "--explain_config.postprocess", True)
    index = index_of(run_dir)
    records = index["images"]
    assert sorted(r["rel"] for r in records) == sorted(NAMES)
    for r in records:  # the run wrote the thumbnails: the photo and every class (3 <= MAX_OVERLAYS), one strip
        assert r["thumbs"] == ["input"] + thumb_keys(r["targets"], [p["class"] for p in r["predictions"]])
        w, h, stride = r["thumb_strip"]
        assert cv2.imread(str(run_dir / strip_rel(r["index"]))).shape == (h, 4 * stride, 3)
    assert len(list((run_dir / "explain" / "thumbs").rglob("*.jpg"))) == len(records)
    assert (run_dir / "report.html").is_file()

    b = browser
    b.dialogs.clear()
    open_page(b, run_dir)
    cards = b.eval(CARDS)
    assert sorted(c["name"] for c in cards) == sorted(NAMES)  # names as text, every image on page 1
    assert b.eval(INJECTED) == 0
    assert EVIL_LABEL in cards[0]["captions"]  # labels as text too
    assert all(src.startswith("explain/thumbs/") for c in cards for src in c["imgs"])
    loaded = b.wait("(async () => { const i = [...document.querySelectorAll('#grid .card')][0].querySelectorAll('img');"
                    " await Promise.all([...i].map(x => x.decode().catch(() => null)));"
                    " return [...i].map(x => x.naturalWidth); })()")
    assert all(w > 0 for w in loaded)  # the thumbnails are there and decode
    # each figure shows its own tile of the strip: what the browser paints there is that tile's pixels
    rects = b.wait("(async () => { const c = [...document.querySelectorAll('#grid .card')][0];"
                   " const imgs = [...c.querySelectorAll('img')]; await Promise.all(imgs.map(i => i.decode()));"
                   " return imgs.map(i => { const r = i.getBoundingClientRect();"
                   " return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; }); })()")
    first = next(r for r in records if r["index"] == cards[0]["index"])
    w, h, stride = first["thumb_strip"]
    pixels = cv2.cvtColor(cv2.imread(str(run_dir / strip_rel(first["index"]))), cv2.COLOR_BGR2RGB)
    assert len(rects) == len(first["thumbs"])
    for i, (x, y, rw, rh) in enumerate(rects):
        assert (rw, rh) == (w, h)
        painted = b.screenshot(x, y, rw, rh).astype(int)
        tile = pixels[:, i * stride:i * stride + w].astype(int)
        others = [pixels[:, j * stride:j * stride + w].astype(int) for j in range(len(rects)) if j != i]
        error = np.abs(painted - tile).mean()
        assert error < 3 and all(error < np.abs(painted - o).mean() for o in others), (i, error)  # (JPEG decoders)
    body = b.eval("document.body.innerText")
    assert Path(BAD).name in body and "Skipped inputs" in body  # the unreadable file, by name, as text
    gt = {c["name"]: c["gt"] for c in cards}
    assert gt[f"c1/{EVIL}.jpg"].startswith("ground truth: c1")

    # filter by predicted class, sorted by score: only that class, its scores descending
    predicted = sorted({p["class"] for r in records for p in r["predictions"]})
    for k in predicted:
        goto(b, f"class={k}&sort=score")
        cards = b.eval(CARDS)
        expected = [r for r in records if k in [p["class"] for p in r["predictions"]]]
        assert sorted(c["index"] for c in cards) == sorted(r["index"] for r in expected)
        assert all(k in c["classes"] for c in cards)
        scores = [c["score"] for c in cards]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, sorted((class_score(r, k) for r in expected), reverse=True), rtol=1e-6)
        assert b.eval("document.getElementById('filter').value") == f"class:{k}"
    # ground truth filter, lowest score first
    goto(b, "gt=c1&sort=score-asc")
    cards = b.eval(CARDS)
    c1 = [r for r in records if r["gt"]["label"] == "c1"]
    assert [c["index"] for c in cards] == [r["index"] for r in sorted(c1, key=lambda r: (top_score(r), -r["index"]))]
    assert b.eval(INJECTED) == 0 and not b.dialogs

    # pages: rebuilt with 2 images a page (`xaifast report`)
    assert cli(["report", str(run_dir), "--page_size", "2"]) == 0
    by_score = sorted(records, key=lambda r: (-top_score(r), r["index"]))
    open_page(b, run_dir, "#sort=score&page=2")
    assert [c["index"] for c in b.eval(CARDS)] == [r["index"] for r in by_score[2:4]]
    assert b.eval("document.getElementById('page').textContent") == "page 2 of 3"
    goto(b, "sort=score&page=99")  # past the end: the last page
    assert [c["index"] for c in b.eval(CARDS)] == [r["index"] for r in by_score[4:6]]
    goto(b, "page=1")
    assert [c["index"] for c in b.eval(CARDS)] == [r["index"] for r in records[:2]]
    # the controls: next link, the sort and class selects
    b.eval("document.body.dataset.ready = 'stale'; document.getElementById('next').click(); 1")
    b.wait("document.body.dataset.ready === '1'")
    assert [c["index"] for c in b.eval(CARDS)] == [r["index"] for r in records[2:4]]
    b.eval("document.body.dataset.ready = 'stale'; const s = document.getElementById('sort'); s.value = 'score';"
           " s.dispatchEvent(new Event('change')); 1")
    b.wait("document.body.dataset.ready === '1'")
    assert [c["index"] for c in b.eval(CARDS)] == [r["index"] for r in by_score[:2]]
    assert "sort=score" in b.eval("location.hash") and "page" not in b.eval("location.hash")
    b.eval("document.body.dataset.ready = 'stale'; const f = document.getElementById('filter'); f.value = 'gt:c0';"
           " f.dispatchEvent(new Event('change')); 1")
    b.wait("document.body.dataset.ready === '1'")
    c0 = sorted((r for r in records if r["gt"]["label"] == "c0"), key=lambda r: (-top_score(r), r["index"]))
    assert [c["index"] for c in b.eval(CARDS)] == [r["index"] for r in c0[:2]]
    assert not b.dialogs


def test_report_of_a_run_made_before_the_strips(browser, recipe, data, tmp_path):
    """A run whose journal names one thumbnail file per key (runs made before the strips) still shows
    them, and `xaifast report` keeps them (nothing missing: no strip made)."""
    run = explain(recipe, data, tmp_path / "old")
    index = index_of(run)
    for r in index["images"]:
        w, h, stride = r.pop("thumb_strip")
        strip_path = run / strip_rel(r["index"])
        pixels = cv2.imread(str(strip_path))
        for i, key in enumerate(r["thumbs"]):
            cv2.imwrite(str(run / thumb_rel(r["index"], key)), pixels[:, i * stride:i * stride + w])
        strip_path.unlink()
    (run / "explain" / "index.json").write_text(json.dumps(index))
    journal = run / "explain" / "index.jsonl"  # (the records the report reads)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    journal.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "thumb_strip"}) + "\n" for r in lines))
    assert cli(["report", str(run)]) == 0
    assert not any((run / strip_rel(r["index"])).exists() for r in index["images"])
    open_page(browser, run)
    cards = browser.eval(CARDS)
    assert sorted(c["name"] for c in cards) == sorted(NAMES)
    by_index = {r["index"]: r for r in index["images"]}
    for c in cards:
        assert c["imgs"] == [thumb_rel(c["index"], k) for k in by_index[c["index"]]["thumbs"]]
    loaded = browser.wait("(async () => { const i = [...document.querySelectorAll('#grid img')];"
                          " await Promise.all(i.map(x => x.decode().catch(() => null)));"
                          " return i.map(x => x.naturalWidth); })()")
    assert loaded and all(w > 0 for w in loaded)


def test_report_rebuilds_thumbnails(browser, recipe, data, tmp_path):
    """A zarr run (by default without a report: a store stays a few files), then `xaifast report`: thumbnails from the store and the photos,
    byte-identical to those a PNG run wrote as it went; a postprocessed PNG run's thumbnails, lost,
    come back from its overlay files."""
    png = explain(recipe, data, tmp_path / "png")
    zarr = explain(recipe, data, tmp_path / "zarr", "--dump_format", "zarr")  # zarr: no report unless asked
    assert not (zarr / "report.html").exists() and not (zarr / "explain" / "thumbs").exists()
    assert cli(["report", str(tmp_path / "zarr")]) == 0  # a work dir: its newest run
    for r in index_of(png)["images"]:
        rel = strip_rel(r["index"])
        assert (zarr / rel).read_bytes() == (png / rel).read_bytes(), rel
    open_page(browser, zarr)
    assert sorted(c["name"] for c in browser.eval(CARDS)) == sorted(NAMES)
    assert all(len(c["imgs"]) == 4 for c in browser.eval(CARDS))

    post = explain(recipe, data, tmp_path / "post", "--explain_config.postprocess", True)
    before = {p: cv2.imread(str(p)) for p in (post / "explain" / "thumbs").rglob("*.jpg")}
    for p in before:
        p.unlink()
    assert cli(["report", str(post)]) == 0
    for p, image in before.items():  # resized overlay vs overlay of the resized photo: close
        again = cv2.imread(str(p))
        assert again.shape == image.shape
        assert np.abs(again.astype(int) - image.astype(int)).mean() < 6, p


def test_report_detection_run(browser, tmp_path):
    """The built-in shapes detector: per class the best score and the count, class views by the
    class's best detection, boxes on the class thumbnails."""
    shapes = pytest.importorskip("xaifast.zoo.shapes")
    shapes.write_shapes_images(tmp_path / "images", n=3, seed=3)
    run_dir = explain(("shapes_detector", None), tmp_path / "images", tmp_path / "work", "--explain_config.target_explain_group",
                      "PREDICTIONS")
    records = index_of(run_dir)["images"]
    open_page(browser, run_dir)
    cards = {c["index"]: c for c in browser.eval(CARDS)}
    texts = browser.eval("[...document.querySelectorAll('#grid .card')].map(c => [+c.dataset.index,"
                         " [...c.querySelectorAll('.pred')].map(li => li.textContent)])")
    for r in records:
        best = {}
        for p in r["predictions"]:
            best.setdefault(p["class"], []).append(p["score"])
        order = sorted(best, key=lambda k: -max(best[k]))
        assert cards[r["index"]]["classes"] == order
        labels = {p["class"]: p["label"] for p in r["predictions"]}
        assert dict(texts)[r["index"]] == [f"{labels[k]} ({max(best[k]):.4f}) \u00d7{len(best[k])}" for k in order]
        assert cards[r["index"]]["captions"] == ["image"] + [labels[k] for k in r["thumbs"][1:]]
    k = records[0]["predictions"][0]["class"]
    goto(browser, f"class={k}&sort=score")
    shown = browser.eval(CARDS)
    expected = sorted((r for r in records if k in {p["class"] for p in r["predictions"]}),
                      key=lambda r: (-max(p["score"] for p in r["predictions"] if p["class"] == k), r["index"]))
    assert [c["index"] for c in shown] == [r["index"] for r in expected]


def test_report_evaluate_run(browser, tmp_path):
    run_dir = tmp_path / "work" / "20250101_000000"
    (run_dir / "evaluate").mkdir(parents=True)
    steps = np.linspace(0, 1, 11)
    evaluate = {"settings": {"algorithms": ["recipro_cam", EVIL], "steps": 10}, "images": 4,
                "rows": [{"algorithm": "recipro_cam", "insertion": 0.61, "deletion": 0.12, "pointing_game": None,
                          "seconds_per_image": 0.0012},
                         {"algorithm": EVIL, "insertion": 0.4, "deletion": 0.3, "pointing_game": 0.5,
                          "seconds_per_image": 1.5, "curves": {"insertion": list(steps), "deletion": list(1 - steps)}}],
                "curves": {"recipro_cam": {"insertion": list(steps ** 2), "deletion": {"x": list(steps), "y": list(1 - steps)}}},
                "per_map": {"big": [[1, 2]] * 10}}
    (run_dir / "evaluate" / "evaluate.json").write_text(json.dumps(evaluate))
    os.symlink(run_dir.name, tmp_path / "work" / ".latest")
    assert cli(["report", str(tmp_path / "work" / ".latest")]) == 0
    b = browser
    b.dialogs.clear()
    open_page(b, run_dir)
    table = b.eval("[...document.querySelectorAll('#eval tr')].map(r => [...r.children].map(c => c.textContent))")
    assert table[0] == ["algorithm", "insertion", "deletion", "pointing_game", "seconds_per_image"]
    assert table[1] == ["recipro_cam", "0.6100", "0.1200", "\u2013", "0.0012"]
    assert table[2][0] == EVIL and table[2][3] == "0.5000"
    plots = b.eval("[...document.querySelectorAll('.plot')].map(p => [p.querySelector('.title').textContent,"
                   " p.querySelectorAll('polyline').length, [...p.querySelectorAll('.series')].map(s => s.textContent)])")
    assert plots == [["recipro_cam", 2, ["insertion", "deletion"]], [EVIL, 2, ["insertion", "deletion"]]]
    points = b.eval("document.querySelector('.plot polyline').getAttribute('points').split(' ').length")
    assert points == 11
    assert b.eval("document.getElementById('images').hidden") is True
    assert b.eval(INJECTED) == 0 and not b.dialogs
    assert EVIL in b.eval("document.getElementById('eval-source').textContent")


def test_report_large_run_pages(browser, tmp_path, rng):
    """5000 images (a journal as a run writes it): every data file stays small, and a far page of
    a class view sorted by score loads its own few files and shows the right images."""
    n, classes = 5000, 7
    run_dir = tmp_path / "20250101_000000"
    (run_dir / "explain").mkdir(parents=True)
    scores = rng.random((n, classes))
    scores /= scores.sum(1, keepdims=True)
    with open(run_dir / "explain" / "index.jsonl", "w") as f:
        for i in range(n):
            order = np.argsort(-scores[i], kind="stable")[:5]
            k = int(order[0])
            f.write(json.dumps({"index": i, "source": f"/data/x{i}.jpg", "rel": f"g{i % 3}/x{i}.jpg",
                                "gt": {"label": f"g{i % 3}"}, "targets": [k], "thumbs": [],
                                "predictions": [{"class": k, "label": f"L{k}", "score": float(scores[i, k])}],
                                "top": [[int(c), float(scores[i, c])] for c in order]}) + "\n")
    from xaifast.report import write_report

    summary = write_report(run_dir, order_chunk=1000)
    assert summary.images == n and summary.views == 1 + classes + 3
    sizes = [p.stat().st_size for p in (run_dir / "report").rglob("*.js")]
    assert max(sizes) < 40_000, max(sizes)
    meta = json.loads(re.fullmatch(r"XF\.meta\((.*)\);\n", (run_dir / "report" / "meta.js").read_text(), re.S)[1])
    views = {v["id"]: v for v in meta["views"]}
    b = browser

    def expect_scripts(view, order, positions):
        chunks = {f"report/items/{i // 48 // 1000:03d}/{i // 48:06d}.js" for i in shown}
        if "pack" in view and order in view["pack"]:  # a short order, in a pack with others
            orders = {f"report/views/pack-{view['pack'][order]}.js"}
        else:
            orders = {f"report/views/{view['id']}/{order}-{p // 1000}.js" for p in positions}
        loaded = b.eval("[...document.querySelectorAll('script[src]')].map(s => s.getAttribute('src'))")
        assert sorted(loaded) == sorted({"report/meta.js"} | orders | chunks)  # what the page needs, nothing more

    # a class view (its orders in a pack), lowest score first, a far page
    k = int(np.bincount(scores.argmax(1)).argmax())
    ranked = sorted((i for i in range(n) if scores[i].argmax() == k), key=lambda i: (-scores[i, k], i))
    pages = -(-len(ranked) // 48)
    open_page(b, run_dir, f"#class={k}&sort=score-asc&page={pages - 1}")
    shown = [c["index"] for c in b.eval(CARDS)]
    assert shown == list(reversed(ranked))[(pages - 2) * 48:(pages - 1) * 48]
    assert b.eval("document.getElementById('page').textContent") == f"page {pages - 1} of {pages}"
    assert "pack" in views[f"c{k}"]
    expect_scripts(views[f"c{k}"], "score", [])
    # a ground-truth view (orders in files of their own), input order, page 20
    open_page(b, run_dir, "#gt=g1&page=20")  # a new document: its scripts are this page's only
    members = [i for i in range(n) if i % 3 == 1]
    shown = [c["index"] for c in b.eval(CARDS)]
    assert shown == members[19 * 48:20 * 48]
    assert "pack" not in views["g1"]
    expect_scripts(views["g1"], "input", range(19 * 48, 20 * 48))
    # all images by score, the page across an order-file boundary
    open_page(b, run_dir, "#sort=score&page=21")
    shown = [c["index"] for c in b.eval(CARDS)]
    assert shown == sorted(range(n), key=lambda i: (-scores[i].max(), i))[20 * 48:21 * 48]
    assert b.eval("document.querySelectorAll('script[src^=\"report/views/all/score-\"]').length") == 2  # 960..1007


def test_report_bad_input(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "r" / "explain").mkdir(parents=True)
    assert cli(["report", str(tmp_path / "r"), "--thumbs", "sometimes"]) == 2
    assert "thumbs must be one of" in capsys.readouterr().err
