"""`explain/index.parquet`: one row per input of a run, built from its journal (pyarrow).

Columns: `index` (position in the input), `source`, `rel` (path relative to the data root),
`gt_label` (class folders), `gt_boxes` ([x, y, w, h] lists) and `gt_labels` (COCO), `predicted` and
`predicted_labels` (the classes PREDICTIONS explains), `top_classes` / `top_scores` (the 5 best
classes, softmax; classifiers), `det_boxes` / `det_scores` / `det_labels` (detections above the
threshold, xyxy in the image's pixels; detectors), `targets` (the explained classes; -1 is the
class-agnostic "image" map), `maps_array` / `maps_row` / `maps_count` (where the maps are in
maps.zarr: rows row .. row + count of that array, in the order of `targets`), `files` (PNG/JPEG
runs), `failed` (the reason an input was skipped; null for explained images).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from .journal import read_journals

COLUMNS = ("index", "source", "rel", "gt_label", "gt_boxes", "gt_labels", "predicted", "predicted_labels",
           "top_classes", "top_scores", "det_boxes", "det_scores", "det_labels", "targets", "maps_array",
           "maps_row", "maps_count", "files", "failed")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        from ..errors import XaifastError

        raise XaifastError("the Parquet index needs pyarrow: pip install 'xaifast[store]'") from exc
    return pa, pq


def rows_of(records: List[dict]) -> dict:
    """Column lists of the journal's records, one per input (the last line of an input wins)."""
    latest = {}
    for r in records:
        latest[r["index"]] = r
    cols = {name: [] for name in COLUMNS}
    for i in sorted(latest):
        r = latest[i]
        gt = r.get("gt") or {}
        preds = r.get("predictions") or []
        detections = bool(preds) and "box" in preds[0]
        maps = r.get("maps") or {}
        top = r.get("top") or []
        values = {
            "index": i, "source": r.get("source"), "rel": r.get("rel"), "gt_label": gt.get("label"),
            "gt_boxes": gt.get("boxes"), "gt_labels": gt.get("labels"),
            "predicted": None if "failed" in r else [p["class"] for p in preds] if not detections
            else sorted({p["class"] for p in preds}),
            "predicted_labels": None if "failed" in r or detections else [p.get("label") for p in preds],
            "top_classes": [t[0] for t in top] if top else None, "top_scores": [t[1] for t in top] if top else None,
            "det_boxes": [p["box"] for p in preds] if detections else None,
            "det_scores": [p["score"] for p in preds] if detections else None,
            "det_labels": [p["class"] for p in preds] if detections else None,
            "targets": None if "failed" in r else [-1 if t == "image" else int(t) for t in r.get("targets", [])],
            "maps_array": maps.get("array"), "maps_row": maps.get("row"), "maps_count": maps.get("count"),
            "files": r.get("files"), "failed": r.get("failed"),
        }
        for name in COLUMNS:
            cols[name].append(values[name])
    return cols


def schema():
    pa, _ = _pyarrow()
    f32list, i32list, strlist = pa.list_(pa.float32()), pa.list_(pa.int32()), pa.list_(pa.string())
    return pa.schema([("index", pa.int64()), ("source", pa.string()), ("rel", pa.string()), ("gt_label", pa.string()),
                      ("gt_boxes", pa.list_(f32list)), ("gt_labels", strlist), ("predicted", i32list),
                      ("predicted_labels", strlist), ("top_classes", i32list), ("top_scores", f32list),
                      ("det_boxes", pa.list_(f32list)), ("det_scores", f32list), ("det_labels", i32list),
                      ("targets", i32list), ("maps_array", pa.string()), ("maps_row", pa.int64()),
                      ("maps_count", pa.int32()), ("files", strlist), ("failed", pa.string())])


def table_of(records: List[dict]):
    pa, _ = _pyarrow()
    return pa.Table.from_pydict(rows_of(records), schema=schema())


def write_parquet_index(run_dir) -> Path:
    """Write `<run>/explain/index.parquet` from the run's journal (atomically)."""
    _, pq = _pyarrow()
    explain = Path(run_dir) / "explain"
    table = table_of(read_journals(explain))
    path = explain / "index.parquet"
    tmp = explain / f".index.parquet.tmp-{os.getpid()}"
    pq.write_table(table, str(tmp))
    os.replace(tmp, path)
    return path
