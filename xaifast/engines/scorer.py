"""Black-box scoring: anything that maps model inputs to class scores, run in large batches.

    scorer = as_scorer(model, score="softmax", batch_size=64)
    scores = scorer(x)          # x: float32 [N, 3, H, W] (preprocessed) -> float32 [N, K] on the CPU

What `model` may be:
- a `torch.nn.Module` (its output: a tensor [N, K], the first item of a tuple / list, a dict's
  "logits", or an object's `.logits`), run on its own device under `torch.inference_mode`; on the
  CPU, after OPENVINO_AFTER_SECONDS of scoring, converted to OpenVINO (f32) for the rest (engine auto);
- an xaifast `Engine` (PyTorch, OpenVINO, exported): through the engine protocol
  (`explain_batch` with the cheap class-agnostic activation map), its predictions' scores
  (softmax, or sigmoid for multilabel requests);
- an OpenVINO IR `.xml` or an `.onnx` file (any classifier, exported by xaifast or not): compiled
  with OpenVINO on the CPU, batch made dynamic, output "logits" if there is one, else the first;
- a plain Python callable on numpy batches: float32 [N, 3, H, W] -> scores [N, K].

`score`: "softmax" (default for modules and model files: probabilities, as OpenVINO XAI's
metrics and RISE use them), "sigmoid" (multilabel), "none" (raw outputs). A Python callable's
outputs are taken as they are unless score is given. Inputs are cut into chunks of `batch_size`
(bounded memory, large batches for the model).
"""
from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import XaifastError
from .base import scores_of

SCORES = ("softmax", "sigmoid", "none")


class ScorerError(XaifastError, ValueError):
    """A model that cannot be used as a black-box scorer."""


def _logits_of(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ScorerError(f"the model returned a {type(out).__name__}; a classifier must return logits [N, K] "
                      "(a tensor, a tuple starting with it, a dict with 'logits' or an object with .logits)")


class Scorer:
    """Callable x [N, 3, H, W] -> float32 scores [N, K] (CPU tensor), in chunks of batch_size.
    `calls` counts the model calls and `inputs` the images scored (for tests and benchmarks)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device,
                 what: str, multilabel: bool = False):
        if batch_size < 1:
            raise ScorerError(f"batch_size must be >= 1, got {batch_size}")
        self.fn = fn
        self.batch_size = int(batch_size)
        self.device = device
        self.what = what
        self.multilabel = multilabel
        self.calls = 0
        self.inputs = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ScorerError(f"inputs must be [N, C, H, W], got shape {list(x.shape)}")
        outs = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start:start + self.batch_size]
            out = self.fn(chunk)
            self.calls += 1
            self.inputs += chunk.shape[0]
            if out.ndim != 2 or out.shape[0] != chunk.shape[0]:
                raise ScorerError(f"{self.what} returned scores of shape {list(out.shape)} for {chunk.shape[0]} "
                                  f"inputs; a classifier must return [N, num_classes]")
            outs.append(out.detach().float().cpu())
        if not outs:
            raise ScorerError("no inputs to score")
        return torch.cat(outs)


#: A CPU nn.Module that has spent this many seconds scoring in PyTorch is converted to OpenVINO (f32,
#: dynamic batch; engine auto) for the rest of the scorer's work: RISE (5000 masks an image), AISE
#: (300 model inputs a map) and the metrics score thousands of images, and a CNN's eager PyTorch
#: forward is far slower on a CPU (EfficientNet-Lite0: 66 ms an image here, 10 ms in OpenVINO), while
#: a conversion costs a few seconds. Small jobs stay in PyTorch. engine="openvino" converts at once,
#: "pytorch" never.
OPENVINO_AFTER_SECONDS = 2.0
#: The conversions made, per model (while it lives) and (architecture, weights, image shape): a
#: caller's loop of rise(model, batch) / aise(model, batch) / explain(model, batch, algorithm="aise")
#: converts once, and later calls score in OpenVINO from their first batch.
_CONVERTED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _logits_of(self.model(x))


def _module_scorer(model: torch.nn.Module, score: str, batch_size: int, engine: Optional[str] = None) -> Scorer:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    engine = (engine or "auto").lower()
    state = {"spent": 0.0, "off": engine == "pytorch" or device.type != "cpu", "run": None}
    name = type(model).__name__

    def key_of(x: torch.Tensor) -> tuple:
        from .openvino import architecture_digest, weights_digest

        return architecture_digest(model), weights_digest(model), tuple(x.shape[1:])

    def converted(x: torch.Tensor, key: tuple):
        """The OpenVINO runner of the model for x's image shape (None: stay in PyTorch)."""
        state["run"] = _CONVERTED.get(model, {}).get(key)
        if state["run"] is not None:
            return state["run"]
        try:
            state["run"] = _CONVERTED.setdefault(model, {})[key] = _convert_module(model, x)
        except Exception as exc:  # noqa: BLE001 - any conversion failure: PyTorch does the work
            import warnings

            warnings.warn(f"{name} could not be run with OpenVINO for scoring ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); scoring with PyTorch "
                          "(engine='pytorch' skips the attempt)", stacklevel=3)
            state["off"] = True
            return None
        return state["run"]

    def fn(x: torch.Tensor) -> torch.Tensor:
        key = key_of(x) if not state["off"] and (state["run"] is not None or model in _CONVERTED) else None
        ready = key is not None and key in _CONVERTED.get(model, {})  # converted (by this or an earlier scorer)
        if not state["off"] and (ready or engine == "openvino" or state["spent"] >= OPENVINO_AFTER_SECONDS):
            run = converted(x, key or key_of(x))
            if run is not None:
                try:
                    return scores_of(run(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)), score)
                except RuntimeError as exc:  # e.g. a batch size the converted graph does not take
                    import warnings

                    warnings.warn(f"{name}: OpenVINO inference failed ({str(exc).splitlines()[0] if str(exc) else ''}); "
                                  "scoring with PyTorch", stacklevel=2)
                    state["off"] = True
        start = time.perf_counter()
        with torch.inference_mode():
            out = scores_of(_logits_of(model(x.to(device))), score)
        state["spent"] += time.perf_counter() - start
        return out

    scorer = Scorer(fn, batch_size, device, name, multilabel=score == "sigmoid")
    scorer.openvino = lambda: state["run"] is not None and not state["off"]  # (tests, diagnostics)
    return scorer


