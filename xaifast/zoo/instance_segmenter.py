"""ShapesInstanceSegmenter: the ShapesDetector plus a small mask head.

The mask head turns P3 (stride 8) and the backbone's C2 (stride 4) into per-class semantic mask
logits [B, K, H/4, W/4], upsampled bilinearly to the input size. Instance n (a detection with
box_n, label_n) gets mask_n = sigmoid(mask_logits[label_n]), zeroed outside box_n grown by
`box_margin` pixels (a pixel is inside when its centre is). Simple and honest: it relies on the
detector's boxes to separate instances, which suits the non-overlapping shapes it is trained on.

Eval `forward(x)` returns one dict per image {"boxes" [N, 4], "scores" [N], "labels" [N] int64,
"masks" [N, H, W] float in [0, 1] at the input resolution}. Same input convention as the
detector: RGB, (pixel - 127.5) / 127.5, 128 x 128 for the shipped weights, H and W divisible by 32.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XaifastError
from .detector import ShapesDetector, _load_weights


class MaskHead(nn.Module):
    """[C2 (stride 4), P3 (stride 8)] -> per-class mask logits [B, K, H/4, W/4]."""

    def __init__(self, c2_channels: int, p3_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.p3 = nn.Sequential(nn.Conv2d(p3_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                nn.ReLU(inplace=True))
        self.c2 = nn.Sequential(nn.Conv2d(c2_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.mask_logits = nn.Conv2d(width, num_classes, 1)

    def forward(self, c2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.p3(p3), size=c2.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_logits(self.fuse(up + self.c2(c2)))


class ShapesInstanceSegmenter(nn.Module):
    """ShapesDetector (`detector`) + MaskHead (`mask_head`); see the module docstring."""

    def __init__(self, num_classes: int = 3, pretrained: bool = False, score_threshold: float = 0.3,
                 box_margin: float = 2.0):
        super().__init__()
        self.detector = ShapesDetector(num_classes, pretrained=False, score_threshold=score_threshold)
        self.mask_head = MaskHead(self.detector.backbone.out_channels[0], self.detector.head.cls_logits.in_channels,
                                  num_classes)
        self.box_margin = float(box_margin)
        if pretrained:
            if num_classes != 3:
                raise XaifastError(f"the pretrained ShapesInstanceSegmenter has 3 classes, not {num_classes}")
            _load_weights(self, "shapes_instseg.pt")
        self.eval()

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    @property
    def score_threshold(self) -> float:
        return self.detector.score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self.detector.score_threshold = float(value)

    def xaifast_spec(self) -> Dict:
        return {"task": "instance_segmentation", "num_classes": self.num_classes, "labels": self.detector.labels,
                "score_threshold": self.score_threshold, "features": "detector.neck"}

    def forward_train(self, x: torch.Tensor):
        """(cls_levels, box_levels, mask logits [B, K, H, W] at the input resolution)."""
        feats, pyramid = self.detector.features(x)
        cls_levels, box_levels = self.detector.head(pyramid)
        masks = F.interpolate(self.mask_head(feats[0], pyramid[0]), size=x.shape[-2:], mode="bilinear",
                              align_corners=False)
        return cls_levels, box_levels, masks

    def forward(self, x: torch.Tensor):
        cls_levels, box_levels, mask_logits = self.forward_train(x)
        if self.training:
            return cls_levels, box_levels, mask_logits
        dets = self.detector.postprocess(cls_levels, box_levels, tuple(x.shape[-2:]))
        return [self._instances(d, m) for d, m in zip(dets, mask_logits)]

    @torch.no_grad()
    def _instances(self, det: Dict[str, torch.Tensor], mask_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = mask_logits.shape[-2:]
        boxes, labels = det["boxes"], det["labels"]
        probs = mask_logits.float().sigmoid()[labels]  # [N, H, W]
        ys = torch.arange(h, device=probs.device, dtype=torch.float32) + 0.5
        xs = torch.arange(w, device=probs.device, dtype=torch.float32) + 0.5
        m = self.box_margin
        inside_x = (xs[None, :] >= boxes[:, 0:1] - m) & (xs[None, :] <= boxes[:, 2:3] + m)  # [N, W]
        inside_y = (ys[None, :] >= boxes[:, 1:2] - m) & (ys[None, :] <= boxes[:, 3:4] + m)  # [N, H]
        inside = inside_y[:, :, None] & inside_x[:, None, :]
        out = dict(det)
        out["masks"] = (probs * inside).reshape(-1, h, w)
        return out
