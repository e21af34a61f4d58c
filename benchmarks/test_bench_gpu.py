"""GPU benchmarks: Recipro-CAM throughput on a ResNet-50-sized classifier (random init, 224x224).

Run on a machine with an NVIDIA GPU and a CUDA build of torch (one command, a table printed last):

    make bench PYTEST_ARGS="-k bench_gpu"
    # same as: make build && .venv/bin/python -P -m pytest benchmarks -k bench_gpu --benchmark-only

Without CUDA the whole module is skipped with a message saying so.

Groups (dtype fp32 and bf16; model and input in that dtype, channels-last unless
XAIFAST_BENCH_GPU_CHANNELS_LAST=0; cuDNN/cuBLAS at PyTorch defaults, i.e. TF32 convolutions):
  gap_<dtype>_b64, gap_<dtype>_b256   GAP head: target = last stage, feature [B, 2048, 7, 7]
  mosaic_<dtype>_b64                   head not GAP-first: target = stage 2, feature [B, 1024, 14, 14],
                                       head = stage 3 + pool + fc re-run on 196 masked maps per image
Rows:
  forward               plain model(x) under torch.no_grad: the floor
  xaifast               one forward with the target-layer hook + the Recipro-CAM engine (Triton
                        kernels, head in chunks sized from free GPU memory, fused epilogue): raw
                        float32 and uint8 maps [B, 1000, h, w] of ALL classes, left on the GPU
  xaifast_explain       the public API, list(xaifast.explain(adapter, x, ALL)): the same plus the
                        uint8 maps copied to the host and one Explanation (a dict of 1000 maps) per image
  xaifast_compile       (mosaic group) xaifast with compile_head="max-autotune-no-cudagraphs"
  xaifast_cudagraphs    (mosaic group) xaifast with compile_head="reduce-overhead" (CUDA graphs)
  otx_style             one forward with hook + OTX 1.x-style Recipro-CAM (per-image Python loop,
                        materialized mosaic; gpu_baselines.otx_style_recipro_cam)
  grad_cam              Grad-CAM, one backward pass (top-1 class, 1 map per image; gpu_baselines.grad_cam)

Every row is warmed up (first call timed separately: graph split, cuDNN autotuning, torch.compile)
and each timed round ends with torch.cuda.synchronize().  The summary gives images/s, the
throughput relative to the plain forward and the speedup over OTX-style, and checks the goals:
xaifast throughput >= 0.9x forward (GAP head) and >= 10x OTX-style.  Untimed guards compare
xaifast's maps with OTX-style maps of the first images.

Environment: XAIFAST_BENCH_GPU_ROUNDS (default 10), XAIFAST_BENCH_GPU_WARMUP (2),
XAIFAST_BENCH_GPU_BATCHES (GAP batches, default "64,256"), XAIFAST_BENCH_GPU_MOSAIC_BATCH (64),
XAIFAST_BENCH_GPU_DTYPES ("fp32,bf16"), XAIFAST_BENCH_GPU_COMPILE (1: include the compiled rows),
XAIFAST_BENCH_GPU_SUMMARY (a path: also write the summary there, as Markdown),
XAIFAST_BENCH_GPU_DEVICE (default cuda; "cpu" dry-runs the code path on tiny settings).
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict, List

import pytest
import torch

DEVICE = os.environ.get("XAIFAST_BENCH_GPU_DEVICE", "cuda")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("CUDA is not available (torch %s): the GPU benchmarks need an NVIDIA GPU and a CUDA build of "
                "torch; run them there with: make bench PYTEST_ARGS=\"-k bench_gpu\"" % torch.__version__,
                allow_module_level=True)

import xaifast  # noqa: E402
from xaifast.algorithms.recipro_cam import recipro_cam  # noqa: E402
from xaifast.adapters.classifier import ClassifierAdapter  # noqa: E402

from conftest import write_summary  # noqa: E402
from gpu_baselines import grad_cam, otx_style_recipro_cam  # noqa: E402
from models import (GAP_TARGET, NON_GAP_TARGET, benchmark_input, feature_and_logits, gap_head,  # noqa: E402
                    non_gap_head, resnet50_sized)


def _ints(name: str, default: str) -> List[int]:
    return [int(v) for v in os.environ.get(name, default).split(",") if v.strip()]


ROUNDS = int(os.environ.get("XAIFAST_BENCH_GPU_ROUNDS", "10"))
WARMUP = int(os.environ.get("XAIFAST_BENCH_GPU_WARMUP", "2"))
GAP_BATCHES = _ints("XAIFAST_BENCH_GPU_BATCHES", "64,256")
MOSAIC_BATCH = int(os.environ.get("XAIFAST_BENCH_GPU_MOSAIC_BATCH", "64"))
DTYPE_NAMES = [d for d in os.environ.get("XAIFAST_BENCH_GPU_DTYPES", "fp32,bf16").split(",") if d]
COMPILE = os.environ.get("XAIFAST_BENCH_GPU_COMPILE", "1") == "1"
CHANNELS_LAST = os.environ.get("XAIFAST_BENCH_GPU_CHANNELS_LAST", "1") == "1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NUM_CLASSES = 1000
# softmax scores as the OTX 1.x baseline and the kernel rows (xaifast's default is OTX 2.x's raw logits)
ALL = xaifast.ExplainConfig(target_explain_group="ALL", score="softmax")
GOAL_FORWARD = 0.9   # xaifast throughput / forward throughput, GAP head
GOAL_OTX = 10.0      # xaifast throughput / OTX-style throughput
GUARD_IMAGES = 4

GAP_ROWS = ["forward", "xaifast", "xaifast_explain", "otx_style", "grad_cam"]
MOSAIC_ROWS = ["forward", "xaifast"] + (["xaifast_compile", "xaifast_cudagraphs"] if COMPILE else []) + \
    ["otx_style", "grad_cam"]
COMPILE_MODES = {"xaifast_compile": "max-autotune-no-cudagraphs", "xaifast_cudagraphs": "reduce-overhead"}

_RESULTS: Dict[str, Dict[str, dict]] = {}
_NOTES: List[str] = []


# ----------------------------------------------------------------------------- summary
def _environment() -> str:
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        dev = f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        dev, cuda = f"CPU dry run ({platform.processor() or platform.machine()})", "no CUDA"
    try:
        import triton
        tri = f"triton {triton.__version__}"
    except ImportError:
        tri = "no triton (torch twins)"
    return (f"device: {dev}; torch {torch.__version__}, {cuda}, {tri}; channels_last={CHANNELS_LAST}; "
            f"TF32 conv={torch.backends.cudnn.allow_tf32}, TF32 matmul={torch.backends.cuda.matmul.allow_tf32}")


def summary_lines() -> List[str]:
    lines = [_environment(),
             "time per batch in ms (median of the timed rounds; mean and min beside); img/s from the median; "
             "'x fwd' = throughput / plain forward throughput; 'x OTX' = throughput / OTX-style throughput", ""]
    header = (f"| {'group':<17} | {'row':<19} | {'batch':>5} | {'median ms':>9} | {'mean ms':>8} | {'min ms':>8} | "
              f"{'img/s':>8} | {'x fwd':>6} | {'x OTX':>7} | {'first call s':>12} |")
    lines += [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    verdicts = []
    for group, rows in _RESULTS.items():
        fwd, otx = rows.get("forward"), rows.get("otx_style")
        for name, r in rows.items():
            x_fwd = fwd["median"] / r["median"] if fwd else float("nan")
            x_otx = otx["median"] / r["median"] if otx else float("nan")
            lines.append(f"| {group:<17} | {name:<19} | {r['batch']:>5} | {r['median'] * 1e3:>9.2f} | "
                         f"{r['mean'] * 1e3:>8.2f} | {r['min'] * 1e3:>8.2f} | {r['batch'] / r['median']:>8.1f} | "
                         f"{x_fwd:>6.3f} | {x_otx:>7.1f} | {r['first']:>12.2f} |")
        x = rows.get("xaifast")
        if x and fwd and group.startswith("gap"):
            v = fwd["median"] / x["median"]
            verdicts.append(f"goal {group}: xaifast / forward throughput = {v:.3f} (>= {GOAL_FORWARD}: "
                            f"{'met' if v >= GOAL_FORWARD else 'NOT met'})")
        if x and otx:
            v = otx["median"] / x["median"]
            verdicts.append(f"goal {group}: xaifast / OTX-style throughput = {v:.1f}x (>= {GOAL_OTX:g}x: "
                            f"{'met' if v >= GOAL_OTX else 'NOT met'})")
    lines += [""] + verdicts
    if _NOTES:
        lines += [""] + [f"note: {n}" for n in _NOTES]
    return lines


class _SummaryPlugin:
    @pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables: printed last
    def pytest_terminal_summary(self, terminalreporter):
        lines = summary_lines() if (_RESULTS or _NOTES) else []
        write_summary(terminalreporter, "xaifast GPU benchmark summary (same run)", lines, "XAIFAST_BENCH_GPU_SUMMARY")


@pytest.fixture(scope="session", autouse=True)
def _summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("xaifast-gpu-summary"):
        manager.register(_SummaryPlugin(), "xaifast-gpu-summary")


# ----------------------------------------------------------------------------- setup
def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


_MODELS: Dict[str, torch.nn.Module] = {}


def _model(dtype_name: str) -> torch.nn.Module:
    if dtype_name not in _MODELS:
        model = resnet50_sized(NUM_CLASSES).to(DEVICE, DTYPES[dtype_name]).eval()
        if CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        _MODELS[dtype_name] = model
    return _MODELS[dtype_name]


def _input(batch: int, dtype_name: str) -> torch.Tensor:
    x = benchmark_input(batch).to(DEVICE, DTYPES[dtype_name])
    return x.to(memory_format=torch.channels_last) if CHANNELS_LAST else x


_ADAPTERS: Dict[tuple, ClassifierAdapter] = {}


def _adapter(dtype_name: str, target: str) -> ClassifierAdapter:
    key = (dtype_name, target)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = ClassifierAdapter(_model(dtype_name), target_layer=target)
    return _ADAPTERS[key]


def _row_fn(row: str, dtype_name: str, target: str, x: torch.Tensor) -> Callable[[], object]:
    model = _model(dtype_name)
    if row == "forward":
        def fn():
            with torch.no_grad():
                return model(x).logits
        return fn
    if row.startswith("xaifast") and row != "xaifast_explain":
        adapter = _adapter(dtype_name, target)
        compile_head = COMPILE_MODES.get(row)

        def fn():
            feature, _logits = adapter.forward(x)
            return recipro_cam(feature, adapter.head(feature), "1x1", "softmax", normalize=True,
                               compile_head=compile_head)
        return fn
    if row == "xaifast_explain":
        adapter = _adapter(dtype_name, target)
        return lambda: list(xaifast.explain(adapter, x, ALL, batch_size=x.shape[0]))
    if row == "otx_style":
        head = gap_head(model) if target == GAP_TARGET else non_gap_head(model)
        forward = feature_and_logits(model, target)

        def fn():
            feature, _ = forward(x)
            return otx_style_recipro_cam(feature, head)
        return fn
    if row == "grad_cam":
        return lambda: grad_cam(model, target)(x)
    raise ValueError(row)


def _measure(benchmark, group: str, row: str, batch: int, fn: Callable[[], object]):
    def call():
        out = fn()
        _sync()
        return out

    t0 = time.perf_counter()
    call()  # first call: graph split, cuDNN autotuning, torch.compile
    first = time.perf_counter() - t0
    benchmark.group = group
    benchmark.extra_info.update(batch=batch, first_call_s=first)
    out = benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and getattr(stats, "data", None):
        _RESULTS.setdefault(group, {})[row] = dict(mean=stats.mean, median=stats.median, min=stats.min,
                                                   rounds=stats.rounds, batch=batch, first=first)
    return out


def _guard(group: str, dtype_name: str, target: str, x: torch.Tensor, result) -> None:
    """xaifast's maps of the first images against OTX-style maps of the same images (untimed)."""
    model = _model(dtype_name)
    head = gap_head(model) if target == GAP_TARGET else non_gap_head(model)
    feature, _ = feature_and_logits(model, target)(x[:GUARD_IMAGES])
    otx_raw = otx_style_recipro_cam(feature, head, normalize=False).float()
    otx_u8 = otx_style_recipro_cam(feature, head)
    raw = result.raw[:GUARD_IMAGES].float()
    u8 = result.normalized[:GUARD_IMAGES]
    corr = torch.corrcoef(torch.stack([raw.flatten(), otx_raw.flatten()]))[0, 1].item()
    within = ((u8.int() - otx_u8.int()).abs() <= 1).float().mean().item()
    rel = ((raw - otx_raw).abs().max() / otx_raw.abs().max()).item()
    _NOTES.append(f"guard {group}: xaifast vs OTX-style maps of {GUARD_IMAGES} images: raw correlation {corr:.6f}, "
                  f"max |diff| / max {rel:.2e}, uint8 within 1: {within:.4%}")
    # float32 differs from OTX-style only by summation order (and TF32 convolutions in the mosaic
    # path); bfloat16 OTX-style computes its softmax in bf16.
    assert corr > (0.999 if dtype_name == "fp32" else 0.98), f"{group}: xaifast maps disagree with OTX-style"
    if dtype_name == "fp32" and target == GAP_TARGET:
        assert within > 0.99, f"{group}: uint8 maps differ from OTX-style by more than 1 too often"


# ----------------------------------------------------------------------------- benchmarks
GAP_CASES = [(d, b) for d in DTYPE_NAMES for b in GAP_BATCHES]


@pytest.mark.parametrize("row", GAP_ROWS)
@pytest.mark.parametrize("dtype_name,batch", GAP_CASES, ids=[f"{d}-b{b}" for d, b in GAP_CASES])
def test_bench_gpu_gap_head(benchmark, dtype_name, batch, row):
    group = f"gap_{dtype_name}_b{batch}"
    x = _input(batch, dtype_name)
    out = _measure(benchmark, group, row, batch, _row_fn(row, dtype_name, GAP_TARGET, x))
    if row == "xaifast":
        assert tuple(out.normalized.shape) == (batch, NUM_CLASSES, 7, 7)
        _guard(group, dtype_name, GAP_TARGET, x, out)


@pytest.mark.parametrize("row", MOSAIC_ROWS)
@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
def test_bench_gpu_mosaic_head(benchmark, dtype_name, row):
    group = f"mosaic_{dtype_name}_b{MOSAIC_BATCH}"
    x = _input(MOSAIC_BATCH, dtype_name)
    out = _measure(benchmark, group, row, MOSAIC_BATCH, _row_fn(row, dtype_name, NON_GAP_TARGET, x))
    if row.startswith("xaifast") and row != "xaifast_explain":
        assert tuple(out.normalized.shape) == (MOSAIC_BATCH, NUM_CLASSES, 14, 14)
        _guard(group, dtype_name, NON_GAP_TARGET, x, out)
