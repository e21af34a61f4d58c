"""What every model adapter (PyTorch CNN, ViT, exported IR/ONNX) shares."""
from __future__ import annotations

from typing import List, Optional


class ModelAdapter:
    """Base of the adapters: `labels` (class names or None) and the lookup the pipeline uses."""

    labels: Optional[List[str]] = None

    def label(self, k: int) -> Optional[str]:
        """The name of class k, or None when names are unknown or k is out of range."""
        if self.labels is not None and 0 <= k < len(self.labels):
            return self.labels[k]
        return None


def module_list(model) -> list:
    """The model's modules, each once, breadth first: the same set as `model.modules()` (in another
    order) at a third of its cost (no name prefixes, no generator recursion). For the fingerprints
    that the engines and adapters take on every call (a ResNet-50 has 286 modules)."""
    out, seen, i = [model], {id(model)}, 0
    while i < len(out):
        for child in out[i]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        i += 1
    return out


def model_fingerprint(model, modules: Optional[list] = None) -> tuple:
    """The identity of the model's module tree and parameter objects (the adapters' per-model state
    holds while it is the same; in-place weight updates keep it). `modules`: `module_list(model)`
    when the caller has it."""
    modules = module_list(model) if modules is None else modules
    return tuple(map(id, modules)) + tuple(id(p) for m in modules for p in m._parameters.values() if p is not None)


def module_tensors(modules: list) -> list:
    """The parameters and buffers of `modules` (from `module_list`), in that order (a tensor shared by
    two modules appears twice)."""
    out = []
    for mod in modules:
        out.extend(v for v in mod._parameters.values() if v is not None)
        out.extend(v for v in mod._buffers.values() if v is not None)
    return out
