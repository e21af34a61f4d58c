"""Finding the target layer: the module whose output is the feature map to explain.

A probe forward pass records every module call's output. The default target is the module whose
call produced the last feature map `[B, C, H, W]` with C > H, W (and H*W > 1 when there is one):
for a container and its last child that produce the same tensor, the container (outermost name)
is chosen. A module called several times is split at its last call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..errors import TargetLayerError


@dataclass(frozen=True)
class LayerCall:
    name: str
    call_index: int  # which call of that module (0-based)
    shape: Tuple[int, ...]
    order: int  # completion order in the forward pass

    @property
    def is_feature_map(self) -> bool:
        return len(self.shape) == 4 and self.shape[1] > self.shape[2] and self.shape[1] > self.shape[3]


@dataclass(frozen=True)
class TargetLayer:
    name: str
    call_index: int
    shape: Tuple[int, ...]


def probe_calls(model: nn.Module, sample: torch.Tensor) -> List[LayerCall]:
    """Run the model once and record (name, call index, output shape) of every module call."""
    calls: List[LayerCall] = []
    counts: dict = {}
    handles = []

    def make_hook(name):
        def hook(_module, _args, output):
            index = counts.get(name, 0)
            counts[name] = index + 1
            if isinstance(output, torch.Tensor):
                calls.append(LayerCall(name, index, tuple(output.shape), len(calls)))
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return calls


def candidate_names(calls: List[LayerCall], limit: int = 12) -> List[str]:
    """Names of modules that output a feature map, the most likely targets last."""
    names: List[str] = []
    for call in calls:
        if call.is_feature_map and call.name not in names:
            names.append(call.name)
    return names[-limit:]


def choose_target(model: nn.Module, calls: List[LayerCall], target_layer: Optional[str]) -> TargetLayer:
    """Resolve the user's target_layer (or detect one) against the probe's calls."""
    known = dict(model.named_modules())
    if target_layer is not None:
        if target_layer not in known or target_layer == "":
            hint = ", ".join(candidate_names(calls)) or "none found"
            raise TargetLayerError(
                f"unknown target layer {target_layer!r}: the model has no module of that name. "
                f"Modules that output a feature map [B, C, H, W] (last ones are usual targets): {hint}")
        mine = [c for c in calls if c.name == target_layer]
        if not mine:
            raise TargetLayerError(
                f"target layer {target_layer!r} is never called in the forward pass (or does not return a "
                f"tensor); pick one of: {', '.join(candidate_names(calls)) or 'none found'}")
        last = mine[-1]
        if len(last.shape) != 4:
            raise TargetLayerError(
                f"target layer {target_layer!r} outputs shape {list(last.shape)} (rank {len(last.shape)}); "
                "Recipro-CAM, activationmap and eigencam need a CNN feature map [B, C, H, W]. "
                f"Pick a convolutional layer such as: {', '.join(candidate_names(calls)) or 'none found'} "
                "(transformer token outputs [B, N, D] are explained with vit_recipro_cam)")
        return TargetLayer(last.name, last.call_index, last.shape)
    features = [c for c in calls if c.is_feature_map]
    if not features:
        shapes = sorted({len(c.shape) for c in calls})
        raise TargetLayerError(
            "could not detect a target layer: no module outputs a feature map [B, C, H, W] with C > H, W "
            f"(output ranks seen: {shapes}). Pass target_layer='module.name', or backbone= and head=")
    spatial = [c for c in features if c.shape[2] * c.shape[3] > 1]
    best = (spatial or features)[-1]
    return TargetLayer(best.name, best.call_index, best.shape)
