"""CPU benchmarks: ViT Recipro-CAM on a ViT-B/16-sized classifier (transformers' ViTConfig()
defaults: 12 blocks, width 768, 12 heads, patch 16; random init; 224x224 -> 14x14 grid; with
num_labels=1000; batch 2; Gaussian mask, CLS token kept, target block 1 (the last): OTX's defaults).

Group "vit_recipro_cam_cpu_vitb16_b2":
    forward                        plain model(x) under torch.no_grad
    xaifast_explain                list(xaifast.explain(adapter, x, ALL)): uint8 maps of all 1000 classes,
                                   exact fast path (distinct tokens, multiplicity-weighted attention)
    xaifast_saliency_maps          xaifast.saliency_maps(adapter, x): raw float32 [2, 1000, 14, 14], fast path
    xaifast_explain_target_block2  as xaifast_explain with target_block=2 (one more block re-run per cell)
    naive_explain                  as xaifast_explain with use_fast_path=False: the full T_p [197, 768] of
                                   every cell through the model's own last block, in memory-bounded chunks
    paired_rounds                  forward, xaifast_explain and naive_explain interleaved round by round

`adapter` is a `ViTAdapter(model)` made once (block discovery and the one-time verification of the
model's pieces are setup). Correctness guard (untimed): the fast and naive maps are equal
(raw maps, rtol 1e-5). Ratios (x fwd) are printed in the end-of-session summary (conftest.py).

Run: make bench PYTEST_ARGS="benchmarks/test_bench_vit.py" (or .venv/bin/python -P -m pytest
benchmarks/test_bench_vit.py --benchmark-only). Rounds: XAIFAST_BENCH_VIT_ROUNDS (default 8),
XAIFAST_BENCH_VIT_ROUNDS_NAIVE (default 3, also the paired rounds).
Device: XAIFAST_BENCH_VIT_DEVICE (default cpu; "cuda" runs the model, the input and the Triton token
kernels on the GPU, every timed call ending with torch.cuda.synchronize(); the group is then named
"vit_recipro_cam_cuda_vitb16_b<batch>", and the module skips without CUDA). Batch:
XAIFAST_BENCH_VIT_BATCH (default 2). XAIFAST_BENCH_VIT_SIZE=small (2 blocks, width 192, 3 heads) checks
the code path quickly; its figures are not ViT-B/16 figures.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

import xaifast
from timing import paired as _paired
from timing import run_measured as _run
from xaifast.adapters.vit import ViTAdapter

transformers = pytest.importorskip("transformers")

DEVICE = torch.device(os.environ.get("XAIFAST_BENCH_VIT_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip(f"XAIFAST_BENCH_VIT_DEVICE={DEVICE} but CUDA is not available (torch {torch.__version__})",
                allow_module_level=True)
BATCH = int(os.environ.get("XAIFAST_BENCH_VIT_BATCH", "2"))
SMALL = os.environ.get("XAIFAST_BENCH_VIT_SIZE", "base") == "small"
GROUP = f"vit_recipro_cam_{DEVICE.type}_{'vitsmall' if SMALL else 'vitb16'}_b{BATCH}"
ROUNDS = int(os.environ.get("XAIFAST_BENCH_VIT_ROUNDS", "8"))
ROUNDS_NAIVE = int(os.environ.get("XAIFAST_BENCH_VIT_ROUNDS_NAIVE", "3"))
ALL = xaifast.ExplainConfig(target_explain_group="ALL")

vit_group = pytest.mark.benchmark(group=GROUP)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # ViTConfig() defaults are ViT-B/16 (but 2 labels): ImageNet's 1000 classes, as a real classifier
    config = transformers.ViTConfig(num_labels=1000)
    if SMALL:
        config = transformers.ViTConfig(num_labels=1000, num_hidden_layers=2, hidden_size=192, num_attention_heads=3,
                                        intermediate_size=768)
    return transformers.ViTForImageClassification(config).eval().to(DEVICE)


@pytest.fixture(scope="module")
def x():
    return torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def _synced(fn):
    """fn, then wait for the GPU (a no-op on CPU): timed rounds include the device's work."""
    if DEVICE.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(DEVICE)
        return out
    return call


@pytest.fixture(scope="module")
def adapter(model, x, bench_note):
    t0 = time.perf_counter()
    adapter = ViTAdapter(model)
    adapter.forward(x)  # block discovery + one-time verification of the pieces
    bench_note(f"{GROUP}: ViTAdapter setup (block discovery, verification) {time.perf_counter() - t0:.2f} s, "
               f"fast path: {adapter.rest().fast_ok}")
    assert adapter.rest().fast_ok, adapter.rest().fast_reason
    return adapter


@pytest.fixture(scope="module")
def adapter_k2(model, x):
    adapter = ViTAdapter(model, target_block=2)
    adapter.forward(x)
    return adapter


@pytest.fixture(scope="module")
def guard(adapter, x):
    """Untimed: the fast and the naive path give the same maps."""
    fast = xaifast.saliency_maps(adapter, x)
    naive = xaifast.saliency_maps(adapter, x, use_fast_path=False)
    # other summation orders: float32 rounding relative to the largest value (the maps are raw
    # logits by default, magnitude ~1, since the OTX parity issue; 1e-7 absolute was for softmax)
    if DEVICE.type == "cuda":  # other kernels too
        torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-5 * float(naive.abs().max()))
    else:
        torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6 * float(naive.abs().max()))
    return fast


def _explain(adapter, x, **kw):
    return list(xaifast.explain(adapter, x, ALL, **kw))


@vit_group
def test_forward(benchmark, bench_record, model, x):
    def forward():
        with torch.no_grad():
            return model(x)

    _run(benchmark, _synced(forward), ROUNDS)
    bench_record(benchmark, GROUP, "forward", BATCH)


@vit_group
def test_xaifast_explain(benchmark, bench_record, adapter, guard, x):
    out = _run(benchmark, _synced(lambda: _explain(adapter, x)), ROUNDS)
    assert len(out) == BATCH and len(out[0].saliency_map) == 1000
    bench_record(benchmark, GROUP, "xaifast_explain", BATCH)


@vit_group
def test_xaifast_saliency_maps(benchmark, bench_record, adapter, guard, x):
    maps = _run(benchmark, _synced(lambda: xaifast.saliency_maps(adapter, x)), ROUNDS)
    torch.testing.assert_close(maps, guard)
    bench_record(benchmark, GROUP, "xaifast_saliency_maps", BATCH)


@vit_group
def test_xaifast_explain_target_block2(benchmark, bench_record, adapter_k2, x):
    _run(benchmark, _synced(lambda: _explain(adapter_k2, x)), ROUNDS)
    bench_record(benchmark, GROUP, "xaifast_explain_target_block2", BATCH)


@vit_group
def test_naive_explain(benchmark, bench_record, adapter, guard, x):
    _run(benchmark, _synced(lambda: _explain(adapter, x, use_fast_path=False)), ROUNDS_NAIVE)
    bench_record(benchmark, GROUP, "naive_explain", BATCH)


@vit_group
def test_paired(benchmark, bench_record, model, adapter, guard, x):
    def forward():
        with torch.no_grad():
            return model(x)

    times = _paired(benchmark, {"forward": _synced(forward), "xaifast_explain": _synced(lambda: _explain(adapter, x)),
                                "naive_explain": _synced(lambda: _explain(adapter, x, use_fast_path=False))},
                    ROUNDS_NAIVE + 1)
    bench_record(benchmark, GROUP, "paired_rounds", BATCH, paired=times)
