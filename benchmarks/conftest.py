"""Shared state of the benchmark session and the summary table printed at its end.

Every benchmark records its pytest-benchmark stats into `bench_results` (a session fixture);
`pytest_terminal_summary` prints, per group: time per batch (mean, min), images/s and the ratios
against the plain forward and between implementations, all from this same run. Ratios are given
from the means (as asked) and from the minima (robust to other processes on a busy machine); the
cpu/wall column (process CPU time / wall time over the timed rounds, ~= the thread count on an
idle machine) shows which rows were slowed by other processes.
"""
from __future__ import annotations

import os
import platform
import statistics
from typing import Dict, List

import pytest

_RESULTS: Dict[str, Dict[str, dict]] = {}  # group -> name -> stats
_NOTES: List[str] = []

# (numerator, denominator) pairs reported per group when both were measured.
RATIOS = [
    ("xaifast_explain", "forward"),
    ("xaifast_saliency_maps", "forward"),
    ("xaifast_saliency_maps_module", "forward"),
    ("otx_style", "xaifast_explain"),
    ("slow_reference_float64", "xaifast_explain"),
    ("otx_style", "forward"),
    # explaining through the exported IR (test_bench_export.py)
    ("ir_explain_f32", "openvino_forward_f32"),
    ("ir_explain_default", "openvino_forward_default"),
    ("pytorch_explain", "pytorch_forward"),
    ("pytorch_explain", "ir_explain_f32"),
    ("pytorch_explain", "ir_explain_default"),
    # the OpenVINO engine (test_bench_openvino_engine.py): time ratios, so ovxai / xaifast and
    # floor / xaifast read as xaifast's throughput relative to OpenVINO XAI and to plain inference
    ("ovxai_f32", "xaifast_ov_f32"),
    ("ovxai_default", "xaifast_ov_default"),
    ("openvino_floor_f32", "xaifast_ov_f32"),
    ("openvino_floor_default", "xaifast_ov_default"),
    ("xaifast_pytorch", "xaifast_ov_f32"),
    # ViT in the OpenVINO graph (test_bench_vit_openvino.py): explain / the faster plain pipeline (goal <= 1.25)
    ("xaifast_ov_f32", "openvino_best_f32"),
    ("xaifast_ov_default", "openvino_best_default"),
    ("xaifast_ir_f32", "openvino_best_f32"),
    ("xaifast_ir_default", "openvino_best_default"),
    ("xaifast_pytorch", "xaifast_ov_default"),
    ("ovxai_floor_b1_f32", "ovxai_f32"),
    ("ovxai_floor_b1_default", "ovxai_default"),
]

GOAL = ("xaifast_explain", "forward", 1.15)  # issue requirement: explain / forward <= 1.15 (GAP head)
GOAL_GROUP = "recipro_cam_cpu_resnet50_b16"
_PARALLEL_ROWS = ("forward", "xaifast_saliency_maps", "xaifast_explain", "otx_style")


@pytest.fixture(scope="session")
def bench_record():
    """record(benchmark, group, name, batch): store a finished benchmark's stats."""
    return record


@pytest.fixture(scope="session")
def bench_note():
    """note(text): a line printed under the summary table (e.g. one-time setup costs)."""
    return _NOTES.append


def record(benchmark, group: str, name: str, batch: int, **extra) -> None:
    """Store `benchmark`'s stats (seconds per call of one batch) under group/name."""
    meta = getattr(benchmark, "stats", None)
    stats = getattr(meta, "stats", None)
    if stats is None or not getattr(stats, "data", None):  # --benchmark-disable: nothing measured
        return
    util = benchmark.extra_info.get("cpu_util", float("nan"))
    _RESULTS.setdefault(group, {})[name] = dict(mean=stats.mean, min=stats.min, median=stats.median,
                                                stddev=stats.stddev, rounds=stats.rounds, batch=batch,
                                                util=util, group=group, **extra)


def record_times(group: str, name: str, times, batch: int, **extra) -> None:
    """Store a row measured outside pytest-benchmark (seconds per call of `batch` images)."""
    times = list(times)
    if not times:
        return
    _RESULTS.setdefault(group, {})[name] = dict(
        mean=statistics.mean(times), min=min(times), median=statistics.median(times),
        stddev=statistics.stdev(times) if len(times) > 1 else 0.0, rounds=len(times), batch=batch,
        util=extra.pop("util", float("nan")), group=group, **extra)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _per_image(row: dict, key: str) -> float:
    return row[key] / row["batch"]


