"""Export with explain outputs, and explaining the exported IR / ONNX: same maps as PyTorch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import xaifast
from xaifast.zoo import ConvHeadCNN, SmallCNN

ov = pytest.importorskip("openvino")


def maps_of(model, x, batch_size, **kw):
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    return [e for e in xaifast.explain(model, x, cfg, batch_size=batch_size, **kw)]


def assert_same_explanations(a, b):
    assert [e.source for e in a] == [e.source for e in b]
    for ea, eb in zip(a, b):
        assert ea.predicted == eb.predicted
        np.testing.assert_allclose(ea.prediction, eb.prediction, rtol=1e-4, atol=1e-5)
        assert list(ea.saliency_map) == list(eb.saliency_map)
        for k in ea.saliency_map:
            diff = np.abs(ea.saliency_map[k].astype(int) - eb.saliency_map[k].astype(int)).max()
            assert diff <= 1, (ea.source, k, diff)


CASES = [(SmallCNN, None, ".xml"), (SmallCNN, None, ".onnx"), (ConvHeadCNN, "features", ".xml"),
         (ConvHeadCNN, "features", ".onnx")]


@pytest.mark.parametrize("make,target,suffix", CASES, ids=["gap-ir", "gap-onnx", "convhead-ir", "convhead-onnx"])
def test_exported_maps_equal_pytorch_maps(tmp_path, make, target, suffix):
    model = make(num_classes=6).eval()
    pre = xaifast.Preprocess(input_size=(48, 40))
    path = xaifast.export(model, tmp_path / f"m{suffix}", explain=True, target_layer=target, preprocess=pre,
                          labels=list("abcdef"))
    for n, batch_size in ((1, 1), (5, 2), (4, 4)):  # dynamic batch
        x = torch.randn(n, 3, 48, 40)
        assert_same_explanations(maps_of(path, x, batch_size), maps_of(model, x, batch_size, target_layer=target))
    run = list(xaifast.explain(path, torch.randn(2, 3, 48, 40), xaifast.ExplainConfig(target_explain_group="IMAGE")))
    assert all(list(e.saliency_map) == ["image"] for e in run)


class MLPHeadCNN(torch.nn.Module):
    """GAP then a two-layer MLP: not affine after pooling (the cell logits need the general head)."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = SmallCNN(num_classes=num_classes).features
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                              torch.nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def test_affine_head_detection():
    from torch import nn

    from xaifast.adapters.classifier import ClassifierAdapter
    from xaifast.adapters.head_graph import affine_after_gap

    lin = nn.Linear(8, 3)
    assert affine_after_gap(lin)[0] is lin.weight
    assert affine_after_gap(nn.Sequential(nn.Flatten(), nn.Dropout(0.2), lin))[1] is lin.bias
    assert affine_after_gap(nn.Sequential(nn.Flatten(), lin, nn.ReLU())) is None
    assert affine_after_gap(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))) is None
    assert affine_after_gap(lambda t: t) is None
    for model, affine in ((SmallCNN(num_classes=4).eval(), True), (MLPHeadCNN().eval(), False)):
        adapter = ClassifierAdapter(model)
        feature, _ = adapter.forward(torch.randn(2, 3, 32, 32))
        head = adapter.head(feature)
        assert head.after_gap is not None
        found = affine_after_gap(head.after_gap)
        assert (found is not None) == affine
        if affine:
            assert found[0] is model.classifier.weight and found[1] is model.classifier.bias


