"""The run report: `<run>/report.html`, a static page (no server, opened from disk) that shows every
image of a run as thumbnails with its overlays, predictions, ground truth and scores; filterable by
class (predicted or ground truth), sortable by score, paginated. An evaluate run adds its table and
its curves as plots. `xaifast report <run>` (or `write_report(run)`) builds it again.

Opening it costs about the same for 10 images or 100,000: the page loads `report/meta.js` (the run,
its views and their sizes) and then, per page shown, only what that page needs: a slice of the
view's order (`report/views/<view>/<order>-<k>.js`, ORDER_CHUNK ids each; the short orders of many
views share a file, `report/views/pack-<p>.js`) and the item files holding its images
(`report/items/<c // 1000:03d>/<c:06d>.js`, ITEM_CHUNK images each: one file for a page of all
images in input order, at most PAGE_SIZE for a page in score order). Every file under report/ is
small whatever the run's size. The data are `.js` files that call a registration function
(`XF.items(...)`, ...), not `.json`: a page opened from file:// may not fetch() files, but it may
load scripts.

Views: `all` (every image), `c<k>` (images with a prediction of class k; their score there is
class k's), `g<j>` (images whose ground truth includes the j-th label). Orders: `input` (the
input's order) and `score` (descending; "score-asc" reads it backwards). The page's state is its
URL hash: `report.html#class=3&sort=score&page=2`, `#gt=cat&sort=score-asc`.

Item fields (one object per explained image, in input order; id = position); class labels are
in meta's `labels` ({class: label} of the classes the items mention):
  n: shown name (path relative to the data root, else the file name, else "#<index>")
  p: the path relative to the data root or the source, when it is not n; src: the source file
     (absolute), if any; x: input index
  s: score (top-1 class score of a classifier, best detection score of a detector)
  g: ground-truth labels ([] if none); ok: top-1 prediction equals the ground truth (null: unknown)
  pr: predictions: classifiers [[class, score]], detectors [[class, best score, count]]
  tp: the top-5 classes [[class, score]] (classifiers)
  t: the keys of the image's thumbnails ("input", class indices, "image"), tiles of the strip
     `strip_rel(x)`; ts: the strip's [tile width, height, stride] (absent: a run made before the
     strips, one file per thumbnail at `thumb_rel(x, key)`)
     (`xaifast.stages.thumbs`); f: {key: the run's full-size overlay (or map) file}, if any

Evaluate runs (`<run>/evaluate/evaluate.json`, or `<run>/evaluate.json`): the page shows
  - `rows` (a list of objects) as a table: one row each, the columns in the order keys first appear;
    numbers, strings, booleans and null are shown; lists and objects are not columns;
  - `curves` as plots: either {series: [y, ...] or {"x": [...], "y": [...]}} (one plot), or
    {plot: {series: ...}} (one plot each); x defaults to 0..1 in len(y) steps (the fraction of
    pixels inserted / deleted);
  - a row's own `curves` object ({series: ...}) as a plot named after the row's first text value.
Other keys are ignored (`settings` is listed).

Security: every name, label and value is data. The page builds its elements with createElement and
textContent (never innerHTML with data), file links are percent-encoded path segments set as
properties, and a Content-Security-Policy forbids inline event handlers, so a photo named
`<img src=x onerror=alert(1)>.jpg` shows as that text.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from .errors import XaifastError

PAGE_SIZE = 48      # images per page
ITEM_CHUNK = 48     # images per item file (a page of the input order: one file)
ORDER_CHUNK = 5000  # ids per order file
REPORT_FILE = "report.html"
REPORT_DIR = "report"
MAX_FAILURES = 500  # skipped inputs listed on the page (the count is always shown)
THUMBS = ("keep", "missing", "all")


@dataclass
class ReportSummary:
    path: Path
    images: int
    views: int
    thumbs_made: int
    evaluate: bool
    seconds: float


def report_folder(path: Union[str, Path]) -> Path:
    """The run folder of `path`: a run (explain/ or evaluate/ inside), `.latest`, or a work dir."""
    from .rundir import latest_run

    path = Path(path)
    if (path / "explain").is_dir() or (path / "evaluate").is_dir() or (path / "evaluate.json").is_file():
        return path.resolve()
    if path.is_dir():
        run = latest_run(path)
        if run is not None:
            return run.resolve()
    raise XaifastError(f"{path}: not a run folder (no explain/ or evaluate/ inside) nor a work dir with runs; "
                       "give the folder a run wrote, e.g. xaifast-workspace/.latest")


def write_report(run: Union[str, Path], thumbs: str = "keep", *, page_size: int = PAGE_SIZE,
                 item_chunk: int = ITEM_CHUNK, order_chunk: int = ORDER_CHUNK) -> ReportSummary:
    """Write `<run>/report.html` and its data folder `<run>/report/` (replacing earlier ones).
    thumbs: keep (show the thumbnails the run made), missing (also make those that are missing,
    from the source images and the stored maps or files), all (make them all again).
    page_size: images per page; item_chunk / order_chunk: images per item file, ids per order file."""
    for name, value in (("page_size", page_size), ("item_chunk", item_chunk), ("order_chunk", order_chunk)):
        if int(value) < 1:
            raise XaifastError(f"{name} must be >= 1, got {value}")
    if thumbs not in THUMBS:
        raise XaifastError(f"thumbs must be one of {', '.join(THUMBS)}, got {thumbs!r}")
    # millions of small lists and dicts, none cyclic: the cycle collector would rescan them all
    # again and again (it doubled the time of a 100,000-image report)
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _write_report(run, thumbs, int(page_size), int(item_chunk), int(order_chunk))
    finally:
        if collecting:
            gc.enable()


def _write_report(run, thumbs: str, page_size: int, item_chunk: int, order_chunk: int) -> ReportSummary:
    start = time.perf_counter()
    run_dir = report_folder(run)
    records, failures, settings, made = [], [], {}, 0
    if (run_dir / "explain").is_dir():
        from .reader import Run

        opened = Run(run_dir)
        records, failures, settings = opened.records, opened.failures, opened.settings
        if thumbs != "keep":
            made = _remake_thumbs(opened, thumbs == "all")
    evaluate = _evaluate(run_dir)
    items, labels = _items(records, settings.get("labels"))
    views = _views(items, labels)
    tmp = run_dir / f".{REPORT_DIR}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "views").mkdir(parents=True)
    _write_orders(tmp / "views", views, order_chunk)
    meta = {"run": run_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "images": len(items),
            "page_size": int(page_size), "item_chunk": int(item_chunk), "order_chunk": int(order_chunk),
            "settings": {k: v for k, v in settings.items() if k != "labels" and (
                isinstance(v, (str, int, float, bool)) or v is None or (isinstance(v, list) and len(v) <= 50))},
            "failures": [[str(s), str(r)] for s, r in failures[:MAX_FAILURES]], "failure_count": len(failures),
            "views": [{k: v for k, v in view.items() if k not in ("ids", "scores")} for view in views],
            "labels": labels,
            "evaluate": evaluate is not None, "explain": (run_dir / "explain").is_dir()}
    _write_js(tmp / "meta.js", "XF.meta", _clean(meta))
    if evaluate is not None:
        _write_js(tmp / "evaluate.js", "XF.evaluate", _clean(evaluate))
    folders = set()
    for c in range(0, len(items), item_chunk):
        chunk = c // item_chunk
        folder = tmp / "items" / f"{chunk // 1000:03d}"
        if folder not in folders:
            folder.mkdir(parents=True)
            folders.add(folder)
        _write_js(folder / f"{chunk:06d}.js", "XF.items", chunk, items[c:c + item_chunk])
    final = run_dir / REPORT_DIR
    old = run_dir / f".{REPORT_DIR}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    from .stages.encode import write_atomic

    write_atomic(run_dir / REPORT_FILE, template().encode("utf-8"))
    return ReportSummary(run_dir / REPORT_FILE, len(items), len(views), made, evaluate is not None,
                         time.perf_counter() - start)


def template() -> str:
    """The page (HTML, CSS and script; the same for every run: the data are in report/)."""
    return (Path(__file__).parent / "assets" / "report.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------- data
def _clean(value):
    """JSON-safe: NaN / inf -> None (the page shows them as a dash)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _js_call(function: str, *args) -> str:
    """`function(arg, ...);` with the arguments as JSON: ASCII only (the file's encoding never
    matters); a NaN or infinite score is written as JavaScript's NaN / Infinity."""
    return f"{function}({','.join(json.dumps(a, ensure_ascii=True, separators=(',', ':')) for a in args)});\n"


