"""ShapesDetector: a small single-stage (RetinaNet / ATSS-like) detector in plain PyTorch.

Backbone (conv + BN + ReLU, strides 2..32) -> FPN `neck` (P3, P4, P5 at strides 8, 16, 32) ->
a head shared across levels: a classification tower + `head.cls_logits` (A*K channels, channel
a*K + k = anchor a, class k, sigmoid scores, focal-loss prior bias) and a box tower +
`head.bbox_pred` (A*4 channels, RetinaNet deltas dx, dy, dw, dh per anchor). A = 3 square anchors
per location of sizes 2*stride * (1, 2^(1/3), 2^(2/3)), centred at ((x + 0.5) * stride, (y + 0.5) * stride).

`forward(x)` in eval mode returns one dict per image {"boxes" [N, 4] float xyxy input pixels,
"scores" [N] float, "labels" [N] int64} after a score threshold, per-class greedy NMS (IoU > 0.5
suppresses) written in PyTorch and a cap of `max_detections`. In training mode it returns what
`forward_heads` returns. The explainer reads `head.cls_logits` (called once per level, P3, P4, P5)
and the `neck` output [P3, P4, P5]; `xaifast_spec()` says so.

Input: RGB, x = (pixel - 127.5) / 127.5 (SHAPES_PREPROCESS), 128 x 128 for the shipped weights;
any height and width divisible by 32 work.
Trained on the synthetic shapes of `xaifast.zoo.shapes` by `xaifast.zoo.train_shapes`.
"""
from __future__ import annotations

import math
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Preprocess
from ..errors import XaifastError
from .shapes import SHAPE_CLASSES

NUM_ANCHORS = 3
STRIDES = (8, 16, 32)
ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
BBOX_CLAMP = math.log(1000.0 / 16)
INPUT_SIZE = 128
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5


# The shipped weights' input: RGB resized to 128 x 128, x = (pixel - 127.5) / 127.5.
SHAPES_PREPROCESS = Preprocess(input_size=(INPUT_SIZE, INPUT_SIZE), mean=(PIXEL_MEAN,) * 3, std=(PIXEL_STD,) * 3)


def preprocess_image(image) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> normalized [1, 3, 128, 128] float32 tensor (SHAPES_PREPROCESS)."""
    return SHAPES_PREPROCESS(image)[None]


# ------------------------------------------------------------------------------- box utilities
def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] of xyxy boxes; 0 where the union is empty."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def encode_boxes(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """RetinaNet deltas (dx, dy, dw, dh) taking `anchors` [..., 4] to `boxes` [..., 4] (xyxy)."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    bx, by = boxes[..., 0] + 0.5 * bw, boxes[..., 1] + 0.5 * bh
    return torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=-1)


