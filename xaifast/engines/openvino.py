"""The OpenVINO CPU engine: a PyTorch classifier explained at OpenVINO speed.

`xaifast.explain(model, data, engine="openvino")` (the default on CPU for CNN classifiers, see
`select_engine`) converts the model together with its explain head into one OpenVINO model, in
memory: the export path's graph (`xaifast.exporter.ExplainGraph` / `ViTExplainGraph`) with the
raw float32 maps as output (`raw_maps=True`), `torch.export` with a dynamic batch, then
`openvino.convert_model`. One inference gives the logits and the raw class maps (Recipro-CAM
computed inside the graph: the GAP shortcut as a depthwise convolution, then an affine head's
cell logits as one 1x1 convolution or any other head on the pooled cells; or the head on a mosaic),
the activation map, or the feature map (EigenCAM's SVD runs on the host); normalization to uint8
runs on the host with the same C++ kernel as the PyTorch engine, so both engines give the same
maps (f32: within 1 in uint8).

Caches, so a model is converted once:
- in process: compiled models keyed by a fingerprint of the weights (SHA-1 of the state_dict's
  bytes, recomputed when a tensor's storage, version counter or sampled values change) and of the
  architecture, the input shape, the algorithm, mask, score, target layer and the precision;
- on disk: the converted IR under `$XAIFAST_CACHE_DIR/openvino/<key>/` (default
  `~/.cache/xaifast/openvino/<key>/`; `XAIFAST_CACHE_DIR=none` turns it off), plus OpenVINO's own
  compiled-blob cache (`.../openvino/blobs`), so a second process skips torch.export and the
  conversion. A corrupt entry or an unwritable folder gives a warning, never an error.

Execution overlaps loading, inference and postprocessing: a reader thread decodes and stacks the
next batches (bounded queue) while OpenVINO runs batch n+1.. on its own threads (async infer
requests, GIL released) and the caller normalizes and yields batch n. Explanations come out in
input order; unreadable inputs are still skipped and listed in `run.failures`.

The model is compiled with the THROUGHPUT hint (several streams of a few cores each) and each batch
runs as one request per stream (`SPLIT_BATCHES`, `_Compiled.parts`), so a batch alone (one
`saliency_maps` call per batch from the caller's loop) uses every core. Splitting changes no bit:
it is used only where the compiled model gives an image the same outputs whatever its batch
(`_Compiled.check_batch_invariant`, once per compiled model).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import shutil
import threading
import uuid
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..algorithms.base import SaliencyResult
from ..errors import XaifastError
from .base import BatchResult, Engine, Request, classifier_predictions, single_torch_thread
from .exported import PRECISIONS

ENGINES = ("auto", "openvino", "pytorch")
ENGINE_ENV = "XAIFAST_ENGINE"
CACHE_ENV = "XAIFAST_CACHE_DIR"
#: Bumped whenever the engine's graph or cache layout changes (old disk entries are then ignored).
CACHE_FORMAT = 5  # 2: Recipro-CAM cell logits of an affine head as a 1x1 convolution; 3: ViT fast path graph; 4: its last-block queries without an expand; 5: its last block head-major (no transpose of the gathered keys and values)
#: Algorithms the engine runs, per model kind (what the graph computes: see _graph_algorithm).
ENGINE_ALGORITHMS = {"cnn_classifier": ("recipro_cam", "activationmap", "eigencam"),
                     "transformer": ("vit_recipro_cam", "activationmap", "eigencam")}
#: How many compiled models the process keeps (least recently used ones are dropped).
MAX_COMPILED = 8
#: Memory one transformer inference may use for the masked token sets (the distinct tokens of every
#: cell, or the full T_p of every cell in the naive graph); larger batches are split into several requests.
VIT_REQUEST_BUDGET_BYTES = 1 << 30
#: engine="auto" converts a model only for inputs of at least this many images (or of unknown
#: length): the first conversion costs seconds (ResNet-50: ~15 s) that a handful of images never
#: pays back. Smaller inputs use a model already converted (in memory or on disk), else PyTorch.
AUTO_MIN_IMAGES = 32
PERFORMANCE_HINT = "THROUGHPUT"  # measured: >= LATENCY on the 2-core CI machine, batch 16 (2 streams)
#: Split every batch into one sub-batch per stream of the compiled model (THROUGHPUT: several
#: streams of a few cores each), so that one batch alone (a `saliency_maps` call per batch from
#: the user's loop, the last batch of a run) keeps every core busy. Used only where the compiled
#: model computes each image the same whatever the batch holds (checked once per compiled model:
#: 3 images as one request vs as 1 + 2), so the maps are bit-identical split or not.
SPLIT_BATCHES = True

#: Counters for tests and diagnostics: conversions (torch.export + convert_model), disk_loads,
#: compilations, memory_hits, fallbacks.
STATS: collections.Counter = collections.Counter()


class EngineError(XaifastError, ValueError):
    """The OpenVINO engine cannot run this model or setting."""


# ------------------------------------------------------------------------------ selection
def engine_name(engine: Optional[str]) -> str:
    """The engine asked for: the argument, else $XAIFAST_ENGINE, else "auto"."""
    name = engine if engine is not None else (os.environ.get(ENGINE_ENV) or "auto")
    name = str(name).strip().lower()
    if name == "ov":
        name = "openvino"
    if name == "torch":
        name = "pytorch"
    if name not in ENGINES:
        raise EngineError(f"unknown engine {engine if engine is not None else name!r}; use one of {', '.join(ENGINES)}"
                          + ("" if engine is not None else f" (from ${ENGINE_ENV})"))
    return name


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except Exception:
        return False
    return True


def unsupported_reason(adapter, config) -> Optional[str]:
    """Why the OpenVINO engine cannot explain `adapter` with `config` (None: it can)."""
    from ..algorithms import resolve_algorithm

    kind = getattr(adapter, "kind", None)
    if kind not in ENGINE_ALGORITHMS:
        return f"{str(kind).replace('_', ' ')} models run on the PyTorch engine"
    model = getattr(adapter, "model", None)
    if not isinstance(model, nn.Module):
        return "backbone= / head= callables cannot be converted (pass the nn.Module, with target_layer=)"
    device = adapter.device
    if device.type != "cpu":
        return f"the model is on {device}; the OpenVINO engine runs on CPU (CUDA models use PyTorch / Triton)"
    from ..adapters.base import module_list

    dtypes = {p.dtype for m in module_list(model) for p in m._parameters.values() if p is not None}
    if dtypes and dtypes != {torch.float32}:
        return f"the model's parameters are {', '.join(sorted(str(d) for d in dtypes))}, not float32"
    try:
        algorithm = resolve_algorithm(config.algorithm, kind, config.target_explain_group)
    except XaifastError:
        return None  # the run reports the bad algorithm itself
    if algorithm not in ENGINE_ALGORITHMS[kind]:
        return f"{algorithm} is not available in the OpenVINO engine"
    if not _openvino_available():
        return "the openvino package cannot be imported"
    return None


def image_count(data) -> Optional[int]:
    """How many images `data` holds, when that is cheap to know (None: unknown)."""
    from ..stages.sources import SourceItem

    try:
        if isinstance(data, (torch.Tensor, np.ndarray)):
            return 1 if data.ndim == 3 else int(data.shape[0])
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], SourceItem):
            return len(data)
        if isinstance(data, (list, tuple)) and all(isinstance(d, (torch.Tensor, np.ndarray)) for d in data):
            return sum(1 if d.ndim == 3 else int(d.shape[0]) for d in data)
        dataset = getattr(data, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            return len(dataset)
    except Exception:
        return None
    return None


def select_engine(adapter, engine: Optional[str], precision: Optional[str], config, data=None):
    """The adapter that runs the explanation: `adapter` itself (PyTorch engine, exported models,
    detectors) or an `OpenVINOEngine` around it.

    engine "pytorch": always PyTorch. "openvino": the OpenVINO engine, or an EngineError saying why
    it cannot run. "auto" (default, or $XAIFAST_ENGINE): OpenVINO for CNN classifiers and
    transformers given as an nn.Module on CPU with recipro_cam / vit_recipro_cam / activationmap /
    eigencam (the same maps, faster; transformers only when the graph holds the distinct-token fast
    path, not the naive re-inference of every masked token set); PyTorch for everything else: CUDA
    models, backbone=/head= callables, detectors. A model whose conversion
    fails (or whose converted outputs differ) falls back to PyTorch with one warning under auto.
    Under auto, an input of fewer than AUTO_MIN_IMAGES images uses OpenVINO only when the model is
    already converted (this process or the disk cache): a conversion would cost more than it saves.
    $XAIFAST_ENGINE=openvino (the default, not the argument) prefers OpenVINO wherever it can run
    (transformers and small inputs included) and falls back to PyTorch elsewhere, without errors.
    """
    from .exported import OpenVINOAdapter

    name = engine_name(engine)
    explicit = name == "openvino" and engine is not None  # the argument, not $XAIFAST_ENGINE
    precision = "f32" if precision is None else str(precision).lower()
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if isinstance(adapter, OpenVINOEngine):
        return adapter
    if name == "pytorch" or isinstance(adapter, OpenVINOAdapter):
        return adapter  # an exported model already runs with OpenVINO
    reason = unsupported_reason(adapter, config)
    if reason is not None:
        if explicit:
            raise EngineError(f"engine='openvino' cannot explain this model: {reason}; use engine='pytorch'")
        return adapter
    if name == "auto" and adapter.kind == "transformer" and not _vit_fast_graph(adapter):
        return adapter  # the naive graph re-runs every masked token set: PyTorch
    return OpenVINOEngine(adapter, precision=precision, explicit=explicit,
                          expected_images=image_count(data) if name == "auto" else None)


def _vit_fast_graph(adapter) -> bool:
    """Whether the transformer's graph would hold the distinct-token fast path: the adapter's verdict
    once it verified the model, else whether every block's attention is re-implementable."""
    rest = adapter.rest()
    if getattr(adapter, "_state", None) is not None and adapter._state.verified:
        return rest.fast_ok
    return all(b.parts is not None for b in [rest.target] + list(rest.after))


