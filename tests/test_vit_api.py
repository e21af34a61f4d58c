"""Transformers through the public API: detection, options, class-agnostic maps, bad input."""
import numpy as np
import pytest
import torch
from torch import nn

import xaifast
from xaifast import ExplainConfig
from xaifast import functional as XF
from xaifast.algorithms import resolve_algorithm
from xaifast.config import TargetExplainGroup
from xaifast.zoo import SmallCNN
from xaifast.zoo.vit import small_vit
from xaifast.adapters.vit import ViTAdapter, is_transformer

from test_vit_models import TimmStyleViT


@pytest.fixture
def vit():
    return small_vit(num_classes=5, img_size=(48, 64), depth=3)


def test_auto_detects_transformers_and_picks_vit_recipro_cam(vit):
    assert is_transformer(vit) and not is_transformer(SmallCNN())
    from efficientnet_lite_pytorch import EfficientNet  # a CNN with `blocks`: not a transformer
    assert not is_transformer(EfficientNet.from_name("efficientnet-lite0"))
    run = xaifast.explain(vit, torch.randn(1, 3, 48, 64))
    assert run.adapter.kind == "transformer" and run.algorithm == "vit_recipro_cam" and run.mask == "gaussian"
    cnn_run = xaifast.explain(SmallCNN(num_classes=3), torch.randn(1, 3, 32, 32))
    assert cnn_run.algorithm == "recipro_cam" and cnn_run.mask == "1x1"
    for name in ("auto", "classwisesaliencymap", "vit_recipro_cam", "ViT_Recipro_CAM"):
        assert resolve_algorithm(name, "transformer", TargetExplainGroup.ALL) == "vit_recipro_cam"
    assert resolve_algorithm("auto", "transformer", TargetExplainGroup.IMAGE) == "activationmap"
    with pytest.raises(xaifast.XaifastError, match="use vit_recipro_cam"):
        resolve_algorithm("recipro_cam", "transformer", TargetExplainGroup.ALL)
    with pytest.raises(xaifast.XaifastError, match="use recipro_cam"):
        resolve_algorithm("vit_recipro_cam", "cnn_classifier", TargetExplainGroup.ALL)


def test_explain_streams_maps_with_the_grid_shape(vit):
    x = torch.randn(3, 3, 48, 64)
    cfg = ExplainConfig(target_explain_group="PREDICTIONS")
    out = list(xaifast.explain(vit, x, cfg, batch_size=2))
    assert len(out) == 3
    for ex in out:
        (k, m), = ex.saliency_map.items()
        assert k == ex.predicted[0] and m.shape == (3, 4) and m.dtype == np.uint8 and m.max() == 255
    post = list(xaifast.explain(vit, x[:1], ExplainConfig(target_explain_group=[0, 2], postprocess=True)))
    assert post[0].saliency_map[2].shape == (48, 64, 3)


