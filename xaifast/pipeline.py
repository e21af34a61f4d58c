"""The explain pipeline: inputs -> batches -> one forward -> saliency algorithm -> target
selection -> normalization / postprocessing -> `Explanation`s, streamed in input order.

One bad input never stops a run: images that cannot be read are skipped with a warning and
listed in `ExplainRun.failures` (and in a summary warning at the end).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .algorithms import (SaliencyResult, explain_activation_map, explain_eigen_cam, recipro_cam, requested_model_kind,
                         resolve_algorithm, vit_recipro_cam)
from .config import ExplainConfig, TargetExplainGroup
from .data import Preprocess, Sample, iter_samples
from .errors import ClassIndexError, DataError, XaifastError
from .explanation import Explanation
from .functional import normalize
from .adapters.classifier import ClassifierAdapter
from .adapters.detection import DetectionAdapter, is_detection_model
from .engines.openvino import OpenVINOEngine, select_engine
from .engines.exported import OpenVINOAdapter, is_exported_model
from .adapters.vit import TokenFeature, ViTAdapter, is_transformer

DEFAULT_BATCH_SIZE = 16


def as_adapter(model, *, target_layer=None, backbone=None, head=None, preprocess=None, labels=None,
               algorithm: str = "auto", target_block: int = 1, spec=None):
    if isinstance(model, (ClassifierAdapter, ViTAdapter, OpenVINOAdapter, DetectionAdapter)):
        return model
    if is_exported_model(model):
        return OpenVINOAdapter(model, preprocess=preprocess, labels=labels)
    if is_detection_model(model, spec):
        return DetectionAdapter(model, spec, preprocess=preprocess, labels=labels)
    if isinstance(model, torch.nn.Module) and backbone is None and head is None:
        wanted = requested_model_kind(algorithm)
        if wanted == "transformer" or (wanted is None and is_transformer(model, target_layer)):
            return ViTAdapter(model, target_layer=target_layer, target_block=target_block, preprocess=preprocess,
                              labels=labels)
    if model is None or isinstance(model, torch.nn.Module):
        return ClassifierAdapter(model, target_layer=target_layer, backbone=backbone, head=head,
                                 preprocess=preprocess, labels=labels)
    raise XaifastError(f"cannot explain a {type(model).__name__}; pass a torch.nn.Module "
                       "(optionally with target_layer=), or backbone= and head= callables")


def _batches(samples: Iterator[Sample], batch_size: int, failures: List[Tuple[Union[str, int], str]]
             ) -> Iterator[List[Sample]]:
    """Good samples grouped into batches of one input shape; bad ones reported and skipped."""
    batch: List[Sample] = []
    for sample in samples:
        if sample.tensor is None:
            failures.append((sample.source, sample.error or "unreadable"))
            warnings.warn(f"skipping {sample.error}", stacklevel=3)
            continue
        if batch and batch[0].tensor.shape != sample.tensor.shape:
            yield batch
            batch = []
        batch.append(sample)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def scores_of(logits: torch.Tensor, score: str) -> torch.Tensor:
    logits = logits.float()
    if score == "softmax":
        return torch.softmax(logits, dim=1)
    if score == "sigmoid":
        return torch.sigmoid(logits)
    return logits


@contextlib.contextmanager
def single_torch_thread():
    """Run the host's small torch ops on this thread alone while the OpenVINO engine computes:
    waking torch's intra-op pool on cores OpenVINO keeps busy costs milliseconds per op."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def predicted_classes(scores: np.ndarray, multilabel: bool) -> List[int]:
    if multilabel:
        return [int(k) for k in np.flatnonzero(scores >= 0.5)]
    return [int(np.argmax(scores))]


def resolve_classes(refs: Sequence, num_classes: int, labels: Optional[Sequence[str]]) -> List[int]:
    """Class indices from a list of indices and/or label names, checked against the model."""
    out = []
    for ref in refs:
        if isinstance(ref, str) and not ref.lstrip("-").isdigit():
            if not labels or ref not in labels:
                known = "the model has no label names" if not labels else f"e.g. {', '.join(labels[:5])}, ..."
                raise ClassIndexError(f"unknown class name {ref!r} ({known}); use a class index 0..{num_classes - 1}")
            out.append(list(labels).index(ref))
            continue
        k = int(ref)
        if not 0 <= k < num_classes:
            raise ClassIndexError(f"class index {k} is out of range for a model with {num_classes} classes "
                                  f"(valid: 0..{num_classes - 1})")
        out.append(k)
    return list(dict.fromkeys(out))


