"""The built-in synthetic shapes dataset, ShapesDetector and ShapesInstanceSegmenter."""
import math

import cv2
import numpy as np
import pytest
import torch

from xaifast.errors import XaifastError
from xaifast.zoo.detector import (SHAPES_PREPROCESS, ShapesDetector, _load_weights, box_iou, decode_boxes,
                                     encode_boxes, make_anchors, nms)
from xaifast.zoo.instance_segmenter import ShapesInstanceSegmenter
from xaifast.zoo.shapes import SHAPE_CLASSES, ShapesDataset, make_sample, write_shapes_images

HELD_OUT_SEED = 987  # not a training seed


def _input(samples):
    return torch.stack([SHAPES_PREPROCESS(s["image"]) for s in samples])


# ------------------------------------------------------------------------------- dataset
def test_dataset_deterministic_and_consistent():
    a, b = ShapesDataset(12, seed=5), ShapesDataset(12, seed=5)
    other = ShapesDataset(12, seed=6)
    assert len(a) == 12
    for i in range(12):
        sa, sb = a[i], b[i]
        for key in ("image", "boxes", "labels", "masks"):
            np.testing.assert_array_equal(sa[key], sb[key])
        img, boxes, labels, masks = sa["image"], sa["boxes"], sa["labels"], sa["masks"]
        assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
        n = len(labels)
        assert 1 <= n <= 4
        assert boxes.shape == (n, 4) and boxes.dtype == np.float32
        assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1, 2}
        assert masks.shape == (n, 128, 128) and masks.dtype == bool
        assert masks.sum(0).max() <= 1  # instances do not overlap
        for box, mask in zip(boxes, masks):
            x1, y1, x2, y2 = box.astype(int)
            assert 8 <= x2 - x1 <= 90 and 8 <= y2 - y1 <= 90
            inside = np.zeros_like(mask)
            inside[y1:y2, x1:x2] = True
            assert not (mask & ~inside).any()  # the mask lies inside its box
            # the box is tight: the mask touches all four edges
            assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()
            assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()
    assert any(not np.array_equal(a[i]["image"], other[i]["image"]) for i in range(3))
    assert np.array_equal(a[-1]["image"], a[11]["image"])
    with pytest.raises(IndexError):
        a[12]
    s = make_sample(np.random.default_rng(0), size=96)
    assert s["image"].shape == (96, 96, 3) and s["masks"].shape[1:] == (96, 96)
    # all classes appear, colours do not give the class away
    ds = ShapesDataset(60, seed=1)
    labels = np.concatenate([ds[i]["labels"] for i in range(60)])
    assert np.bincount(labels, minlength=3).min() > 10


def test_write_shapes_images(tmp_path):
    paths = write_shapes_images(tmp_path / "imgs", n=3, seed=2)
    assert len(paths) == 3
    ds = ShapesDataset(3, seed=2)
    for i, p in enumerate(paths):
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(img, ds[i]["image"])


# ------------------------------------------------------------------------------- boxes, NMS
def _iou64(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_reference(boxes, scores, labels, thr):
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(labels[j] != labels[i] or _iou64(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 60))
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(1, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        if trial % 3 == 0 and n > 3:  # identical boxes, equal scores, touching boxes
            boxes[1] = boxes[0]
            boxes[2] = [boxes[0, 2], boxes[0, 1], boxes[0, 2] + 10, boxes[0, 3]]
        scores = rng.uniform(0, 1, n).astype(np.float32)
        if trial % 3 == 0 and n > 3:
            scores[1] = scores[0]
        labels = rng.integers(0, 1 if trial % 2 else 3, n)
        got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
        assert got.dtype == torch.int64
        assert got.tolist() == _nms_reference(boxes, scores, labels, 0.5)
    # class-agnostic, identical and touching boxes
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 10, 10.]])
    s = torch.tensor([0.5, 0.9, 0.8, 0.9])
    assert nms(b, s, None, 0.5).tolist() == [1, 2]
    assert nms(b, s, torch.tensor([0, 0, 0, 1]), 0.5).tolist() == [1, 3, 2]
    empty = nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_box_encode_decode_roundtrip():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.rand(50, 2, generator=g) * 100, torch.zeros(50, 2)], 1)
    anchors[:, 2:] = anchors[:, :2] + 5 + torch.rand(50, 2, generator=g) * 80
    boxes = torch.cat([torch.rand(50, 2, generator=g) * 100, torch.zeros(50, 2)], 1)
    boxes[:, 2:] = boxes[:, :2] + 2 + torch.rand(50, 2, generator=g) * 80
    torch.testing.assert_close(decode_boxes(anchors, encode_boxes(anchors, boxes)), boxes, atol=1e-4, rtol=1e-5)
    assert torch.isfinite(decode_boxes(anchors, torch.full((50, 4), 100.0))).all()  # dw, dh clamped
    iou = box_iou(boxes, boxes)
    torch.testing.assert_close(iou.diagonal(), torch.ones(50))