def test_options_reach_the_algorithm(vit):
    x = torch.randn(2, 3, 48, 64)
    default = xaifast.saliency_maps(vit, x)
    assert default.shape == (2, 5, 3, 4)
    torch.testing.assert_close(default, xaifast.saliency_maps(vit, x, mask="gaussian"))
    torch.testing.assert_close(default, xaifast.saliency_maps(vit, x, use_fast_path=False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(default, xaifast.saliency_maps(vit, x, target_layer="blocks"))
    torch.testing.assert_close(default, xaifast.saliency_maps(vit, x, target_layer="blocks.2"))
    one = xaifast.saliency_maps(vit, x, mask="1x1")
    assert not torch.allclose(default, one)
    k2 = xaifast.saliency_maps(vit, x, target_block=2)
    torch.testing.assert_close(k2, xaifast.saliency_maps(vit, x, target_layer="blocks.1"))
    torch.testing.assert_close(k2, xaifast.saliency_maps(vit, x, target_layer="blocks.1.norm1"))
    no_cls = xaifast.saliency_maps(vit, x, cls_token=False)
    torch.testing.assert_close(no_cls, xaifast.saliency_maps(vit, x, cls_token=False, use_fast_path=False),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(default, no_cls)


def test_class_agnostic_maps_use_the_patch_tokens(vit):
    x = torch.randn(2, 3, 48, 64)
    feature, _ = ViTAdapter(vit).forward(x)
    fmap = feature.tokens[:, 1:].transpose(1, 2).reshape(2, -1, 3, 4)
    torch.testing.assert_close(xaifast.saliency_maps(vit, x, "activationmap")[:, 0], XF.activation_map(fmap))
    torch.testing.assert_close(xaifast.saliency_maps(vit, x, "eigencam")[:, 0], XF.eigen_cam(fmap))
    (ex,) = list(xaifast.explain(vit, x[:1], ExplainConfig(target_explain_group="IMAGE")))
    assert list(ex.saliency_map) == ["image"] and ex.saliency_map["image"].shape == (3, 4)


def test_functional_on_plain_tokens(vit):
    x = torch.randn(2, 3, 48, 64)
    adapter = ViTAdapter(vit)
    feature, _ = adapter.forward(x)
    from_feature = XF.vit_recipro_cam(feature, adapter.rest())
    plain = XF.vit_recipro_cam(feature.tokens, adapter.rest(), grid=(3, 4))
    torch.testing.assert_close(from_feature, plain)
    # any callable rest (general path only): T_p [n, N, D] -> logits
    generic = XF.vit_recipro_cam(feature.tokens, lambda t: adapter.rest().general(t), grid=(3, 4))
    torch.testing.assert_close(from_feature, generic, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_model_without_blocks_names_what_was_looked_for():
    with pytest.raises(xaifast.XaifastError) as err:
        xaifast.saliency_maps(SmallCNN(num_classes=3), torch.randn(1, 3, 32, 32), "vit_recipro_cam")
    msg = str(err.value)
    assert "norm1, attn, norm2, mlp" in msg and "layernorm_before" in msg and "target_layer=" in msg


def test_target_layer_that_is_not_a_block(vit):
    with pytest.raises(xaifast.TargetLayerError, match=r"'patch_embed'.*neither a transformer block"):
        xaifast.saliency_maps(vit, torch.randn(1, 3, 48, 64), "vit_recipro_cam", target_layer="patch_embed")
    with pytest.raises(xaifast.TargetLayerError, match="unknown target layer 'nope'.*Block lists found: blocks"):
        xaifast.saliency_maps(vit, torch.randn(1, 3, 48, 64), "vit_recipro_cam", target_layer="nope")
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    vit.extra = seq
    with pytest.raises(xaifast.TargetLayerError, match=r"'extra'.*not a recognizable transformer block"):
        xaifast.saliency_maps(vit, torch.randn(1, 3, 48, 64), "vit_recipro_cam", target_layer="extra")


def test_target_block_out_of_range(vit):
    with pytest.raises(xaifast.TargetLayerError, match="target_block=4 is out of range.*3 blocks"):
        xaifast.saliency_maps(vit, torch.randn(1, 3, 48, 64), target_block=4)
    with pytest.raises(xaifast.TargetLayerError, match="target_block must be an integer"):
        xaifast.saliency_maps(vit, torch.randn(1, 3, 48, 64), target_block=0)


def test_token_count_that_is_not_aux_plus_grid_is_refused():
    model = TimmStyleViT(img=(16, 24), extra_token=True).eval()  # declares 1 CLS token, runs 2 + H*W
    with pytest.raises(xaifast.ModelSplitError, match=r"8 tokens, but 1 auxiliary \+ 2x3 patch tokens = 7"):
        xaifast.saliency_maps(model, torch.randn(1, 3, 16, 24))
    with pytest.raises(xaifast.XaifastError, match=r"10 tokens, but 2 auxiliary \+ 3x3"):
        XF.vit_recipro_cam(torch.randn(1, 10, 8), lambda t: t[:, 0], grid=(3, 3), num_aux=2)
    with pytest.raises(xaifast.XaifastError, match="fewer than the 4x4"):
        XF.vit_recipro_cam(torch.randn(1, 10, 8), lambda t: t[:, 0], grid=(4, 4))
    with pytest.raises(xaifast.XaifastError, match="grid="):
        XF.vit_recipro_cam(torch.randn(1, 10, 8), lambda t: t[:, 0])


def test_non_standard_blocks_are_refused_not_misexplained():
    model = TimmStyleViT(img=(16, 24), post_norm=True).eval()
    with torch.no_grad():
        for blk in model.blocks:  # LayerNorms that are not the identity on normalized tokens
            blk.norm1.weight.uniform_(0.3, 2.0)
            blk.norm2.bias.uniform_(-1.0, 1.0)
    with pytest.raises(xaifast.ModelSplitError, match="does not reproduce the model's logits"):
        xaifast.saliency_maps(model, torch.randn(1, 3, 16, 24))


def test_an_unverified_model_never_takes_the_fast_path(vit):
    adapter = ViTAdapter(vit)
    assert not adapter.rest().fast_ok and "not verified" in adapter.rest().fast_reason
    adapter.forward(torch.randn(1, 3, 48, 64))
    assert adapter.rest().fast_ok


def test_block_lists_are_remembered_until_the_module_tree_changes():
    from xaifast.adapters.vit import find_block_lists

    model = small_vit(num_classes=4).eval()
    first = find_block_lists(model)
    assert first and find_block_lists(model) == first
    name, blocks = first[0]
    found = dict(find_block_lists(model))
    found[name].append(nn.Identity())  # a caller's change to the list it got does not leak into the memo
    assert find_block_lists(model) == first
    parent = model.get_submodule(name)
    parent[0] = nn.Linear(2, 2)  # no longer a list of transformer blocks: found again, not remembered
    assert name not in dict(find_block_lists(model))