def _paired_lines(row: dict) -> List[str]:
    """Per-round ratios of an interleaved measurement (test_bench_cpu._paired)."""
    times = row["paired"]
    names = list(times)
    n = min(len(v) for v in times.values())
    if n == 0:
        return []
    lines = [f"interleaved rounds ({n}, batch {row['batch']}, idle wait before each, order rotating): "
             + ", ".join(f"{k} median {statistics.median(v):.3f} s (min {min(v):.3f})" for k, v in times.items())]
    pairs = [(a, b) for a, b in RATIOS if a in times and b in times]
    pairs += [(a, "forward") for a in names if a != "forward" and "forward" in times and (a, "forward") not in pairs]
    for a, b in pairs:
        ratios = sorted(times[a][i] / times[b][i] for i in range(n))
        lines.append(f"  per-round ratio {a} / {b}: median {statistics.median(ratios):.3f}, "
                     f"range {ratios[0]:.3f} .. {ratios[-1]:.3f}"
                     + (f"  [goal <= {GOAL[2]}: {'met' if statistics.median(ratios) <= GOAL[2] else 'NOT met'}]"
                        if (a, b) == GOAL[:2] and row.get("group") == GOAL_GROUP else ""))
    return lines


def summary_lines() -> List[str]:
    import torch

    import xaifast

    lines = [f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
             f"{torch.get_num_threads()} intra-op threads; xaifast from {os.path.dirname(xaifast.__file__)}",
             "times in s per batch; 'x fwd' = time per image / forward's time per image (mean, median, min)"]
    for group, rows in _RESULTS.items():
        forward = rows.get("forward")
        lines.append("")
        lines.append(f"group {group}")
        lines.append(f"{'benchmark':<29} {'batch':>5} {'rounds':>6} {'mean':>8} {'median':>8} {'min':>8} "
                     f"{'stddev':>7} {'img/s':>7} {'x fwd mean':>10} {'x fwd med':>9} {'x fwd min':>9} "
                     f"{'cpu/wall':>8}")
        for name, r in rows.items():
            if "paired" in r:
                continue  # printed below, per round
            vs = {k: (_per_image(r, k) / _per_image(forward, k)) if forward else float("nan")
                  for k in ("mean", "median", "min")}
            lines.append(f"{name:<29} {r['batch']:>5} {r['rounds']:>6} {r['mean']:>8.3f} {r['median']:>8.3f} "
                         f"{r['min']:>8.3f} {r['stddev']:>7.3f} {r['batch'] / r['mean']:>7.2f} {vs['mean']:>10.3f} "
                         f"{vs['median']:>9.3f} {vs['min']:>9.3f} {r['util']:>8.2f}")
        for num, den in RATIOS:
            if num in rows and den in rows:
                a, b = rows[num], rows[den]
                r = {k: _per_image(a, k) / _per_image(b, k) for k in ("mean", "median", "min")}
                per = " (per image)" if a["batch"] != b["batch"] else ""
                lines.append(f"ratio {num} / {den}{per}: {r['mean']:.3f} (means), {r['median']:.3f} (medians), "
                             f"{r['min']:.3f} (minima)")
                if (num, den) == GOAL[:2] and group == GOAL_GROUP:
                    verdict = {k: "met" if v <= GOAL[2] else "NOT met" for k, v in r.items()}
                    lines.append(f"goal {num} / {den} <= {GOAL[2]} (GAP head): {verdict['mean']} on the means, "
                                 f"{verdict['median']} on the medians, {verdict['min']} on the minima")
        if forward is not None:
            for name, r in rows.items():
                if name != "forward" and r["batch"] == forward["batch"] and "paired" not in r:
                    lines.append(f"time beyond the forward, {name}: {r['mean'] - forward['mean']:+.3f} (means), "
                                 f"{r['median'] - forward['median']:+.3f} (medians), "
                                 f"{r['min'] - forward['min']:+.3f} (minima) s/batch")
        for name, r in rows.items():
            if "paired" in r:
                lines.extend(_paired_lines(r))
        # rows dominated by multithreaded work (the reference is mostly single-threaded tiny calls)
        utils = [r["util"] for n, r in rows.items() if n in _PARALLEL_ROWS and r["util"] == r["util"]]
        if utils and min(utils) < 0.9 * min(os.cpu_count() or 1, torch.get_num_threads()):
            lines.append(f"warning: cpu/wall as low as {min(utils):.2f} (threads: {torch.get_num_threads()}): other "
                         "processes took CPU during some benchmarks; compare rows with similar cpu/wall only")
    lines.append("")
    try:
        from idle import wait_summary

        lines.append(f"note: {wait_summary()}")
    except ImportError:
        pass
    lines.extend(f"note: {n}" for n in _NOTES)
    return lines


def write_summary(terminalreporter, title: str, lines: List[str], path_variable: str) -> None:
    """Print a summary table under `title`; also write it to the file named by $path_variable."""
    if not lines:
        return
    terminalreporter.section(title)
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get(path_variable)
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = summary_lines() if (_RESULTS or _NOTES) else []
    write_summary(terminalreporter, "xaifast Recipro-CAM benchmark summary (same run)", lines, "XAIFAST_BENCH_SUMMARY")