# ------------------------------------------------------------------------------- detector
def _check_dets(dets, batch, hw=None):
    assert isinstance(dets, list) and len(dets) == batch
    for d in dets:
        n = d["scores"].shape[0]
        assert d["boxes"].shape == (n, 4) and d["boxes"].dtype == torch.float32
        assert d["scores"].dtype == torch.float32 and d["labels"].dtype == torch.int64
        assert d["labels"].shape == (n,)
        if hw is not None:
            assert d["masks"].shape == (n, *hw) and d["masks"].dtype == torch.float32
            if n:
                assert 0 <= float(d["masks"].min()) and float(d["masks"].max()) <= 1


def test_detector_outputs_and_head_layout():
    torch.manual_seed(0)
    det = ShapesDetector(score_threshold=0.0)
    assert not det.training
    spec = det.xaifast_spec()
    assert spec == {"task": "detection", "cls_outputs": "head.cls_logits", "num_anchors": [3, 3, 3], "num_classes": 3,
                    "features": "neck", "labels": SHAPE_CLASSES, "score_threshold": 0.0}
    calls, neck_out = [], []
    h1 = det.head.cls_logits.register_forward_hook(lambda m, a, o: calls.append(o))
    h2 = det.neck.register_forward_hook(lambda m, a, o: neck_out.append(o))
    for b in (1, 3):
        calls.clear()
        neck_out.clear()
        x = torch.randn(b, 3, 128, 128)
        dets = det(x)
        _check_dets(dets, b)
        assert all(0 < len(d["scores"]) <= det.max_detections for d in dets)
        assert [tuple(c.shape) for c in calls] == [(b, 9, 16, 16), (b, 9, 8, 8), (b, 9, 4, 4)]
        assert len(neck_out) == 1 and isinstance(neck_out[0], (list, tuple)) and len(neck_out[0]) == 3
        cls_levels, box_levels = det.forward_heads(x)
        for c, ref in zip(cls_levels, calls):
            torch.testing.assert_close(c, ref)
        assert [tuple(t.shape) for t in box_levels] == [(b, 12, 16, 16), (b, 12, 8, 8), (b, 12, 4, 4)]
    h1.remove()
    h2.remove()
    # other sizes divisible by 32
    _check_dets(det(torch.randn(2, 3, 96, 160)), 2)
    with pytest.raises(XaifastError):
        det(torch.randn(1, 3, 100, 128))
    # nothing above the threshold: empty tensors of the right shapes
    det.score_threshold = 1.0
    for d in det(torch.randn(2, 3, 64, 64)):
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,) and d["labels"].shape == (0,)
        assert d["labels"].dtype == torch.int64 and d["boxes"].dtype == torch.float32


@pytest.mark.parametrize("level,anchor,cls,y,x", [(0, 0, 2, 3, 5), (1, 2, 1, 6, 1), (2, 1, 0, 0, 3)])
def test_channel_layout_is_anchor_major(level, anchor, cls, y, x):
    """Channel a*K + k of cls_logits is anchor a, class k: one hot logit gives that anchor's box and class."""
    det = ShapesDetector()
    k = det.num_classes
    hw = [(16, 16), (8, 8), (4, 4)]
    cls_levels = [torch.full((1, 3 * k, h, w), -20.0) for h, w in hw]
    box_levels = [torch.zeros(1, 12, h, w) for h, w in hw]
    cls_levels[level][0, anchor * k + cls, y, x] = 5.0
    out = det.postprocess(cls_levels, box_levels, (128, 128))[0]
    assert out["labels"].tolist() == [cls]
    stride = det.strides[level]
    cx, cy, half = (x + 0.5) * stride, (y + 0.5) * stride, stride * 2 ** (anchor / 3)
    expected = torch.tensor([cx - half, cy - half, cx + half, cy + half]).clamp(0, 128)
    torch.testing.assert_close(out["boxes"][0], expected)
    torch.testing.assert_close(make_anchors(hw)[level].reshape(*hw[level], 3, 4)[y, x, anchor].clamp(0, 128),
                               expected)


