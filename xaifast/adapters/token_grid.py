"""Hierarchical and windowed transformers (Hugging Face Swin, Swinv2, look-alikes): models whose
last stage is a token grid [B, H*W, C] (row-major cells) followed by a norm, pooling and a linear
head. They are explained as CNNs (SPEC.md's `recipro_cam`): the target is the output of the final
norm, read as the feature map [B, C, H, W]; the head (pooling, linear) is cut from the model's graph
with that feature map as its input, so the GAP shortcut applies (the head is pool then linear) and
the masked maps are `F * m_p` with the 1x1 mask by default. A ViT (one block list, a CLS-token
head) is explained with `vit_recipro_cam` instead; what decides is `is_token_grid_model`.

The grid: the patch embedding's Conv2d output gives (H0, W0); each later stage halves it (patch
merging pads odd sizes, so halving rounds up; rounding down is tried next); the first size whose
H*W is the token count is the grid. Without a Conv2d patch embedding, a square token count is a
square grid.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data import Preprocess
from ..errors import ModelSplitError, TargetLayerError
from .base import model_fingerprint, module_list
from .classifier import ClassifierAdapter, _SplitState
from .head_graph import Head, extract_logits, split_model
from .target_layer import LayerCall, TargetLayer, probe_calls


@dataclass(frozen=True)
class TokenGrid:
    """How token outputs [B, H*W, C] (cell (i, j) = token i*W + j) are read as feature maps."""

    h: int
    w: int

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, H*W, C] -> [B, C, H, W] (a view: channels-last strides)."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], self.h, self.w)

    def to_tokens(self, feature: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, H*W, C]."""
        return feature.flatten(2).transpose(1, 2)


def _block_prefixes(model: nn.Module) -> List[str]:
    from .vit import find_block_lists

    prefixes = []
    for name, blocks in find_block_lists(model):
        prefixes += [f"{name}.{i}" if name else str(i) for i in range(len(blocks))]
    return prefixes


def is_token_grid_model(model, target_layer: Optional[str] = None) -> bool:
    """Whether `model` is explained as a token-grid model (Recipro-CAM on the last stage's tokens):
    it has transformer blocks (adapters.vit's recognition) and either several block lists (a
    hierarchical model: one list per stage) or no ViT head (vit.describe_model finds none). A
    `target_layer` inside a block list keeps the ViT path (vit_recipro_cam's target block); any
    other module of a token-grid model (e.g. its final norm) is a token-grid target."""
    from .vit import describe_model, find_block_lists, is_transformer

    if not isinstance(model, nn.Module):
        return False
    lists = find_block_lists(model)
    if not lists:
        return False
    if target_layer is not None and is_transformer(model, target_layer):
        return False
    if len(lists) >= 2:
        return True
    try:
        describe_model(model)
    except ModelSplitError:
        return True
    except TargetLayerError:
        return False
    return False


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def choose_token_target(model: nn.Module, calls: List[LayerCall], target_layer: Optional[str]) -> TargetLayer:
    """The user's target layer, or the last module after the last transformer block whose output is
    tokens [B, N, C] (N, C > 1): the final norm of a Swin-like model."""
    if target_layer is not None:
        if target_layer not in dict(model.named_modules()) or target_layer == "":
            raise TargetLayerError(f"unknown target layer {target_layer!r}: the model has no module of that name")
        mine = [c for c in calls if c.name == target_layer]
        if not mine:
            raise TargetLayerError(f"target layer {target_layer!r} is never called in the forward pass (or does not "
                                   "return a tensor)")
        last = mine[-1]
        if len(last.shape) not in (3, 4):
            raise TargetLayerError(f"target layer {target_layer!r} outputs shape {list(last.shape)}; Recipro-CAM "
                                   "needs tokens [B, H*W, C] or a feature map [B, C, H, W]")
        return TargetLayer(last.name, last.call_index, last.shape)
    prefixes = _block_prefixes(model)
    inside = [c.order for c in calls if _inside(c.name, prefixes)]
    after = max(inside) if inside else -1
    tokens = [c for c in calls if c.order > after and len(c.shape) == 3 and c.shape[1] > 1 and c.shape[2] > 1
              and not _inside(c.name, prefixes)]
    if not tokens:
        seen = ", ".join(f"{c.name} {list(c.shape)}" for c in calls if c.order > after) or "none"
        raise ModelSplitError(
            f"{type(model).__name__}: no module after the last transformer block outputs tokens [B, H*W, C] "
            f"(outputs seen after it: {seen}). A token-grid model (Swin-like) ends with its last stage's tokens, "
            "a norm, pooling and a linear head; pass target_layer='<the final norm>'")
    best = tokens[-1]
    return TargetLayer(best.name, best.call_index, best.shape)


