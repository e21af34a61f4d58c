"""Detector and instance-segmentation adapters: how xaifast reads a user's model.

A single-stage detector (ATSS, RetinaNet, SSD, YOLOX-like) is explained from its
classification-head outputs, one [B, A_l * K, H_l, W_l] map per pyramid level (channel a*K + k:
anchor a, class k). Name the module(s) that produce them and the anchors per level:

    spec = xaifast.DetectorSpec(cls_outputs="bbox_head.atss_cls", num_anchors=1, num_classes=80,
                                features="neck")
    xaifast.explain(detector, images, spec=spec)

`cls_outputs` is one module called once per level (a head shared across levels: its outputs are
taken in call order) or a list of modules, one per level. `features` names the module whose output
is the list of pyramid features (or a list of modules), used by activationmap / eigencam on a
chosen level. The model's forward must return its detections per image: a list of dicts with
`boxes` [N, 4] (x1, y1, x2, y2 in input pixels), `scores` [N], `labels` [N] (torchvision's format),
or pass `outputs=` a function turning the model's output into that list.

An instance-segmentation model (Mask R-CNN-like, anything returning masks, scores and labels per
image) needs only its class count: `xaifast.InstanceSegmentationSpec(num_classes=80)`; its
detections also carry `masks` [N, H, W] (probabilities or booleans at the input resolution).

A model may describe itself with a method `xaifast_spec()` returning the spec's fields as a dict
plus `task` ("detection" | "instance_segmentation"); then no spec is needed (the built-in
ShapesDetector and ShapesInstanceSegmenter do this).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..data import Preprocess
from ..errors import XaifastError
from .base import ModelAdapter

Names = Union[str, Sequence[str]]


class DetectionModelError(XaifastError, ValueError):
    """A detector or instance-segmentation model that cannot be explained as described."""


@dataclass
class DetectorSpec:
    """How to read a single-stage detector (see the module docstring)."""

    cls_outputs: Names
    num_anchors: Union[int, Sequence[int]] = 1
    num_classes: Optional[int] = None
    features: Optional[Names] = None
    score_threshold: float = 0.3
    labels: Optional[Sequence[str]] = None
    outputs: Optional[Callable] = field(default=None, repr=False)
    task = "detection"


@dataclass
class InstanceSegmentationSpec:
    """How to read an instance-segmentation model (see the module docstring)."""

    num_classes: int
    score_threshold: float = 0.5
    features: Optional[Names] = None
    labels: Optional[Sequence[str]] = None
    outputs: Optional[Callable] = field(default=None, repr=False)
    task = "instance_segmentation"


TaskSpec = Union[DetectorSpec, InstanceSegmentationSpec]
TASKS = {"detection": DetectorSpec, "instance_segmentation": InstanceSegmentationSpec}


def spec_from(value) -> Optional[TaskSpec]:
    """A spec object from a spec, a dict with `task`, or a model with `xaifast_spec()` (else None)."""
    if isinstance(value, (DetectorSpec, InstanceSegmentationSpec)) or value is None:
        return value
    if isinstance(value, nn.Module):
        describe = getattr(value, "xaifast_spec", None)
        return spec_from(describe()) if callable(describe) else None
    if isinstance(value, dict):
        data = dict(value)
        task = data.pop("task", "detection")
        if task not in TASKS:
            raise DetectionModelError(f"unknown task {task!r} in the model spec; use one of {', '.join(TASKS)}")
        cls = TASKS[task]
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DetectionModelError(f"{cls.__name__} has no fields {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DetectionModelError(f"{cls.__name__}: {exc}") from None
    raise DetectionModelError(f"spec must be a DetectorSpec, an InstanceSegmentationSpec or a dict, "
                              f"got {type(value).__name__}")


# ---------------------------------------------------------------------------------- detections
@dataclass
class Detections:
    """One image's predictions: boxes [N, 4] xyxy, scores [N], labels [N] (+ masks [N, H, W])."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> "Detections":
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep],
                          None if self.masks is None else self.masks[keep])

    def classes(self) -> List[int]:
        """The predicted classes: distinct labels, in order of their best score."""
        order = np.argsort(-self.scores, kind="stable")
        return [int(k) for k in dict.fromkeys(self.labels[order].tolist())]

    def scaled(self, from_hw, to_hw) -> "Detections":
        """Boxes (and masks) from model-input coordinates to an image of size to_hw."""
        (h0, w0), (h1, w1) = from_hw, to_hw
        if (h0, w0) == (h1, w1):
            return self
        boxes = self.boxes * np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0], dtype=np.float32)
        masks = self.masks
        if masks is not None and len(masks):
            import cv2

            masks = np.stack([cv2.resize(m.astype(np.float32), (w1, h1), interpolation=cv2.INTER_LINEAR)
                              for m in masks])
        elif masks is not None:
            masks = np.zeros((0, h1, w1), np.float32)
        return Detections(boxes.astype(np.float32), self.scores, self.labels, masks)

    def as_dict(self) -> Dict[str, np.ndarray]:
        out = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        if self.masks is not None:
            out["masks"] = self.masks
        return out


