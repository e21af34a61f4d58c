"""One explain job, as the CLI and the demo run it: a recipe's model on a data source, maps
streamed to a run folder, a progress bar, and a summary at the end."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, TextIO

from .config import ExplainConfig
from .data import is_file_input, list_image_files
from .dump import RunWriter
from .pipeline import explain


@dataclass
class JobSummary:
    images: int
    maps: int
    files: int
    failures: List[tuple]
    seconds: float
    run_dir: Optional[Path]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run_explain_job(model, data, config: ExplainConfig, *, work_dir: str, dump: bool = True,
                    preprocess=None, labels: Optional[List[str]] = None, target_layer: Optional[str] = None,
                    settings: Optional[dict] = None, batch_size: int = 16, progress: bool = True,
                    out: Optional[TextIO] = None, precision: str = "f32",
                    explain_options: Optional[dict] = None, engine: Optional[str] = None) -> JobSummary:
    """model: an nn.Module, or the path of an exported .xml / .onnx model (run with OpenVINO).
    engine: auto | openvino | pytorch (see `xaifast.explain`); precision: OpenVINO's (engine or exported model).
    explain_options: more keyword arguments of `xaifast.explain` (e.g. spec=, score_threshold=).
    out: where the per-image lines and the summary go (default: sys.stdout at call time)."""
    out = out if out is not None else sys.stdout
    from .engines.exported import OpenVINOAdapter, is_exported_model

    if is_exported_model(model):
        model = OpenVINOAdapter(model, precision=precision, preprocess=preprocess, labels=labels)
        labels = model.labels
    if is_file_input(data):
        data = [str(p) for p in list_image_files(data)]
    total = len(data) if isinstance(data, list) else None
    settings = dict(settings or {}, algorithm=config.algorithm, target_explain_group=config.target_explain_group.name,
                    postprocess=config.postprocess, mask=config.mask, score=config.score)
    writer = RunWriter(work_dir, labels, settings, config.alpha) if dump else None
    start = time.perf_counter()
    run = explain(model, data, config, target_layer=target_layer, preprocess=preprocess, labels=labels,
                  batch_size=batch_size, engine=engine, precision=precision, **(explain_options or {}))
    if labels is None:
        labels = run.adapter.labels
        if writer is not None:
            writer.labels = labels
    if writer is not None:
        writer.settings["mask"] = getattr(run, "mask", config.mask)  # "auto" resolved by model type
    maps = 0
    bar = _progress(total, progress)
    try:
        for ex in run:
            maps += len(ex.saliency_map)
            if writer is not None:
                writer.write(ex)
            line = f"{Path(str(ex.source)).name}: {prediction_summary(ex, labels)}"
            if bar is not None:
                bar.write(line, file=out)
                bar.update(1)
            else:
                print(line, file=out)
    finally:
        if bar is not None:
            bar.update(len(run.failures))
            bar.close()
        run_dir = writer.close(run.failures) if writer is not None else None
    summary = JobSummary(run.count, maps, writer.files if writer else 0, list(run.failures),
                         time.perf_counter() - start, run_dir)
    print_summary(summary, work_dir, out)
    return summary


def prediction_summary(ex, labels) -> str:
    """One line: the predicted classes with their scores (detections: count and best score per class)."""
    def name(k):
        return ex.labels.get(k) or (labels[k] if labels is not None and 0 <= k < len(labels) else f"class {k}")

    if isinstance(ex.prediction, dict):  # detections
        scores, found = ex.prediction["scores"], ex.prediction["labels"]
        if not len(scores):
            return "no detections"
        parts = [f"{int((found == k).sum())} x {name(k)} (best {scores[found == k].max():.2f})" for k in ex.predicted]
        return ", ".join(parts)
    return ", ".join(f"{name(k)} ({ex.prediction[k]:.2f})" for k in ex.predicted)


def _progress(total: Optional[int], enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="explain", file=sys.stderr, dynamic_ncols=True,
                disable=None)  # None: no bar when stderr is not a terminal


def print_summary(s: JobSummary, work_dir: str, out: TextIO) -> None:
    print(f"explained {s.images} images: {s.maps} maps, {s.files} files, {len(s.failures)} failed, "
          f"{s.seconds:.1f} s ({s.images_per_second:.1f} images/s)", file=out)
    for source, reason in s.failures:
        print(f"  skipped {source}: {reason}", file=out)
    if s.run_dir is not None:
        print(f"results: {s.run_dir / 'explain'}  (newest run: {Path(work_dir) / '.latest'})", file=out)
