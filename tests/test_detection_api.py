"""Detectors and instance segmentation through the public API: the adapter protocol, the maps
against float64 references, targets from predictions, empty predictions, overlays with boxes."""
import numpy as np
import pytest
import torch

import xaifast
from xaifast import DetectorSpec, ExplainConfig, InstanceSegmentationSpec
from xaifast.adapters.detection import DetectionModelError, Detections

from detection_models import EmptyDetector, ToyDetector, ToyInstanceSegmenter, interpolate_reference_levels
from reference import det_class_map_reference as _det_reference


def det_class_map_reference(levels, anchors, **kw):
    return torch.as_tensor(_det_reference([lvl.numpy() for lvl in levels], anchors, **kw))


def toy_spec(model, **kw):
    return DetectorSpec(cls_outputs="head.cls", num_anchors=model.anchors, num_classes=model.num_classes,
                        features="neck", score_threshold=0.55, **kw)


def hooked_levels(model, x):
    levels = []
    handle = model.head.cls.register_forward_hook(lambda m, a, o: levels.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return levels


def u8_reference(raw64: torch.Tensor) -> np.ndarray:
    """SPEC.md's normalization in float64 per map."""
    r = raw64.numpy()
    mn = r.min(axis=(-2, -1), keepdims=True)
    mx = r.max(axis=(-2, -1), keepdims=True)
    return np.floor(255 * (r - mn) / (mx - mn + 1e-12)).astype(np.int64)


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
@pytest.mark.parametrize("anchors,classes", [(1, 1), (2, 4), (3, 5)])
def test_det_class_probability_map_matches_float64_reference(size, anchors, classes):
    model = ToyDetector(num_classes=classes, anchors=anchors).eval()
    x = torch.randn(3, 3, *size)
    raw = xaifast.saliency_maps(model, x, spec=toy_spec(model), batch_size=2)
    levels = hooked_levels(model, x)
    ref = det_class_map_reference(levels, [anchors] * 3)
    assert raw.shape == (3, classes, *levels[1].shape[2:])
    torch.testing.assert_close(raw.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref, torch.softmax(interpolate_reference_levels(levels, [anchors] * 3), 1))
    if classes == 1:
        assert torch.all(raw == 1.0)  # softmax over one class
    maps = {ex.source: ex.saliency_map for ex in xaifast.explain(model, x, spec=toy_spec(model))}
    expected = u8_reference(ref)
    for b in range(3):
        got = np.stack([maps[b][k] for k in range(classes)]).astype(np.int64)
        assert np.abs(got - expected[b]).max() <= 1


def test_softmax_off_and_explicit_map_size():
    model = ToyDetector().eval()
    x = torch.randn(2, 3, 64, 64)
    raw = xaifast.saliency_maps(model, x, spec=toy_spec(model), score="none", map_size=(11, 7))
    ref = det_class_map_reference(hooked_levels(model, x), [2, 2, 2], size=(11, 7), softmax=False)
    torch.testing.assert_close(raw.double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(xaifast.XaifastError, match="sigmoid"):
        xaifast.explain(model, x, ExplainConfig(score="sigmoid"), spec=toy_spec(model))


def test_predictions_are_classes_above_the_confidence_threshold():
    model = ToyDetector(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    outs = model(x)
    for threshold in (0.55, 0.7):
        cfg = ExplainConfig(target_explain_group="PREDICTIONS")
        for ex in xaifast.explain(model, x, cfg, spec=toy_spec(model), score_threshold=threshold):
            d = outs[ex.source]
            keep = d["scores"] >= threshold
            assert set(ex.predicted) == set(d["labels"][keep].tolist())
            assert sorted(ex.saliency_map) == sorted(ex.predicted)
            assert len(ex.prediction["scores"]) == int(keep.sum())
            assert np.all(ex.prediction["scores"] >= threshold)


def test_empty_predictions_give_no_error():
    model = EmptyDetector().eval()
    x = torch.randn(2, 3, 64, 64)
    for ex in xaifast.explain(model, x, ExplainConfig(target_explain_group="PREDICTIONS"), spec=toy_spec(model)):
        assert ex.predicted == [] and ex.saliency_map == {} and ex.prediction["boxes"].shape == (0, 4)
    for ex in xaifast.explain(model, x, ExplainConfig(), spec=toy_spec(model)):
        assert sorted(ex.saliency_map) == [0, 1, 2, 3]  # ALL: the class maps do not need predictions


@pytest.mark.parametrize("level", [0, 1, -1])
def test_activationmap_on_a_chosen_pyramid_level(level):
    model = ToyDetector().eval()
    x = torch.randn(2, 3, 64, 64)
    raw = xaifast.saliency_maps(model, x, algorithm="activationmap", spec=toy_spec(model), feature_level=level)
    with torch.no_grad():
        feature = model.neck(x)[level]
    torch.testing.assert_close(raw[:, 0], feature.mean(1))
    for ex in xaifast.explain(model, x, ExplainConfig(target_explain_group="IMAGE"), spec=toy_spec(model),
                              feature_level=level):
        assert list(ex.saliency_map) == ["image"] and ex.saliency_map["image"].shape == feature.shape[2:]
    eig = xaifast.saliency_maps(model, x, algorithm="eigencam", spec=toy_spec(model), feature_level=level)
    assert eig.shape == (2, 1, *feature.shape[2:])


def test_spec_errors_name_the_problem():
    model = ToyDetector().eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(DetectionModelError, match="no module 'head.cls_logits'.*head.cls"):
        list(xaifast.explain(model, x, spec=DetectorSpec(cls_outputs="head.cls_logits", num_anchors=2)))
    with pytest.raises(DetectionModelError, match="not a multiple"):
        list(xaifast.explain(model, x, spec=DetectorSpec(cls_outputs="head.cls", num_anchors=3)))
    with pytest.raises(DetectionModelError, match="one anchor count per level"):
        list(xaifast.explain(model, x, spec=DetectorSpec(cls_outputs="head.cls", num_anchors=[2, 2])))
    with pytest.raises(DetectionModelError, match="num_classes=5"):
        list(xaifast.explain(model, x, spec=DetectorSpec(cls_outputs="head.cls", num_anchors=2, num_classes=5)))
    with pytest.raises(DetectionModelError, match="pyramid levels"):
        list(xaifast.explain(model, x, ExplainConfig(target_explain_group="IMAGE"), spec=toy_spec(model),
                             feature_level=5))
    with pytest.raises(DetectionModelError, match="features="):
        list(xaifast.explain(model, x, ExplainConfig(target_explain_group="IMAGE"),
                             spec=DetectorSpec(cls_outputs="head.cls", num_anchors=2)))
    bad_output = DetectorSpec(cls_outputs="head.cls", num_anchors=2, outputs=lambda out: out[0])
    with pytest.raises(DetectionModelError, match="list of one dict per image"):
        list(xaifast.explain(model, x, spec=bad_output))
    with pytest.raises(DetectionModelError, match="describe the detector"):
        xaifast.adapters.detection.DetectionAdapter(model)


def test_model_with_its_own_spec_and_several_head_modules():
    class PerLevelHeads(ToyDetector):
        def __init__(self):
            super().__init__(num_classes=3, anchors=1)
            self.heads = torch.nn.ModuleList(torch.nn.Conv2d(8, 3, 1) for _ in range(3))

        def forward(self, x):
            feats = self.neck(x)
            levels = [h(f) for h, f in zip(self.heads, feats)]
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in range(x.shape[0])] if levels else []

        def xaifast_spec(self):
            return {"task": "detection", "cls_outputs": ["heads.0", "heads.1", "heads.2"], "num_anchors": 1}

    model = PerLevelHeads().eval()
    x = torch.randn(2, 3, 64, 64)
    raw = xaifast.saliency_maps(model, x)
    with torch.no_grad():
        feats = model.neck(x)
        levels = [h(f) for h, f in zip(model.heads, feats)]
    torch.testing.assert_close(raw.double(), det_class_map_reference(levels, [1, 1, 1]), rtol=1e-5, atol=1e-6)


def instseg_reference(masks, scores, labels, k_classes, threshold):
    """float64 loops: S[k] = sum_n [label_n = k, score_n >= t] score_n mask_n / max(count_k, 1)."""
    masks, scores, labels = (np.asarray(v, dtype=np.float64) for v in (masks, scores, labels))
    out = np.zeros((k_classes, *masks.shape[1:]))
    for k in range(k_classes):
        count = 0
        for n in range(len(scores)):
            if int(labels[n]) == k and scores[n] >= threshold:
                out[k] += scores[n] * masks[n]
                count += 1
        out[k] /= max(count, 1)
    return out


@pytest.mark.parametrize("n,k,h,w", [(0, 3, 5, 7), (1, 1, 4, 4), (6, 3, 9, 13), (20, 5, 16, 8)])
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_instseg_maps_match_float64_reference(rng, n, k, h, w, threshold):
    masks = rng.random((n, h, w)).astype(np.float32)
    masks[: n // 2] = masks[: n // 2] > 0.5  # booleans too
    scores = rng.random(n).astype(np.float32)
    labels = rng.integers(0, k, n)
    got = xaifast.functional.instseg_maps(masks, scores, labels, k, threshold, size=(h, w))
    np.testing.assert_allclose(got.numpy(), instseg_reference(masks, scores, labels, k, threshold), rtol=1e-6,
                               atol=1e-6)
    if n == 0:
        assert torch.all(got == 0)


def test_instseg_maps_bad_input():
    with pytest.raises(xaifast.XaifastError, match="within 0..2"):
        xaifast.functional.instseg_maps(np.ones((1, 4, 4)), np.ones(1), np.array([3]), 3)
    with pytest.raises(xaifast.XaifastError, match="same N"):
        xaifast.functional.instseg_maps(np.ones((2, 4, 4)), np.ones(1), np.array([0]), 3)


def test_instance_segmentation_model_explained():
    model = ToyInstanceSegmenter(num_classes=3, instances=5).eval()
    x = torch.randn(3, 3, 32, 40)
    spec = InstanceSegmentationSpec(num_classes=3, score_threshold=0.4, features="neck")
    raw = xaifast.saliency_maps(model, x, spec=spec)
    with torch.no_grad():
        outs = model(x)
    for b in range(3):
        d = outs[b]
        ref = instseg_reference(d["masks"], d["scores"], d["labels"], 3, 0.4)
        np.testing.assert_allclose(raw[b].numpy(), ref, rtol=1e-6, atol=1e-6)
    cfg = ExplainConfig(target_explain_group="PREDICTIONS")
    for ex in xaifast.explain(model, x, cfg, spec=spec):
        d = outs[ex.source]
        assert set(ex.predicted) == set(d["labels"][d["scores"] >= 0.4].tolist())
        assert ex.prediction["masks"].shape[1:] == (32, 40)
    high = InstanceSegmentationSpec(num_classes=3, score_threshold=1.01)
    for ex in xaifast.explain(model, x, ExplainConfig(), spec=high):  # nothing above threshold: zero maps
        assert all(np.all(m == 0) for m in ex.saliency_map.values()) and len(ex.saliency_map) == 3


def test_overlays_show_boxes_in_image_coordinates(tmp_path, rng):
    import cv2

    from xaifast.draw import class_color, draw_predictions

    model = ToyDetector(num_classes=1, anchors=1, threshold=0.0).eval()  # every cell is a detection
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image[:, :, ::-1])
    cfg = ExplainConfig(target_explain_group="PREDICTIONS", postprocess=True)
    spec = DetectorSpec(cls_outputs="head.cls", num_anchors=1, score_threshold=0.0)
    pre = xaifast.Preprocess((64, 64), (128.0,) * 3, (64.0,) * 3)
    (ex,) = list(xaifast.explain(model, [str(tmp_path / "a.png")], cfg, spec=spec, preprocess=pre))
    boxes = ex.prediction["boxes"]
    assert ex.predicted == [0] and len(boxes) == 16 * 16 + 8 * 8 + 4 * 4
    assert boxes[:, 2].max() == pytest.approx(120) and boxes[:, 3].max() == pytest.approx(90)  # image pixels
    assert ex.overlay[0].shape == (90, 120, 3)
    assert (ex.overlay[0] == np.array(class_color(0), np.uint8)).all(-1).sum() > 100  # boxes drawn
    n = int(np.argmax(boxes[:, 3] - boxes[:, 1]))  # the tallest box: its label cannot cover its left edge's middle
    det = Detections(boxes[n:n + 1], ex.prediction["scores"][n:n + 1], ex.prediction["labels"][n:n + 1])
    drawn = draw_predictions(np.zeros((90, 120, 3), np.uint8), det, ["thing"], 0)
    x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[n])
    row = min(y2, 89) - 1  # below the label (drawn at the box's top), on the box's left edge
    assert row - y1 > 16
    assert tuple(drawn[row, x1]) == class_color(0)  # the left edge, in the image's pixels, is drawn
    assert not drawn[row, x1 + 2:min(x2, 119) - 2].any()  # and nothing inside the box on that row
    assert not draw_predictions(np.zeros((90, 120, 3), np.uint8), det, None, only_class=1).any()