def _convert_module(model: torch.nn.Module, x: torch.Tensor):
    """OpenVINO's conversion of the model's logits (traced: 2.3 s for EfficientNet-Lite0 against
    7.5 s through torch.export), batch made dynamic, compiled at f32 on the CPU's streams; checked
    against PyTorch on a batch of another size than the traced one (a conversion that computes
    something else, or that baked the batch size in, raises)."""
    import openvino as ov

    from ..quiet import quiet_exporters

    example = x[:2].detach().cpu().float()
    if example.shape[0] < 2:
        example = torch.cat([example, example])  # batch 1 would specialize the traced batch size
    check = torch.cat([example, example[:1]])  # 3 inputs: not the traced batch
    with quiet_exporters(), torch.no_grad():
        ov_model = ov.convert_model(_Logits(model).eval(), example_input=example)
        want = _logits_of(model(check)).float()
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([-1, *example.shape[1:]])})
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "PERFORMANCE_HINT": "THROUGHPUT"})
    run = _OVRunner(compiled)
    got = run(check.numpy())
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5):
        raise ScorerError("the OpenVINO conversion does not give the model's logits")
    return run


class _OVRunner:
    """A compiled OpenVINO classifier as a function numpy [N, C, H, W] -> logits (torch, CPU): the
    batch cut into pieces of at most `infer_batch`, at least one per stream, run on one reused
    async request per stream (a single piece runs synchronously)."""

    def __init__(self, compiled, infer_batch: int = 8):
        names = [o.get_any_name() if o.get_names() else "" for o in compiled.outputs]
        self.output = compiled.outputs[names.index("logits")] if "logits" in names else compiled.outputs[0]
        depth = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.pool = [compiled.create_infer_request() for _ in range(depth)]
        self.infer_batch = int(infer_batch)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        pool, output = self.pool, self.output
        piece = max(1, min(self.infer_batch, -(-x.shape[0] // len(pool))))
        pieces = [(i, min(i + piece, x.shape[0])) for i in range(0, x.shape[0], piece)]
        if len(pieces) == 1 or len(pool) == 1:
            return torch.cat([torch.from_numpy(np.array(pool[0].infer({0: x[a:b]})[output])) for a, b in pieces])
        outs = [None] * len(pieces)
        busy = [None] * len(pool)  # piece index running on each request

        def collect(r):
            pool[r].wait()
            outs[busy[r]] = np.array(pool[r].get_tensor(output).data)
            busy[r] = None

        for k, (a, b) in enumerate(pieces):
            r = k % len(pool)
            if busy[r] is not None:
                collect(r)
            pool[r].start_async({0: x[a:b]})
            busy[r] = k
        for r in range(len(pool)):
            if busy[r] is not None:
                collect(r)
        return torch.from_numpy(np.concatenate(outs))


def _engine_scorer(engine, score: str, batch_size: int) -> Scorer:
    from .base import Request

    request = engine.resolve(Request("activationmap", score="sigmoid" if score == "sigmoid" else "softmax"))
    engine.check(request)
    if score == "none":
        raise ScorerError("an engine gives probabilities (softmax, or sigmoid for multilabel models), not raw "
                          "logits: use score='softmax' or 'sigmoid', or pass the nn.Module / model file")

    def fn(x: torch.Tensor) -> torch.Tensor:
        result = engine.explain_batch(x, request)
        return torch.from_numpy(np.stack([np.asarray(p.scores, dtype=np.float32) for p in result.predictions]))

    device = getattr(getattr(engine, "adapter", None), "device", torch.device("cpu"))
    return Scorer(fn, batch_size, device if isinstance(device, torch.device) else torch.device("cpu"),
                  type(engine).__name__, multilabel=score == "sigmoid")


# Images per OpenVINO inference of a model file: a chunk of `batch_size` masked / perturbed images is
# cut into requests of this many, run on the THROUGHPUT hint's streams with async infer requests.
# On a CPU a small CNN is faster per image at batch 2-8 (its activations stay in cache) than at 64:
# efficientnet-lite0 f32 on 2 cores, 10 ms/image at batch 2-8 vs 14-18 at 64 (benchmarks/RESULTS.md).
FILE_INFER_BATCH = 8


def _logits_only(model):
    """The model with its "logits" output alone: an explain IR's saliency_map (the whole Recipro-CAM
    graph) and feature_map are not computed for every scored image."""
    from .exported import with_outputs

    names = [o.get_names() for o in model.outputs]
    if len(names) < 2 or not any("logits" in n for n in names):
        return model
    return with_outputs(model, [next(i for i, n in enumerate(names) if "logits" in n)])


def _file_scorer(path: Path, score: str, batch_size: int, infer_batch: int = FILE_INFER_BATCH) -> Scorer:
    import openvino as ov

    if not path.is_file():
        raise ScorerError(f"model file {path}: no such file")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:
        raise ScorerError(f"{path}: OpenVINO cannot read it ({str(exc).splitlines()[0]})") from None
    model = _logits_only(model)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    static = core.compile_model(model, "CPU", config)
    compiled, dynamic = static, False
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and shape.rank.get_length() == 4 and shape[0].is_static:
        try:  # one compiled model for every chunk size, its streams fed by async requests
            model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, *list(shape)[1:]])})
            compiled, dynamic = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"}), True
        except Exception:
            pass
    elif shape.rank.is_static and shape.rank.get_length() == 4 and shape[0].is_dynamic:
        compiled, dynamic = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"}), True
    one = _OVRunner(static, infer_batch=1 << 30)  # the file's own compiled model: one synchronous request
    state = {"batched": _OVRunner(compiled, infer_batch) if dynamic else one}

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if state["batched"] is not None:
            try:
                return scores_of(state["batched"](a), score)
            except RuntimeError:
                if not dynamic or a.shape[0] == 1:
                    raise
                state["batched"] = None  # a graph traced at batch 1 (constants of that batch): one at a time
        return scores_of(torch.cat([one(a[i:i + 1]) for i in range(a.shape[0])]), score)

    return Scorer(fn, batch_size, torch.device("cpu"), str(path), multilabel=score == "sigmoid")


