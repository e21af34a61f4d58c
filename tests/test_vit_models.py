"""ViT Recipro-CAM on every supported model family against a float64 per-cell loop reference.

For each model the test writes out "the rest" (SPEC.md: the target block continued on T_p with
T_p as the residual, the later blocks, the final norm, the head) by hand from the model's own
modules, captures T with a hook on the target block's first norm, and builds every T_p in a
Python loop. xaifast's naive and fast re-inferences must both equal it (float64, 1e-6 relative),
and the fast path must really be taken where the model allows it.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

import xaifast
from reference import assert_maps_close, assert_u8_within_one, mask_at, normalize_reference, score
from xaifast.algorithms.vit_recipro_cam import FastGraph, vit_masked_logits
from xaifast.zoo.vit import small_vit
from xaifast.adapters.vit import ViTAdapter

transformers = pytest.importorskip("transformers")

REL = 1e-6


# ----------------------------------------------------------------------------- timm-style models
class TAttention(nn.Module):
    """timm-style attention (qkv, proj, num_heads), explicit softmax. `bias`: None, "param" (a
    learned [heads, N, N] position bias) or "distance" (a bias computed from token distance in
    forward, no parameter)."""

    def __init__(self, dim, heads, bias=None, tokens=0, qk_norm=False):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_kind = bias
        self.rel_bias = nn.Parameter(torch.randn(heads, tokens, tokens)) if bias == "param" else None
        if qk_norm:  # timm's qk_norm: a LayerNorm of each head's queries and keys
            self.q_norm, self.k_norm = nn.LayerNorm(dim // heads), nn.LayerNorm(dim // heads)

    def forward(self, x):
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        a = (q @ k.transpose(-1, -2)) * (c // h) ** -0.5
        if self.bias_kind == "param":
            a = a + self.rel_bias
        elif self.bias_kind == "distance":
            pos = torch.arange(n, dtype=x.dtype)
            a = a - 0.3 * (pos[:, None] - pos[None, :]).abs()
        return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class TLayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(0.5 + torch.rand(dim))

    def forward(self, x):
        return x * self.gamma


class TBlock(nn.Module):
    def __init__(self, dim, heads, bias=None, tokens=0, post_norm=False, qk_norm=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TAttention(dim, heads, bias, tokens, qk_norm)
        self.ls1 = TLayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ls2 = TLayerScale(dim)
        self.post_norm = post_norm

    def forward(self, x):
        if self.post_norm:  # not the pre-norm block the adapter expects
            x = self.norm1(x + self.ls1(self.attn(x)))
            return self.norm2(x + self.ls2(self.mlp(x)))
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TimmStyleViT(nn.Module):
    """A ViT written like timm's: blocks / norm / head, CLS token, no `global_pool` attribute
    unless `pool="max"` (then `forward_head` max-pools the patch tokens)."""

    def __init__(self, img=(32, 40), patch=8, dim=32, depth=3, heads=4, classes=5, pool=None, bias=None,
                 post_norm=False, extra_token=False, qk_norm=False):
        super().__init__()
        grid = (img[0] // patch, img[1] // patch)
        n = 1 + grid[0] * grid[1] + int(extra_token)
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.extra = nn.Parameter(torch.randn(1, 1, dim)) if extra_token else None
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.5)
        self.blocks = nn.ModuleList([TBlock(dim, heads, bias, n, post_norm, qk_norm) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        if pool is not None:
            self.global_pool = pool

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(t.shape[0], -1, -1)]
        if self.extra is not None:
            prefix.append(self.extra.expand(t.shape[0], -1, -1))
        t = torch.cat(prefix + [t], 1) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        return self.forward_head(self.norm(t))

    def forward_head(self, t):
        if getattr(self, "global_pool", None) == "max":
            return self.head(t[:, 1:].amax(1))
        return self.head(t[:, 0])


# ----------------------------------------------------------------------------- the zoo
def _timm_rest(model, k):
    blocks = list(model.blocks)
    tgt = blocks[len(blocks) - k]

    def rest(t):
        z = t + tgt.ls1(tgt.attn(t))
        y = z + tgt.ls2(tgt.mlp(tgt.norm2(z)))
        for blk in blocks[len(blocks) - k + 1:]:
            y = blk(y)
        return model.forward_head(model.norm(y))

    return rest, tgt.norm1


def _hf_rest(base, head):
    def make(model, k):
        layers = list(base(model).layers)
        tgt = layers[len(layers) - k]

        def rest(t):
            z = t + tgt.attention(t)[0]
            y = z + tgt.mlp(tgt.layernorm_after(z))
            for layer in layers[len(layers) - k + 1:]:
                y = layer(y)
            return head(model, base(model).layernorm(y))

        return rest, tgt.layernorm_before

    return make


def hf_vit():
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                                 image_size=(24, 40), patch_size=8, num_labels=6)
    return transformers.ViTForImageClassification(cfg), (24, 40)


def hf_deit_teacher():
    cfg = transformers.DeiTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                                  image_size=(40, 24), patch_size=8, num_labels=6)
    return transformers.DeiTForImageClassificationWithTeacher(cfg), (40, 24)


_hf_vit_rest = _hf_rest(lambda m: m.vit, lambda m, z: m.classifier(z[:, 0]))
_hf_deit_rest = _hf_rest(lambda m: m.deit,
                         lambda m, z: (m.cls_classifier(z[:, 0]) + m.distillation_classifier(z[:, 1])) / 2)

# name -> (factory () -> (model, (H_img, W_img)), rest maker, grid, auxiliary tokens, fast path expected)
ZOO = {
    "builtin_cls_registers": (lambda: (small_vit(6, img_size=(48, 80), depth=3, reg_tokens=2, init_values=0.7),
                                       (48, 80)), _timm_rest, (3, 5), 3, True),
    "builtin_avg_no_cls": (lambda: (small_vit(6, img_size=(64, 48), depth=2, class_token=False, global_pool="avg"),
                                    (64, 48)), _timm_rest, (4, 3), 0, True),
    "builtin_dist_token": (lambda: (small_vit(4, img_size=(32, 48), depth=2, dist_token=True), (32, 48)),
                           _timm_rest, (2, 3), 2, True),
    "builtin_2x2_grid": (lambda: (small_vit(4, img_size=32, depth=2), (32, 32)), _timm_rest, (2, 2), 1, True),
    "builtin_1x2_grid": (lambda: (small_vit(4, img_size=(16, 32), depth=2), (16, 32)), _timm_rest, (1, 2), 1, True),
    "hf_vit": (hf_vit, _hf_vit_rest, (3, 5), 1, True),
    "hf_deit_with_teacher": (hf_deit_teacher, _hf_deit_rest, (5, 3), 2, True),
    "timm_style": (lambda: (TimmStyleViT(), (32, 40)), _timm_rest, (4, 5), 1, True),
    "timm_style_max_pool": (lambda: (TimmStyleViT(img=(24, 32), pool="max"), (24, 32)), _timm_rest, (3, 4), 1, True),
    "timm_style_qk_norm": (lambda: (TimmStyleViT(img=(24, 32), qk_norm=True), (24, 32)), _timm_rest, (3, 4), 1, True),
    "timm_style_position_bias_param": (lambda: (TimmStyleViT(img=(24, 24), bias="param"), (24, 24)), _timm_rest,
                                       (3, 3), 1, False),
    "timm_style_position_bias_computed": (lambda: (TimmStyleViT(img=(24, 24), bias="distance"), (24, 24)),
                                          _timm_rest, (3, 3), 1, False),
}


def build(name, dtype=torch.float64):
    factory, rest_maker, grid, aux, fast = ZOO[name]
    model, size = factory()
    model = model.eval().to(dtype)
    return model, size, rest_maker, grid, aux, fast


def capture_t(model, norm1, x):
    out = []
    handle = norm1.register_forward_hook(lambda _m, _a, o: out.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out[0]


def reference_logits(t, grid, aux, rest, mask, cls_token):
    """One rest call per cell on T_p built by hand, float64: [B*H*W, K] in cell order."""
    h, w = grid
    rows = []
    with torch.no_grad():
        for b in range(t.shape[0]):
            for i in range(h):
                for j in range(w):
                    m = mask_at(h, w, i, j, mask).reshape(-1).to(t.dtype)
                    tp = t[b:b + 1].clone()
                    tp[:, :aux] *= 1.0 if cls_token else 0.0
                    tp[:, aux:] *= m[:, None]
                    rows.append(xaifast.adapters.head_graph.extract_logits(rest(tp))[0])
    return torch.stack(rows)


def rel_err(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------- tests
@pytest.mark.filterwarnings("ignore:vit_recipro_cam. the exact fast path does not apply")
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_fast_and_naive_equal_float64_loop_reference(name, k):
    model, size, rest_maker, grid, aux, fast_expected = build(name)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    rest, norm1 = rest_maker(model, k)
    t = capture_t(model, norm1, x)
    adapter = ViTAdapter(model, target_block=k)
    feature, logits = adapter.forward(x)
    assert feature.grid == grid and feature.num_aux == aux
    assert torch.equal(feature.tokens, t)  # T is the target block's LN1 output
    with torch.no_grad():
        assert rel_err(logits, xaifast.adapters.head_graph.extract_logits(model(x))) == 0
    vit_rest = adapter.rest()
    assert vit_rest.fast_ok == fast_expected, vit_rest.fast_reason
    for mask in ("gaussian", "1x1"):
        for cls_token in (True, False):
            ref = reference_logits(t, grid, aux, rest, mask, cls_token)
            naive = vit_masked_logits(feature, vit_rest, mask=mask, cls_token=cls_token, use_fast_path=False)
            fast = vit_masked_logits(feature, vit_rest, mask=mask, cls_token=cls_token, use_fast_path=True)
            case = f"{name} k={k} mask={mask} cls_token={cls_token}"
            assert rel_err(naive, ref) <= REL, case
            assert rel_err(fast, ref) <= REL, case
            assert rel_err(fast, naive) <= REL, case
            if fast_expected:  # the fast path as static graph ops (the OpenVINO / exported graph), eager
                graph = FastGraph(vit_rest, grid, aux, mask, cls_token).double()
                with torch.no_grad():
                    assert rel_err(graph(feature.tokens), ref) <= 1e-9, f"{case} FastGraph ({graph.mode})"


def test_fallback_reasons_name_the_problem():
    model, size, *_ = build("timm_style_position_bias_param")
    adapter = ViTAdapter(model)
    adapter.forward(torch.randn(1, 3, *size, dtype=torch.float64))
    assert "rel_bias" in adapter.rest().fast_reason
    model, size, *_ = build("timm_style_position_bias_computed")
    adapter = ViTAdapter(model)
    adapter.forward(torch.randn(1, 3, *size, dtype=torch.float64))
    assert "does not reproduce" in adapter.rest().fast_reason


@pytest.mark.parametrize("name", ["builtin_cls_registers", "hf_vit", "hf_deit_with_teacher", "timm_style",
                                  "builtin_avg_no_cls"])
def test_public_api_float32_matches_reference(name):
    """xaifast.saliency_maps / explain with algorithm auto (gaussian mask for transformers)."""
    model, size, rest_maker, grid, aux, _ = build(name, torch.float32)
    x = torch.randn(2, 3, *size)
    maps = xaifast.saliency_maps(model, x)
    model64 = model.double()
    rest, norm1 = rest_maker(model64, 1)
    t = capture_t(model64, norm1, x.double())
    ref = score(reference_logits(t, grid, aux, rest, "gaussian", True), "none")  # the default score: raw logits (OTX 2.x)
    ref = ref.reshape(2, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    assert_maps_close(maps, ref, rtol=1e-4)
    model.float()
    explanations = list(xaifast.explain(model, x))
    u8 = np.stack([np.stack([ex.saliency_map[c] for c in range(ref.shape[1])]) for ex in explanations])
    # (random-init maps can span a tiny range: normalization would magnify float32 rounding, so the
    # uint8 maps are checked against the raw maps above, not against the float64 reference)
    assert_u8_within_one(u8, normalize_reference(maps.numpy()))


def test_chunking_and_memory_budget_do_not_change_the_result():
    model, size, rest_maker, grid, aux, _ = build("timm_style")
    adapter = ViTAdapter(model, target_block=2)
    feature, _ = adapter.forward(torch.randn(3, 3, *size, dtype=torch.float64))
    for fast in (True, False):
        whole = vit_masked_logits(feature, adapter.rest(), use_fast_path=fast, chunk_size=10**6)
        for chunk in (1, 7, 20):
            part = vit_masked_logits(feature, adapter.rest(), use_fast_path=fast, chunk_size=chunk)
            assert rel_err(part, whole) <= 1e-12
        tiny = vit_masked_logits(feature, adapter.rest(), use_fast_path=fast, memory_budget_mb=0.01)
        assert rel_err(tiny, whole) <= 1e-12


def test_in_place_weight_updates_are_seen_by_the_fast_path():
    """HF's separate q/k/v projections are stacked for the fast path: an in-place update of the
    weights (fine-tuning between two explain calls) must not leave a stale copy behind."""
    model, size, *_ = build("hf_vit")
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    adapter = ViTAdapter(model)
    feature, _ = adapter.forward(x)
    before = vit_masked_logits(feature, adapter.rest())
    with torch.no_grad():
        for layer in model.vit.layers:
            layer.attention.k_proj.weight.mul_(3.0)
            layer.attention.q_proj.bias.add_(0.5)
    adapter = ViTAdapter(model)
    feature, _ = adapter.forward(x)
    fast = vit_masked_logits(feature, adapter.rest())
    naive = vit_masked_logits(feature, adapter.rest(), use_fast_path=False)
    assert rel_err(fast, naive) <= REL and rel_err(fast, before) > 1e-3


def test_fast_path_fallback_warns_once():
    model, size, *_ = build("timm_style_position_bias_param")
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with pytest.warns(UserWarning, match="fast path does not apply.*rel_bias"):
        xaifast.saliency_maps(model, x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xaifast.saliency_maps(model, x)