# ------------------------------------------------------------------------------ fingerprints
_WEIGHT_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, _WeightMemo]" = weakref.WeakKeyDictionary()
_ARCH_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _sample_bytes(t: torch.Tensor) -> bytes:
    """A few values spread over the tensor, as bytes (catches in-place writes through `.data`,
    which do not bump PyTorch's version counter). numpy slicing where possible: this runs for
    every tensor of the model on every call (~10 us per tensor with torch ops, ~1 us here)."""
    flat = t.detach()
    n = flat.numel()
    if n == 0:
        return b""
    step = max(1, n // 7)
    if flat.device.type == "cpu" and not flat.is_complex() and flat.dtype not in (torch.bfloat16, torch.float16):
        try:
            a = flat.numpy().reshape(-1)
            return a[::step][:8].tobytes() + a[-1:].tobytes()
        except (TypeError, RuntimeError):
            pass
    flat = flat.reshape(-1)
    return torch.cat([flat[::step][:8], flat[-1:]]).to(torch.float64).cpu().numpy().tobytes()


def _state_tensors(model: nn.Module) -> list:
    """Every parameter and buffer of the model's modules, in one walk (no state_dict: its hooks and
    names cost ~1 ms a call on a ResNet-50; a superset of the state_dict's tensors)."""
    from ..adapters.base import module_list, module_tensors

    return module_tensors(module_list(model))


class _WeightMemo:
    """A model's digest with what tells that it still holds: each tensor's identity, storage,
    version counter, dtype and shape (`quick`), and 9 values of each read through numpy views made
    once (catches writes through `.data`, which bump no version counter)."""

    def __init__(self, tensors: list, quick: tuple, digest: str):
        self.quick, self.digest = quick, digest
        self.views = []
        for v in tensors:
            a = None
            if v.device.type == "cpu" and v.is_contiguous() and not v.is_complex() \
                    and v.dtype not in (torch.bfloat16, torch.float16) and v.numel():
                try:
                    a = v.detach().numpy().reshape(-1)  # a view: contiguous
                except (TypeError, RuntimeError):
                    a = None
            if a is not None:
                self.views.append((a, np.unique(np.linspace(0, a.size - 1, 9).astype(np.intp)), None))
            else:
                self.views.append((None, None, v))
        self.sample = self.sample_now()

    def sample_now(self) -> bytes:
        return b"".join([a[i].tobytes() if a is not None else _sample_bytes(v) for a, i, v in self.views])


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of the model's state (parameters and buffers: names, dtypes, shapes, bytes).

    The hash is recomputed only when a tensor's identity, storage, dtype, shape, version counter
    (every in-place update PyTorch tracks: optimizer steps, load_state_dict, ops under no_grad) or
    a sample of its values changed since the last call on this model object."""
    tensors = _state_tensors(model)
    quick = tuple((id(v), v.data_ptr(), v._version, v.dtype, v.shape) for v in tensors)
    memo = _WEIGHT_DIGESTS.get(model)
    if memo is not None and memo.quick == quick and memo.sample_now() == memo.sample:
        return memo.digest
    h = hashlib.sha1()
    for k, v in model.state_dict(keep_vars=True).items():
        if isinstance(v, torch.Tensor):
            h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
            h.update(_tensor_bytes(v))
    digest = h.hexdigest()
    _WEIGHT_DIGESTS[model] = _WeightMemo(tensors, quick, digest)
    return digest


def _code_digest(fn) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn)
    return hashlib.sha1(code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode()).hexdigest()


def architecture_digest(model: nn.Module) -> str:
    """The model's identity apart from its weights: classes (and their forward code), the module
    tree with each module's settings (repr), parameter and buffer names and shapes."""
    from ..adapters.base import module_list

    ids = tuple(map(id, module_list(model)))
    memo = _ARCH_DIGESTS.get(model)
    if memo is not None and memo[0] == ids:
        return memo[1]
    h = hashlib.sha1()
    types = sorted({type(m) for m in model.modules()}, key=lambda t: f"{t.__module__}.{t.__qualname__}")
    for t in types:
        h.update(f"{t.__module__}.{t.__qualname__}:{_code_digest(getattr(t, 'forward', None))}|".encode())
    h.update(repr(model).encode())
    for name, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.Tensor):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}|".encode())
    digest = h.hexdigest()
    _ARCH_DIGESTS[model] = (ids, digest)
    return digest


