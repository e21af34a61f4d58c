"""Explaining through the exported OpenVINO IR vs the PyTorch CPU path, one run, same model
and input (ResNet-50-sized, 224x224, batch 16, ALL 1000 classes, uint8 maps).

Rows: plain PyTorch forward (the PyTorch floor), xaifast explain on the PyTorch model, plain
OpenVINO inference of the logits-only IR (the OpenVINO floor), xaifast explain on the IR with
explain outputs at f32 and at the CPU's default precision (bf16 on AVX512-BF16 machines).
The ratio table is printed at the end of the session (benchmarks/conftest.py). Correctness guard (untimed): IR f32 maps == PyTorch maps
within 1.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xaifast

from models import benchmark_input, resnet50_sized

openvino = pytest.importorskip("openvino")
GROUP = "explain_ir_vs_pytorch_resnet50_b16"
BATCH = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = resnet50_sized()
    x = benchmark_input(BATCH)
    folder = tmp_path_factory.mktemp("export")
    ir = xaifast.export(model, folder / "explain.xml", explain=True, example_input=x[:2])
    plain = xaifast.export(model, folder / "plain.xml", explain=False, example_input=x[:2])
    core = openvino.Core()
    plain_f32 = core.compile_model(core.read_model(str(plain)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    plain_auto = core.compile_model(core.read_model(str(plain)), "CPU")
    return model, x, ir, plain_f32, plain_auto


def explain_all(model, x, **kw):
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    return list(xaifast.explain(model, x, cfg, batch_size=BATCH, **kw))


@pytest.fixture
def run(benchmark, bench_record):
    def go(name, fn, rounds=5):
        fn()  # warm-up (first-call setup: graph cut, compile)
        benchmark.group = GROUP
        benchmark.pedantic(fn, rounds=rounds, iterations=1)
        bench_record(benchmark, GROUP, name, BATCH)
    return go


def test_pytorch_forward(benchmark, run, setup):
    model, x, *_ = setup
    with torch.no_grad():
        run("pytorch_forward", lambda: model(x))


def test_pytorch_explain(benchmark, run, setup):
    model, x, *_ = setup
    run("pytorch_explain", lambda: explain_all(model, x))


def test_openvino_forward_f32(benchmark, run, setup):
    *_, plain_f32, _ = setup
    xs = setup[1].numpy()
    run("openvino_forward_f32", lambda: plain_f32(xs))


def test_openvino_forward_default_precision(benchmark, run, setup):
    xs = setup[1].numpy()
    run("openvino_forward_default", lambda: setup[4](xs))


def test_ir_explain_f32(benchmark, run, setup):
    model, x, ir, *_ = setup
    from xaifast.engines.exported import OpenVINOAdapter

    adapter = OpenVINOAdapter(ir, precision="f32")
    ir_maps, pt_maps = explain_all(adapter, x), explain_all(model, x)
    for a, b in zip(ir_maps, pt_maps):  # correctness guard: same maps within 1
        for k in (0, 500, 999):
            assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1
    run("ir_explain_f32", lambda: explain_all(adapter, x))


def test_ir_explain_default_precision(benchmark, run, setup):
    _, x, ir, *_ = setup
    from xaifast.engines.exported import OpenVINOAdapter

    adapter = OpenVINOAdapter(ir, precision="auto")
    run("ir_explain_default", lambda: explain_all(adapter, x))
