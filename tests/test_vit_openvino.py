"""ViT Recipro-CAM inside the OpenVINO graph: the exact distinct-token fast path as static ops.

- `FastGraph` (the graph's fast path, eager) equals the float64 loop reference on every family
  the PyTorch fast path supports, both masks, cls_token on and off, k = 1, 2 (float64, 1e-9): in
  tests/test_vit_models.py, next to the PyTorch paths.
- The OpenVINO engine (`engine="openvino"`) and an exported IR (`xaifast.export`) hold the fast
  graph (engine cache meta / IR rt_info say "fast"), and their maps equal the PyTorch engine's:
  raw float32 maps within 1e-4 relative, uint8 maps within 1, on several batch sizes served by one
  converted model (dynamic batch). Models with position-dependent attention keep the naive graph,
  with the PyTorch path's warning, and still equal the PyTorch engine.

Weights are re-drawn with a larger spread (random-init transformers give near-constant maps whose
uint8 levels float32 rounding alone can move).
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xaifast
from test_vit_models import ZOO, build, rel_err
from xaifast.adapters.vit import ViTAdapter
from xaifast.algorithms.vit_recipro_cam import FastGraph
from xaifast.engines import openvino as E
from xaifast.engines.openvino import OpenVINOEngine

ov = pytest.importorskip("openvino")
pytest.importorskip("transformers")

NAIVE_WARNING = "vit_recipro_cam. the exact fast path does not apply"


def spread(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights with a real dynamic range: Linear / Conv ~ N(0, 1/fan_in), biases and tokens ~ N(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))
        for name, p in model.named_parameters():
            if any(key in name for key in ("cls_token", "dist_token", "distillation_token", "reg_token",
                                           "register_tokens", "pos_embed", "position_embeddings")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def family(name: str, dtype=torch.float32):
    model, size, rest_maker, grid, aux, fast = build(name, dtype)
    return spread(model), size


# ----------------------------------------------------------------------------- the graph, eager
# (FastGraph against the float64 loop reference: tests/test_vit_models.py)
def test_fast_graph_refuses_models_without_the_fast_path():
    model, size, *_ = build("timm_style_position_bias_param")
    adapter = ViTAdapter(model)
    feature, _ = adapter.forward(torch.randn(1, 3, *size, dtype=torch.float64))
    with pytest.raises(xaifast.errors.ModelSplitError, match="fast path does not apply.*rel_bias"):
        FastGraph(adapter.rest(), feature.grid, feature.num_aux)


# ----------------------------------------------------------------------------- the OpenVINO engine
# name -> (mask, cls_token, target_block): every family once, the settings rotated over them
ENGINE_CASES = {
    "builtin_cls_registers": ("gaussian", True, 1),
    "builtin_avg_no_cls": ("1x1", True, 2),
    "builtin_dist_token": ("1x1", False, 1),
    "hf_vit": ("gaussian", False, 2),
    "hf_deit_with_teacher": ("gaussian", True, 1),
    "timm_style": ("1x1", True, 2),
    "timm_style_max_pool": ("gaussian", True, 1),
    "timm_style_qk_norm": ("gaussian", True, 1),  # a key norm: the last block's attention on the mosaic
    "timm_style_position_bias_param": ("gaussian", True, 1),  # naive graph
}


def _compiled_graphs(model) -> set:
    return {entry.meta.get("graph") for entry in E._COMPILED.values()
            if E.weights_digest(model) in repr(entry.meta.get("key"))}


def _explain(model, x, engine, batch_size, mask, cls_token, k, normalize):
    cfg = xaifast.ExplainConfig(target_explain_group="ALL", mask=mask)
    run_kwargs = None if normalize else dict(normalize=False)
    return xaifast.explain(model, x, cfg, engine=engine, batch_size=batch_size, cls_token=cls_token,
                           target_block=k, _run_kwargs=run_kwargs)


def _assert_u8_within_one(got, ref):
    assert [e.source for e in got] == [e.source for e in ref]
    for a, b in zip(got, ref):
        assert a.predicted == b.predicted
        assert list(a.saliency_map) == list(b.saliency_map)
        for c in a.saliency_map:
            diff = np.abs(a.saliency_map[c].astype(int) - b.saliency_map[c].astype(int)).max()
            assert diff <= 1, (a.source, c, diff)


@pytest.mark.parametrize("name", sorted(ENGINE_CASES))
def test_openvino_engine_equals_pytorch_engine(name, tmp_path, monkeypatch):
    monkeypatch.setenv("XAIFAST_CACHE_DIR", str(tmp_path))
    mask, cls_token, k = ENGINE_CASES[name]
    model, size = family(name)
    fast = ZOO[name][4]
    before = E.STATS["conversions"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n, batch_size in ((5, 2), (3, 3)):  # batches of 2, 2, 1, 3: one converted model
            x = torch.randn(n, 3, *size)
            run = _explain(model, x, "openvino", batch_size, mask, cls_token, k, normalize=False)
            assert isinstance(run.engine, OpenVINOEngine)
            got = run.raw_maps()
            assert run.engine.engine == "openvino"
            ref = _explain(model, x, "pytorch", batch_size, mask, cls_token, k, normalize=False).raw_maps()
            assert rel_err(got, ref) <= 1e-4, (name, n, batch_size)
            _assert_u8_within_one(list(_explain(model, x, "openvino", batch_size, mask, cls_token, k, True)),
                                  list(_explain(model, x, "pytorch", batch_size, mask, cls_token, k, True)))
    assert E.STATS["conversions"] - before == 1
    assert _compiled_graphs(model) == {"fast" if fast else "naive"}
    warned = [w for w in caught if "fast path does not apply" in str(w.message)]
    assert bool(warned) == (not fast)


def test_use_fast_path_false_gives_the_naive_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIFAST_CACHE_DIR", str(tmp_path))
    model, size = family("builtin_2x2_grid")
    x = torch.randn(2, 3, *size)
    got = xaifast.saliency_maps(model, x, engine="openvino", use_fast_path=False)
    ref = xaifast.saliency_maps(model, x, engine="pytorch")
    assert rel_err(got, ref) <= 1e-4
    assert _compiled_graphs(model) == {"naive"}
    xaifast.saliency_maps(model, x, engine="openvino")
    assert _compiled_graphs(model) == {"naive", "fast"}


# ----------------------------------------------------------------------------- exported IR
def _meta(path):
    return json.loads(ov.Core().read_model(str(path)).get_rt_info(["model_info", "xaifast"]).astype(str))


EXPORT_CASES = {  # name -> (target layer (k), cls_token)
    "hf_deit_with_teacher": (None, True),
    "builtin_cls_registers": ("blocks.1", False),
    "timm_style_max_pool": (None, True),
    "timm_style_position_bias_computed": (None, True),  # naive graph
}


@pytest.mark.parametrize("name", sorted(EXPORT_CASES))
def test_exported_ir_holds_the_fast_graph_and_equals_pytorch(name, tmp_path):
    target_layer, cls_token = EXPORT_CASES[name]
    model, size = family(name)
    fast = ZOO[name][4]
    pre = xaifast.Preprocess(input_size=size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = xaifast.export(model, tmp_path / "vit.xml", target_layer=target_layer, preprocess=pre,
                              cls_token=cls_token)
    assert bool([w for w in caught if "fast path does not apply" in str(w.message)]) == (not fast)
    meta = _meta(path)
    assert meta["graph"] == ("fast" if fast else "naive") and meta["cls_token"] == cls_token
    assert meta["algorithm"] == "vit_recipro_cam" and meta["mask"] == "gaussian"
    k = 1 if target_layer is None else len(list(model.blocks)) - int(target_layer.split(".")[1])
    for n, batch_size in ((1, 1), (5, 2), (3, 3)):  # dynamic batch in the IR
        x = torch.randn(n, 3, *size)
        cfg = xaifast.ExplainConfig(target_explain_group="ALL")
        got = list(xaifast.explain(path, x, cfg, batch_size=batch_size))
        ref = list(xaifast.explain(model, x, cfg, engine="pytorch", batch_size=batch_size, cls_token=cls_token,
                                   target_block=k))
        _assert_u8_within_one(got, ref)
    assert ov.Core().read_model(str(path)).inputs[0].get_partial_shape()[0].is_dynamic


def _runtime(compiled) -> list:
    """(layer type, runtime precision) of each node the compiled model runs."""
    out = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        get = lambda key: info[key].astype(str) if key in info else ""  # noqa: E731
        out.append((get("layerType"), get("runtimePrecision")))
    return out


def _f32_adds(compiled) -> int:
    """Elementwise nodes (the residual adds among them) the compiled model runs in f32."""
    return sum(1 for kind, precision in _runtime(compiled) if kind == "Eltwise" and precision == "f32")


def test_exported_ir_runs_only_the_outputs_it_needs(tmp_path):
    """Explaining an IR runs the graph with logits and saliency_map alone; the feature map is
    computed only for class-agnostic maps. Asked for at bf16, a transformer's f32 feature_map
    would keep its residual stream in f32 (OpenVINO keeps f32 from an f32 output back to the last
    matmul); without it the adds run in bf16."""
    from xaifast.engines.exported import OpenVINOAdapter
    from xaifast.engines.scorer import _logits_only

    model, size = family("hf_deit_with_teacher")
    path = xaifast.export(model, tmp_path / "vit.xml", preprocess=xaifast.Preprocess(input_size=size))
    x = torch.randn(2, 3, *size)
    adapter = OpenVINOAdapter(path, precision="auto")
    names = lambda: [o.get_any_name() for o in adapter.compiled.outputs]  # noqa: E731
    logits, maps = adapter.explain_batch(x, "vit_recipro_cam")
    assert names() == ["logits", "saliency_map"] and maps.normalized.dtype == torch.uint8
    pruned = adapter.compiled
    _, agnostic = adapter.explain_batch(x, "activationmap")
    assert names() == ["logits", "feature_map"] and agnostic.raw is not None
    out = adapter.infer(x)
    assert sorted(out) == ["feature_map", "logits", "saliency_map"]
    np.testing.assert_array_equal(out["saliency_map"].shape, maps.normalized.shape)
    full = adapter.compiled
    if any(precision == "bf16" for _, precision in _runtime(full)):  # a CPU that runs bf16
        assert _f32_adds(pruned) < _f32_adds(full), (_f32_adds(pruned), _f32_adds(full))
    # a scorer of the IR computes the logits alone
    assert [o.get_any_name() for o in _logits_only(ov.Core().read_model(str(path))).outputs] == ["logits"]
    f32 = OpenVINOAdapter(path, precision="f32")
    ref, _ = f32.explain_batch(x, "vit_recipro_cam")
    from xaifast.engines.scorer import as_scorer

    torch.testing.assert_close(as_scorer(str(path), score="none")(x), ref, rtol=1e-4, atol=1e-4)
