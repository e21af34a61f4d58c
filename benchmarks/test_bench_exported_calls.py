"""`xaifast.explain("model.xml", batch)` called once per batch from the caller's own loop (the
pattern of someone who exported with `xaifast export --explain True` and explains in their code),
against the raw inference of the same IR compiled once, in one run, interleaved round by round.

Model: EfficientNet-Lite0 (ImageNet weights, `xaifast.zoo.efficientnet`), exported with explain
outputs at 224 x 224; 4 batches of 8 random inputs per round; ALL classes (the IR's maps), f32.
    explain_per_batch   for each batch: list(xaifast.explain(path_string, batch, ALL))
    raw_ir              for each batch: the IR compiled once (ov.Core().compile_model), infer()
The ratio explain / raw is the whole per-call cost of the API on top of the graph (before the
exported adapters were kept per file, every call read and compiled the IR again: 3.9x on DeiT-S).

    XAIFAST_BENCH_SUMMARY=/tmp/exported_calls.txt \\
        .venv/bin/python -P -m pytest benchmarks/test_bench_exported_calls.py --benchmark-only -s
"""
from __future__ import annotations

import os
import statistics

import numpy as np
import pytest
import torch

import xaifast

from conftest import record_times
from timing import paired

ov = pytest.importorskip("openvino")

ROUNDS = int(os.environ.get("XAIFAST_BENCH_EXPORTED_ROUNDS", "8"))
BATCH, BATCHES = 8, 4
GROUP = "exported_model_per_batch_calls"


def test_explain_path_per_batch_vs_raw_ir(benchmark, tmp_path, bench_note):
    from xaifast.zoo.efficientnet import EFFICIENTNET_LITE_PREPROCESS as P, efficientnet_lite0

    torch.manual_seed(0)
    x = torch.randn(BATCH * BATCHES, 3, 224, 224)
    path = str(xaifast.export(efficientnet_lite0(), tmp_path / "eff.xml", preprocess=P, example_input=x[:2]))
    request = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
    arrays = [np.ascontiguousarray(b.numpy()) for b in batches]
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")

    def explain_per_batch():
        for b in batches:
            assert len(list(xaifast.explain(path, b, cfg))) == BATCH

    def raw_ir():
        for a in arrays:
            request.infer({0: a})

    times = paired(benchmark, {"explain_per_batch": explain_per_batch, "raw_ir": raw_ir}, ROUNDS)
    for name, t in times.items():
        record_times(GROUP, name, t, BATCH * BATCHES)
    ratios = [a / b for a, b in zip(times["explain_per_batch"], times["raw_ir"])]
    line = (f"explain(path) per batch / raw IR inference: per-round median {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f} .. {max(ratios):.3f}), {len(ratios)} rounds of {BATCHES} batches of {BATCH}")
    print(line)
    bench_note(line)