def infer_grid(n: int, patch_grid: Optional[Tuple[int, int]]) -> TokenGrid:
    """The grid of n row-major tokens (see the module docstring)."""
    if patch_grid is not None:
        for rounding in (math.ceil, math.floor):
            h, w = patch_grid
            while h >= 1 and w >= 1 and h * w >= n:
                if h * w == n:
                    return TokenGrid(h, w)
                if h == 1 and w == 1:
                    break
                h, w = max(1, rounding(h / 2)), max(1, rounding(w / 2))
    side = math.isqrt(n)
    if side * side == n:
        return TokenGrid(side, side)
    raise ModelSplitError(
        f"cannot tell the grid of {n} tokens: the patch embedding's grid {list(patch_grid) if patch_grid else 'unknown'} "
        "halved stage by stage never has that many cells, and it is not a square; a token-grid model needs "
        "[B, H*W, C] tokens in row-major order")


@dataclass
class _TokenState(_SplitState):
    layouts: Dict[Tuple[int, int], Optional[TokenGrid]] = field(default_factory=dict)


_STATES: "weakref.WeakKeyDictionary[nn.Module, Dict[Optional[str], _TokenState]]" = weakref.WeakKeyDictionary()


class TokenGridAdapter(ClassifierAdapter):
    """A token-grid classifier explained as a CNN: forward gives the final norm's output as a
    feature map [B, C, H, W] and the logits; head() is the model after that norm (pooling, linear),
    cut from its graph with the feature map as input."""

    kind = "cnn_classifier"

    def __init__(self, model: nn.Module, *, target_layer: Optional[str] = None,
                 preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None):
        if not isinstance(model, nn.Module):
            raise ModelSplitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.target_layer = target_layer
        self.backbone = self.user_head = None
        self.preprocess = preprocess or Preprocess()
        self.labels = list(labels) if labels is not None else None
        modules = module_list(model)
        if any(m.training for m in modules):  # (eval() walks every module: ms per call)
            model.eval()
        states = _STATES.setdefault(model, {})
        fingerprint = model_fingerprint(model, modules)
        state = states.get(target_layer)
        if state is None or state.fingerprint != fingerprint:
            state = states[target_layer] = _TokenState(fingerprint)
        self._state = state

    def layout_for(self, feature: torch.Tensor) -> Optional[TokenGrid]:
        """The TokenGrid of feature maps of this size (None: the target outputs a feature map itself)."""
        return self._state.layouts.get(tuple(feature.shape[2:]))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the target's output as a feature map [B, C, H, W], logits [B, K]) in one forward pass."""
        x = x.to(self.device)
        state = self._state
        if state.target is None:
            state.target = choose_token_target(self.model, probe_calls(self.model, x[:1]), self.target_layer)
        captured: List[torch.Tensor] = []
        patch_grid: List[Tuple[int, int]] = []
        calls = [0]

        def on_target(_module, _args, output):
            if calls[0] == state.target.call_index:
                captured.append(output)
            calls[0] += 1

        def on_conv(_module, _args, output):
            if not patch_grid and not captured and isinstance(output, torch.Tensor) and output.dim() == 4:
                patch_grid.append((int(output.shape[2]), int(output.shape[3])))

        handles = [m.register_forward_hook(on_conv) for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        handles.append(self.model.get_submodule(state.target.name).register_forward_hook(on_target))
        try:
            with torch.no_grad():
                logits = extract_logits(self.model(x))
        finally:
            for h in handles:
                h.remove()
        out = captured[0] if captured else None
        if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TargetLayerError(f"target layer {state.target.name!r} produced {got}, not tokens [B, H*W, C] or a "
                                   "feature map [B, C, H, W]")
        if out.dim() == 4:
            layout, feature = None, out
        else:
            layout = infer_grid(int(out.shape[1]), patch_grid[0] if patch_grid else None)
            feature = layout.to_map(out)
        key = tuple(feature.shape[2:])
        state.layouts[key] = layout
        if key not in state.heads:
            state.inputs.setdefault(key, x[:2])
        return feature, logits

    def _head_for(self, feature: torch.Tensor) -> Head:
        key = tuple(feature.shape[2:])
        state = self._state
        if key not in state.heads:
            if key not in state.inputs:
                raise ModelSplitError("internal: call forward() on an input before asking for its head")
            sample = state.inputs.pop(key)
            state.heads[key] = split_model(self.model, state.target.name, state.target.call_index, sample,
                                           layout=state.layouts.get(key))
        return state.heads[key]


__all__ = ["TokenGrid", "TokenGridAdapter", "is_token_grid_model", "choose_token_target", "infer_grid"]