class ExplainRun:
    """Iterable of `Explanation`s, in input order. After iteration, `failures` lists the inputs
    that were skipped as (source, reason) and `count` the images explained."""

    def __init__(self, adapter: ClassifierAdapter, data, config: ExplainConfig, batch_size: int,
                 memory_budget_mb: Optional[float], vit_options: Optional[dict] = None,
                 detection_options: Optional[dict] = None):
        if batch_size < 1:
            raise XaifastError(f"batch_size must be >= 1, got {batch_size}")
        self.adapter = adapter
        self.config = config
        self.batch_size = batch_size
        self.memory_budget_mb = memory_budget_mb
        self.failures: List[Tuple[Union[str, int], str]] = []
        self.count = 0
        self.algorithm = resolve_algorithm(config.algorithm, adapter.kind, config.target_explain_group)
        if isinstance(adapter, OpenVINOAdapter) and str(config.algorithm).lower() in ("auto", "classwisesaliencymap") \
                and config.target_explain_group is not TargetExplainGroup.IMAGE:
            self.algorithm = adapter.algorithm  # what the exported graph computes
        self.mask = config.mask if config.mask != "auto" else "gaussian" if adapter.kind == "transformer" else "1x1"
        self.vit_options = dict(vit_options or {})
        self.detection_options = dict(detection_options or {})
        if isinstance(adapter, DetectionAdapter):
            from .engines.detection_run import check_detection_options

            check_detection_options(adapter, config.score)
        self._samples = iter_samples(data, adapter.preprocess)  # validates data now: errors come early

    def __iter__(self) -> Iterator[Explanation]:
        batches = _batches(self._samples, self.batch_size, self.failures)
        if isinstance(self.adapter, OpenVINOEngine):  # inference overlapped with reading and postprocessing
            for batch, computed in self.adapter.stream(batches, self):
                with single_torch_thread():  # OpenVINO's threads hold the cores: no waits on torch's pool
                    done = list(self._explain_batch(batch, computed))
                yield from done
        else:
            for batch in batches:
                yield from self._explain_batch(batch)
        if self.failures:
            listed = "; ".join(f"{src}: {why}" for src, why in self.failures[:10])
            more = f" (and {len(self.failures) - 10} more)" if len(self.failures) > 10 else ""
            warnings.warn(f"{len(self.failures)} input(s) could not be read and were skipped, "
                          f"{self.count} explained: {listed}{more}", stacklevel=2)

    # ----------------------------------------------------------------------------------
    def saliency(self, feature: torch.Tensor, normalize_maps: bool) -> SaliencyResult:
        cfg = self.config
        if self.algorithm in ("activationmap", "eigencam"):
            fmap = feature.feature_map() if isinstance(feature, TokenFeature) else feature
            return explain_activation_map(fmap) if self.algorithm == "activationmap" else explain_eigen_cam(fmap)
        if self.algorithm == "vit_recipro_cam":
            return vit_recipro_cam(feature, self.adapter.rest(), self.mask, cfg.score, normalize=normalize_maps,
                                   memory_budget_mb=self.memory_budget_mb, **self.vit_options)
        return recipro_cam(feature, self.adapter.head(feature), self.mask, cfg.score, normalize=normalize_maps,
                           memory_budget_mb=self.memory_budget_mb)

    def _targets(self, scores: np.ndarray, predicted: List[int], num_classes: int) -> List[int]:
        group = self.config.target_explain_group
        if group is TargetExplainGroup.ALL:
            return list(range(num_classes))
        if group is TargetExplainGroup.PREDICTIONS:
            return predicted
        return resolve_classes(self.config.target_classes, num_classes, self.adapter.labels)

    def _explain_batch(self, batch: List[Sample], computed=None) -> Iterator[Explanation]:
        cfg = self.config
        if isinstance(self.adapter, DetectionAdapter):
            from .engines.detection_run import explain_detection_batch

            yield from explain_detection_batch(self, batch)
            return
        x = torch.stack([s.tensor for s in batch]) if computed is None else None
        if computed is not None:  # (logits, SaliencyResult) from the OpenVINO engine's stream
            logits, result = computed
        elif isinstance(self.adapter, OpenVINOAdapter):
            logits, result = self.adapter.explain_batch(x, self.algorithm)
        else:
            feature, logits = self.adapter.forward(x)
            result = None
        if logits.ndim != 2:
            raise XaifastError(f"the model returned logits of shape {list(logits.shape)}; a classifier "
                               "must return [B, num_classes]")
        num_classes = logits.shape[1]
        if cfg.target_explain_group is TargetExplainGroup.CUSTOM:
            resolve_classes(cfg.target_classes, num_classes, self.adapter.labels)  # fail before the work
        if result is None:
            result = self.saliency(feature, normalize_maps=True)
        u8 = result.normalized if result.normalized is not None else normalize(result.raw)
        u8 = u8.cpu().numpy()
        scores = scores_of(logits, cfg.score).cpu().numpy()
        for b, sample in enumerate(batch):
            predicted = predicted_classes(scores[b], cfg.multilabel)
            if result.class_agnostic:
                keys, maps = ["image"], u8[b, :1]
            else:
                keys = self._targets(scores[b], predicted, num_classes)
                maps = u8[b] if cfg.target_explain_group is TargetExplainGroup.ALL else u8[b, keys]  # ALL: a view
            explanation = Explanation(source=sample.source, saliency_map={}, prediction=scores[b],
                                      predicted=predicted, image=sample.image)
            size = sample.image if sample.image is not None else tuple(sample.tensor.shape[1:])
            attach_maps(explanation, keys, maps, size, cfg, self.adapter)
            self.count += 1
            yield explanation


