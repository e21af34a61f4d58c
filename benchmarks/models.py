"""Models and model pieces for the benchmarks (random init, eval mode, deterministic).

- `resnet50_sized()`: transformers `ResNetForImageClassification(ResNetConfig(num_labels=...))`;
  the config defaults are ResNet-50 (bottleneck blocks, depths [3, 4, 6, 3], widths
  [256, 512, 1024, 2048]). Note `ResNetConfig()` alone has `num_labels=2`; we ask for 1000.
- GAP-head case: the target layer is the last stage (auto-detected by xaifast:
  `GAP_TARGET`), feature [B, 2048, 7, 7], head = pooler (GAP) + classifier.
- Non-GAP-head case: target layer `NON_GAP_TARGET = "resnet.encoder.stages.2"`, feature
  [B, 1024, 14, 14], head = stage 3 + pooler + classifier (Recipro-CAM must re-run stage 3 on
  14*14 = 196 masked feature maps per image: the mosaic path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch
from torch import nn

GAP_TARGET = "resnet.encoder.stages.3"
NON_GAP_TARGET = "resnet.encoder.stages.2"
IMAGE_SIZE = 224
SEED = 0


def resnet50_sized(num_classes: int = 1000, seed: int = SEED) -> nn.Module:
    """A ResNet-50-sized classifier with random weights (seeded), in eval mode."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    model = ResNetForImageClassification(ResNetConfig(num_labels=num_classes))
    return model.eval()


def benchmark_input(batch: int, seed: int = SEED) -> torch.Tensor:
    """Deterministic input [batch, 3, 224, 224] (torch.randn under a fixed seed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def gap_head(model: nn.Module) -> nn.Module:
    """The head after GAP_TARGET as plain modules: pooler (AdaptiveAvgPool2d(1)) + classifier
    (Flatten + Linear). head(feature [N, 2048, 7, 7]) -> logits [N, K]."""
    return nn.Sequential(model.resnet.pooler, model.classifier).eval()


def non_gap_head(model: nn.Module) -> nn.Module:
    """The head after NON_GAP_TARGET: stage 3 + pooler + classifier.
    head(feature [N, 1024, 14, 14]) -> logits [N, K]."""
    return nn.Sequential(_StageOutput(model.resnet.encoder.stages[3]), model.resnet.pooler,
                         model.classifier).eval()


class _StageOutput(nn.Module):
    """A transformers ResNetStage returns a tensor; kept as a wrapper so the head stays a
    plain nn.Sequential whatever the stage returns."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def forward(self, x):
        out = self.stage(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def feature_and_logits(model: nn.Module, target: str) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """x -> (feature map of `target`, logits) from ONE forward of `model` with a forward hook
    (what a baseline explainer does before re-scoring masked feature maps)."""
    module = model.get_submodule(target)

    def run(x: torch.Tensor):
        captured: List[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _a, out: captured.append(out))
        try:
            with torch.no_grad():
                logits = model(x).logits
        finally:
            handle.remove()
        return captured[-1], logits

    return run


def write_images(x: torch.Tensor, folder: Path) -> Path:
    """The preprocessed batch `x` back as 8-bit PNG files image0000.png ... (undoing xaifast's
    default mean / std), for the benchmarks' folder patterns."""
    import cv2

    import xaifast

    folder.mkdir(parents=True, exist_ok=True)
    mean, std = np.float32(xaifast.Preprocess().mean), np.float32(xaifast.Preprocess().std)
    for i, t in enumerate(x.numpy()):
        rgb = np.clip(np.round(t.transpose(1, 2, 0) * std + mean), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"image{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder
