"""Engines: HOW a model runs, behind one protocol the pipeline calls (`base.Engine`):
PyTorch classifiers and transformers, PyTorch detectors, the OpenVINO CPU engine, exported
IR / ONNX models. `make_engine` is the one place that looks at what the user passed."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .base import BatchResult, Engine, ImagePrediction, Request


def make_adapter(model, *, target_layer=None, backbone=None, head=None, preprocess=None, labels=None,
                 algorithm: str = "auto", target_block: int = 1, spec=None, precision: str = "f32"):
    """The model adapter for what the user passed: an exported .xml / .onnx, a detector (with a
    spec or `xaifast_spec()`), a token-grid transformer (Swin-like: Recipro-CAM on its last stage),
    a transformer, a CNN classifier, or backbone= / head= callables."""
    from ..adapters.classifier import ClassifierAdapter
    from ..adapters.detection import DetectionAdapter, is_detection_model
    from ..adapters.token_grid import TokenGridAdapter, is_token_grid_model
    from ..adapters.vit import ViTAdapter, is_transformer
    from ..algorithms import requested_model_kind
    from ..errors import XaifastError
    from .exported import OpenVINOAdapter, is_exported_model, open_exported

    if isinstance(model, (ClassifierAdapter, ViTAdapter, OpenVINOAdapter, DetectionAdapter)):
        return model
    if is_exported_model(model):
        return open_exported(model, precision=precision, preprocess=preprocess, labels=labels,
                             target_layer=target_layer)
    if is_detection_model(model, spec):
        return DetectionAdapter(model, spec, preprocess=preprocess, labels=labels)
    if isinstance(model, torch.nn.Module) and backbone is None and head is None:
        wanted = requested_model_kind(algorithm)
        if wanted != "transformer" and is_token_grid_model(model, target_layer):
            return TokenGridAdapter(model, target_layer=target_layer, preprocess=preprocess, labels=labels)
        if wanted == "transformer" or (wanted is None and is_transformer(model, target_layer)):
            return ViTAdapter(model, target_layer=target_layer, target_block=target_block, preprocess=preprocess,
                              labels=labels)
    if model is None or isinstance(model, torch.nn.Module):
        return ClassifierAdapter(model, target_layer=target_layer, backbone=backbone, head=head,
                                 preprocess=preprocess, labels=labels)
    raise XaifastError(f"cannot explain a {type(model).__name__}; pass a torch.nn.Module "
                       "(optionally with target_layer=), an exported .xml / .onnx path, or backbone= and head= "
                       "callables")


def make_engine(model, config, *, engine: Optional[str] = None, precision: str = "f32", data=None,
                **adapter_options) -> Engine:
    """The engine that explains `model` (anything `make_adapter` takes, or an Engine) under `config`:
    engine = auto | openvino | pytorch (see `xaifast.explain`)."""
    from ..adapters.detection import DetectionAdapter
    from .exported import ExportedEngine, OpenVINOAdapter
    from .openvino import OpenVINOEngine, select_engine
    from .pytorch import DetectionEngine, PyTorchEngine

    if isinstance(model, Engine):
        return model
    from ..algorithms import is_black_box

    if is_black_box(config.algorithm):
        from .blackbox import BlackBoxAdapter, BlackBoxEngine

        adapter = BlackBoxAdapter(model, preprocess=adapter_options.get("preprocess"),
                                  labels=adapter_options.get("labels"))
        return BlackBoxEngine(adapter, engine=engine)
    adapter = make_adapter(model, algorithm=config.algorithm, precision=precision, **adapter_options)
    if isinstance(adapter, OpenVINOAdapter):
        return ExportedEngine(adapter)
    if isinstance(adapter, DetectionAdapter):
        return DetectionEngine(adapter)
    chosen = select_engine(adapter, engine, precision, config, data)
    return chosen if isinstance(chosen, OpenVINOEngine) else PyTorchEngine(adapter)


__all__ = ["BatchResult", "Engine", "ImagePrediction", "Request", "make_adapter", "make_engine"]
