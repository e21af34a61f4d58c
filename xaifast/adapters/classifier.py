"""CNN classifier adapter: one forward gives the target feature map and the logits; the head
(everything after the target layer) re-scores masked feature maps.

Three ways to describe the model:
- `ClassifierAdapter(model, target_layer="layer4")`: the head is cut from the model's graph;
- `ClassifierAdapter(model)`: the target layer is detected (the last feature map [B, C, H, W]
  with C > H, W);
- `ClassifierAdapter(backbone=f, head=g)`: explicit callables, feature = f(x), logits = g(feature).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data import Preprocess
from ..errors import ModelSplitError, TargetLayerError
from .base import ModelAdapter, model_fingerprint, module_list
from .head_graph import Head, analyse_head, extract_logits, split_model
from .target_layer import TargetLayer, choose_target, probe_calls


@dataclass
class _SplitState:
    """What is learnt about a model once and reused by every later explain call on it: the
    target layer and the head cut per feature-map size. Valid while the model's modules and
    parameter objects are the same (in-place weight updates are fine: the head shares them)."""

    fingerprint: tuple
    target: Optional[TargetLayer] = None
    heads: Dict[Tuple[int, int], Head] = field(default_factory=dict)
    inputs: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict)  # a model input per feature size


_SPLITS: "weakref.WeakKeyDictionary[nn.Module, Dict[Optional[str], _SplitState]]" = weakref.WeakKeyDictionary()


def _split_state(model: nn.Module, target_layer: Optional[str], modules: Optional[list] = None) -> _SplitState:
    states = _SPLITS.setdefault(model, {})
    fingerprint = model_fingerprint(model, modules)
    state = states.get(target_layer)
    if state is None or state.fingerprint != fingerprint:
        state = states[target_layer] = _SplitState(fingerprint)
    return state


class ClassifierAdapter(ModelAdapter):
    kind = "cnn_classifier"

    def __init__(self, model: Optional[nn.Module] = None, *, target_layer: Optional[str] = None,
                 backbone: Optional[Callable] = None, head: Optional[Callable] = None,
                 preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None):
        if model is None and (backbone is None or head is None):
            raise ModelSplitError("pass a model (torch.nn.Module), or both backbone= and head= callables")
        if model is not None and not isinstance(model, nn.Module):
            raise ModelSplitError(f"model must be a torch.nn.Module, got {type(model).__name__}; "
                                  "for other callables pass backbone= and head=")
        if (backbone is None) != (head is None):
            raise ModelSplitError("backbone= and head= go together: pass both, or neither")
        self.model = model
        self.target_layer = target_layer
        self.backbone = backbone
        self.user_head = head
        self.preprocess = preprocess or Preprocess()
        self.labels = list(labels) if labels is not None else None
        if model is not None:
            modules = module_list(model)
            if any(m.training for m in modules):  # (eval() walks every module: ms per call)
                model.eval()
            self._state = _split_state(model, target_layer, modules)
        else:
            self._state = _SplitState(())

    @property
    def target(self) -> Optional[TargetLayer]:
        return self._state.target

    # ------------------------------------------------------------------ model facts
    @property
    def device(self) -> torch.device:
        for module in (self.model, self.backbone, self.user_head):
            if isinstance(module, nn.Module):
                for p in module.parameters():
                    return p.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(feature map of the target layer [B, C, H, W], logits [B, K]) in one forward pass."""
        x = x.to(self.device)
        if self.model is None:
            with torch.no_grad():
                feature = self.backbone(x)
                logits = extract_logits(self.user_head(feature))
            return feature, logits
        if self.target is None:
            self._state.target = choose_target(self.model, probe_calls(self.model, x[:1]), self.target_layer)
        captured: List[torch.Tensor] = []
        calls = [0]

        def hook(_module, _args, output):
            if calls[0] == self.target.call_index:
                captured.append(output)
            calls[0] += 1

        handle = self.model.get_submodule(self.target.name).register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = extract_logits(self.model(x))
        finally:
            handle.remove()
        if not captured or not isinstance(captured[0], torch.Tensor) or captured[0].ndim != 4:
            got = list(captured[0].shape) if captured and isinstance(captured[0], torch.Tensor) else "nothing"
            raise TargetLayerError(f"target layer {self.target.name!r} produced {got}, not a feature map "
                                   "[B, C, H, W]; pick a convolutional layer")
        feature = captured[0]
        if tuple(feature.shape[2:]) not in self._state.heads:
            self._state.inputs.setdefault(tuple(feature.shape[2:]), x[:2])
        return feature, logits

    def head(self, feature: torch.Tensor) -> Head:
        """The head for feature maps of this spatial size (cut once per size, then cached)."""
        return self._head_for(feature)

    def _head_for(self, feature: torch.Tensor) -> Head:
        key = tuple(feature.shape[2:])
        if key not in self._state.heads:
            if self.model is None:
                self._state.heads[key] = analyse_head(self.user_head, feature)
            else:
                if key not in self._state.inputs:
                    raise ModelSplitError("internal: call forward() on an input before asking for its head")
                sample = self._state.inputs.pop(key)
                self._state.heads[key] = split_model(self.model, self.target.name, self.target.call_index, sample)
        return self._state.heads[key]