def attach_maps(explanation: Explanation, keys: list, maps: np.ndarray, size, config: ExplainConfig, adapter,
                decorate_overlays: Optional[Callable[[dict], dict]] = None) -> None:
    """Put one image's maps [len(keys), h, w] uint8 on its Explanation, keyed by class (or "image"):
    postprocess=True resizes them to `size` (the image, or its (H, W)) with the colormap and makes
    the overlays (which `decorate_overlays` may draw on); False keeps the low-resolution maps.
    Also the label names of the keys."""
    from .postprocess import postprocess

    if config.postprocess:
        heat, over = postprocess(np.ascontiguousarray(maps), size, config.alpha)
        explanation.saliency_map = dict(zip(keys, heat))
        if over is not None:
            overlays = dict(zip(keys, over))
            explanation.overlay = decorate_overlays(overlays) if decorate_overlays is not None else overlays
    else:
        explanation.saliency_map = dict(zip(keys, maps))
    labels = adapter.labels
    explanation.labels = {} if labels is None else {  # (1000 lookups per image with ALL)
        k: adapter.label(k) for k in keys if isinstance(k, int) and adapter.label(k) is not None}


def explain(model, data, config: Optional[ExplainConfig] = None, *, target_layer: Optional[str] = None,
            backbone: Optional[Callable] = None, head: Optional[Callable] = None,
            preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None,
            batch_size: int = DEFAULT_BATCH_SIZE, memory_budget_mb: Optional[float] = None,
            target_block: int = 1, cls_token: bool = True, use_fast_path: bool = True, spec=None,
            feature_level: int = -1, score_threshold: Optional[float] = None,
            map_size: Optional[Tuple[int, int]] = None, engine: Optional[str] = None,
            precision: str = "f32") -> ExplainRun:
    """Explain `model` on `data`; stream one `Explanation` per image, in input order.

    model: a torch.nn.Module (target layer detected, or `target_layer="module.name"`), or None
        with `backbone=` and `head=` callables. data: a folder or list of image files, a tensor
        [B, 3, H, W], or an iterable of tensors (a DataLoader). config: `ExplainConfig`.
    preprocess: how image files become model inputs (size, mean, std); labels: class names.
    memory_budget_mb bounds the masked feature maps the head sees at once.
    Transformers (a model with a recognizable block list; vit_recipro_cam): target_block = k-th
    block from the end (or target_layer= naming the block list or one block), cls_token = keep
    the auxiliary tokens in the masked token sets, use_fast_path = exact distinct-token re-inference.
    Detectors and instance segmentation (`spec=xaifast.DetectorSpec(...)` / `InstanceSegmentationSpec`,
    or a model with `xaifast_spec()`): feature_level = the pyramid level of activationmap / eigencam
    (-1: the last, as OTX); score_threshold = the confidence threshold of the predictions (default:
    the spec's); map_size = (h, w) of the DetClassProbabilityMap maps (default: the middle level's).
    engine: "auto" (default, or $XAIFAST_ENGINE): OpenVINO on CPU for CNN classifiers given as an
    nn.Module (recipro_cam / activationmap / eigencam), PyTorch otherwise; "openvino" | "pytorch".
    precision: the OpenVINO engine's inference precision, f32 (default: the PyTorch maps within 1)
    | bf16 | f16 | auto (the device's default: bf16 on CPUs with AVX512-BF16 / AMX).
    """
    config = config or ExplainConfig()
    adapter = as_adapter(model, target_layer=target_layer, backbone=backbone, head=head,
                         preprocess=preprocess, labels=labels, algorithm=config.algorithm, target_block=target_block,
                         spec=spec)
    adapter = select_engine(adapter, engine, precision, config, data)
    return ExplainRun(adapter, data, config, batch_size, memory_budget_mb,
                      vit_options=dict(cls_token=cls_token, use_fast_path=use_fast_path),
                      detection_options=dict(feature_level=feature_level, score_threshold=score_threshold,
                                             map_size=map_size))


