"""Small test models with the detector and instance-segmentation protocols (random weights, fast)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ToyNeck(nn.Module):
    """3-level pyramid from a conv stem: strides 4, 8, 16 of the input."""

    def __init__(self, channels: int = 8, levels: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(levels - 1))

    def forward(self, x):
        feats = [torch.relu(self.stem(x))]
        for down in self.downs:
            feats.append(torch.relu(down(feats[-1])))
        return feats


class ToyHead(nn.Module):
    def __init__(self, channels: int, anchors: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(channels, anchors * num_classes, 3, padding=1)  # shared over levels

    def forward(self, feats):
        return [self.cls(f) for f in feats]


class ToyDetector(nn.Module):
    """Detections: every (cell, anchor, class) whose sigmoid score passes `threshold`, as a box of the
    cell's size in input pixels (no NMS: enough to test the protocol)."""

    def __init__(self, num_classes: int = 4, anchors: int = 2, levels: int = 3, threshold: float = 0.55,
                 channels: int = 8):
        super().__init__()
        self.num_classes, self.anchors, self.threshold = num_classes, anchors, threshold
        self.neck = ToyNeck(channels, levels)
        self.head = ToyHead(channels, anchors, num_classes)

    def forward(self, x):
        levels = self.head(self.neck(x))
        out = []
        for b in range(x.shape[0]):
            boxes, scores, labels = [], [], []
            for lvl in levels:
                a_k, h, w = lvl.shape[1:]
                sy, sx = x.shape[2] / h, x.shape[3] / w
                prob = torch.sigmoid(lvl[b].reshape(self.anchors, self.num_classes, h, w)).amax(0)  # [K, h, w]
                k, i, j = torch.nonzero(prob >= self.threshold, as_tuple=True)
                scores.append(prob[k, i, j])
                labels.append(k)
                boxes.append(torch.stack([j * sx, i * sy, (j + 1) * sx, (i + 1) * sy], dim=1).float())
            out.append({"boxes": torch.cat(boxes), "scores": torch.cat(scores), "labels": torch.cat(labels)})
        return out


class ToyInstanceSegmenter(nn.Module):
    """Returns `n` instances per image: masks = sigmoid of a conv's channels, scores and labels from
    the pooled input (deterministic per image), plus its pyramid via `neck`."""

    def __init__(self, num_classes: int = 3, instances: int = 4):
        super().__init__()
        self.num_classes, self.instances = num_classes, instances
        self.neck = ToyNeck(8, 3)
        self.masks = nn.Conv2d(3, instances, 3, padding=1)
        self.scores = nn.Linear(3, instances)
        self.labels = nn.Linear(3, instances * num_classes)

    def forward(self, x):
        self.neck(x)
        masks = torch.sigmoid(self.masks(x))
        pooled = x.mean(dim=(2, 3))
        scores = torch.sigmoid(self.scores(pooled))
        labels = self.labels(pooled).reshape(-1, self.instances, self.num_classes).argmax(-1)
        return [{"boxes": torch.zeros(self.instances, 4), "scores": scores[b], "labels": labels[b],
                 "masks": masks[b]} for b in range(x.shape[0])]


class EmptyDetector(ToyDetector):
    """Never detects anything."""

    def __init__(self, **kw):
        super().__init__(threshold=2.0, **kw)


def interpolate_reference_levels(levels, anchors, size=None):
    """Independent float64 twin via F.interpolate (for cross-checks only)."""
    k = levels[0].shape[1] // anchors[0]
    size = size or tuple(levels[len(levels) // 2].shape[2:])
    maxed = [lvl.double().reshape(lvl.shape[0], a, k, *lvl.shape[2:]).amax(1) for lvl, a in zip(levels, anchors)]
    return torch.stack([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maxed]).mean(0)
