"""DetClassProbabilityMap benchmark: xaifast's fused kernels vs OTX's per-image loop, same inputs, one run.

Cases (classification-head outputs of a single-stage detector, random logits, float32):
    atss_b8       5 levels of a 736x992 input at strides 8..128 (92x124, 46x62, 23x31, 12x16, 6x8),
                  A=1, K=20, batch 8 -> maps [8, 20, 23, 31]
    retinanet_b8  the same levels, A=9 anchors per location, K=20, batch 8
    small_b16     3 levels 16x16, 8x8, 4x4, A=3, K=3, batch 16 -> maps [16, 3, 8, 8]
Rows (each produces the uint8 maps [B, K, h, w], softmax on, so the work is equal):
    otx_loop        det_baselines.otx_det_class_probability_map: OTX's per-image Python loop
                    (reshape + max over anchors, F.interpolate per level, cat + mean), softmax over
                    classes, OTX's min-max normalization to uint8
    xaifast_numba   xaifast.kernels.det_class_map(backend="numba") (one fused Numba pass) +
                    xaifast.functional.normalize (C++)
    xaifast_twin    the batched PyTorch twin det_class_map_torch + xaifast.functional.normalize
    paired          the three interleaved round by round (order rotating), for per-round ratios
GPU cases (`*_cuda`, skipped without CUDA): otx_loop on CUDA tensors vs the fused Triton kernel
(+ normalize on the GPU); every timed round ends with torch.cuda.synchronize().

Untimed guards make a benchmark fail when its maps disagree with the OTX loop (raw maps to 1e-5,
uint8 within 1).  The ratio table is printed at the end (terminal summary, also without -s); the
rows are also recorded in the shared summary of conftest.py.  Rounds: XAIFAST_BENCH_DET_ROUNDS
(default 20), paired rounds XAIFAST_BENCH_DET_PAIRED (default 10).  XAIFAST_BENCH_DET_THREADS=n
runs every row with n threads (torch intra-op, Numba, the normalizer; default: the libraries'
defaults): with 1, the figures hold up on a machine shared with other processes, where
multithreaded rows wait for each other's threads.

    .venv/bin/python -P -m pytest benchmarks/test_bench_det.py --benchmark-only
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Dict

import numpy as np
import pytest
import torch

from det_baselines import otx_det_class_probability_map
from timing import paired, register_terminal_summary, run_measured
from xaifast.functional import normalize
from xaifast.kernels import det_class_map, det_class_map_torch

ROUNDS = int(os.environ.get("XAIFAST_BENCH_DET_ROUNDS", "20"))
THREADS = int(os.environ.get("XAIFAST_BENCH_DET_THREADS", "0"))  # 0: library defaults
PAIRED_ROUNDS = int(os.environ.get("XAIFAST_BENCH_DET_PAIRED", "10"))
ATSS_LEVELS = [(92, 124), (46, 62), (23, 31), (12, 16), (6, 8)]
CASES = {  # name -> (batch, K, level sizes, anchors)
    "atss_b8": (8, 20, ATSS_LEVELS, 1),
    "retinanet_b8": (8, 20, ATSS_LEVELS, 9),
    "small_b16": (16, 3, [(16, 16), (8, 8), (4, 4)], 3),
}
ROWS = ["otx_loop", "xaifast_numba", "xaifast_twin"]
GPU_ROWS = ["otx_loop", "xaifast_triton"]
_RESULTS: Dict[str, Dict[str, dict]] = {}  # group -> row -> stats
_PAIRED: Dict[str, Dict[str, list]] = {}


def _levels(case: str, device="cpu"):
    B, K, shapes, A = CASES[case]
    g = torch.Generator().manual_seed(1234)  # the same inputs for every row of a case
    return [(-3.0 + 2.0 * torch.randn((B, A * K, H, W), generator=g)).to(device) for H, W in shapes], A


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _impls(levels, A):
    return {
        "otx_loop": lambda: otx_det_class_probability_map(levels, A),
        "xaifast_numba": lambda: normalize(det_class_map(levels, A, backend="numba"), num_threads=THREADS),
        "xaifast_twin": lambda: normalize(det_class_map_torch(levels, A), num_threads=THREADS),
        "xaifast_triton": lambda: normalize(det_class_map(levels, A, backend="triton")),
    }


def _guard(levels, A, row):
    """Untimed: the row's raw maps equal OTX's to 1e-5 and its uint8 maps are within 1."""
    ref_raw = otx_det_class_probability_map(levels, A, normalize=False).float().cpu()
    backend = {"xaifast_numba": "numba", "xaifast_twin": "torch", "xaifast_triton": "triton"}.get(row)
    if backend is not None:
        raw = det_class_map(levels, A, backend=backend).cpu()
        np.testing.assert_allclose(raw.numpy(), ref_raw.numpy(), rtol=1e-5, atol=1e-6)
    u8 = _impls(levels, A)[row]().cpu()
    ref_u8 = otx_det_class_probability_map(levels, A).cpu()
    assert u8.dtype == torch.uint8 and u8.shape == ref_u8.shape
    assert int((u8.int() - ref_u8.int()).abs().max()) <= 1, row


def _store(benchmark, bench_record, group, row, batch):
    bench_record(benchmark, group, row, batch)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None or not getattr(stats, "data", None):  # --benchmark-disable
        return
    _RESULTS.setdefault(group, {})[row] = dict(mean=stats.mean, median=stats.median, min=stats.min,
                                               rounds=stats.rounds, batch=batch,
                                               util=benchmark.extra_info.get("cpu_util", float("nan")))


# ------------------------------------------------------------------------------ summary
@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    register_terminal_summary(request, "xaifast_det_summary",
                              "xaifast DetClassProbabilityMap benchmark summary (same run)", summary_lines)
    yield


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """XAIFAST_BENCH_DET_THREADS: torch and Numba thread counts for this module (restored after)."""
    if THREADS <= 0:
        yield
        return
    import numba

    saved = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])


def summary_lines():
    if not _RESULTS and not _PAIRED:
        return []
    threads = f"{THREADS} thread(s) per row (XAIFAST_BENCH_DET_THREADS)" if THREADS > 0 else \
        f"library default threads (torch {torch.get_num_threads()})"
    out = [f"DetClassProbabilityMap (uint8 maps, softmax on; {os.cpu_count()} logical CPUs, torch "
           f"{torch.__version__}, {threads}); times in ms per batch",
           f"{'group':<20} {'row':<15} {'batch':>5} {'rounds':>6} {'mean':>9} {'median':>9} {'min':>9} "
           f"{'img/s':>8} {'cpu/wall':>8}"]
    for group, rows in _RESULTS.items():
        for name, r in rows.items():
            out.append(f"{group:<20} {name:<15} {r['batch']:>5} {r['rounds']:>6} {1e3 * r['mean']:>9.3f} "
                       f"{1e3 * r['median']:>9.3f} {1e3 * r['min']:>9.3f} {r['batch'] / r['median']:>8.1f} "
                       f"{r['util']:>8.2f}")
    for group, rows in _RESULTS.items():
        for num, den in [("otx_loop", "xaifast_numba"), ("otx_loop", "xaifast_twin"),
                         ("xaifast_twin", "xaifast_numba"), ("otx_loop", "xaifast_triton")]:
            if num in rows and den in rows:
                a, b = rows[num], rows[den]
                out.append(f"ratio {group}: {num} / {den} = {a['mean'] / b['mean']:.2f}x (means), "
                           f"{a['median'] / b['median']:.2f}x (medians), {a['min'] / b['min']:.2f}x (minima)")
    for group, times in _PAIRED.items():
        n = min(len(v) for v in times.values())
        if n == 0:
            continue
        for num, den in [("otx_loop", "xaifast_numba"), ("otx_loop", "xaifast_twin"),
                         ("xaifast_twin", "xaifast_numba")]:
            if num in times and den in times:
                ratios = sorted(times[num][i] / times[den][i] for i in range(n))
                out.append(f"paired {group} ({n} interleaved rounds): {num} / {den} median "
                           f"{statistics.median(ratios):.2f}x, range {ratios[0]:.2f} .. {ratios[-1]:.2f}")
    return out


# ------------------------------------------------------------------------------ CPU
@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("case", list(CASES))
def test_det_cpu(benchmark, bench_record, case, row):
    group = f"det_{case}"
    benchmark.group = group
    levels, A = _levels(case)
    _guard(levels, A, row)  # also the warm-up (Numba compile / load from cache)
    fn = _impls(levels, A)[row]
    with torch.no_grad():
        u8 = run_measured(benchmark, fn, ROUNDS, warmup_rounds=2)
    assert u8.dtype == torch.uint8
    _store(benchmark, bench_record, group, row, CASES[case][0])


@pytest.mark.parametrize("case", list(CASES))
def test_det_cpu_paired(benchmark, bench_record, case):
    group = f"det_{case}"
    benchmark.group = group + "_paired"
    levels, A = _levels(case)
    impls = _impls(levels, A)
    with torch.no_grad():
        times = paired(benchmark, {row: impls[row] for row in ROWS}, PAIRED_ROUNDS + 1)
    bench_record(benchmark, group + "_paired", "paired_rounds", CASES[case][0], paired=times)
    if any(times.values()):
        _PAIRED[group] = times


# ------------------------------------------------------------------------------ GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Triton kernel vs OTX's loop on the GPU)")
@pytest.mark.parametrize("row", GPU_ROWS)
@pytest.mark.parametrize("case", list(CASES))
def test_det_gpu(benchmark, bench_record, case, row):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip("TRITON_INTERPRET is set: the Triton kernel would run in the CPU interpreter")
    group = f"det_{case}_cuda"
    benchmark.group = group
    device = torch.device("cuda")
    levels, A = _levels(case, device)
    _guard(levels, A, row)  # also the warm-up (Triton compile)
    fn = _impls(levels, A)[row]

    def timed():
        out = fn()
        _sync(device)
        return out

    with torch.no_grad():
        for _ in range(3):
            timed()
        t0 = time.perf_counter()
        u8 = benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    assert u8.dtype == torch.uint8 and time.perf_counter() > t0
    _store(benchmark, bench_record, group, row, CASES[case][0])