@pytest.mark.parametrize("mask", ["1x1", "gaussian"])
def test_affine_cell_logits_equal_the_general_head(mask):
    """The 1x1-convolution cell logits of an affine head = the head applied to every pooled cell."""
    from xaifast.exporter import ExplainGraph
    from xaifast.adapters.classifier import ClassifierAdapter

    torch.manual_seed(0)
    model = SmallCNN(num_classes=7).double().eval()
    adapter = ClassifierAdapter(model)
    x = torch.randn(3, 3, 40, 48, dtype=torch.float64)
    feature, _ = adapter.forward(x)
    graph = ExplainGraph(model, adapter.target.name, adapter.target.call_index, adapter.head(feature),
                         tuple(feature.shape), mask=mask, raw_maps=True).eval()
    assert graph.cell_affine
    with torch.no_grad():
        logits, fast, fmap = graph(x)
        graph.cell_affine = False
        _, general, _ = graph(x)
    assert fast.shape == (3, 7, 5, 6) and fast.dtype == torch.float64
    torch.testing.assert_close(fast, general, rtol=1e-12, atol=1e-12)
    reference = xaifast.saliency_maps(model, x, mask=mask, engine="pytorch")
    torch.testing.assert_close(fast.float(), reference.float(), rtol=1e-5, atol=1e-6)
    # a Linear that is not one of the model's own modules (a copy): held by the graph itself
    from copy import deepcopy

    from xaifast.adapters.head_graph import Head

    head = adapter.head(feature)
    other = ExplainGraph(model, adapter.target.name, adapter.target.call_index,
                         Head(full=head.full, after_gap=deepcopy(model.classifier), gap_keepdim=False),
                         tuple(feature.shape), mask=mask, raw_maps=True).eval()
    assert other.cell_affine and other.cell_names == (None, None)
    with torch.no_grad():
        torch.testing.assert_close(other(x)[1], fast, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("suffix", [".xml", ".onnx"])
def test_exported_mlp_head_maps_equal_pytorch_maps(tmp_path, suffix):
    torch.manual_seed(1)
    model = MLPHeadCNN().eval()
    pre = xaifast.Preprocess(input_size=(32, 40))
    path = xaifast.export(model, tmp_path / f"m{suffix}", preprocess=pre)
    x = torch.randn(3, 3, 32, 40)
    assert_same_explanations(maps_of(path, x, 2), maps_of(model, x, 2))


def test_metadata_and_outputs(tmp_path):
    model = SmallCNN(num_classes=3).eval()
    cfg = xaifast.ExplainConfig(target_explain_group="PREDICTIONS", algorithm="activationmap")
    path = xaifast.export(model, tmp_path / "m.xml", config=cfg, preprocess=xaifast.Preprocess(input_size=(32, 32)))
    m = ov.Core().read_model(str(path))
    assert [o.get_any_name() for o in m.outputs] == ["logits", "saliency_map", "feature_map"]
    assert m.inputs[0].get_partial_shape()[0].is_dynamic
    meta = json.loads(m.get_rt_info(["model_info", "xaifast"]).astype(str))
    assert meta["algorithm"] == "activationmap" and meta["target_explain_group"] == "PREDICTIONS"
    assert meta["input_size"] == [32, 32] and meta["target_layer"] == "features"
    exs = list(xaifast.explain(path, torch.randn(2, 3, 32, 32)))
    assert all(list(e.saliency_map) == ["image"] and e.saliency_map["image"].shape == (4, 4) for e in exs)


def test_exported_model_is_opened_once_per_file_and_options(tmp_path):
    """explain(path, batch) from a caller's loop reads and compiles the file once; a changed file, or
    other options, get their own adapter; threads may share one."""
    from concurrent.futures import ThreadPoolExecutor

    from xaifast.engines import make_adapter

    torch.manual_seed(5)
    model = SmallCNN(num_classes=3).eval()
    pre = xaifast.Preprocess(input_size=(32, 32))
    path = xaifast.export(model, tmp_path / "m.xml", preprocess=pre)
    first = make_adapter(str(path))
    assert make_adapter(str(path)) is first and make_adapter(path) is first
    assert make_adapter(str(path), precision="bf16") is not first
    assert make_adapter(str(path), labels=["a", "b", "c"]) is not first
    x = torch.randn(6, 3, 32, 32)
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    want = [dict(e.saliency_map) for e in xaifast.explain(str(path), x, cfg)]
    with ThreadPoolExecutor(3) as pool:  # one shared adapter, one infer request at a time
        runs = list(pool.map(lambda i: [dict(e.saliency_map) for e in xaifast.explain(str(path), x, cfg)], range(6)))
    for got in runs:
        for a, b in zip(got, want):
            assert all(np.array_equal(a[k], b[k]) for k in b)
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)
    xaifast.export(model, path, preprocess=pre)  # the same path, new weights: opened again
    again = make_adapter(str(path))
    assert again is not first
    new = [dict(e.saliency_map) for e in xaifast.explain(str(path), x, cfg)]
    assert any(not np.array_equal(a[k], b[k]) for a, b in zip(new, want) for k in b)