# ------------------------------------------------------------------------------ disk cache
def cache_root() -> Optional[Path]:
    """Folder of the engine's disk cache, or None when $XAIFAST_CACHE_DIR says none/off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("", "none", "off", "0", "false"):
        return None
    if value:
        return Path(value).expanduser() / "openvino"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xaifast" / "openvino"


_WARNED: set = set()


def _warn_once(key, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=4)


def _versions() -> str:
    import openvino as ov

    from .. import __version__

    return f"xaifast {__version__}; torch {torch.__version__}; openvino {ov.get_version()}"


@dataclass
class _Compiled:
    """One compiled engine model (shared by every run on the same model, shape, settings and precision)."""

    compiled: object
    names: List[str]
    meta: dict
    depth: int  # requests kept in flight
    max_batch: int  # images per request (transformers: bounded by VIT_REQUEST_BUDGET_BYTES)
    source: object = None  # the IR: a path in the disk cache, or the in-memory ov.Model
    streams: int = 1  # the compiled model's NUM_STREAMS (requests that run at the same time)
    batch_invariant: Optional[bool] = None  # an image's outputs do not depend on its batch (None: unchecked)

    def parts(self, n: int) -> List[Tuple[int, int]]:
        """[start, stop) of the requests a batch of `n` images runs as: at most `max_batch` images
        each, and one per stream (SPLIT_BATCHES, batch-invariant model), sizes differing by <= 1."""
        count = -(-n // self.max_batch)
        if SPLIT_BATCHES and self.batch_invariant:
            count = max(count, min(n, self.streams))
        bounds = [i * n // count for i in range(count + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def check_batch_invariant(self, x: np.ndarray) -> bool:
        """Whether 3 images (rows of `x`, repeated when fewer) give the same outputs, bit for bit,
        as one request of 3 and as requests of 1 and 2 (run once per compiled model, ~3 images'
        inference on the streams). OpenVINO's CPU kernels reduce in an order that does not
        depend on the batch, so this holds on the machines measured; where it does not, batches
        are not split."""
        if self.batch_invariant is None:
            rows = np.ascontiguousarray(x[np.arange(3) % x.shape[0]])
            chunks = [rows, rows[:1], rows[1:]]
            requests = [self.compiled.create_infer_request() for _ in chunks]
            for request, chunk in zip(requests, chunks):
                request.start_async({0: chunk}, share_inputs=True)
            for request in requests:
                request.wait()
            outs = [[request.get_output_tensor(i).data for i in range(len(self.names))] for request in requests]
            self.batch_invariant = all(np.array_equal(whole, np.concatenate([a, b]))
                                       for whole, a, b in zip(*outs))
            STATS["batch_invariant" if self.batch_invariant else "batch_variant"] += 1
        return self.batch_invariant


_COMPILED: "collections.OrderedDict[tuple, _Compiled]" = collections.OrderedDict()
_FAILED: Dict[tuple, str] = {}
_LOCK = threading.Lock()


def clear_cache(memory: bool = True, disk: bool = False) -> None:
    """Forget the compiled models of this process (memory) and / or delete the disk cache."""
    if memory:
        with _LOCK:
            _COMPILED.clear()
            _FAILED.clear()
    root = cache_root()
    if disk and root is not None and root.exists():
        shutil.rmtree(root, ignore_errors=True)


def _compile_config(precision: str, blobs: Optional[Path]) -> dict:
    config = {"PERFORMANCE_HINT": PERFORMANCE_HINT}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    if blobs is not None:
        config["CACHE_DIR"] = str(blobs)
    return config


def _core():
    import openvino as ov

    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE = None


def _graph_algorithm(algorithm: str) -> Tuple[str, Tuple[int, ...], List[str]]:
    """(what the graph computes, which outputs it keeps, their names) for a run's algorithm."""
    if algorithm == "eigencam":  # the SVD runs on the host, on the feature map
        return "activationmap", (0, 2), ["logits", "feature_map"]
    return algorithm, (0, 1), ["logits", "saliency_map"]


