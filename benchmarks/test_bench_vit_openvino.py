"""ViT Recipro-CAM at OpenVINO speed: the distinct-token fast path inside the OpenVINO graph, against
plain OpenVINO inference and the PyTorch engine, in one run, on the same model and input.

Models (transformers configs, random init, seed 0, 1000 labels, 224x224, patch 16 -> 14x14 grid):
ViT-B/16 (ViTConfig() defaults: width 768, 12 blocks, 12 heads) and DeiT-S sized
(DeiTForImageClassificationWithTeacher, width 384, 12 blocks, 6 heads, MLP 1536). Batch 8 (one
batch of 8 images), Gaussian mask, CLS token kept, target block 1, ALL 1000 classes, postprocess
off (uint8 low-resolution maps).

Group "vit_openvino_<model>_b8", rows (seconds per call of 8 images):
    openvino_floor_{f32,default}  plain OpenVINO inference of the model (logits-only graph converted
                                  the same way), THROUGHPUT hint, depth+1 async requests (with one
                                  batch of 8 this runs one request: one stream, one core of two)
    openvino_latency_{f32,default}  the same plain model compiled as a user would (default hint,
                                  LATENCY: one stream on every core), one synchronous call
    openvino_best_{f32,default}   per round, the faster of the two plain rows: the reference of the
                                  ratios "engine (or IR) / plain" (goal <= 1.25)
    xaifast_ov_{f32,default}      list(xaifast.explain(model, x, engine="openvino", precision=...))
    xaifast_ir_{f32,default}      list(xaifast.explain(ir, x)), ir = the OpenVINOAdapter of
                                  xaifast.export(model, "vit.xml") at that precision (compiled once)
    xaifast_pytorch               the same with engine="pytorch" (its exact fast path)
"default" = OpenVINO's default CPU precision (bf16 on AVX512-BF16 / AMX machines; precision="auto").
Rows run interleaved round by round (per-round ratios in the summary). Correctness guard (untimed):
the f32 engine and IR maps equal the PyTorch engine's within 1 (uint8), and both graphs are "fast".

Command: XAIFAST_BENCH_SUMMARY=/tmp/vit_ov_summary.txt \\
    .venv/bin/python -P -m pytest benchmarks/test_bench_vit_openvino.py --benchmark-only -s
Rounds: XAIFAST_BENCH_VIT_OV_ROUNDS (default 4).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

import xaifast
from ov_floor import async_floor
from conftest import record_times
from timing import paired

openvino = pytest.importorskip("openvino")
transformers = pytest.importorskip("transformers")
from xaifast.engines import openvino as E  # noqa: E402

BATCH = 8
ROUNDS = int(os.environ.get("XAIFAST_BENCH_VIT_OV_ROUNDS", "4"))
ALL = xaifast.ExplainConfig(target_explain_group="ALL", postprocess=False)


def vit_b16():
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)).eval()


def deit_s():
    torch.manual_seed(0)
    cfg = transformers.DeiTConfig(num_labels=1000, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                  intermediate_size=1536)
    return transformers.DeiTForImageClassificationWithTeacher(cfg).eval()


MODELS = {"vitb16": vit_b16, "deits16": deit_s}


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request, tmp_path_factory, bench_note):
    name = request.param
    folder = tmp_path_factory.mktemp(f"vit_ov_{name}")
    os.environ["XAIFAST_CACHE_DIR"] = str(folder / "cache")
    model = MODELS[name]()
    x = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    E.clear_cache()
    t0 = time.perf_counter()
    first = list(xaifast.explain(model, x, ALL, engine="openvino", precision="f32", batch_size=BATCH))
    bench_note(f"{name}: OpenVINO engine first call (torch.export + convert_model + verify + compile): "
               f"{time.perf_counter() - t0:.1f} s")
    graphs = {entry.meta.get("graph") for entry in E._COMPILED.values()}
    t0 = time.perf_counter()
    ir = xaifast.export(model, folder / "vit.xml", example_input=x[:2])
    bench_note(f"{name}: xaifast.export (IR with the explain graph): {time.perf_counter() - t0:.1f} s")
    meta = json.loads(openvino.Core().read_model(str(ir)).get_rt_info(["model_info", "xaifast"]).astype(str))
    assert graphs == {"fast"} and meta["graph"] == "fast", (graphs, meta.get("graph"))
    ref = list(xaifast.explain(model, x, ALL, engine="pytorch", batch_size=BATCH))
    from_ir = list(xaifast.explain(ir, x, ALL, precision="f32", batch_size=BATCH))
    for got in (first, from_ir):
        for a, b in zip(got, ref):
            for k in (0, 321, 999):
                assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1
    from xaifast.exporter import LogitsOnly, to_openvino

    with torch.no_grad():
        program = torch.export.export(LogitsOnly(model).eval(), (x[:2],),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                                      strict=False)
    plain = to_openvino(program, ["logits"])
    core = openvino.Core()
    floors = {p: core.compile_model(plain, "CPU", E._compile_config(p, None)) for p in ("f32", "auto")}
    latency = {p: core.compile_model(plain, "CPU", {"INFERENCE_PRECISION_HINT": "f32"} if p == "f32" else {})
               for p in ("f32", "auto")}
    from xaifast.engines.exported import OpenVINOAdapter

    irs = {p: OpenVINOAdapter(ir, precision=p) for p in ("f32", "auto")}  # compiled once, as the floors
    return dict(name=name, model=model, x=x, irs=irs, floors=floors, latency=latency)


def floor_fn(compiled, x: np.ndarray):
    return async_floor(compiled, x, BATCH)


def latency_fn(compiled, x: np.ndarray):
    request = compiled.create_infer_request()

    def run():
        for i in range(0, x.shape[0], BATCH):
            request.infer({0: x[i:i + BATCH]}, share_inputs=True)
            request.get_output_tensor(0).data.copy()

    return run


def explain_fn(model, x, **kw):
    def run():
        count = sum(1 for _ in xaifast.explain(model, x, ALL, batch_size=BATCH, **kw))
        assert count == x.shape[0]

    return run


def test_vit_openvino_engine_vs_floor_and_pytorch(benchmark, setup):
    model, x, irs = setup["model"], setup["x"], setup["irs"]
    group = f"vit_openvino_{setup['name']}_b{BATCH}"
    xs = np.ascontiguousarray(x.numpy())
    fns = {"openvino_floor_f32": floor_fn(setup["floors"]["f32"], xs),
           "xaifast_ov_f32": explain_fn(model, x, engine="openvino", precision="f32"),
           "xaifast_ir_f32": explain_fn(irs["f32"], x),
           "openvino_latency_f32": latency_fn(setup["latency"]["f32"], xs),
           "openvino_floor_default": floor_fn(setup["floors"]["auto"], xs),
           "openvino_latency_default": latency_fn(setup["latency"]["auto"], xs),
           "xaifast_ov_default": explain_fn(model, x, engine="openvino", precision="auto"),
           "xaifast_ir_default": explain_fn(irs["auto"], x),
           "xaifast_pytorch": explain_fn(model, x, engine="pytorch")}
    times = paired(benchmark, fns, ROUNDS)
    for p in ("f32", "default"):  # per round, the faster plain pipeline
        times[f"openvino_best_{p}"] = [min(a, b) for a, b in zip(times[f"openvino_floor_{p}"],
                                                                  times[f"openvino_latency_{p}"])]
    for name, t in times.items():
        record_times(group, name, t, BATCH)
    record_times(group, "paired_rounds", [0.0], BATCH, paired=times)
