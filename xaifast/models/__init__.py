"""Deprecated alias of the modules that moved out of `xaifast.models` (recipes written for earlier
versions name e.g. `xaifast.models.builtin.SmallCNN`): built-in models now live in `xaifast.zoo`,
model adapters in `xaifast.adapters`, engines in `xaifast.engines`."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from ..adapters import ClassifierAdapter, Head, TargetLayer, extract_logits, split_model
from ..zoo import ConvHeadCNN, SmallCNN

MOVED = {
    "builtin": "xaifast.zoo.builtin", "efficientnet": "xaifast.zoo.efficientnet", "shapes": "xaifast.zoo.shapes",
    "vit": "xaifast.zoo.vit", "detector": "xaifast.zoo.detector",
    "instance_segmenter": "xaifast.zoo.instance_segmenter", "train_shapes": "xaifast.zoo.train_shapes",
    "classifier": "xaifast.adapters.classifier", "head_graph": "xaifast.adapters.head_graph",
    "target_layer": "xaifast.adapters.target_layer", "base": "xaifast.adapters.base",
    "vit_adapter": "xaifast.adapters.vit", "detection_adapter": "xaifast.adapters.detection",
    "openvino_engine": "xaifast.engines.openvino", "openvino_model": "xaifast.engines.exported",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import xaifast.models.<old name>` gives the module at its new place (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name.rpartition(".")[2]])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())

__all__ = ["ClassifierAdapter", "Head", "SmallCNN", "ConvHeadCNN", "TargetLayer", "extract_logits", "split_model"]