# ------------------------------------------------------------------------------ the engine
@dataclass
class _Job:
    batch: list
    part: int
    parts: int
    start: int  # the request's rows in the batch: [start, start + len(x))
    total: int  # images in the batch
    entry: _Compiled
    request: object
    x: np.ndarray  # kept alive while OpenVINO reads it (inputs are shared, not copied)


class OpenVINOEngine(Engine):
    """A PyTorch classifier (CNN or transformer adapter) run by OpenVINO; see the module doc.
    `stream` runs batches through the compiled model; batches it cannot run (a failed conversion
    under auto) run on the PyTorch engine."""

    busy_cores = True

    def __init__(self, adapter, *, precision: str = "f32", explicit: bool = True,
                 expected_images: Optional[int] = None):
        from .pytorch import PyTorchEngine

        self.inner = self.adapter = adapter
        self.fallback = PyTorchEngine(adapter)
        self.precision = precision
        self.explicit = explicit
        self.expected_images = expected_images
        self.fallback_reason: Optional[str] = None  # set when auto fell back to PyTorch

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def engine(self) -> str:
        return "pytorch" if self.fallback_reason else "openvino"

    # -------------------------------------------------------------- keys and conversion
    def _key(self, shape: Tuple[int, ...], run) -> tuple:
        model = self.inner.model
        graph_algorithm, keep, _ = _graph_algorithm(run.algorithm)
        class_wise = graph_algorithm in ("recipro_cam", "vit_recipro_cam")
        vit = self.kind == "transformer"
        return (CACHE_FORMAT, _versions(), self.kind, architecture_digest(model), weights_digest(model),
                tuple(int(s) for s in shape),
                graph_algorithm, keep, run.mask if class_wise else None, run.score if class_wise else None,
                getattr(self.inner, "target_layer", None), getattr(self.inner, "target_block", None) if vit else None,
                bool(run.vit_options.get("cls_token", True)) if vit and class_wise else None,
                bool(run.vit_options.get("use_fast_path", True)) if vit and class_wise else None)

    def _example(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(x[:2]))
        return t if t.shape[0] >= 2 else torch.cat([t, t])  # batch 1 would specialize the traced batch size

    def _convert(self, x: np.ndarray, run):
        """torch.export + convert_model of the explain graph (raw maps); returns (ov.Model, meta, verify)
        where verify(compiled f32 model) checks it against PyTorch. The exporters' own deprecation
        notices are silenced (under -W error they would make a working conversion fail); warnings of
        the run (e.g. skipped images, from the reader thread) are not."""
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("ignore", module=r"(torch|openvino|transformers)(\.|$)")
            return self._convert_quietly(x, run)

    def _convert_quietly(self, x: np.ndarray, run):
        from ..exporter import ExplainGraph, ViTExplainGraph, to_openvino
        from ..adapters.head_graph import Head

        graph_algorithm, keep, names = _graph_algorithm(run.algorithm)
        inner = self.inner
        example = self._example(x)
        feature, logits = inner.forward(example)
        if self.kind == "transformer":
            graph = ViTExplainGraph(inner, feature.grid, feature.num_aux, graph_algorithm, run.mask, run.score,
                                    bool(run.vit_options.get("cls_token", True)), raw_maps=True,
                                    use_fast_path=bool(run.vit_options.get("use_fast_path", True)))
            cells, tokens, dim = feature.grid[0] * feature.grid[1], feature.tokens.shape[1], feature.tokens.shape[2]
            if graph.fast is not None:  # the distinct tokens of every cell
                tokens = graph.fast.U
            per_image = cells * tokens * dim * 4 * 12 if graph.graph else 0  # masked token sets, activations
        else:
            head = inner.head(feature) if graph_algorithm == "recipro_cam" else Head(full=None)
            layout = inner.layout_for(feature) if hasattr(inner, "layout_for") else None  # token-grid models
            graph = ExplainGraph(inner.model, inner.target.name, inner.target.call_index, head, tuple(feature.shape),
                                 graph_algorithm, run.mask, run.score, raw_maps=True, layout=layout)
            per_image = 0
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        with torch.no_grad():
            program = torch.export.export(graph.eval(), (example,), dynamic_shapes=({0: batch},), strict=False)
        ov_model = to_openvino(program, ["logits", "saliency_map", "feature_map"])
        for index in sorted(set(range(3)) - set(keep), reverse=True):  # outputs the run does not read
            ov_model.remove_result(ov_model.get_results()[index])
        STATS["conversions"] += 1
        meta = {"format": CACHE_FORMAT, "names": names, "kind": self.kind, "algorithm": run.algorithm,
                "num_classes": int(logits.shape[1]), "per_image_bytes": per_image, "versions": _versions(),
                "graph": getattr(graph, "graph", None)}
        return ov_model, meta, lambda compiled: self._verify(compiled, example, feature, logits, run, names)

    def _verify(self, compiled, example: torch.Tensor, feature, logits: torch.Tensor, run, names) -> None:
        """The converted graph, compiled at f32, must give the PyTorch model's logits and maps
        (catches conversions that run but compute something else)."""
        out = compiled.create_infer_request().infer({0: example.numpy()})
        got = [out[o] for o in compiled.outputs]
        checks = [("logits", got[0], logits.float().numpy())]
        if self.kind == "cnn_classifier":
            if names[1] == "feature_map":
                checks.append(("feature map", got[1], feature.float().numpy()))
            elif run.algorithm == "activationmap":
                checks.append(("activation map", got[1], feature.float().mean(dim=1, keepdim=True).numpy()))
            else:
                from ..algorithms import recipro_cam

                ref = recipro_cam(feature, self.inner.head(feature), run.mask, run.score).raw.numpy()
                checks.append(("Recipro-CAM maps", got[1], ref))
        elif run.algorithm == "vit_recipro_cam":
            from ..algorithms import vit_recipro_cam

            ref = vit_recipro_cam(feature, self.inner.rest(feature), run.mask, run.score,
                                  cls_token=bool(run.vit_options.get("cls_token", True))).raw.numpy()
            checks.append(("ViT Recipro-CAM maps", got[1], ref))
        for what, a, b in checks:
            if a.shape != b.shape:
                raise EngineError(f"the converted model's {what} have shape {list(a.shape)}, PyTorch's {list(b.shape)}")
            scale = max(float(np.abs(b).max()), 1e-12)
            err = float(np.abs(a.astype(np.float64) - b).max()) / scale
            if not err <= 1e-3:
                raise EngineError(f"the converted model's {what} differ from PyTorch's (max relative difference "
                                  f"{err:.2g}); the conversion is not faithful")

    def _load(self, key: tuple, x: np.ndarray, run, convert: bool = True) -> Optional[_Compiled]:
        """The compiled model for `key` at this engine's precision: from memory, the disk cache, or
        converted now (and written to the disk cache); None when not cached and convert is False."""
        full = key + (self.precision,)
        with _LOCK:
            hit = _COMPILED.get(full)
            if hit is not None:
                _COMPILED.move_to_end(full)
                STATS["memory_hits"] += 1
                return hit
        if key in _FAILED:
            raise EngineError(_FAILED[key])
        core = _core()
        root = cache_root()
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        folder = root / digest if root is not None else None
        blobs = root / "blobs" if root is not None else None
        compiled = meta = source = None
        with _LOCK:  # the same model at another precision: its IR (path or in-memory model) compiles again
            for other_key, other in _COMPILED.items():
                if other_key[:-1] == key:
                    source, meta = other.source, other.meta
                    break
        if source is not None:
            try:
                compiled = self._compile(core, source, blobs if isinstance(source, str) else None)
            except Exception:  # e.g. the disk cache was cleared meanwhile: load or convert below
                compiled = meta = source = None
        if compiled is None and folder is not None and (folder / "meta.json").is_file():
            try:
                meta = json.loads((folder / "meta.json").read_text())
                if meta.get("format") != CACHE_FORMAT or meta.get("key") != repr(key):
                    raise ValueError("written by another version")
                source = str(folder / "model.xml")
                compiled = self._compile(core, source, blobs)
                STATS["disk_loads"] += 1
            except Exception as exc:
                warnings.warn(f"xaifast: ignoring the OpenVINO engine cache entry {folder} ({type(exc).__name__}: "
                              f"{_first_line(exc)}); converting the model again", stacklevel=4)
                shutil.rmtree(folder, ignore_errors=True)
                compiled = meta = source = None
        if compiled is None and not convert:
            return None
        if compiled is None:
            try:
                ov_model, meta, verify = self._convert(x, run)
                checked = self._compile(core, ov_model, None, "f32")
                verify(checked)
            except EngineError as exc:
                _FAILED[key] = str(exc)
                raise
            except Exception as exc:
                _FAILED[key] = f"converting the model to OpenVINO failed ({type(exc).__name__}: {_first_line(exc)})"
                raise EngineError(_FAILED[key]) from exc
            meta["key"] = repr(key)
            written = self._write(folder, ov_model, meta) if folder is not None else False
            source = str(folder / "model.xml") if written else ov_model
            compiled = checked if self.precision == "f32" else self._compile(core, source, blobs if written else None)
        depth = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        try:
            streams = max(1, int(compiled.get_property("NUM_STREAMS")))
        except Exception:  # a plugin without the property: requests that may run together
            streams = depth
        per_image = int(meta.get("per_image_bytes") or 0)
        max_batch = max(1, VIT_REQUEST_BUDGET_BYTES // per_image) if per_image else 1 << 30
        entry = _Compiled(compiled, list(meta["names"]), meta, depth, max_batch, source, min(streams, depth))
        with _LOCK:
            _COMPILED[full] = entry
            while len(_COMPILED) > MAX_COMPILED:
                _COMPILED.popitem(last=False)
        return entry

    def _compile(self, core, model, blobs: Optional[Path], precision: Optional[str] = None):
        STATS["compilations"] += 1
        precision = precision or self.precision
        try:
            return core.compile_model(model, "CPU", _compile_config(precision, blobs))
        except Exception:
            if blobs is None:
                raise
            return core.compile_model(model, "CPU", _compile_config(precision, None))  # a bad blob cache

    @staticmethod
    def _write(folder: Path, ov_model, meta: dict) -> bool:
        """Write the IR and its metadata atomically (a temporary folder renamed); False on failure."""
        import openvino as ov

        tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=False)
            ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, folder)
            except OSError:
                if not (folder / "meta.json").is_file():  # not another process having written it first
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            return True
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            _warn_once(("write", str(folder.parent)), f"xaifast: cannot write the OpenVINO engine cache in "
                       f"{folder.parent} ({type(exc).__name__}: {_first_line(exc)}); continuing without it "
                       f"(set {CACHE_ENV} to a writable folder, or to 'none')")
            return False

    # -------------------------------------------------------------- running
    def _entry(self, x: np.ndarray, run, entries: dict) -> Optional[_Compiled]:
        """The compiled model for this batch's input shape; None when falling back to PyTorch."""
        if self.fallback_reason is not None:
            return None
        shape = tuple(x.shape[1:])
        if shape not in entries:
            small = not self.explicit and self.expected_images is not None and self.expected_images < AUTO_MIN_IMAGES
            try:
                entry = self._load(self._key(shape, run), x, run, convert=not small)
                if entry is None:  # auto, a few images, the model not converted yet: PyTorch is faster
                    self.fallback_reason = f"fewer than {AUTO_MIN_IMAGES} images and no converted model cached"
                    STATS["small_inputs"] += 1
                    return None
                entries[shape] = entry
            except EngineError as exc:
                if self.explicit:
                    raise EngineError(f"engine='openvino': {exc}. Use engine='pytorch' for this model") from None
                self.fallback_reason = str(exc)
                STATS["fallbacks"] += 1
                warnings.warn(f"xaifast: the OpenVINO engine cannot run this model ({exc}); explaining it with "
                              "the PyTorch engine instead", stacklevel=4)
                return None
        return entries[shape]

    def _pytorch(self, x: np.ndarray, run: Request) -> BatchResult:
        return self.fallback.explain_batch(torch.from_numpy(x), run)

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        ((_, result),) = list(self.stream([_Tensor(x)], request))
        return result

    def _finish(self, outputs: List[list], names: List[str], run: Request, views: bool) -> BatchResult:
        """The BatchResult from the outputs of a batch's requests. views=True: the arrays
        are the request's own buffers (copied or read here, before the request is reused)."""
        if len(outputs) > 1:
            parts, views = [np.concatenate(o) for o in zip(*outputs)], False
        else:
            parts = outputs[0]
        own = (lambda a: a.copy()) if views else (lambda a: a)  # noqa: E731
        logits = torch.from_numpy(own(parts[0]))
        with single_torch_thread():  # OpenVINO's threads are busy: waking torch's pool costs ~1.5 ms a batch
            predictions = classifier_predictions(logits, run)
        if names[1] == "feature_map":
            from ..algorithms import explain_eigen_cam

            return BatchResult(explain_eigen_cam(torch.from_numpy(own(parts[1]))), predictions, logits.shape[1])
        class_agnostic = run.algorithm == "activationmap"
        if run.normalize:  # uint8 straight from the output buffer; one thread: OpenVINO's threads are busy
            from ..functional import normalize as normalize_maps

            u8 = torch.from_numpy(normalize_maps(parts[1], num_threads=1))
            maps = SaliencyResult(raw=None, normalized=u8, class_agnostic=class_agnostic)
        else:
            maps = SaliencyResult(raw=torch.from_numpy(own(parts[1])), class_agnostic=class_agnostic)
        return BatchResult(maps, predictions, int(logits.shape[1]))

    def stream(self, batches, run: Request) -> Iterator[Tuple[list, BatchResult]]:
        """(batch, BatchResult) for every batch of `batches`, in order.

        A reader thread stacks the next batches (decoding files on the data pool) while up to
        `depth` inference requests run; the caller works on batch n while OpenVINO computes the
        next ones. A batch runs as one request per stream (`_Compiled.parts`), so a batch alone
        uses every core too; its parts are written into one array per output as they finish."""
        entries: Dict[tuple, _Compiled] = {}
        free: Dict[int, collections.deque] = {}
        pending: collections.deque = collections.deque()
        outputs_of: Dict[int, list] = {}
        source = _prefetch(batches, depth=2)

        def collect():
            job = pending.popleft()
            job.request.wait()
            names = job.entry.names
            out = [job.request.get_output_tensor(i).data for i in range(len(names))]
            try:
                if job.parts == 1:  # one request: read its buffers in place
                    return job.batch, self._finish([out], names, run, views=True)
                whole = outputs_of.get(id(job.batch))
                if whole is None:
                    whole = outputs_of[id(job.batch)] = [np.empty((job.total, *a.shape[1:]), a.dtype) for a in out]
                for dst, a in zip(whole, out):
                    dst[job.start:job.start + a.shape[0]] = a
                if job.part == job.parts - 1:
                    return job.batch, self._finish([outputs_of.pop(id(job.batch))], names, run, views=False)
                return None
            finally:
                free[id(job.entry)].append(job.request)

        try:
            for batch, x in source:
                entry = self._entry(x, run, entries)
                if entry is None:
                    while pending:
                        done = collect()
                        if done is not None:
                            yield done
                    yield batch, self._pytorch(x, run)
                    continue
                pool = free.get(id(entry))
                if pool is None:
                    pool = free[id(entry)] = collections.deque(entry.compiled.create_infer_request()
                                                               for _ in range(entry.depth + 1))
                if SPLIT_BATCHES and entry.batch_invariant is None and min(x.shape[0], entry.streams) > 1:
                    entry.check_batch_invariant(x)
                parts = entry.parts(x.shape[0])
                for part, (start, stop) in enumerate(parts):
                    request = pool.popleft()
                    chunk = x[start:stop]
                    request.start_async({0: chunk}, share_inputs=True)
                    pending.append(_Job(batch, part, len(parts), start, x.shape[0], entry, request, chunk))
                    while len(pending) > entry.depth:
                        done = collect()
                        if done is not None:
                            yield done
            while pending:
                done = collect()
                if done is not None:
                    yield done
        finally:
            for job in pending:  # stopped early: let OpenVINO finish with the shared inputs
                try:
                    job.request.wait()
                except Exception:
                    pass
            source.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class _Tensor(list):
    """A batch given as one tensor [B, ...] (explain_batch): its rows are the samples."""

    def __init__(self, x: torch.Tensor):
        super().__init__(_Row(row) for row in x)


