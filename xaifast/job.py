"""One explain job, as the CLI and the demo run it: a model on a data source, maps streamed to a
run folder, a progress bar, a journal, and a summary at the end.

Stages and threads: the calling thread drives the pipeline (decoding runs on its own thread pool
a bounded number of images ahead; the engine computes); each finished image goes to a pool of
`num_workers` threads that render it a few maps at a time, encode and write its files (OpenCV and
the C++ postprocessor release the GIL), then append its line to the journal. At most
2 x num_workers images are in flight there: memory does not grow with the number of images.

Crash safety and resume: `.latest` points at the run from its start; files are written under a
temporary name and renamed; `explain/index.jsonl` gets one line per image once its files are on
disk. `resume=True` (or a run folder) continues a run: the images of its journal are skipped
(batches are windows of input positions, so the others are computed in the same batches as an
uninterrupted run: the same bytes). `explain/index.json` is written at the end.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, TextIO, Union

from .config import ExplainConfig
from .errors import XaifastError
from .pipeline import default_workers, explain
from .rundir import SETTINGS_FILE, new_run_dir, point_latest, resume_target, write_json_atomic
from .distributed import Dist
from .stages.files import FileWriter, default_writers
from .stages.journal import Journal, read_journals
from .stages.sinks import CallbackSink, FolderSink, NullSink, check_dump_format, files_exist


@dataclass
class JobSummary:
    images: int
    maps: int
    files: int
    failures: List[tuple]
    seconds: float
    run_dir: Optional[Path]
    resumed: int = 0  # images done by an earlier, interrupted run

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run_explain_job(model, data, config: ExplainConfig, *, work_dir: str, dump: bool = True,
                    dump_format: str = "png", resume: Union[bool, str, Path, None] = None,
                    num_workers: Optional[int] = None, sink: Optional[Callable] = None,
                    preprocess=None, labels: Optional[List[str]] = None, target_layer: Optional[str] = None,
                    settings: Optional[dict] = None, batch_size: int = 16, progress: bool = True,
                    out: Optional[TextIO] = None, precision: str = "f32", max_image_pixels: Optional[int] = 100_000_000,
                    explain_options: Optional[dict] = None, engine: Optional[str] = None,
                    report: Optional[bool] = None) -> JobSummary:
    """model: an nn.Module, or the path of an exported .xml / .onnx model (run with OpenVINO).
    data: anything `xaifast.explain` takes. dump: write the maps and overlays (`dump_format` png |
    jpg) under a new run folder of work_dir; sink: a function that also gets every Explanation
    (from the worker threads, in any order; after its files are written).
    resume: True (the newest run of work_dir) or a run folder: continue it. num_workers: threads
    of decoding and of rendering + writing (default: the machine's cores).
    engine: auto | openvino | pytorch (see `xaifast.explain`); precision: OpenVINO's.
    explain_options: more keyword arguments of `xaifast.explain` (e.g. spec=, score_threshold=).
    report: with dump, also write thumbnails (explain/thumbs/) and the run's report.html; None (the
    default): yes for png / jpg runs, no for zarr runs (a store keeps a million images in a few
    hundred files, and thumbnails are four files an image: `xaifast report <run>` makes them later).
    out: where the per-image lines and the summary go (default: sys.stdout at call time)."""
    out = out if out is not None else sys.stdout
    workers = num_workers or default_workers()
    if workers < 1:
        raise XaifastError(f"num_workers must be >= 1, got {num_workers}")
    fmt = check_dump_format(dump_format)
    report = (fmt != "zarr") if report is None else bool(report)
    settings = dict(settings or {}, algorithm=config.algorithm, target_explain_group=config.target_explain_group.name,
                    target_classes=list(config.target_classes or []), postprocess=config.postprocess,
                    mask=config.mask, score=config.score, alpha=config.alpha, dump=bool(dump), dump_format=fmt,
                    batch_size=batch_size,
                    max_image_pixels=max_image_pixels)
    dist = Dist.from_env()
    run_dir, done = _open_run(Path(work_dir), resume, settings, dist) if dump else (None, [])
    journal = Journal(run_dir / "explain" / dist.journal_name()) if run_dir is not None else None
    writer = FileWriter(default_writers(workers)) if run_dir is not None and (fmt != "zarr" or report) else None
    sinks = [_sink(run_dir, fmt, done, dist, writer)] + ([CallbackSink(sink)] if sink is not None else [])
    if run_dir is not None and report:  # the report's thumbnails, after the main sink
        from .stages.thumbs import ThumbSink

        sinks.insert(1, ThumbSink(run_dir, writer))
    bar = _progress(None, progress)
    write_report_page = bool(report)
    report = _Reporter(out, bar)

    def on_skip(sample, reason):
        report.line(f"skipped {sample.source}: {reason}")
        if journal is not None:
            journal.append({"index": sample.index, "source": str(sample.source), "rel": _rel(sample.item),
                            "failed": reason})
        report.advance()

    start = time.perf_counter()
    run = explain(model, data, config, target_layer=target_layer, preprocess=preprocess, labels=labels,
                  batch_size=batch_size, engine=engine, precision=precision, num_workers=workers,
                  max_image_pixels=max_image_pixels, **(explain_options or {}),
                  _run_kwargs=dict(skip={r["rel"] if r.get("rel") is not None else r["index"] for r in done},
                                   on_skip=on_skip, warn=False, shard=(dist.rank, dist.world)))
    labels = labels if labels is not None else run.engine.labels
    settings["mask"] = run.mask  # "auto" resolved by model type
    settings["labels"] = [str(v) for v in labels] if labels is not None else None  # (the report names classes)
    if run_dir is not None and dist.rank == 0 and not (run_dir / "explain" / SETTINGS_FILE).is_file():
        write_json_atomic(run_dir / "explain" / SETTINGS_FILE, settings)
    if bar is not None and not bar.disable:
        bar.reset(total=_shard_size(run, dist))
        bar.update(len(done))
    counts = {"maps": 0, "files": 0}
    lock = threading.Lock()

    def finish(ex) -> None:
        ex.renderer.threads = 1  # one image per worker thread: the workers share the cores
        record = _record(ex, labels)  # what is kept of the image (not the image) until its output is stored
        line = f"{ex.rel or Path(str(ex.source)).name}: {prediction_summary(ex, labels)}"
        waiting = [len(sinks)]

        def stored(fields: dict) -> None:  # each sink calls it once the image's output is on disk
            with lock:
                for key, value in fields.items():
                    record[key] = record.get(key, []) + value if key == "files" else value
                waiting[0] -= 1
                if waiting[0]:
                    return
                counts["maps"] += len(record["targets"])
                counts["files"] += len(record.get("files", ()))
            if journal is not None:
                journal.append(record)
            report.line(line)
            report.advance()

        for target in sinks:
            target.write(ex, stored)

    interrupted = False
    try:
        _drain(run, finish, workers)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        try:
            for target in sinks:  # stores what they hold (journaling it), then the journal is closed
                target.close()
        finally:
            if writer is not None:  # the files queued, then their images journaled
                writer.close()
        if journal is not None:
            journal.close()
        if bar is not None:
            bar.close()
        if interrupted and run_dir is not None:
            print(f"xaifast: interrupted; finished images are kept: continue with --resume True "
                  f"(or --resume {run_dir})", file=sys.stderr)
    if run_dir is not None and dist.enabled:
        dist.finish(run_dir)
        if dist.rank == 0:
            dist.wait_for_all(run_dir, say=report.line)
    if run_dir is not None and dist.rank == 0:  # every rank's journal, merged
        _write_index(run_dir, settings)
        if fmt == "zarr":
            from .stages.parquet_index import write_parquet_index

            write_parquet_index(run_dir)
        if write_report_page:
            from .report import write_report

            write_report(run_dir)
    summary = JobSummary(run.count, counts["maps"], counts["files"], list(run.failures),
                         time.perf_counter() - start, run_dir, resumed=len(done))
    print_summary(summary, work_dir, out)
    return summary


def _drain(run, finish: Callable, workers: int) -> None:
    """Hand every Explanation of `run` to `finish` on a pool of `workers` threads, at most
    2 x workers in flight; the first error of a worker stops the run and is raised here."""
    slots = threading.BoundedSemaphore(2 * workers)
    errors: List[BaseException] = []

    def task(ex):
        try:
            if not errors:
                finish(ex)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            errors.append(exc)
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xaifast-write") as pool:
        try:
            for ex in run:
                slots.acquire()
                if errors:
                    break
                pool.submit(task, ex)
        finally:
            pool.shutdown(wait=True)
    if errors:
        raise errors[0]


def _open_run(work_dir: Path, resume, settings: dict, dist: Dist = Dist()):
    """(run folder, journal records done) of a new run, or of the run `resume` names. In a
    multi-process run rank 0 makes or checks the folder and tells the other ranks."""
    if dist.rank == 0:
        try:
            run_dir, error = _make_or_check_run(work_dir, resume, settings), None
            if dist.enabled:
                dist.clear_markers(run_dir)
        except Exception as exc:  # the other ranks must not wait for a folder that will not come
            run_dir, error = None, exc
        told = dist.broadcast(str(run_dir) if error is None else f"error: {error}")
        if error is not None:
            raise error
    else:
        told = dist.broadcast(None)
        if told.startswith("error: "):
            raise XaifastError(told[len("error: "):])
        run_dir = Path(told)
    records = read_journals(run_dir / "explain")
    done = [r for r in records if "failed" in r or files_exist(run_dir, r.get("files", []))]
    return run_dir, done


def _make_or_check_run(work_dir: Path, resume, settings: dict) -> Path:
    if resume in (None, False, "False", "false"):
        run_dir = new_run_dir(work_dir)
        (run_dir / "explain").mkdir()
        point_latest(work_dir, run_dir)
        return run_dir
    run_dir = resume_target(work_dir, True if resume in (True, "True", "true") else resume)
    recorded = run_dir / "explain" / SETTINGS_FILE
    if recorded.is_file():
        import json

        before = json.loads(recorded.read_text())
        changed = [k for k in settings if k != "mask" and k in before and before[k] != settings[k]]
        if changed:
            what = ", ".join(f"{k}: {before[k]!r} then, {settings[k]!r} now" for k in changed)
            raise XaifastError(f"--resume {run_dir}: the run was started with other settings ({what}); "
                               "resume with the same flags, or start a new run")
    for stale in (run_dir / "explain").rglob(".*.tmp-*"):  # files the killed run had in flight
        if stale.is_file():  # (before any rank of this run writes: the other ranks wait for rank 0)
            stale.unlink(missing_ok=True)
    point_latest(run_dir.parent, run_dir)
    return run_dir


def _shard_size(run, dist: Dist) -> Optional[int]:
    if run.items is None:
        return None
    from .pipeline import shard_range

    first, last = shard_range(len(run.items), run.options.batch_size, dist.rank, dist.world)
    return last - first


def _sink(run_dir: Optional[Path], fmt: str, done: List[dict], dist: Dist, writer=None):
    """Where the run's images go: OTX's files (png / jpg), the zarr store, or nowhere (no dump)."""
    if run_dir is None:
        return NullSink()
    if fmt == "zarr":
        from .stages.zarr_store import ZarrSink

        return ZarrSink(run_dir, done, suffix=dist.array_suffix())
    return FolderSink(run_dir, fmt, writer=writer)


def _rel(item) -> Optional[str]:
    return item.rel if item is not None else None


def _record(ex, labels, top: int = 5) -> dict:
    """One image's line of the journal and entry of index.json (the sinks add where its output is)."""
    def label(k: int) -> Optional[str]:
        return labels[k] if labels is not None and 0 <= k < len(labels) else None

    if isinstance(ex.prediction, dict):  # detections (boxes in the image's pixels)
        p = ex.prediction
        predictions = [{"class": int(k), "label": label(int(k)), "score": float(s),
                        "box": [float(v) for v in box]}
                       for box, s, k in zip(p["boxes"], p["scores"], p["labels"])]
    else:
        predictions = [{"class": k, "label": label(k), "score": float(ex.prediction[k])} for k in ex.predicted]
    record = {"index": ex.index, "source": str(ex.source), "rel": ex.rel}
    if ex.gt is not None:
        record["gt"] = ex.gt
    record.update(predictions=predictions, targets=[k if k == "image" else int(k) for k in ex.maps])
    if not isinstance(ex.prediction, dict):  # classifiers: the top classes and their scores
        scores = np.asarray(ex.prediction, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:top]
        record["top"] = [[int(k), float(scores[k])] for k in order]
    return record


