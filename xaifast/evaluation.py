"""`xaifast.evaluate`: one model, one dataset, several algorithms; every metric and the time per image.

    result = xaifast.evaluate(model, "photos/", algorithms=["recipro_cam", "activationmap", "eigencam", "rise"])
    result.rows        # one dict per algorithm: seconds_per_image, pointing_game, insertion, deletion, delta,
                       # adcc, coherency, complexity, average_drop
    result.run_dir     # <work_dir>/<run>/evaluate/{evaluate.json, evaluate.csv}

Which class of each image is explained and scored: the ground truth when the data gives it (class
folders: the folder's label, found among the model's labels or read as an index; COCO: every class
with a box), else `targets=` (per image a class or a list), else the predicted class (top-1).
The pointing game needs boxes (COCO, or gt_boxes=); without them it is None. Perturbations remove
pixels towards black (a black pixel after the preprocessing), as OpenVINO XAI does on the photo.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, TextIO, Union

import numpy as np
import torch

from .errors import DataError, XaifastError

DEFAULT_ALGORITHMS = ("recipro_cam", "activationmap", "eigencam", "rise")
COLUMNS = ("algorithm", "maps", "seconds_per_image", "pointing_game", "insertion", "deletion", "delta", "adcc",
           "coherency", "complexity", "average_drop", "metric_seconds")


@dataclass
class EvaluateResult:
    rows: List[dict]
    images: int
    targets: str  # where the explained classes came from: gt | given | predicted
    failures: List[tuple] = field(default_factory=list)
    run_dir: Optional[Path] = None
    per_map: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # {algorithm: {"insertion": [steps + 1], "deletion": [...]}}: means over the maps

    def table(self) -> str:
        """The rows as an aligned text table."""
        def cell(v):
            if v is None:
                return "-"
            return f"{v:.4f}" if isinstance(v, float) else str(v)

        cells = [list(COLUMNS)] + [[cell(r.get(c)) for c in COLUMNS] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
        return "\n".join("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
                         for row in cells)


def _load(data, preprocess, max_images: Optional[int]):
    """(inputs [N, 3, H, W], ground truths, original (h, w) sizes, failures) of `data`."""
    from .stages.decode import read_image_checked
    from .stages.sources import is_path_input, list_sources

    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(data).float()
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4:
            raise DataError(f"data tensor must be [B, 3, H, W], got {list(x.shape)}")
        x = x[:max_images] if max_images else x
        return x, [None] * len(x), [tuple(x.shape[2:])] * len(x), []
    if not is_path_input(data):
        raise DataError("evaluate takes a folder, a COCO dataset, a text file or list of images, or a tensor "
                        "[B, 3, H, W]")
    items = list_sources(data)
    if max_images:
        items = items[:max_images]
    tensors, gts, sizes, failures = [], [], [], []
    for item in items:
        try:
            image = read_image_checked(item.path)
        except Exception as exc:  # one bad file must not stop an evaluation
            failures.append((item.path, str(exc)))
            continue
        tensors.append(preprocess(image))
        gts.append(item.gt)
        sizes.append(image.shape[:2])
    if not tensors:
        raise DataError("no image of the data could be read" + (f": {failures[0][1]}" if failures else ""))
    return torch.stack(tensors), gts, sizes, failures


def _gt_classes(gt, labels) -> List[int]:
    from .metrics.pointing_game import boxes_by_class

    if not gt:
        return []
    if "label" in gt:
        name = gt["label"]
        if labels is not None and name in list(labels):
            return [list(labels).index(name)]
        if str(name).isdigit():
            return [int(name)]
        return []
    if "boxes" in gt:
        try:
            return sorted(boxes_by_class(gt, labels))
        except XaifastError:
            return []
    return []


def _cam_maps(model, x, algorithm: str, options: dict) -> torch.Tensor:
    from .pipeline import metric_maps

    return metric_maps(model, x, algorithm=algorithm, **options)


def evaluate(model, data, algorithms: Sequence[str] = DEFAULT_ALGORITHMS, *, targets=None,
             gt_boxes: Optional[Sequence] = None, labels: Optional[Sequence[str]] = None, preprocess=None,
             target_layer: Optional[str] = None, steps: int = 30, batch_size: int = 16, score_batch_size: int = 64,
             rise_options: Optional[dict] = None, aise_options: Optional[dict] = None, metrics: Sequence[str] = ("pointing_game", "insertion_deletion",
                                                                           "adcc"),
             work_dir: Union[str, Path, None] = None, max_images: Optional[int] = None, engine: Optional[str] = None,
             out: Optional[TextIO] = None, settings: Optional[dict] = None) -> EvaluateResult:
    """Evaluate `algorithms` on `model` over `data` (see the module docstring).

    model: an nn.Module (the CAM methods detect its target layer, or target_layer=) or an exported
        .xml / .onnx (the CAM method it was exported with, activationmap, eigencam, rise).
    targets: per image a class or list of classes (overrides the data's ground truth).
    gt_boxes: per image {class or label name: [(x, y, w, h), ...]} in the image's pixels.
    rise_options: num_masks (5000), num_cells (8), prob (0.5), seed (0).
    aise_options: preset (balance), num_iterations_per_kernel, kernel_widths, solver_epsilon, locally_biased.
    work_dir: when given, the table goes to <work_dir>/<run>/evaluate/evaluate.{json,csv}.
    out: where the table is printed (default sys.stdout; None with work_dir=None prints nothing
        unless out is given)."""
    from . import metrics as M
    from .algorithms import BLACK_BOX, check_algorithm_name
    from .algorithms import aise as _aise
    from .algorithms.rise import DEFAULTS, rise
    from .data import Preprocess
    from .engines.scorer import as_scorer

    algorithms = [a.strip() for a in (algorithms.split(",") if isinstance(algorithms, str) else algorithms) if a.strip()]
    if not algorithms:
        raise XaifastError("no algorithm to evaluate; e.g. algorithms=['recipro_cam', 'rise']")
    # unknown names fail before any work (whether one fits the model: when it runs)
    canonical = {a: check_algorithm_name(a) for a in algorithms}
    unknown = set(metrics) - {"pointing_game", "insertion_deletion", "adcc"}
    if unknown:
        raise XaifastError(f"unknown metric(s) {', '.join(sorted(unknown))}; use pointing_game, insertion_deletion, adcc")
    if labels is None and isinstance(model, (str, Path)):
        from .engines.blackbox import BlackBoxAdapter

        adapter = BlackBoxAdapter(model, preprocess=preprocess)
        labels, preprocess = adapter.labels, adapter.preprocess
    preprocess = preprocess or Preprocess()
    x, gts, sizes, failures = _load(data, preprocess, max_images)
    n = x.shape[0]
    scorer = as_scorer(model, batch_size=score_batch_size)
    scores = scorer(x)
    if targets is not None:
        if len(targets) != n:
            raise XaifastError(f"targets: {len(targets)} entries for {n} images")
        per_image, source = [[int(t)] if np.isscalar(t) else [int(v) for v in t] for t in targets], "given"
    else:
        from_gt = [_gt_classes(g, labels) for g in gts]
        if all(from_gt):
            per_image, source = from_gt, "gt"
        else:
            per_image = [g or [int(torch.argmax(scores[i]))] for i, g in enumerate(from_gt)]
            source = "gt+predicted" if any(from_gt) else "predicted"
    boxes = gt_boxes if gt_boxes is not None else (gts if any(g and "boxes" in g for g in gts) else None)
    baseline = M.black_pixel(preprocess)
    rise_options = {**DEFAULTS, **(rise_options or {})}
    aise_options = {**_aise.DEFAULTS, **(aise_options or {})}
    cam_options = dict(batch_size=batch_size, target_layer=target_layer, preprocess=preprocess, labels=labels,
                       engine=engine) if not isinstance(model, (str, Path)) else dict(batch_size=batch_size)
    cam_options = {k: v for k, v in cam_options.items() if v is not None}
    rows, per_map, curves = [], {}, {}
    for algorithm in algorithms:
        start = time.perf_counter()
        black_box = canonical[algorithm] if canonical[algorithm] in BLACK_BOX else None
        if black_box == "aise":
            # one call: the optimizations of every image and class share the model calls
            explanations = []
            for count in sorted({len(p) for p in per_image}):
                rows_of = [i for i in range(n) if len(per_image[i]) == count]
                maps = _aise.aise(scorer, x[rows_of], targets=[per_image[i] for i in rows_of],
                                  batch_size=score_batch_size, scores=scores[rows_of], **aise_options).raw
                explanations.extend((i, {k: maps[j, t].numpy() for t, k in enumerate(per_image[i])})
                                    for j, i in enumerate(rows_of))
            explanations = [e for _, e in sorted(explanations, key=lambda item: item[0])]
            explainer = M.make_explainer(scorer, "aise", batch_size=score_batch_size, **aise_options)
        elif black_box == "rise":
            explanations = []
            for i in range(n):
                maps = rise(scorer, x[i:i + 1], targets=[per_image[i]], batch_size=score_batch_size,
                            scores=scores[i:i + 1], **rise_options).raw[0]
                explanations.append({k: maps[j].numpy() for j, k in enumerate(per_image[i])})
            explainer = M.make_explainer(scorer, "rise", batch_size=score_batch_size, **rise_options)
        else:
            maps = _cam_maps(model, x, algorithm, cam_options)
            explanations = [{k: (maps[i, 0] if maps.shape[1] == 1 else maps[i, k]).numpy() for k in per_image[i]}
                            for i in range(n)]
            explainer = M.make_explainer(model, algorithm, **cam_options)
        seconds = (time.perf_counter() - start) / n
        row = dict.fromkeys(COLUMNS)
        row.update(algorithm=algorithm, maps=sum(len(p) for p in per_image), seconds_per_image=seconds)
        start = time.perf_counter()
        if "pointing_game" in metrics and boxes is not None:
            pg = M.pointing_game(explanations, boxes, image_sizes=sizes, labels=labels)
            row["pointing_game"] = pg["pointing_game"] if pg["evaluated"] else None
        if "insertion_deletion" in metrics:
            auc = M.insertion_deletion_auc(scorer, x, explanations, steps=steps, baseline=baseline, return_curves=True)
            row.update(insertion=auc["insertion"], deletion=auc["deletion"], delta=auc["delta"])
            mean = np.asarray(auc["curves"], dtype=np.float64).mean(axis=0)  # [2, steps + 1]
            curves[algorithm] = {"insertion": mean[0].tolist(), "deletion": mean[1].tolist()}
            per_map[f"{algorithm}/insertion_deletion"] = auc["per_map"]
        if "adcc" in metrics:
            ad = M.adcc(scorer, x, explanations, explainer=explainer, baseline=baseline)
            row.update({k: ad[k] for k in ("adcc", "coherency", "complexity", "average_drop")})
            per_map[f"{algorithm}/adcc"] = ad["per_map"]
        row["metric_seconds"] = time.perf_counter() - start
        rows.append(row)
    result = EvaluateResult(rows, n, source, failures, per_map=per_map, curves=curves)
    if work_dir is not None:
        result.run_dir = _write(Path(work_dir), result, dict(settings or {}, algorithms=algorithms, steps=steps,
                                                            rise=rise_options, aise=aise_options, targets=source, images=n))
    if out is not None or work_dir is not None:
        stream = out if out is not None else sys.stdout
        print(result.table(), file=stream)
        if result.run_dir is not None:
            print(f"evaluate: {n} images, targets from {source} -> {result.run_dir / 'evaluate'}", file=stream)
    return result


def _clean(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


def _write(work_dir: Path, result: EvaluateResult, settings: dict) -> Path:
    from .rundir import new_run_dir, point_latest, write_json_atomic

    run_dir = new_run_dir(work_dir)
    point_latest(work_dir, run_dir)
    folder = run_dir / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{k: _clean(r.get(k)) for k in COLUMNS} for r in result.rows]
    per_map = {k: [{f: _clean(v) if not isinstance(v, (list, tuple)) else v for f, v in d.items()} for d in rows_]
               for k, rows_ in result.per_map.items()}
    write_json_atomic(folder / "evaluate.json", {"settings": settings, "images": result.images, "rows": rows,
                                                 "failures": [list(f) for f in result.failures], "per_map": per_map,
                                                 "curves": result.curves})
    tmp = folder / "evaluate.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    tmp.replace(folder / "evaluate.csv")
    from .report import write_report

    write_report(run_dir)  # <run>/report.html: the table and the mean insertion / deletion curves
    return run_dir
