"""Hierarchical / windowed transformers (Hugging Face Swin and Swinv2, random weights, and a small
look-alike written here): Recipro-CAM on the last stage's token grid, the final norm's output read
as [C, H, W] (SPEC.md's CNN semantics), against a float64 loop reference that masks the norm's
tokens cell by cell and runs the whole model again."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import xaifast
from reference import mask_at, normalize_reference, score

transformers = pytest.importorskip("transformers")

SIZE = (40, 56)  # not a multiple of the windows: HF Swin pads; grid 10x14 -> 5x7 after one merge


def _hf(name: str) -> nn.Module:
    torch.manual_seed(1234)
    if name == "swin":
        config = transformers.SwinConfig(image_size=64, patch_size=4, window_size=4, depths=[1, 1], num_heads=[2, 2],
                                         embed_dim=16, num_labels=6)
        return transformers.SwinForImageClassification(config).eval()
    config = transformers.Swinv2Config(image_size=64, patch_size=4, window_size=4, depths=[1, 1], num_heads=[2, 2],
                                       embed_dim=16, num_labels=6)
    return transformers.Swinv2ForImageClassification(config).eval()


class _Block(nn.Module):
    """A pre-norm transformer block with timm's member names."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyHierarchical(nn.Module):
    """Two stages (patch embedding, blocks, 2x2 patch merging, blocks), a final norm, the mean of
    the tokens and a linear head: not Hugging Face's code, same shape."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.stage1 = nn.ModuleList([_Block(16)])
        self.merge = nn.Linear(64, 32)
        self.stage2 = nn.ModuleList([_Block(32), _Block(32)])
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        f = self.patch(x)
        b, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)
        for blk in self.stage1:
            t = blk(t)
        g = t.reshape(b, h, w, c)
        g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], dim=-1)
        t = self.merge(g.reshape(b, (h // 2) * (w // 2), 4 * c))
        for blk in self.stage2:
            t = blk(t)
        return self.fc(self.norm(t).mean(dim=1))


MODELS = {"swin": (lambda: _hf("swin"), "swin.layernorm", (5, 7)),
          "swinv2": (lambda: _hf("swinv2"), "swinv2.layernorm", (5, 7)),
          "tiny": (TinyHierarchical, "norm", (5, 7))}
_BUILT = {}


def model_of(name):
    """One instance per model for the whole module (its head split is cached with it)."""
    if name not in _BUILT:
        torch.manual_seed(99)
        model = MODELS[name][0]().eval()
        with torch.no_grad():  # freshly built norms are the identity (weight 1, bias 0): make them count
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(1 + 0.5 * torch.randn_like(m.weight))
                    m.bias.copy_(0.2 * torch.randn_like(m.bias))
        _BUILT[name] = model
    return _BUILT[name]


def reference_maps(model, norm_name, grid, x, mask="1x1", kind="none"):
    """float64: for every image and cell p, the final norm's tokens T (row-major grid cells) become
    T * m_p (cell-wise mask), the model finishes its forward pass from there, S[k, p] = score(logits)[k]."""
    m64 = copy.deepcopy(model).double().eval()
    norm = m64.get_submodule(norm_name)
    h, w = grid
    state = {}

    def hook(_module, _args, out):
        if "mask" in state:
            return out * state["mask"].reshape(1, h * w, 1)
        return None

    handle = norm.register_forward_hook(hook)
    x64 = x.double()
    out = None
    try:
        with torch.no_grad():
            for b in range(x.shape[0]):
                for i in range(h):
                    for j in range(w):
                        state["mask"] = mask_at(h, w, i, j, mask)
                        logits = xaifast.adapters.extract_logits(m64(x64[b:b + 1]))
                        s = score(logits, kind)[0]
                        if out is None:
                            out = torch.zeros(x.shape[0], s.shape[0], h, w, dtype=torch.float64)
                        out[b, :, i, j] = s
    finally:
        handle.remove()
    return out


def assert_close_to_reference(raw, ref):
    assert raw.shape == ref.shape
    scale = float(ref.abs().max())
    err = float((raw.double() - ref).abs().max()) / scale
    assert err < 2e-5, err


@pytest.mark.parametrize("name", ["swin", "swinv2", "tiny"])
def test_auto_picks_recipro_cam_on_the_token_grid(name):
    from xaifast.adapters.token_grid import TokenGridAdapter, is_token_grid_model
    from xaifast.adapters.vit import is_transformer
    from xaifast.engines import make_adapter

    model = model_of(name)
    _, norm_name, grid = MODELS[name]
    assert is_token_grid_model(model) and is_transformer(model)  # transformer blocks, but not a ViT
    adapter = make_adapter(model)
    assert isinstance(adapter, TokenGridAdapter) and adapter.kind == "cnn_classifier"
    feature, logits = adapter.forward(torch.randn(2, 3, *SIZE))
    assert adapter.target.name == norm_name
    assert tuple(feature.shape[2:]) == grid
    head = adapter.head(feature)
    assert head.after_gap is not None  # the head is pooling then a linear layer: the GAP shortcut applies
    torch.testing.assert_close(head(feature), logits, rtol=1e-5, atol=1e-5)
    pooled = feature.mean(dim=(2, 3))
    torch.testing.assert_close(head.pooled(pooled), logits, rtol=1e-5, atol=1e-5)
    from xaifast.adapters.head_graph import affine_after_gap

    weight, _ = affine_after_gap(head.after_gap)
    assert weight.shape == (logits.shape[1], feature.shape[1])


@pytest.mark.parametrize("name", ["swin", "swinv2", "tiny"])
def test_maps_equal_the_float64_loop_reference(name):
    model = model_of(name)
    _, norm_name, grid = MODELS[name]
    x = torch.randn(3, 3, *SIZE)
    ref = reference_maps(model, norm_name, grid, x)  # score "none": the default for Recipro-CAM
    assert_close_to_reference(xaifast.saliency_maps(model, x), ref)
    explained = list(xaifast.explain(model, x, xaifast.ExplainConfig(target_explain_group="ALL"), batch_size=2))
    want = normalize_reference(ref.numpy())
    for b, ex in enumerate(explained):
        assert sorted(ex.saliency_map) == list(range(ref.shape[1]))
        for k, m in ex.saliency_map.items():
            assert m.shape == grid
            assert np.abs(m.astype(int) - want[b, k].astype(int)).max() <= 1
    with torch.no_grad():
        logits = xaifast.adapters.extract_logits(model(x))
    predictions = list(xaifast.explain(model, x, xaifast.ExplainConfig(target_explain_group="PREDICTIONS"),
                                       batch_size=2))
    for b, ex in enumerate(predictions):
        k = int(logits[b].argmax())
        assert list(ex.saliency_map) == [k]
        assert np.abs(ex.saliency_map[k].astype(int) - want[b, k].astype(int)).max() <= 1


def test_gaussian_mask_and_softmax_on_swin():
    model = model_of("swin")
    _, norm_name, grid = MODELS["swin"]
    x = torch.randn(2, 3, *SIZE)
    ref = reference_maps(model, norm_name, grid, x, mask="gaussian", kind="softmax")
    assert_close_to_reference(xaifast.saliency_maps(model, x, mask="gaussian", score="softmax"), ref)


def test_vit_recipro_cam_on_swin_says_what_applies():
    with pytest.raises(xaifast.XaifastError, match="recipro_cam"):
        xaifast.saliency_maps(model_of("swin"), torch.randn(1, 3, *SIZE), algorithm="vit_recipro_cam")


def test_class_agnostic_maps_use_the_token_grid():
    model = model_of("swinv2")
    _, norm_name, grid = MODELS["swinv2"]
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        tokens = []
        handle = model.get_submodule(norm_name).register_forward_hook(lambda m, a, o: tokens.append(o))
        model(x)
        handle.remove()
    h, w = grid
    act = tokens[0].double().mean(dim=2).reshape(2, h, w)  # cell (i, j) = token i*w + j
    run = list(xaifast.explain(model, x, xaifast.ExplainConfig(target_explain_group="IMAGE")))
    want = normalize_reference(act.numpy())
    for b, ex in enumerate(run):
        assert np.abs(ex.saliency_map["image"].astype(int) - want[b].astype(int)).max() <= 1


@pytest.mark.parametrize("name,suffix", [("swin", ".xml"), ("swinv2", ".xml"), ("swin", ".onnx")])
def test_export_with_explain_outputs(tmp_path, name, suffix):
    pytest.importorskip("openvino")
    model = model_of(name)
    path = xaifast.export(model, tmp_path / f"m{suffix}", explain=True, example_input=torch.randn(1, 3, *SIZE),
                          preprocess=xaifast.Preprocess(input_size=SIZE))
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    x = torch.randn(3, 3, *SIZE)
    got = list(xaifast.explain(path, x, cfg, batch_size=3))
    want = list(xaifast.explain(model, x, cfg, batch_size=3))
    for a, b in zip(got, want):
        assert a.predicted == b.predicted
        assert list(a.saliency_map) == list(b.saliency_map)
        for k in a.saliency_map:
            assert a.saliency_map[k].shape == MODELS[name][2]
            assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1


def test_openvino_engine_on_swin():
    pytest.importorskip("openvino")
    model = model_of("swin")
    x = torch.randn(2, 3, *SIZE)
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    got = list(xaifast.explain(model, x, cfg, engine="openvino"))
    want = list(xaifast.explain(model, x, cfg, engine="pytorch"))
    for a, b in zip(got, want):
        for k in a.saliency_map:
            assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1