def test_export_without_explain_is_explained_white_box_and_clear_errors(tmp_path):
    model = SmallCNN(num_classes=3).eval()
    path = xaifast.export(model, tmp_path / "plain.xml", explain=False, preprocess=xaifast.Preprocess(input_size=(32, 32)))
    assert [o.get_any_name() for o in ov.Core().read_model(str(path)).outputs] == ["logits"]
    x = torch.randn(2, 3, 32, 32)  # Recipro-CAM inserted into the graph (tests/test_foreign_models.py)
    torch.testing.assert_close(xaifast.saliency_maps(path, x), xaifast.saliency_maps(model, x, engine="pytorch"),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(xaifast.XaifastError, match="eigencam"):
        xaifast.export(model, tmp_path / "e.xml", config=xaifast.ExplainConfig(algorithm="eigencam"))
    with pytest.raises(xaifast.XaifastError, match=".xml"):
        xaifast.export(model, tmp_path / "m.pt")


@pytest.mark.slow
def test_efficientnet_ir_parity(tmp_path, efficientnet, skimage_data):
    from xaifast.zoo.efficientnet import EFFICIENTNET_LITE_PREPROCESS, imagenet_labels

    path = xaifast.export(efficientnet, tmp_path / "eff.xml", preprocess=EFFICIENTNET_LITE_PREPROCESS,
                          labels=imagenet_labels())
    photos = [os.path.join(skimage_data, n) for n in ("coffee.png", "chelsea.png", "astronaut.png")]
    cfg = xaifast.ExplainConfig(target_explain_group="PREDICTIONS")
    for bs in (1, 3):
        ir = list(xaifast.explain(path, photos, cfg, batch_size=bs))
        pt = list(xaifast.explain(efficientnet, photos, cfg, batch_size=bs, preprocess=EFFICIENTNET_LITE_PREPROCESS))
        assert_same_explanations(ir, pt)
    assert ir[0].predicted == [967] and ir[0].labels == {967: "espresso"}


def test_cli_export_then_explain_the_ir(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "w.pth"
    torch.save(SmallCNN(num_classes=10).state_dict(), ckpt)
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    for i in range(3):
        cv2.imwrite(str(images / f"im{i}.png"), (np.random.default_rng(i).random((70, 90, 3)) * 255).astype(np.uint8))
    cli = [sys.executable, "-P", "-m", "xaifast.cli"]
    work = tmp_path / "work"
    proc = subprocess.run(cli + ["export", "--config", "small_cnn", "--checkpoint", str(ckpt), "--explain", "True",
                                 "--work_dir", str(work)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ir = work / ".latest" / "exported_model.xml"
    assert ir.is_file() and str(ir.resolve()) in proc.stdout.replace(str(ir), str(ir.resolve()))
    runs = {}
    for name, model_args in (("ir", ["--checkpoint", str(ir)]), ("pt", ["--config", "small_cnn", "--checkpoint", str(ckpt)])):
        proc = subprocess.run(cli + ["explain", *model_args, "--data_root", str(images), "--work_dir", str(tmp_path / name),
                                     "--explain_config.target_explain_group", "PREDICTIONS"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        runs[name] = tmp_path / name / ".latest" / "explain"
    files = sorted(os.listdir(runs["pt"] / "saliency_maps"))
    assert sorted(os.listdir(runs["ir"] / "saliency_maps")) == files and len(files) == 6
    from xaifast.postprocess import jet_lut

    jet = jet_lut().astype(int)
    jet_step = np.abs(np.diff(jet, axis=0)).max()  # largest change of a JET colour per map level
    for f in files:
        a = cv2.imread(str(runs["ir"] / "saliency_maps" / f), cv2.IMREAD_UNCHANGED).astype(int)
        b = cv2.imread(str(runs["pt"] / "saliency_maps" / f), cv2.IMREAD_UNCHANGED).astype(int)
        if f.endswith("saliency_map.png"):
            assert a.shape == (8, 8) and np.abs(a - b).max() <= 1, f  # the maps themselves: within 1
        else:  # overlays: a map level apart moves the JET colour by at most jet_step, times alpha
            assert np.abs(a - b).max() <= np.ceil(0.5 * jet_step) + 1, f
    index = json.loads((runs["ir"] / "index.json").read_text())
    assert index["images"][0]["predictions"][0]["label"] in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                            "frog", "horse", "ship", "truck")


def _hf_deit():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    # initializer_range: weights large enough that maps have a real dynamic range (the default 0.02 gives
    # near-constant maps, range ~1e-5, where float32 rounding alone moves uint8 levels)
    cfg = DeiTConfig(num_labels=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=32, patch_size=8, initializer_range=0.3)
    return DeiTForImageClassificationWithTeacher(cfg).eval()


def _hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(num_labels=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8, initializer_range=0.3)
    return ViTForImageClassification(cfg).eval()


def _small_vit():
    from xaifast.zoo.vit import small_vit

    return small_vit(num_classes=5, img_size=(64, 48))


@pytest.mark.parametrize("make,size,suffix", [(_small_vit, (64, 48), ".xml"), (_hf_vit, (32, 32), ".onnx"),
                                              (_hf_deit, (32, 32), ".xml")], ids=["small-vit-ir", "hf-vit-onnx",
                                                                                   "hf-deit-ir"])
def test_exported_vit_maps_equal_pytorch_maps(tmp_path, make, size, suffix):
    model = make()
    path = xaifast.export(model, tmp_path / f"vit{suffix}", preprocess=xaifast.Preprocess(input_size=size))
    meta_kind = "transformer"
    for n, batch_size in ((1, 1), (3, 2)):
        x = torch.randn(n, 3, *size)
        assert_same_explanations(maps_of(path, x, batch_size), maps_of(model, x, batch_size))
    if suffix == ".xml":
        meta = json.loads(ov.Core().read_model(str(path)).get_rt_info(["model_info", "xaifast"]).astype(str))
        assert meta["model_type"] == meta_kind and meta["algorithm"] == "vit_recipro_cam" and meta["mask"] == "gaussian"