def decode_boxes(anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_boxes`; dw, dh are clamped at log(1000 / 16) as in RetinaNet."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    dw = deltas[..., 2].clamp(max=BBOX_CLAMP)
    dh = deltas[..., 3].clamp(max=BBOX_CLAMP)
    cx, cy = ax + deltas[..., 0] * aw, ay + deltas[..., 1] * ah
    w, h = aw * torch.exp(dw), ah * torch.exp(dh)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: Optional[torch.Tensor] = None,
        iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy NMS, per class when `labels` is given: indices of the kept boxes, best score first.

    Boxes are visited by descending score (ties: lower index first); a box is dropped when its IoU
    with an already kept box of the same class is > iou_threshold (torchvision's convention).
    """
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    over = box_iou(b, b) > iou_threshold
    if labels is not None:
        lab = labels[order]
        over &= lab[:, None] == lab[None, :]
    over = over.cpu()
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def make_anchors(feature_hw: Sequence[Tuple[int, int]], strides: Sequence[int] = STRIDES,
                 device=None, dtype=torch.float32) -> List[torch.Tensor]:
    """Anchors per level, [H_l * W_l * A, 4] xyxy, ordered (y, x, anchor) as the head's outputs."""
    out = []
    for (h, w), s in zip(feature_hw, strides):
        sizes = torch.tensor([2.0 * s * k for k in ANCHOR_SCALES], device=device, dtype=dtype)
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        cx = cx.reshape(-1, 1).expand(-1, len(sizes))
        cy = cy.reshape(-1, 1).expand(-1, len(sizes))
        half = (sizes / 2)[None, :]
        out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4))
    return out


# ------------------------------------------------------------------------------- network
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """Plain conv + BN + ReLU stages; returns [C2, C3, C4, C5] at strides 4, 8, 16, 32."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96, 128)):
        super().__init__()
        w1, w2, w3, w4, w5 = widths
        self.stem = _conv(3, w1, 2)
        self.stage2 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))
        self.stage3 = nn.Sequential(_conv(w2, w3, 2), _conv(w3, w3))
        self.stage4 = nn.Sequential(_conv(w3, w4, 2), _conv(w4, w4))
        self.stage5 = nn.Sequential(_conv(w4, w5, 2), _conv(w5, w5))
        self.out_channels = (w2, w3, w4, w5)

    def forward(self, x):
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return [c2, c3, c4, c5]


class FPN(nn.Module):
    """[C3, C4, C5] -> [P3, P4, P5], `width` channels each (top-down nearest upsampling + 3x3 convs)."""

    def __init__(self, in_channels: Sequence[int], width: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in in_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [conv(t) for conv, t in zip(self.output, lat)]


def _tower(width: int, depth: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(8, width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Head(nn.Module):
    """Shared RetinaNet-style head: per level, cls_logits(cls_tower(P)) and bbox_pred(box_tower(P))."""

    def __init__(self, width: int, num_classes: int, num_anchors: int = NUM_ANCHORS, depth: int = 2,
                 prior_prob: float = 0.01):
        super().__init__()
        self.cls_tower = _tower(width, depth)
        self.box_tower = _tower(width, depth)
        self.cls_logits = nn.Conv2d(width, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(width, num_anchors * 4, 3, padding=1)
        for conv in (self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, levels: Sequence[torch.Tensor]):
        cls_out, box_out = [], []
        for p in levels:  # level order: cls_logits is called once per level, P3, P4, P5
            cls_out.append(self.cls_logits(self.cls_tower(p)))
            box_out.append(self.bbox_pred(self.box_tower(p)))
        return cls_out, box_out


def _load_weights(model: nn.Module, asset: str) -> None:
    ref = resources.files("xaifast").joinpath("assets", asset)
    if not ref.is_file():
        raise XaifastError(f"the pretrained weights xaifast/assets/{asset} are missing from this installation; "
                           f"train them with `python -m xaifast.zoo.train_shapes` or use pretrained=False")
    with resources.as_file(ref) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}  # stored as float16
    model.load_state_dict(state)


class ShapesDetector(nn.Module):
    """Single-stage detector for SHAPE_CLASSES (see the module docstring)."""

    def __init__(self, num_classes: int = 3, pretrained: bool = False, score_threshold: float = 0.3,
                 nms_threshold: float = 0.5, max_detections: int = 100, pre_nms_top_k: int = 1000,
                 width: int = 64):
        super().__init__()
        if pretrained and num_classes != len(SHAPE_CLASSES):
            raise XaifastError(f"the pretrained ShapesDetector has {len(SHAPE_CLASSES)} classes, not {num_classes}")
        self.num_classes = int(num_classes)
        self.num_anchors = NUM_ANCHORS
        self.strides = STRIDES
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_detections = int(max_detections)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.backbone = Backbone()
        self.neck = FPN(self.backbone.out_channels[1:], width)
        self.head = Head(width, self.num_classes, self.num_anchors)
        if pretrained:
            _load_weights(self, "shapes_detector.pt")
        self.eval()

    @property
    def labels(self) -> List[str]:
        return list(SHAPE_CLASSES) if self.num_classes == len(SHAPE_CLASSES) else [str(k) for k in
                                                                                  range(self.num_classes)]

    def xaifast_spec(self) -> Dict:
        return {"task": "detection", "cls_outputs": "head.cls_logits", "num_anchors": [self.num_anchors] * 3,
                "num_classes": self.num_classes, "features": "neck", "labels": self.labels,
                "score_threshold": self.score_threshold}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise XaifastError(f"ShapesDetector takes [B, 3, H, W] images, got shape {list(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise XaifastError(f"ShapesDetector needs H and W divisible by 32, got {x.shape[2]}x{x.shape[3]}")

    def features(self, x: torch.Tensor):
        """(backbone features [C2..C5], pyramid [P3, P4, P5])."""
        self._check_input(x)
        feats = self.backbone(x)
        return feats, self.neck(feats[1:])

    def forward_heads(self, x: torch.Tensor):
        """(cls_levels [B, A*K, H_l, W_l], box_levels [B, A*4, H_l, W_l]) for P3, P4, P5."""
        _, pyramid = self.features(x)
        return self.head(pyramid)

    def forward(self, x: torch.Tensor):
        cls_levels, box_levels = self.forward_heads(x)
        if self.training:
            return cls_levels, box_levels
        return self.postprocess(cls_levels, box_levels, tuple(x.shape[-2:]))

    # --------------------------------------------------------------------------- inference
    def flatten_levels(self, cls_levels, box_levels):
        """[B, sum_l H_l*W_l*A, K] logits, [B, ..., 4] deltas, anchors [..., 4], in (level, y, x, anchor) order."""
        b = cls_levels[0].shape[0]
        k, a = self.num_classes, self.num_anchors
        cls = torch.cat([c.reshape(b, a, k, *c.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(b, -1, k)
                         for c in cls_levels], dim=1)
        box = torch.cat([d.reshape(b, a, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
                         for d in box_levels], dim=1)
        anchors = torch.cat(make_anchors([c.shape[-2:] for c in cls_levels], self.strides,
                                         device=cls.device, dtype=cls.dtype), dim=0)
        return cls, box, anchors

    @torch.no_grad()
    def postprocess(self, cls_levels, box_levels, image_hw) -> List[Dict[str, torch.Tensor]]:
        k, a = self.num_classes, self.num_anchors
        h_img, w_img = image_hw
        hw = [c.shape[-2:] for c in cls_levels]
        anchors = make_anchors(hw, self.strides, device=cls_levels[0].device, dtype=torch.float32)
        results = []
        for i in range(cls_levels[0].shape[0]):
            all_boxes, all_scores, all_labels = [], [], []
            for lvl, (c, d) in enumerate(zip(cls_levels, box_levels)):
                scores = c[i].float().reshape(a, k, -1).permute(2, 0, 1).reshape(-1).sigmoid()  # (y, x, a, k)
                deltas = d[i].float().reshape(a, 4, -1).permute(2, 0, 1).reshape(-1, 4)
                cand = torch.nonzero(scores > self.score_threshold).squeeze(1)
                if cand.numel() > self.pre_nms_top_k:
                    cand = cand[torch.topk(scores[cand], self.pre_nms_top_k).indices]
                anchor_idx = torch.div(cand, k, rounding_mode="floor")
                boxes = decode_boxes(anchors[lvl][anchor_idx], deltas[anchor_idx])
                all_boxes.append(boxes)
                all_scores.append(scores[cand])
                all_labels.append(cand % k)
            boxes = torch.cat(all_boxes)
            boxes = torch.stack([boxes[:, 0].clamp(0, w_img), boxes[:, 1].clamp(0, h_img),
                                 boxes[:, 2].clamp(0, w_img), boxes[:, 3].clamp(0, h_img)], dim=1)
            scores, labels = torch.cat(all_scores), torch.cat(all_labels).to(torch.int64)
            keep = nms(boxes, scores, labels, self.nms_threshold)[: self.max_detections]
            results.append({"boxes": boxes[keep].reshape(-1, 4), "scores": scores[keep], "labels": labels[keep]})
        return results