def _callable_scorer(fn_np: Callable, score: Optional[str], batch_size: int) -> Scorer:
    name = getattr(fn_np, "__name__", type(fn_np).__name__)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = fn_np(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
        out = torch.as_tensor(np.asarray(out))
        return scores_of(out, score) if score is not None else out.float()

    return Scorer(fn, batch_size, torch.device("cpu"), name, multilabel=score == "sigmoid")


def as_scorer(model, *, score: Optional[str] = None, batch_size: int = 64, engine: Optional[str] = None) -> Scorer:
    """A `Scorer` for `model` (see the module docstring). score: softmax | sigmoid | none; None:
    softmax, or the callable's own outputs for a plain Python callable. engine (nn.Modules on the
    CPU): auto (default: OpenVINO once the scorer has spent OPENVINO_AFTER_SECONDS in PyTorch),
    openvino (at once) or pytorch."""
    from .base import Engine
    from .exported import is_exported_model

    if isinstance(model, Scorer):
        return model
    if score is not None and score not in SCORES:
        raise ScorerError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    if isinstance(model, torch.nn.Module):
        return _module_scorer(model, score or "softmax", batch_size, engine)
    if isinstance(model, Engine):
        return _engine_scorer(model, score or "softmax", batch_size)
    if is_exported_model(model):
        return _file_scorer(Path(model), score or "softmax", batch_size)
    if isinstance(model, (str, Path)):
        raise ScorerError(f"{model}: a model file must be an OpenVINO IR .xml or an .onnx")
    if callable(model):
        return _callable_scorer(model, score, batch_size)
    raise ScorerError(f"cannot score with a {type(model).__name__}; pass a torch.nn.Module, an xaifast Engine, an "
                      ".xml / .onnx model file, or a Python callable on numpy batches [N, 3, H, W] -> [N, K]")
