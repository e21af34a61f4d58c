"""Built-in small CNN classifiers: tests, examples and the CLI's quick checks use them.

SmallCNN: conv features -> GAP -> linear (the classic GAP head).
ConvHeadCNN: conv features -> a conv block -> GAP -> linear; explaining at `features` gives a
head that is not GAP-first, so Recipro-CAM runs the general mosaic path.
"""
from __future__ import annotations

from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Input [B, 3, H, W] -> features [B, width*4, H/8, W/8] -> logits [B, num_classes]."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_conv(3, width, 2), _conv(width, width * 2, 2), _conv(width * 2, width * 4, 2),
                                      _conv(width * 4, width * 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


class ConvHeadCNN(nn.Module):
    """SmallCNN with a convolutional block between the features and the pooling."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_conv(3, width, 2), _conv(width, width * 2, 2), _conv(width * 2, width * 4, 2))
        self.neck = nn.Sequential(_conv(width * 4, width * 4), nn.Conv2d(width * 4, width * 4, 1))
        self.classifier = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        x = self.neck(self.features(x))
        return self.classifier(x.mean(dim=(2, 3)))
