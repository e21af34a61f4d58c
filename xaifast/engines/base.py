"""The engine protocol: what the pipeline asks of every engine, whatever runs the model.

    engine.explain_batch(x, request) -> BatchResult        # one batch [B, 3, H, W]
    engine.stream(batches, request) -> (batch, BatchResult), in order   # where work overlaps

`x` is the stacked model input of a batch of `Sample`s; `request` says what to compute (the
algorithm, mask, score, raw or uint8 maps, ...). A `BatchResult` holds the maps of the batch and
one `ImagePrediction` per image: what the model predicted (class scores or detections), which
classes PREDICTIONS explains, and how to show the prediction on the image. The pipeline never
asks which engine or model kind it has: it selects targets, renders and writes from these alone.

Engines: `PyTorchEngine` (CNN classifiers and transformers), `DetectionEngine` (single-stage
detectors and instance segmentation), `OpenVINOEngine` (PyTorch classifiers converted to
OpenVINO, on CPU), `ExportedEngine` (exported IR / ONNX models). `xaifast.engines.make_engine`
picks one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..algorithms.base import SaliencyResult


@dataclass
class Request:
    """What a run asks of the engine for every batch.

    algorithm: resolved name (recipro_cam, vit_recipro_cam, activationmap, eigencam,
    det_class_probability_map, instseg); mask: "1x1" | "gaussian"; score: softmax | sigmoid | none
    (how the class maps score the masked inputs); normalize: uint8 maps (False: raw float32);
    memory_budget_mb: bound of the masked inputs the head sees at once; vit: ViT Recipro-CAM
    options (cls_token, use_fast_path); detection: feature_level, score_threshold, map_size;
    rise: RISE's num_masks, num_cells, prob, seed; aise: AISE's preset, num_iterations_per_kernel,
    kernel_widths, solver_epsilon, locally_biased (both: classes, the classes to explain)."""

    algorithm: str
    mask: str = "1x1"
    score: str = "softmax"
    normalize: bool = True
    memory_budget_mb: Optional[float] = None
    vit: dict = field(default_factory=dict)
    detection: dict = field(default_factory=dict)
    rise: dict = field(default_factory=dict)  # RISE: num_masks, num_cells, prob, seed
    aise: dict = field(default_factory=dict)  # AISE: preset, num_iterations_per_kernel, kernel_widths, ...

    @property
    def multilabel(self) -> bool:
        return self.score == "sigmoid"

    @property
    def vit_options(self) -> dict:  # the name the OpenVINO engine's cache key reads
        return self.vit


@dataclass
class ImagePrediction:
    """One image's prediction. scores: class scores [K] (classifiers) or a dict of detections
    (boxes, scores, labels[, masks]); predicted: the classes PREDICTIONS explains; shown: what is
    drawn on the overlays (detections), or None."""

    scores: Any
    predicted: List[int]
    shown: Any = None
    rescale: Optional[Callable[[Tuple[int, int], Tuple[int, int]], "ImagePrediction"]] = field(default=None, repr=False)

    def in_image(self, input_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> "ImagePrediction":
        """The prediction in the original image's pixels (detections are found at the input's size)."""
        if self.rescale is None or tuple(input_hw) == tuple(image_hw):
            return self
        return self.rescale(tuple(input_hw), tuple(image_hw))


@dataclass
class BatchResult:
    """maps: the batch's maps [B, K or 1, h, w] (uint8 in `normalized` when the request asked for
    it, else raw float32); predictions: one per image; num_classes: K of the model; map_classes:
    None when the maps are every class in order (or class-agnostic), else the class of each map row
    (the same for every image: engines that compute only the classes a run asks for, e.g. RISE)."""

    maps: SaliencyResult
    predictions: List[ImagePrediction]
    num_classes: int
    map_classes: Optional[List[int]] = None

    def uint8(self) -> np.ndarray:
        from ..functional import normalize

        u8 = self.maps.normalized if self.maps.normalized is not None else normalize(self.maps.raw)
        return u8.cpu().numpy() if isinstance(u8, torch.Tensor) else np.asarray(u8)


@contextlib.contextmanager
def single_torch_thread(enabled: bool = True):
    """Run the host's small torch ops on this thread alone while OpenVINO computes: waking
    torch's intra-op pool on cores OpenVINO keeps busy costs milliseconds per op."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def scores_of(logits: torch.Tensor, score: str) -> torch.Tensor:
    logits = logits.float()
    if score == "softmax":
        return torch.softmax(logits, dim=1)
    if score == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def predicted_classes(scores: np.ndarray, multilabel: bool) -> List[int]:
    if multilabel:
        return [int(k) for k in np.flatnonzero(scores >= 0.5)]
    return [int(np.argmax(scores))]


def classifier_predictions(logits: torch.Tensor, request: Request) -> List[ImagePrediction]:
    """Per image: the class scores (softmax; sigmoid for multilabel models, whatever the maps'
    score) and the predicted classes."""
    from ..errors import XaifastError

    if logits.ndim != 2:
        raise XaifastError(f"the model returned logits of shape {list(logits.shape)}; a classifier "
                           "must return [B, num_classes]")
    scores = scores_of(logits, "sigmoid" if request.multilabel else "softmax").cpu().numpy()
    return [ImagePrediction(row, predicted_classes(row, request.multilabel)) for row in scores]


def stack(batch: Sequence) -> torch.Tensor:
    return torch.stack([s.tensor for s in batch])


class Engine:
    """Base of the engines: `adapter` is the model adapter (labels, preprocess, kind); subclasses
    implement `explain_batch`, and `stream` where they overlap work."""

    adapter: Any = None
    #: True when the engine's own threads keep the cores busy while the caller works on a batch
    #: (the host's small torch ops then run on one thread: waking torch's pool costs milliseconds).
    busy_cores: bool = False

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def labels(self):
        return self.adapter.labels

    @property
    def preprocess(self):
        return self.adapter.preprocess

    def label(self, k: int) -> Optional[str]:
        return self.adapter.label(k)

    def resolve(self, request: Request) -> Request:
        """The request as this engine runs it (an exported model computes its own algorithm)."""
        return request

    def check(self, request: Request) -> None:
        """Raise before any work when the request cannot be served."""

    def explain_batch(self, x: torch.Tensor, request: Request) -> BatchResult:
        raise NotImplementedError

    def stream(self, batches: Iterable[list], request: Request) -> Iterator[Tuple[list, BatchResult]]:
        for batch in batches:
            yield batch, self.explain_batch(stack(batch), request)