def saliency_maps(model, images, algorithm: str = "auto", *, target_layer: Optional[str] = None,
                  backbone: Optional[Callable] = None, head: Optional[Callable] = None, mask: str = "auto",
                  score: str = "softmax", preprocess: Optional[Preprocess] = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, memory_budget_mb: Optional[float] = None,
                  target_block: int = 1, cls_token: bool = True, use_fast_path: bool = True, spec=None,
                  feature_level: int = -1, score_threshold: Optional[float] = None,
                  map_size: Optional[Tuple[int, int]] = None, engine: Optional[str] = None,
                  precision: str = "f32") -> torch.Tensor:
    """Raw float32 saliency maps [B, K, h, w] (K = 1 for class-agnostic algorithms).
    mask "auto": 1x1 for CNNs, gaussian for transformers (as OTX)."""
    group = TargetExplainGroup.ALL
    config = ExplainConfig(target_explain_group=group, algorithm=algorithm, mask=mask, score=score)
    run = explain(model, images, config, target_layer=target_layer, backbone=backbone, head=head,
                  preprocess=preprocess, batch_size=batch_size, memory_budget_mb=memory_budget_mb,
                  target_block=target_block, cls_token=cls_token, use_fast_path=use_fast_path, spec=spec,
                  feature_level=feature_level, score_threshold=score_threshold, map_size=map_size,
                  engine=engine, precision=precision)
    if isinstance(run.adapter, OpenVINOEngine):  # raw maps from the OpenVINO engine's graph
        return run.adapter.saliency_maps(run, _batches(run._samples, batch_size, run.failures))
    if isinstance(run.adapter, OpenVINOAdapter) and run.algorithm not in ("activationmap", "eigencam"):
        raise XaifastError("an exported model carries normalized uint8 maps, not raw ones: use "
                           "xaifast.explain(path, data) for them, or saliency_maps on the PyTorch model")
    raws = []
    for batch in _batches(run._samples, batch_size, run.failures):
        x = torch.stack([s.tensor for s in batch])
        if isinstance(run.adapter, DetectionAdapter):
            from .engines.detection_run import detection_saliency

            raws.append(detection_saliency(run, run.adapter.forward(x), x.shape[2:]).raw)
            continue
        feature, _ = run.adapter.forward(x)
        raws.append(run.saliency(feature, normalize_maps=False).raw)
    if run.failures:
        warnings.warn(f"{len(run.failures)} input(s) could not be read and were skipped", stacklevel=2)
    if not raws:
        raise DataError("no input could be explained")
    return torch.cat(raws)