def _write_js(path: Path, function: str, *args) -> None:
    path.write_text(_js_call(function, *args), encoding="ascii")


def _write_orders(folder: Path, views: List[dict], order_chunk: int) -> None:
    """Each view's orders: a long order in files of `order_chunk` ids (`<view>/<order>-<k>.js`),
    the short ones of many views together in packs of about `order_chunk` ids (`pack-<p>.js`;
    the view's "pack" says which): a run with 1000 classes does not make 2000 tiny files."""
    pack: List[str] = []
    pack_ids, packs = 0, 0

    def flush():
        nonlocal pack, pack_ids, packs
        if pack:
            (folder / f"pack-{packs}.js").write_text("".join(pack), encoding="ascii")
            pack, pack_ids, packs = [], 0, packs + 1

    for view in views:
        orders = {"score": _score_order(view["ids"], view["scores"])}
        if view["id"] != "all":  # all in input order: the ids are the positions
            orders["input"] = view["ids"]
        for name, ids in orders.items():
            if len(ids) <= order_chunk:
                if pack_ids + len(ids) > order_chunk:
                    flush()
                pack.append(_js_call("XF.order", view["id"], name, 0, ids))
                pack_ids += max(1, len(ids))
                view.setdefault("pack", {})[name] = packs
                continue
            (folder / view["id"]).mkdir(exist_ok=True)
            for k in range(0, len(ids), order_chunk):
                _write_js(folder / view["id"] / f"{name}-{k // order_chunk}.js", "XF.order", view["id"], name,
                          k // order_chunk, ids[k:k + order_chunk])
    flush()


def _items(records: List[dict], labels: Optional[List[str]] = None) -> tuple:
    """(items, {class: label} of the classes they mention) (see the module doc for the fields)."""
    names: Dict[int, str] = {k: str(v) for k, v in enumerate(labels or []) if v is not None}  # class -> label
    for r in records:  # and from the predictions (runs that did not record the labels)
        for p in r.get("predictions") or []:
            if p.get("label"):
                names.setdefault(int(p["class"]), str(p["label"]))
    label_set = set(names.values())
    used = set()
    items = []
    for r in records:
        preds = r.get("predictions") or []
        detections = bool(preds) and "box" in preds[0]
        if detections:
            best: Dict[int, list] = {}
            for p in preds:
                k = int(p["class"])
                entry = best.setdefault(k, [k, float(p["score"]), 0])
                entry[1] = max(entry[1], float(p["score"]))
                entry[2] += 1
            pr = sorted(best.values(), key=lambda e: -e[1])
            top = None
            score = pr[0][1] if pr else None
            class_scores = {e[0]: e[1] for e in pr}
        else:
            pr = [[int(p["class"]), float(p["score"])] for p in preds]
            top = [[int(k), float(v)] for k, v in r.get("top") or []]
            class_scores = dict(top)
            class_scores.update(pr)
            score = top[0][1] if top else (max(e[1] for e in pr) if pr else None)
        used.update(class_scores)
        gt = _gt_labels(r.get("gt"))
        ok = None
        if not detections and len(gt) == 1 and (top or pr):
            k = (top or pr)[0][0]
            if gt[0] == names.get(k) or gt[0] == str(k):
                ok = True
            elif gt[0] in label_set or gt[0].isdigit():
                ok = False
        rel, source = r.get("rel"), r.get("source")
        name = rel if rel is not None else (Path(str(source)).name if source is not None and not str(source).isdigit()
                                            else f"#{r['index']}")
        item = {"n": str(name), "x": r["index"], "s": score, "g": gt, "ok": ok, "pr": pr, "tp": top}
        path = str(rel if rel is not None else source)
        if path != item["n"]:
            item["p"] = path
        if source is not None and os.path.isabs(str(source)):
            item["src"] = str(source)
        thumbs = [k if k in ("input", "image") else int(k) for k in r.get("thumbs") or []]
        item["t"] = thumbs
        if thumbs and r.get("thumb_strip"):
            item["ts"] = [int(v) for v in r["thumb_strip"]]
        files = r.get("files")
        if files:
            full = {str(k): f for k in thumbs if k != "input" for f in [_full_file(files, k)] if f}
            if full:
                item["f"] = full
        used.update(k for k in thumbs if isinstance(k, int))
        item["cs"] = class_scores  # for the views' orders; dropped there
        items.append(item)
    return items, {str(k): names[k] for k in sorted(used) if k in names}


def _gt_labels(gt) -> List[str]:
    if not gt:
        return []
    if "label" in gt and gt["label"] is not None:
        return [str(gt["label"])]
    labels = gt.get("labels") or gt.get("category_ids") or []
    return [str(v) for v in dict.fromkeys(labels)]


def _full_file(files: List[str], key) -> Optional[str]:
    """The run's full-size overlay of `key` (or its heat map when there is no overlay)."""
    from .stages.sinks import file_tag

    tag = file_tag(key)
    for kind in ("overlay", "saliency_map"):
        for f in files:
            if Path(f).stem.endswith(f"_{tag}_{kind}"):
                return f
    return None


def _views(items: List[dict], labels: Dict[str, str]) -> List[dict]:
    """all, then one view per predicted class (by index), then one per ground-truth label."""
    views = [{"id": "all", "kind": "all", "label": "all images", "ids": list(range(len(items))),
              "scores": [it["s"] for it in items]}]
    by_class: Dict[int, list] = {}
    by_gt: Dict[str, list] = {}
    for i, it in enumerate(items):
        for e in it["pr"]:
            by_class.setdefault(e[0], []).append(i)
        for g in it["g"]:
            by_gt.setdefault(g, []).append(i)
    for k in sorted(by_class):
        ids = by_class[k]
        views.append({"id": f"c{k}", "kind": "class", "key": k, "label": labels.get(str(k)) or f"class {k}",
                      "ids": ids, "scores": [items[i]["cs"].get(k) for i in ids]})
    for j, g in enumerate(sorted(by_gt)):
        ids = by_gt[g]
        views.append({"id": f"g{j}", "kind": "gt", "key": g, "label": g, "ids": ids,
                      "scores": [items[i]["s"] for i in ids]})
    for view in views:
        view["n"] = len(view["ids"])
    for it in items:
        del it["cs"]
    return views


def _score_order(ids: List[int], scores: List[Optional[float]]) -> List[int]:
    """ids by descending score; equal scores in input order; no score last."""
    keyed = sorted(range(len(ids)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), ids[i]))
    return [ids[i] for i in keyed]


