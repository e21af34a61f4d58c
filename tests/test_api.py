"""The public API: config parsing, target groups, streaming order, postprocessing, inputs."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import xaifast
from xaifast import ExplainConfig, TargetExplainGroup
from xaifast.algorithms import resolve_algorithm
from xaifast.zoo import SmallCNN


@pytest.fixture
def model():
    return SmallCNN(num_classes=5).eval()


def test_config_parsing():
    assert ExplainConfig().target_explain_group is TargetExplainGroup.ALL  # OTX's default
    for text in ("PREDICTIONS", "predictions", "TargetExplainGroup.PREDICTIONS"):
        assert ExplainConfig(target_explain_group=text).target_explain_group is TargetExplainGroup.PREDICTIONS
    cfg = ExplainConfig(target_explain_group=[1, "cat"])
    assert cfg.target_explain_group is TargetExplainGroup.CUSTOM and cfg.target_classes == [1, "cat"]
    assert ExplainConfig(mask="3x3").mask == "gaussian"
    with pytest.raises(xaifast.XaifastError, match="PREDICTIONS"):
        ExplainConfig(target_explain_group="everything")
    with pytest.raises(xaifast.XaifastError, match="target_classes"):
        ExplainConfig(target_explain_group="custom")
    with pytest.raises(xaifast.XaifastError, match="score"):
        ExplainConfig(score="logsoftmax")


def test_algorithm_names():
    cnn, all_, img = "cnn_classifier", TargetExplainGroup.ALL, TargetExplainGroup.IMAGE
    assert resolve_algorithm("auto", cnn, all_) == "recipro_cam"
    assert resolve_algorithm("classwisesaliencymap", cnn, all_) == "recipro_cam"
    assert resolve_algorithm("auto", cnn, img) == "activationmap"
    assert resolve_algorithm("EigenCAM", cnn, img) == "eigencam"
    with pytest.raises(xaifast.XaifastError, match="activationmap"):
        resolve_algorithm("gradcam", cnn, all_)


def test_groups_all_predictions_custom(model):
    x = torch.randn(3, 3, 32, 32)
    logits = model(x).detach()
    all_ = list(xaifast.explain(model, x, ExplainConfig(target_explain_group="ALL")))
    assert [sorted(e.saliency_map) for e in all_] == [list(range(5))] * 3
    assert all(m.dtype == np.uint8 and m.shape == (4, 4) for e in all_ for m in e.saliency_map.values())
    preds = list(xaifast.explain(model, x, ExplainConfig(target_explain_group="PREDICTIONS")))
    assert [list(e.saliency_map) for e in preds] == [[int(k)] for k in logits.argmax(1)]
    for p, a in zip(preds, all_):  # the same map, whichever group asked for it
        (k,) = p.saliency_map
        assert np.array_equal(p.saliency_map[k], a.saliency_map[k])
        np.testing.assert_allclose(p.prediction, torch.softmax(logits, 1)[p.source].numpy(), rtol=1e-5)
    custom = list(xaifast.explain(model, x, ExplainConfig(target_explain_group=[4, 0]), labels=list("abcde")))
    assert [list(e.saliency_map) for e in custom] == [[4, 0]] * 3
    named = list(xaifast.explain(model, x, ExplainConfig(target_explain_group=["e", 0]), labels=list("abcde")))
    assert list(named[0].saliency_map) == [4, 0] and named[0].labels == {4: "e", 0: "a"}


def test_all_group_maps_share_one_index_but_stay_per_image(model):
    """ALL: every image's `maps` is a mapping over its own [K, h, w] rows (one key index shared
    across images, no per-image dict of K entries); labels are a copy per image."""
    x = torch.randn(5, 3, 32, 32)
    raw = xaifast.saliency_maps(model, x, score="softmax")
    exs = list(xaifast.explain(model, x, ExplainConfig(target_explain_group="ALL", score="softmax"),
                               labels=list("abcde"), batch_size=2))
    u8 = [{k: e.maps[k].copy() for k in e.maps} for e in exs]
    for i, e in enumerate(exs):
        assert list(e.maps) == list(range(5)) and len(e.maps) == 5
        assert 4 in e.maps and 5 not in e.maps and "image" not in e.maps and [1] not in e.maps
        assert dict(e.maps).keys() == set(range(5)) and list(e.saliency_map) == list(range(5))
        assert isinstance(e.saliency_map, dict) and e.saliency_map is e.saliency_map  # a dict, built once
        assert all(np.array_equal(e.maps[k], u8[i][k]) and np.array_equal(e.saliency_map[k], u8[i][k]) for k in u8[i])
        lo = raw[i].numpy().astype(np.float64)  # uint8 = round(255 * (m - min) / (max - min)), per map
        for k in range(5):
            span = lo[k].max() - lo[k].min()
            expected = np.round(255 * (lo[k] - lo[k].min()) / span) if span > 0 else np.zeros_like(lo[k])
            assert np.abs(e.maps[k].astype(int) - expected).max() <= 1
        with pytest.raises(KeyError):
            e.maps[7]
    assert not np.array_equal(exs[0].maps[0], exs[1].maps[0])  # not one image's rows for all
    exs[0].labels[0] = "changed"
    assert exs[1].labels == dict(enumerate("abcde"))
    np.testing.assert_allclose(np.stack([e.prediction for e in exs]), torch.softmax(model(x), 1).detach().numpy(),
                               rtol=1e-5, atol=1e-7)


def test_multilabel_predictions_use_threshold(model):
    x = torch.randn(4, 3, 32, 32)
    cfg = ExplainConfig(target_explain_group="PREDICTIONS", score="sigmoid")
    for e in xaifast.explain(model, x, cfg):
        assert e.predicted == [k for k in range(5) if e.prediction[k] >= 0.5]
        assert list(e.saliency_map) == e.predicted


def test_streams_in_input_order_across_batches(model):
    x = torch.randn(7, 3, 32, 32)
    loader = DataLoader(TensorDataset(x, torch.zeros(7)), batch_size=3)
    streamed = list(xaifast.explain(model, loader, batch_size=2))
    assert [e.source for e in streamed] == list(range(7))
    whole = list(xaifast.explain(model, x, batch_size=7))
    for a, b in zip(streamed, whole):
        for k in a.saliency_map:
            assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1


def test_postprocess_tensor_input_gives_heatmaps_at_input_size(model):
    x = torch.randn(2, 3, 40, 24)
    cfg = ExplainConfig(target_explain_group="PREDICTIONS", postprocess=True)
    for e in xaifast.explain(model, x, cfg):
        (heat,) = e.saliency_map.values()
        assert heat.shape == (40, 24, 3) and heat.dtype == np.uint8
        assert e.overlay == {}  # no original image to overlay on


def test_postprocess_files_gives_overlays_at_image_size(model, tmp_path):
    import cv2

    paths = []
    for i, (h, w) in enumerate([(50, 70), (33, 21)]):
        img = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img)
        paths.append(str(tmp_path / f"im{i}.png"))
    cfg = ExplainConfig(target_explain_group="PREDICTIONS", postprocess=True, alpha=0.3)
    pre = xaifast.Preprocess(input_size=(32, 32))
    exs = list(xaifast.explain(model, paths, cfg, preprocess=pre))
    for e, (h, w) in zip(exs, [(50, 70), (33, 21)]):
        (k,) = e.saliency_map
        assert e.saliency_map[k].shape == (h, w, 3) and e.overlay[k].shape == (h, w, 3)
        expected = np.floor(0.7 * e.image.astype(np.float32) + 0.3 * e.saliency_map[k] + 0.5)
        assert np.abs(e.overlay[k].astype(int) - expected.astype(int)).max() <= 1


def test_postprocess_matches_opencv_chain():
    import cv2

    maps = (np.random.default_rng(3).random((2, 7, 5)) * 255).astype(np.uint8)
    image = (np.random.default_rng(4).random((61, 43, 3)) * 255).astype(np.uint8)
    heat, over = xaifast.postprocess(maps, image, alpha=0.5)
    for k in range(2):
        ref = cv2.applyColorMap(cv2.resize(maps[k], (43, 61), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
        assert np.abs(heat[k].astype(int) - ref[..., ::-1].astype(int)).max() <= 1


def test_top_level_api_surface():
    for name in ("explain", "saliency_maps", "ExplainConfig", "TargetExplainGroup", "Explanation", "functional",
                 "postprocess"):
        assert hasattr(xaifast, name), name
    for name in ("recipro_cam", "activation_map", "eigen_cam", "normalize"):
        assert callable(getattr(xaifast.functional, name)), name
