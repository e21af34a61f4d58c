"""Explaining an exported model (OpenVINO IR `.xml` or ONNX `.onnx`) with the OpenVINO runtime.

The model's own outputs carry the explanation (`saliency_map`, uint8, and `feature_map`), so one
inference gives logits and maps; the preprocessing, labels and explain settings come from the
metadata `xaifast.export` recorded. Class-agnostic maps for the IMAGE group are computed from
`feature_map`, exactly as for a PyTorch model.

Files xaifast did not export with explain outputs are explained too (`ov_insert`): an IR with a
`saliency_map` output from OTX or OpenVINO XAI gives its own maps, with the labels and
preprocessing of OTX's `model_info`; a plain classifier IR / ONNX gets Recipro-CAM inserted into
its OpenVINO graph (white-box, as OpenVINO XAI's `insert_xai`), raw maps normalized on the host.
"""
from __future__ import annotations

import collections
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..algorithms.base import SaliencyResult
from .base import BatchResult, Engine, Request, classifier_predictions
from ..data import Preprocess
from ..errors import XaifastError
from ..adapters.base import ModelAdapter

PRECISIONS = ("f32", "bf16", "f16", "auto")
EXPORTED_SUFFIXES = (".xml", ".onnx")


class ExportedModelError(XaifastError, ValueError):
    """An exported model that cannot be explained as it is."""


def is_exported_model(model) -> bool:
    return isinstance(model, (str, Path)) and Path(model).suffix.lower() in EXPORTED_SUFFIXES


def _metadata(path: Path, ov_model) -> Optional[dict]:
    if path.suffix.lower() == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        for entry in proto.metadata_props:
            if entry.key == "xaifast":
                return json.loads(entry.value)
        return None
    if ov_model.has_rt_info(["model_info", "xaifast"]):
        return json.loads(ov_model.get_rt_info(["model_info", "xaifast"]).astype(str))
    return None


#: Exported models opened in this process, compiled once: `xaifast.explain("m.xml", batch)` from a
#: caller's loop reads and compiles the file only on the first call (0.5 s for a DeiT-S IR, against
#: 0.2 s to explain its batch of 8), again only when the file changes (its and its weights'
#: inode, modification time and size) or other options are asked; the MAX_OPENED most recent are kept.
MAX_OPENED = 4
_OPENED: "collections.OrderedDict[tuple, OpenVINOAdapter]" = collections.OrderedDict()
_OPENED_LOCK = threading.Lock()


