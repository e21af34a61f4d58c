"""Black-box scoring: anything that maps model inputs to class scores, run in large batches.

    scorer = as_scorer(model, score="softmax", batch_size=64)
    scores = scorer(x)          # x: float32 [N, 3, H, W] (preprocessed) -> float32 [N, K] on the CPU

What `model` may be:
- a `torch.nn.Module` (its output: a tensor [N, K], the first item of a tuple / list, a dict's
  "logits", or an object's `.logits`), run on its own device under `torch.inference_mode`;
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


def _module_scorer(model: torch.nn.Module, score: str, batch_size: int) -> Scorer:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return scores_of(_logits_of(model(x.to(device))), score)

    return Scorer(fn, batch_size, device, type(model).__name__, multilabel=score == "sigmoid")


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


def _file_scorer(path: Path, score: str, batch_size: int, infer_batch: int = FILE_INFER_BATCH) -> Scorer:
    import openvino as ov

    if not path.is_file():
        raise ScorerError(f"model file {path}: no such file")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:
        raise ScorerError(f"{path}: OpenVINO cannot read it ({str(exc).splitlines()[0]})") from None
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
    state = {"batched": compiled}
    requests = {}  # per compiled model: its infer requests (reused, not one per chunk) and output port

    def prepared(net):
        if id(net) not in requests:
            names = [o.get_any_name() for o in net.outputs]
            depth = max(1, int(net.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))) if net is not static else 1
            requests[id(net)] = ([net.create_infer_request() for _ in range(depth)],
                                 net.outputs[names.index("logits")] if "logits" in names else net.outputs[0])
        return requests[id(net)]

    def run_sync(net, x: np.ndarray) -> torch.Tensor:
        (request, *_), output = prepared(net)
        return torch.from_numpy(np.array(request.infer({0: x})[output]))

    def run_async(net, x: np.ndarray) -> torch.Tensor:
        """x cut into pieces of at most infer_batch, at least one per stream, on the streams; outputs
        in order (a small chunk, as AISE's rounds of a few points, still keeps every stream busy)."""
        pool, output = prepared(net)
        piece = max(1, min(infer_batch, -(-x.shape[0] // len(pool))))
        pieces = [(i, min(i + piece, x.shape[0])) for i in range(0, x.shape[0], piece)]
        if len(pieces) == 1 or len(pool) == 1:
            return torch.cat([run_sync(net, x[a:b]) for a, b in pieces])
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

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if state["batched"] is not None:
            try:
                net = state["batched"]
                return scores_of(run_async(net, a) if dynamic else run_sync(net, a), score)
            except RuntimeError:
                if not dynamic or a.shape[0] == 1:
                    raise
                state["batched"] = None  # a graph traced at batch 1 (constants of that batch): one at a time
        return scores_of(torch.cat([run_sync(static, a[i:i + 1]) for i in range(a.shape[0])]), score)

    return Scorer(fn, batch_size, torch.device("cpu"), str(path), multilabel=score == "sigmoid")


def _callable_scorer(fn_np: Callable, score: Optional[str], batch_size: int) -> Scorer:
    name = getattr(fn_np, "__name__", type(fn_np).__name__)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = fn_np(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
        out = torch.as_tensor(np.asarray(out))
        return scores_of(out, score) if score is not None else out.float()

    return Scorer(fn, batch_size, torch.device("cpu"), name, multilabel=score == "sigmoid")


def as_scorer(model, *, score: Optional[str] = None, batch_size: int = 64) -> Scorer:
    """A `Scorer` for `model` (see the module docstring). score: softmax | sigmoid | none; None:
    softmax, or the callable's own outputs for a plain Python callable."""
    from .base import Engine
    from .exported import is_exported_model

    if isinstance(model, Scorer):
        return model
    if score is not None and score not in SCORES:
        raise ScorerError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    if isinstance(model, torch.nn.Module):
        return _module_scorer(model, score or "softmax", batch_size)
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
