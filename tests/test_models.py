"""Recipro-CAM through `xaifast.explain` / `saliency_maps` on real architectures equals the
float64 reference that calls each model's own head once per masked map."""
import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

import xaifast
from xaifast.zoo import ConvHeadCNN, SmallCNN
from xaifast.adapters.classifier import ClassifierAdapter
from reference import assert_maps_close, assert_u8_within_one, normalize_reference, recipro_cam_reference


def feature_of(model, layer, x, call=-1):
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[call]


def check_model(model, x, layer, head64, mask="1x1", target_layer=None, call=-1):
    """saliency_maps and explain(ALL) against the reference, for one model."""
    model.eval()
    maps = xaifast.saliency_maps(model, x, target_layer=target_layer, mask=mask)
    ref = recipro_cam_reference(feature_of(model, layer, x, call), head64, mask)
    assert_maps_close(maps, ref)
    cfg = xaifast.ExplainConfig(target_explain_group="ALL", mask=mask)
    explanations = list(xaifast.explain(model, x, cfg, target_layer=target_layer, batch_size=2))
    assert [e.source for e in explanations] == list(range(x.shape[0]))
    u8 = np.stack([np.stack([e.saliency_map[k] for k in range(ref.shape[1])]) for e in explanations])
    assert_u8_within_one(u8, normalize_reference(ref))
    return maps


def test_small_cnn_detected_target_gap_shortcut():
    model = SmallCNN(num_classes=6).eval()
    x = torch.randn(3, 3, 48, 40)  # non-square grid: 6 x 5
    adapter = ClassifierAdapter(model)
    feature, _ = adapter.forward(x)
    assert adapter.target.name == "features"
    assert adapter.head(feature).after_gap is not None
    m64 = copy.deepcopy(model).double()
    head64 = lambda f: m64.classifier(m64.pool(f).flatten(1))
    maps = check_model(model, x, "features", head64, mask="gaussian")
    assert maps.shape == (3, 6, 6, 5)


def test_conv_head_model_not_gap_first():
    model = ConvHeadCNN(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    adapter = ClassifierAdapter(model, target_layer="features")
    feature, _ = adapter.forward(x)
    assert adapter.head(feature).after_gap is None  # conv layers after the target
    m64 = copy.deepcopy(model).double()
    head64 = lambda f: m64.classifier(m64.neck(f).mean(dim=(2, 3)))
    check_model(model, x, "features", head64, target_layer="features")


def test_detected_target_of_conv_head_model_is_last_feature_map():
    model = ConvHeadCNN(num_classes=4).eval()
    adapter = ClassifierAdapter(model)
    adapter.forward(torch.randn(1, 3, 32, 32))
    assert adapter.target.name == "neck"


def hf_resnet(num_labels=5):
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(num_labels=num_labels, embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    return ResNetForImageClassification(cfg).eval()


def hf_convnext(num_labels=5):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(num_labels=num_labels, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])
    return ConvNextForImageClassification(cfg).eval()


def test_transformers_resnet():
    model = hf_resnet()
    x = torch.randn(2, 3, 96, 96)
    m64 = copy.deepcopy(model).double()
    head64 = lambda f: m64.classifier(m64.resnet.pooler(f))
    maps = check_model(model, x, "resnet.encoder.stages.3", head64)
    assert maps.shape == (2, 5, 3, 3)


def test_transformers_convnext():
    model = hf_convnext()
    x = torch.randn(2, 3, 128, 96)
    m64 = copy.deepcopy(model).double()
    head64 = lambda f: m64.classifier(m64.convnext.layernorm(f.mean([-2, -1])))
    check_model(model, x, "convnext.encoder.stages.3", head64, mask="gaussian")


def test_explicit_backbone_and_head_callables():
    model = ConvHeadCNN(num_classes=3).eval()
    backbone = lambda x: model.features(x)
    head = lambda f: model.classifier(model.neck(f).mean(dim=(2, 3)))
    x = torch.randn(2, 3, 32, 32)
    maps = xaifast.saliency_maps(None, x, backbone=backbone, head=head)
    by_graph = xaifast.saliency_maps(model, x, target_layer="features")
    assert_maps_close(maps, by_graph, rtol=1e-6)


def test_explicit_head_module_gets_the_gap_shortcut():
    model = SmallCNN(num_classes=3).eval()
    head = nn.Sequential(model.pool, nn.Flatten(), model.classifier)
    adapter = ClassifierAdapter(backbone=model.features, head=head)
    feature, _ = adapter.forward(torch.randn(2, 3, 32, 32))
    assert adapter.head(feature).after_gap is not None


@pytest.mark.slow
def test_efficientnet_lite0_matches_reference(efficientnet):
    from xaifast.zoo.efficientnet import EFFICIENTNET_LITE_PREPROCESS

    x = torch.randn(2, 3, 224, 224)
    m64 = copy.deepcopy(efficientnet).double()
    head64 = lambda f: m64._fc(m64._avg_pooling(f).flatten(1))
    # `_swish` is called twice (stem and head): the target is its last call.
    adapter = ClassifierAdapter(efficientnet, preprocess=EFFICIENTNET_LITE_PREPROCESS)
    adapter.forward(x[:1])
    assert (adapter.target.name, adapter.target.call_index) == ("_swish", 1)
    check_model(efficientnet, x, "_swish", head64, call=-1)


@pytest.mark.slow
def test_efficientnet_espresso_map_peaks_on_the_cup(efficientnet, skimage_data):
    from xaifast.zoo.efficientnet import EFFICIENTNET_LITE_PREPROCESS, imagenet_labels

    path = os.path.join(skimage_data, "coffee.png")
    cfg = xaifast.ExplainConfig(target_explain_group="PREDICTIONS", postprocess=True)
    (ex,) = xaifast.explain(efficientnet, [path], cfg, preprocess=EFFICIENTNET_LITE_PREPROCESS,
                            labels=imagenet_labels())
    assert ex.predicted == [967] and ex.labels == {967: "espresso"}
    heat_rgb = ex.saliency_map[967]
    assert heat_rgb.shape == (400, 600, 3)
    # Attention as the red-minus-blue of the JET colours at the image's resolution.
    attention = heat_rgb[..., 0].astype(int) - heat_rgb[..., 2].astype(int)
    y, x = np.unravel_index(np.argmax(attention), attention.shape)
    assert 150 <= x <= 430 and 0 <= y <= 230, f"peak at ({x}, {y}) is not on the cup"
    cup = attention[20:210, 180:410].mean()
    table = np.concatenate([attention[:120, :130].ravel(), attention[300:, 480:].ravel(),
                            attention[330:, :100].ravel()]).mean()
    assert cup > table + 100, (cup, table)


def test_split_is_cached_per_model_and_renewed_when_the_model_changes():
    model = SmallCNN(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    first = ClassifierAdapter(model)
    feature, _ = first.forward(x)
    head = first.head(feature)
    again = ClassifierAdapter(model)
    again.forward(x)
    assert again.head(feature) is head  # no second probe / export
    with torch.no_grad():
        model.classifier.weight.mul_(2.0)  # in-place update: the cached head sees it
    assert_maps_close(xaifast.saliency_maps(model, x),
                      recipro_cam_reference(feature, lambda f: copy.deepcopy(model).double().classifier(
                          f.mean((2, 3))), "1x1"))
    model.classifier = nn.Linear(64, 3)  # a new module: the cached split is dropped
    assert xaifast.saliency_maps(model, x).shape == (2, 3, 4, 4)