def _file_stamp(path: Path) -> tuple:
    files = [path] + ([path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [])
    stats = [(f, f.stat()) for f in files if f.exists()]
    return tuple((str(f.resolve()), st.st_ino, st.st_mtime_ns, st.st_size) for f, st in stats)


def open_exported(path: Union[str, Path], *, precision: str = "f32", device: str = "CPU",
                  preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None,
                  target_layer: Optional[str] = None) -> "OpenVINOAdapter":
    """The adapter of an exported model file, made (read and compiled) once per process for the same
    file and options (see MAX_OPENED)."""
    try:
        stamp = _file_stamp(Path(path))
    except OSError:
        stamp = None
    if not stamp:  # no such file, or unreadable: the adapter says so
        return OpenVINOAdapter(path, precision=precision, device=device, preprocess=preprocess, labels=labels,
                               target_layer=target_layer)
    key = (stamp, precision, device, target_layer, repr(preprocess), tuple(labels) if labels is not None else None)
    with _OPENED_LOCK:
        adapter = _OPENED.get(key)
        if adapter is not None:
            _OPENED.move_to_end(key)
            return adapter
    adapter = OpenVINOAdapter(path, precision=precision, device=device, preprocess=preprocess, labels=labels,
                              target_layer=target_layer)
    with _OPENED_LOCK:
        _OPENED[key] = adapter
        while len(_OPENED) > MAX_OPENED:
            _OPENED.popitem(last=False)
    return adapter


def with_outputs(model, index: Sequence[int]):
    """The OpenVINO `model` with only its outputs at `index` (in that order): what is compiled then
    computes nothing the other outputs alone needed (see OpenVINOAdapter._select)."""
    import openvino as ov

    results = model.get_results()
    return ov.Model([results[i] for i in index], model.get_parameters(), model.get_friendly_name())


ALL_ROLES = ("logits", "saliency_map", "feature_map")  # a graph's outputs, in this order (those it has)
MAP_ROLES = ("logits", "saliency_map")        # what an explanation by the graph's own maps needs
FEATURE_ROLES = ("logits", "feature_map")     # class-agnostic maps from the feature map (and forward())


class OpenVINOAdapter(ModelAdapter):
    """Runs an exported model; `explain_batch` returns logits and the model's own maps."""

    def __init__(self, path: Union[str, Path], *, precision: str = "f32", device: str = "CPU",
                 preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None,
                 target_layer: Optional[str] = None):
        import openvino as ov

        self._lock = threading.RLock()  # one infer request (and inserted graph) at a time: adapters are shared
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportedModelError(f"exported model {self.path}: no such file")
        if precision not in PRECISIONS:
            raise ExportedModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.core = core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:
            raise ExportedModelError(f"{self.path}: OpenVINO cannot read it ({str(exc).splitlines()[0]})") from None
        names = [o.get_any_name() if o.get_names() else "" for o in model.outputs]
        meta = _metadata(self.path, model) or {}
        self.meta = meta
        self.precision = precision
        self.device_name = device
        self._config = {} if precision == "auto" else {"INFERENCE_PRECISION_HINT": precision}
        self.target_layer = target_layer
        self.one_at_a_time = False
        self._selected: Dict[Tuple[str, ...], tuple] = {}  # outputs kept -> (compiled, roles, request): _select
        if "saliency_map" in names and "feature_map" in names and meta.get("explain"):
            self.mode = "xaifast"  # xaifast.export(..., explain=True): the maps are the graph's outputs
            self.kind = meta.get("model_type", "cnn_classifier")
            self.algorithm = meta.get("algorithm", "recipro_cam")
            self.score = meta.get("score", "none")
            size = tuple(meta.get("input_size") or _static_size(model))
            self.preprocess = preprocess or Preprocess(size, tuple(meta.get("mean", Preprocess().mean)),
                                                       tuple(meta.get("std", Preprocess().std)))
            self.labels = list(labels) if labels is not None else meta.get("labels")
            self._graph, self._graph_roles = model, list(ALL_ROLES)
            self._select(MAP_ROLES)
        else:
            self._foreign(model, names, meta, preprocess, labels)

    def _foreign(self, model, names, meta, preprocess, labels) -> None:
        """An IR / ONNX xaifast did not export with explain outputs: OTX's or OpenVINO XAI's IR with
        its own `saliency_map` (explained as it is), or a plain classifier (Recipro-CAM inserted)."""
        from . import ov_insert as OI

        info = OI.model_info(self.path, model)
        size = tuple(preprocess.input_size) if preprocess is not None else (
            tuple(meta["input_size"]) if meta.get("input_size") else None)
        try:
            size = OI.static_input(model, size)
            if preprocess is None:
                if info:
                    preprocess = OI.preprocess_from_info(info, size, self.path)
                else:
                    preprocess = Preprocess(size, tuple(meta.get("mean", Preprocess().mean)),
                                            tuple(meta.get("std", Preprocess().std)))
            self.preprocess = preprocess
            self.labels = list(labels) if labels is not None else (meta.get("labels") or OI.labels_from_info(info))
            self.kind = "cnn_classifier"
            self.algorithm = "recipro_cam"
            if "saliency_map" in names:
                self.mode = "saliency_map"  # OTX / OpenVINO XAI: its own maps, normalized uint8
                wrapped, self.one_at_a_time, self.feature_name = OI.explained_outputs(model)
                self.score = "the model's"
                self._graph = wrapped
                self._graph_roles = list(ALL_ROLES[:len(wrapped.outputs)])
                self._select(MAP_ROLES)
            else:
                self.mode = "inserted"  # white-box: Recipro-CAM inserted into the graph, raw maps
                self._plain = model
                self._inserted: Dict[Tuple[str, str], object] = {}
                self.score = "none"
                self.insertion = self._insert("1x1", "none")  # errors come now, not at the first batch
        except OI.ForeignModelError as exc:
            raise ExportedModelError(f"{self.path}: {exc}") from None

    def _select(self, roles: Tuple[str, ...]) -> None:
        """Compile (once) the graph with only the outputs of `roles` that it has, and make it the
        one that runs. Why not every output: at bf16, OpenVINO's CPU plugin keeps in f32 the nodes
        between an f32 output and the last convolution / matmul before it; a transformer's
        `feature_map` (the tokens of the target block) reaches back through the residual adds of
        every block, so asking for it keeps the whole residual stream in f32 (DeiT-S explain IR,
        batch 8: 8% slower). An inserted graph (white-box) keeps the one `_insert` made current."""
        if self.mode == "inserted":
            return
        keep = tuple(r for r in self._graph_roles if r in roles)
        if keep not in self._selected:
            pruned = with_outputs(self._graph.clone(), [self._graph_roles.index(r) for r in keep])
            compiled = self.core.compile_model(pruned, self.device_name, self._config)
            self._selected[keep] = (compiled, dict(zip(keep, compiled.outputs)), compiled.create_infer_request())
        self.compiled, self._roles, self._request = self._selected[keep]

    def _insert(self, mask: str, score: str):
        """The plain model with Recipro-CAM inserted for (mask, score), compiled once each."""
        from . import ov_insert as OI

        key = (mask, score)
        if key not in self._inserted:
            insertion = OI.insert_recipro_cam(self._plain.clone(), target_layer=self.target_layer, mask=mask,
                                              score=score)
            compiled = self.core.compile_model(insertion.model, self.device_name, self._config)
            self._inserted[key] = (insertion, compiled)
        insertion, compiled = self._inserted[key]
        self.compiled = compiled
        self._roles = dict(zip(ALL_ROLES, compiled.outputs))
        self._request = compiled.create_infer_request()
        return insertion

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def infer(self, x: torch.Tensor, roles: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """{role: output} of one batch: every output of the graph, or those of `roles`."""
        with self._lock:
            self._select(tuple(roles) if roles is not None else ALL_ROLES)
            return self._infer(x)

    def _infer(self, x: torch.Tensor) -> Dict[str, np.ndarray]:
        x = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self.one_at_a_time and x.shape[0] > 1:  # OpenVINO XAI's graphs explain one image per call
            parts = [self._infer(torch.from_numpy(x[i:i + 1])) for i in range(x.shape[0])]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        result = self._request.infer({0: x})
        return {name: result[output].copy() for name, output in self._roles.items()}

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            self._select(FEATURE_ROLES)
            out = self._infer(x)
        if "feature_map" not in out:
            raise ExportedModelError(f"{self.path}: no global average pooling was found, so there is no feature map "
                                     "for class-agnostic maps")
        return torch.from_numpy(out["feature_map"]), torch.from_numpy(out["logits"])

    def explain_batch(self, x: torch.Tensor, algorithm: str, mask: str = "1x1",
                      score: str = "none") -> Tuple[torch.Tensor, SaliencyResult]:
        """(logits, maps) of one batch: the model's maps (exported, or OTX's / OpenVINO XAI's), the
        maps of the inserted Recipro-CAM, or class-agnostic maps from the feature map."""
        from ..algorithms import explain_activation_map, explain_eigen_cam

        agnostic = algorithm in ("activationmap", "eigencam") and self.algorithm != algorithm
        with self._lock:  # (the inserted graph of this mask and score, or the outputs needed, then its inference)
            if self.mode == "inserted" and algorithm == "recipro_cam":
                self._insert(mask, score)
            self._select(FEATURE_ROLES if agnostic else MAP_ROLES)
            out = self._infer(x)
        logits = torch.from_numpy(out["logits"])
        if agnostic:
            if "feature_map" not in out:
                raise ExportedModelError(f"{self.path}: no feature map for {algorithm} (no global average pooling "
                                         "was found before the logits)")
            feature = torch.from_numpy(out["feature_map"])
            result = explain_activation_map(feature) if algorithm == "activationmap" else explain_eigen_cam(feature)
            return logits, result
        if algorithm != self.algorithm:
            raise ExportedModelError(f"{self.path} was exported with {self.algorithm}; it cannot give {algorithm} "
                                     "maps. Re-export with that algorithm, or use auto")
        maps = torch.from_numpy(out["saliency_map"])
        if self.mode == "inserted" or maps.dtype != torch.uint8:
            return logits, SaliencyResult(raw=maps.float(), normalized=None)
        return logits, SaliencyResult(raw=None, normalized=maps, class_agnostic=self.algorithm == "activationmap")


class ExportedEngine(Engine):
    """The engine of an exported model: one inference gives the logits and the exported maps."""

    def __init__(self, adapter: OpenVINOAdapter):
        self.adapter = adapter

    def resolve(self, request: Request) -> Request:
        if request.algorithm in ("activationmap", "eigencam"):
            return request
        return replace(request, algorithm=self.adapter.algorithm)  # what the exported graph computes

    def check(self, request: Request) -> None:
        if self.adapter.mode == "inserted" and request.algorithm == "recipro_cam":
            if request.mask not in ("1x1", "gaussian") or request.score not in ("none", "softmax", "sigmoid"):
                raise ExportedModelError(f"mask {request.mask!r} / score {request.score!r}: use mask 1x1 or gaussian, "
                                         "score none, softmax or sigmoid")
            return
        if not request.normalize and request.algorithm not in ("activationmap", "eigencam"):
            raise ExportedModelError("an exported model carries normalized uint8 maps, not raw ones: use "
                                     "xaifast.explain(path, data) for them, or saliency_maps on the PyTorch model")

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        logits, maps = self.adapter.explain_batch(x, request.algorithm, request.mask, request.score)
        return BatchResult(maps, classifier_predictions(logits, request), int(logits.shape[1]))


def _static_size(model) -> List[int]:
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.get_length() == 4 and shape[2].is_static and shape[3].is_static:
        return [shape[2].get_length(), shape[3].get_length()]
    raise ExportedModelError("the exported model records no input size; pass preprocess=xaifast.Preprocess(...)")