def _write_index(run_dir: Path, settings: dict) -> None:
    """explain/index.json from the journal: every image in input order, then the skipped inputs."""
    records = {}
    for r in read_journals(run_dir / "explain"):
        records[r["index"]] = r  # a line written again after a resume replaces the earlier one
    ordered = [records[i] for i in sorted(records)]
    index = {"run": run_dir.name, "settings": settings,
             "images": [r for r in ordered if "failed" not in r],
             "failures": [{"source": r["source"], "reason": r["failed"]} for r in ordered if "failed" in r]}
    write_json_atomic(run_dir / "explain" / "index.json", index)


class _Reporter:
    """Per-image lines and the progress bar, from any thread."""

    def __init__(self, out: TextIO, bar):
        self.out, self.bar = out, bar
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.write(text, file=self.out)
            else:
                print(text, file=self.out)

    def advance(self) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(1)


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
    resumed = f" (+{s.resumed} done before: resumed)" if s.resumed else ""
    print(f"explained {s.images} images{resumed}: {s.maps} maps, {s.files} files, {len(s.failures)} failed, "
          f"{s.seconds:.1f} s ({s.images_per_second:.1f} images/s)", file=out)
    for source, reason in s.failures:
        print(f"  skipped {source}: {reason}", file=out)
    if s.run_dir is not None:
        print(f"results: {s.run_dir / 'explain'}  (newest run: {Path(work_dir) / '.latest'})", file=out)
        if (s.run_dir / "report.html").is_file():
            print(f"report: {s.run_dir / 'report.html'}", file=out)
        elif s.images:
            print(f"report: `xaifast report {s.run_dir}` writes report.html (and its thumbnails)", file=out)