class _Row:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def _stacked(tensors: List[torch.Tensor]) -> np.ndarray:
    """The batch as one float32 array: a view of the caller's tensor when the samples are its
    consecutive rows (a batch of a [B, 3, H, W] input: no copy), else a stacked copy."""
    t0 = tensors[0].detach()
    if t0.dtype == torch.float32 and t0.device.type == "cpu" and t0.is_contiguous() and t0.numel():
        step = t0.numel() * t0.element_size()
        storage = t0.untyped_storage()
        if all(t.data_ptr() == t0.data_ptr() + i * step and t.shape == t0.shape and t.is_contiguous()
               and t.untyped_storage().data_ptr() == storage.data_ptr() for i, t in enumerate(tensors)):
            view = torch.empty(0, dtype=torch.float32).set_(storage, t0.storage_offset(), (len(tensors), *t0.shape))
            return view.numpy()
    return np.ascontiguousarray(torch.stack([t.detach() for t in tensors]).to("cpu", torch.float32).numpy())


def _prefetch(batches, depth: int = 2):
    """Iterate `batches` (lists of Samples) on a reader thread, a bounded `depth` ahead; yields
    (batch, stacked float32 array). Exceptions of the reader are raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for batch in batches:
                if not put((batch, _stacked([s.tensor for s in batch]))):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(_Raised(exc))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    thread = threading.Thread(target=work, name="xaifast-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