def _evaluate(run_dir: Path) -> Optional[dict]:
    for path in (run_dir / "evaluate" / "evaluate.json", run_dir / "evaluate.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise XaifastError(f"{path}: not valid JSON ({exc}); run the evaluation again") from None
            if isinstance(data, list):
                data = {"rows": data}
            if not isinstance(data, dict):
                raise XaifastError(f"{path}: expected an object with 'rows' (a list of objects), got {type(data).__name__}")
            rows = [r for r in data.get("rows") or [] if isinstance(r, dict)]
            keep = {"rows": rows, "curves": data.get("curves") if isinstance(data.get("curves"), dict) else None,
                    "settings": data.get("settings") if isinstance(data.get("settings"), dict) else None,
                    "images": data.get("images"), "file": path.relative_to(run_dir).as_posix()}
            return keep
    return None


# ---------------------------------------------------------------------------------------- thumbnails
def _remake_thumbs(run, everything: bool) -> int:
    """Make the thumbnails the run lacks (or all of them) from the source images and the stored
    maps (zarr, low-resolution PNGs) or, for postprocessed PNG runs, the overlay files. Updates
    the records in memory (the report shows them); returns the number of strips (files) written."""
    from .stages.files import InlineWriter
    from .stages.thumbs import thumb_keys, thumbs_exist, write_thumbs

    made, writer = 0, InlineWriter()  # (each thumbnail folder made once)
    for pos, record in enumerate(run.records):
        have = record.get("thumbs")
        if not everything and have and thumbs_exist(run.path, record):
            continue
        thumbs = _thumbs_of(run, pos, record, thumb_keys)
        if thumbs is None:
            continue
        record.update(write_thumbs(run.path, record["index"], thumbs, writer))
        made += 1
    return made


def _thumbs_of(run, pos: int, record: dict, thumb_keys):
    import cv2
    import numpy as np

    from .data import read_image
    from .stages.thumbs import make_thumbs, shrink, thumb_size

    targets = [t if t == "image" else int(t) for t in record.get("targets", [])]
    keys = thumb_keys(targets, run._predicted(record))
    image = None
    source = record.get("source")
    if source is not None and os.path.isfile(str(source)):
        try:
            image = read_image(source)
        except XaifastError:
            image = None
    ex = run[pos]
    try:
        low = ex.maps if ex.maps else None
        if low is not None and keys:
            maps = np.stack([low[k] for k in keys])
            hw = image.shape[:2] if image is not None else maps.shape[1:]
            return make_thumbs(keys, maps, image, hw, float(run.settings.get("alpha", 0.5)), _detections(run, record))
        overlays = ex.overlay if ex.overlay else (ex.saliency_map if ex.saliency_map else {})
        thumbs = make_thumbs([], None, image, image.shape[:2]) if image is not None else []
        for k in keys:
            picture = overlays.get(k) if overlays else None
            if picture is None:
                continue
            if picture.ndim == 2:
                picture = cv2.cvtColor(picture, cv2.COLOR_GRAY2RGB)
            h, w = thumb_size(*picture.shape[:2])
            thumbs.append((k, shrink(picture, w, h)))
        return thumbs or None
    except (OSError, ValueError, XaifastError, KeyError):
        return None  # the run's files or store are gone: no thumbnails for this image


def _detections(run, record: dict):
    preds = record.get("predictions") or []
    if not preds or "box" not in preds[0]:
        return None
    from .adapters.detection import Detections

    p = run._prediction(record)
    return Detections(p["boxes"], p["scores"], p["labels"])