def _array(value, name: str, index: int, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy() if value.dtype == torch.bfloat16 else value.detach().cpu().numpy()
    try:
        return np.asarray(value).astype(dtype, copy=False)
    except (TypeError, ValueError):
        raise DetectionModelError(f"image {index}: detections[{name!r}] is a {type(value).__name__}, "
                                  "not an array") from None


def parse_detections(output, batch: int, input_hw, with_masks: bool) -> List[Detections]:
    """The model's output (a list of per-image dicts) as `Detections`, checked."""
    if isinstance(output, dict) and all(k in output for k in ("boxes", "scores", "labels")) \
            and isinstance(output["scores"], (list, tuple)):
        output = [dict(zip(output, values)) for values in zip(*output.values())]  # dict of lists
    if not isinstance(output, (list, tuple)) or len(output) != batch or not all(isinstance(d, dict) for d in output):
        raise DetectionModelError(
            f"the model returned a {type(output).__name__}; xaifast needs its detections as a list of one dict "
            f"per image ({batch} here) with 'boxes' [N, 4], 'scores' [N], 'labels' [N]"
            + (", 'masks' [N, H, W]" if with_masks else "")
            + ". Pass outputs= in the spec to convert the model's own format")
    out = []
    need = ("boxes", "scores", "labels", "masks") if with_masks else ("boxes", "scores", "labels")
    for i, d in enumerate(output):
        missing = [k for k in need if k not in d]
        if missing:
            raise DetectionModelError(f"image {i}: the detections lack {missing} (have {sorted(d)})")
        boxes = _array(d["boxes"], "boxes", i, np.float32).reshape(-1, 4) if np.size(d["boxes"]) else \
            np.zeros((0, 4), np.float32)
        scores = _array(d["scores"], "scores", i, np.float32).reshape(-1)
        labels = _array(d["labels"], "labels", i, np.int64).reshape(-1)
        masks = None
        if with_masks:
            masks = _array(d["masks"], "masks", i, np.float32)
            if masks.ndim == 4 and masks.shape[1] == 1:
                masks = masks[:, 0]
            if masks.size == 0:
                masks = np.zeros((0, *input_hw), np.float32)
            if masks.ndim != 3 or masks.shape[0] != len(scores):
                raise DetectionModelError(f"image {i}: masks have shape {list(masks.shape)}; expected "
                                          f"[{len(scores)}, H, W] (one per instance)")
        if not (len(boxes) == len(scores) == len(labels)):
            raise DetectionModelError(f"image {i}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} "
                                      "labels; they must match")
        out.append(Detections(boxes, scores, labels, masks))
    return out


# ---------------------------------------------------------------------------------- adapters
@dataclass
class DetectionForward:
    """What one forward pass gives the explainer."""

    detections: List[Detections]
    cls_levels: List[torch.Tensor]  # detectors only: [B, A_l*K, H_l, W_l] per level
    features: List[torch.Tensor]  # pyramid features [B, C_l, H_l, W_l] (empty when not named)


class _Recorder:
    """Forward hooks collecting the outputs of named modules, in call order."""

    def __init__(self, model: nn.Module, names: Sequence[str], what: str):
        self.model, self.names, self.what = model, list(names), what
        self.outputs: Dict[str, list] = {n: [] for n in self.names}
        for name in self.names:
            try:
                model.get_submodule(name)
            except AttributeError:
                convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
                convs.sort(key=lambda n: ("cls" not in n and "score" not in n, n))
                hint = f" (its convolutions include {', '.join(convs[:8])})" if convs else ""
                raise DetectionModelError(f"the model has no module {name!r} for {what}{hint}; name one of "
                                          "model.named_modules()") from None

    def __enter__(self):
        self.handles = [self.model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]
        return self

    def _hook(self, name):
        def hook(_module, _args, output):
            self.outputs[name].append(output)
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _names(value: Optional[Names]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _tensors(outputs: list, what: str) -> List[torch.Tensor]:
    flat: List[torch.Tensor] = []
    for out in outputs:
        if isinstance(out, torch.Tensor):
            flat.append(out)
        elif isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in out):
            flat.extend(out)
        else:
            raise DetectionModelError(f"{what} produced a {type(out).__name__}; expected a tensor [B, C, H, W] "
                                      "or a list of them (one per pyramid level)")
    for t in flat:
        if t.ndim != 4:
            raise DetectionModelError(f"{what} produced a tensor of shape {list(t.shape)}; expected [B, C, H, W]")
    return flat


class DetectionAdapter(ModelAdapter):
    """A detector or instance-segmentation model: one forward gives detections, the classification
    head's per-level outputs (detectors) and the pyramid features (when named)."""

    def __init__(self, model: nn.Module, spec: Optional[TaskSpec] = None, *, preprocess: Optional[Preprocess] = None,
                 labels: Optional[Sequence[str]] = None):
        if not isinstance(model, nn.Module):
            raise DetectionModelError(f"a detector must be a torch.nn.Module, got {type(model).__name__}")
        spec = spec_from(spec) if spec is not None else spec_from(model)
        if spec is None:
            raise DetectionModelError("describe the detector: pass spec=xaifast.DetectorSpec(cls_outputs=..., "
                                      "num_anchors=...) or xaifast.InstanceSegmentationSpec(num_classes=...)")
        self.model = model.eval()
        self.spec = spec
        self.kind = spec.task
        self.task = spec.task
        self.preprocess = preprocess or Preprocess()
        names = labels if labels is not None else spec.labels
        self.labels = list(names) if names is not None else None
        self.score_threshold = float(spec.score_threshold)
        self.cls_names = _names(getattr(spec, "cls_outputs", None))
        self.feature_names = _names(spec.features)
        if self.task == "detection" and not self.cls_names:
            raise DetectionModelError("DetectorSpec.cls_outputs must name the classification-head module(s)")
        self._num_classes = spec.num_classes
        self._num_anchors = getattr(spec, "num_anchors", None)

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def num_classes(self) -> Optional[int]:
        return self._num_classes

    def num_anchors(self, levels: int) -> List[int]:
        a = self._num_anchors
        anchors = [int(a)] * levels if isinstance(a, (int, np.integer)) else [int(v) for v in a]
        if len(anchors) != levels:
            raise DetectionModelError(f"num_anchors lists {len(anchors)} levels but {self.cls_names} produced "
                                      f"{levels} classification maps; give one anchor count per level (or one int)")
        return anchors

    def forward(self, x: torch.Tensor) -> DetectionForward:
        x = x.to(self.device)
        watch = list(dict.fromkeys(self.cls_names + self.feature_names))
        with _Recorder(self.model, watch, "cls_outputs / features") as rec, torch.no_grad():
            output = self.model(x)
        if self.spec.outputs is not None:
            output = self.spec.outputs(output)
        detections = parse_detections(output, x.shape[0], tuple(x.shape[2:]), self.task == "instance_segmentation")
        cls_levels: List[torch.Tensor] = []
        if self.task == "detection":
            for name in self.cls_names:
                if not rec.outputs[name]:
                    raise DetectionModelError(f"module {name!r} (cls_outputs) was not called by the model's forward")
            per_module = [_tensors(rec.outputs[n], f"cls_outputs module {n!r}") for n in self.cls_names]
            # one shared module: all its calls; several modules: one output each
            cls_levels = per_module[0] if len(per_module) == 1 else [outs[0] for outs in per_module]
            self._check_levels(cls_levels)
        features: List[torch.Tensor] = []
        for name in self.feature_names:
            if not rec.outputs[name]:
                raise DetectionModelError(f"module {name!r} (features) was not called by the model's forward")
            features.extend(_tensors(rec.outputs[name][:1], f"features module {name!r}"))
        return DetectionForward(detections, cls_levels, features)

    def _check_levels(self, levels: List[torch.Tensor]) -> None:
        anchors = self.num_anchors(len(levels))
        ks = set()
        for lvl, (t, a) in enumerate(zip(levels, anchors)):
            if t.shape[1] % a:
                raise DetectionModelError(f"level {lvl}: {t.shape[1]} classification channels are not a multiple of "
                                          f"its {a} anchors; check num_anchors")
            ks.add(t.shape[1] // a)
        if len(ks) != 1:
            raise DetectionModelError(f"the levels imply different class counts {sorted(ks)} (channels / anchors); "
                                      "check num_anchors per level")
        k = ks.pop()
        if self._num_classes is None:
            self._num_classes = k
        elif self._num_classes != k:
            raise DetectionModelError(f"the classification maps have {k} classes per anchor, the spec says "
                                      f"num_classes={self._num_classes}; check num_anchors / num_classes")

    def feature_level(self, forward: DetectionForward, level: int) -> torch.Tensor:
        """The pyramid feature of `level` (Python index: -1 = the last, coarsest, as OTX's default)."""
        if not forward.features:
            raise DetectionModelError("activationmap / eigencam on a detector need its pyramid features: name "
                                      "the module that returns them, spec features='neck'")
        n = len(forward.features)
        if not -n <= level < n:
            raise DetectionModelError(f"feature level {level} does not exist; the model has {n} pyramid levels "
                                      f"(use 0..{n - 1} or -1 for the last)")
        return forward.features[level]


def is_detection_model(model, spec=None) -> bool:
    return spec is not None or (isinstance(model, nn.Module) and callable(getattr(model, "xaifast_spec", None)))