def test_segmenter_outputs():
    torch.manual_seed(0)
    seg = ShapesInstanceSegmenter(score_threshold=0.0)
    spec = seg.xaifast_spec()
    assert spec == {"task": "instance_segmentation", "num_classes": 3, "labels": SHAPE_CLASSES,
                    "score_threshold": 0.0, "features": "detector.neck"}
    seg.get_submodule(spec["features"])
    for b in (1, 3):
        out = seg(torch.randn(b, 3, 128, 128))
        _check_dets(out, b, (128, 128))
        assert all(len(d["scores"]) > 0 for d in out)
        d = out[0]
        box = d["boxes"][0]
        m = d["masks"][0]
        ys, xs = torch.nonzero(m > 0, as_tuple=True)
        if len(xs):  # zero outside the (slightly grown) box
            assert xs.min() + 0.5 >= box[0] - seg.box_margin and xs.max() + 0.5 <= box[2] + seg.box_margin
            assert ys.min() + 0.5 >= box[1] - seg.box_margin and ys.max() + 0.5 <= box[3] + seg.box_margin
    seg.score_threshold = 1.0
    for d in seg(torch.randn(2, 3, 64, 96)):
        assert d["masks"].shape == (0, 64, 96) and d["boxes"].shape == (0, 4)
        assert d["labels"].dtype == torch.int64


def test_missing_weights_error():
    with pytest.raises(XaifastError, match="missing"):
        _load_weights(ShapesDetector(), "no_such_weights.pt")


# ------------------------------------------------------------------------------- pretrained quality
def _match(out, sample):
    """Per true shape: the IoU-0.5, same-label detection it matched (greedy by score), or None."""
    gt_boxes = torch.from_numpy(sample["boxes"])
    gt_labels = torch.from_numpy(sample["labels"])
    matched = [None] * len(gt_labels)
    if len(out["labels"]):
        iou = box_iou(out["boxes"], gt_boxes)
        iou[out["labels"][:, None] != gt_labels[None, :]] = 0
        for d in range(len(out["labels"])):
            for g in torch.argsort(iou[d], descending=True).tolist():
                if matched[g] is None and iou[d, g] >= 0.5:
                    matched[g] = d
                    break
    return matched


def test_pretrained_detector_finds_shapes():
    det = ShapesDetector(pretrained=True)
    ds = ShapesDataset(12, seed=HELD_OUT_SEED)
    samples = [ds[i] for i in range(12)]
    with torch.no_grad():
        outs = det(_input(samples))
    _check_dets(outs, 12)
    found = total = extra = 0
    for out, s in zip(outs, samples):
        m = _match(out, s)
        found += sum(v is not None for v in m)
        total += len(m)
        extra += len(out["labels"]) - sum(v is not None for v in m)
    assert found / total >= 0.8, (found, total)
    assert extra <= 0.25 * total, (extra, total)


def test_pretrained_segmenter_masks():
    seg = ShapesInstanceSegmenter(pretrained=True)
    ds = ShapesDataset(8, seed=HELD_OUT_SEED + 1)
    samples = [ds[i] for i in range(8)]
    with torch.no_grad():
        outs = seg(_input(samples))
    _check_dets(outs, 8, (128, 128))
    ious, total = [], 0
    for out, s in zip(outs, samples):
        m = _match(out, s)
        total += len(m)
        for g, d in enumerate(m):
            if d is not None:
                pm, tm = out["masks"][d].numpy() > 0.5, s["masks"][g]
                ious.append((pm & tm).sum() / max((pm | tm).sum(), 1))
    assert len(ious) >= 0.8 * total
    assert np.mean(ious) >= 0.6 and min(ious) >= 0.3, ious
    assert math.isfinite(float(np.mean(ious)))
