"""The explain pipeline, one straight line:

    source -> decode -> batch -> engine -> targets -> render -> (sink, in the job)

- source: image files (a folder walked recursively, a file list, a COCO dataset; `stages.sources`)
  or tensors (a tensor, a DataLoader);
- decode: files are read and preprocessed on a thread pool (`num_workers`), in order, a bounded
  number ahead; unreadable or too large images are skipped and reported, never end the run;
- batch: images are grouped by their position in the input (`batch_size` positions a batch), so
  a batch holds the same images whether or not the run was resumed (the same maps, bit for bit);
- engine: `Engine.stream` (PyTorch, OpenVINO, exported model, detector: one protocol);
- targets: which maps of each image (IMAGE / ALL / PREDICTIONS / custom classes);
- render: postprocessed maps are rendered when read (`stages.render`), a few at a time.

`explain()` streams one `Explanation` per image, in input order. `ExplainRun.failures` lists the
skipped inputs as (source, reason).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from .algorithms import resolve_algorithm
from .config import ExplainConfig, TargetExplainGroup, resolve_score
from .data import Preprocess, Sample, iter_tensor_samples
from .engines import Engine, make_engine
from .engines.base import BatchResult, Request, single_torch_thread
from .errors import ClassIndexError, DataError, XaifastError
from .explanation import Explanation
from .stages.render import LowResMaps, Renderer, RenderedMaps

DEFAULT_BATCH_SIZE = 16


@dataclass
class ModelOptions:
    """How to read the model. target_layer: the module whose output is explained (detected when
    None); backbone / head: callables instead of a model; preprocess: how image files become
    inputs; labels: class names; target_block: ViT Recipro-CAM's k-th block from the end; spec:
    `DetectorSpec` / `InstanceSegmentationSpec` for detectors."""

    target_layer: Optional[str] = None
    backbone: Optional[Callable] = None
    head: Optional[Callable] = None
    preprocess: Optional[Preprocess] = None
    labels: Optional[Sequence[str]] = None
    target_block: int = 1
    spec: object = None


@dataclass
class RunOptions:
    """How to run. batch_size: images per forward; engine: auto | openvino | pytorch; precision:
    the OpenVINO engine's (f32 | bf16 | f16 | auto); memory_budget_mb: bound of the masked inputs
    the head sees at once; num_workers: decoding threads (None: the machine's cores);
    max_image_pixels: images larger than this are skipped (None: no limit)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    engine: Optional[str] = None
    precision: str = "f32"
    memory_budget_mb: Optional[float] = None
    num_workers: Optional[int] = None
    max_image_pixels: Optional[int] = 100_000_000


@dataclass
class AlgorithmOptions:
    """Options of some algorithms. ViT Recipro-CAM: cls_token (keep the auxiliary tokens in the
    masked token sets), use_fast_path (exact distinct-token re-inference). Detectors: feature_level
    (the pyramid level of activationmap / eigencam, -1: the last), score_threshold (confidence of
    the predictions; default: the spec's), map_size ((h, w) of DetClassProbabilityMap's maps).
    RISE: num_masks (5000), num_cells (8), prob (0.5), seed (0). AISE: preset (balance), its
    num_iterations_per_kernel (50) and kernel_widths (0.1, 0.175, 0.25) unless given, solver_epsilon
    (0.1), locally_biased (False)."""

    cls_token: bool = True
    use_fast_path: bool = True
    feature_level: int = -1
    score_threshold: Optional[float] = None
    map_size: Optional[Tuple[int, int]] = None
    num_masks: int = 5000
    num_cells: int = 8
    prob: float = 0.5
    seed: int = 0
    preset: str = "balance"
    num_iterations_per_kernel: Optional[int] = None
    kernel_widths: Optional[Tuple[float, ...]] = None
    solver_epsilon: float = 0.1
    locally_biased: bool = False


_GROUPS = (ModelOptions, RunOptions, AlgorithmOptions)


def _group_options(kwargs: dict):
    """Sort explain()'s flat keyword arguments into the three option groups."""
    out = []
    for group in _GROUPS:
        names = {f.name for f in fields(group)}
        out.append(group(**{k: kwargs.pop(k) for k in list(kwargs) if k in names}))
    if kwargs:
        valid = sorted(f.name for g in _GROUPS for f in fields(g))
        raise TypeError(f"unknown option(s) {', '.join(sorted(kwargs))}; valid: {', '.join(valid)}")
    return out


def default_workers() -> int:
    """The machine's cores (those this process may use), shared among torchrun's local processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


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


def shard_range(count: int, batch_size: int, rank: int, world: int) -> Tuple[int, int]:
    """[first, last) input positions of `rank` among `world` processes: contiguous parts of the
    sorted input, cut at batch windows (a batch never spans two processes, so every image is
    computed in the same batch as in a single-process run), as even as the windows allow."""
    windows = -(-count // batch_size)
    first = (rank * windows // world) * batch_size
    last = min(count, ((rank + 1) * windows // world) * batch_size)
    return min(first, count), last


class SourceList(list):
    """The listed items (`stages.sources.SourceItem`) of a file source."""


class ExplainRun:
    """Iterable of `Explanation`s, in input order. After iteration, `failures` lists the inputs
    that were skipped as (source, reason) and `count` the images explained.

    skip: keys (`Explanation.key`: the relative path of a file, or the index of a tensor row) of
    images already done (a resumed run): not yielded, and batches made only of them not computed.
    on_skip(sample, reason) is called for every input that could not be read.
    shard: (rank, world size) of a multi-process run: the contiguous part of a file input this
    process explains (`shard_range`); tensor inputs: every world-th batch window.
    warn: warn once per skipped input and once at the end (the job reports them itself)."""

    def __init__(self, engine: Engine, data, config: ExplainConfig, run: RunOptions,
                 algorithm: AlgorithmOptions, *, skip: Optional[Set] = None,
                 on_skip: Optional[Callable] = None, warn: bool = True, normalize: bool = True,
                 shard: Tuple[int, int] = (0, 1)):
        if run.batch_size < 1:
            raise XaifastError(f"batch_size must be >= 1, got {run.batch_size}")
        self.engine = engine
        self.config = config
        self.options = run
        self.failures: List[Tuple[Union[str, int], str]] = []
        self.count = 0
        self.skip = set(skip or ())
        self.shard = tuple(shard)  # (rank, world size): this process explains its contiguous part of the input
        self.on_skip = on_skip
        self.warn = warn
        self.algorithm = resolve_algorithm(config.algorithm, engine.kind, config.target_explain_group)
        self.mask = config.mask if config.mask != "auto" else "gaussian" if engine.kind == "transformer" else "1x1"
        request = Request(self.algorithm, self.mask, resolve_score(config.score, self.algorithm), normalize=normalize,
                          memory_budget_mb=run.memory_budget_mb,
                          vit=dict(cls_token=algorithm.cls_token, use_fast_path=algorithm.use_fast_path),
                          detection=dict(feature_level=algorithm.feature_level,
                                         score_threshold=algorithm.score_threshold, map_size=algorithm.map_size),
                          rise=dict(num_masks=algorithm.num_masks, num_cells=algorithm.num_cells, prob=algorithm.prob,
                                    seed=algorithm.seed, classes=self._rise_classes(config)),
                          aise=dict(preset=algorithm.preset, num_iterations_per_kernel=algorithm.num_iterations_per_kernel,
                                    kernel_widths=algorithm.kernel_widths, solver_epsilon=algorithm.solver_epsilon,
                                    locally_biased=algorithm.locally_biased, classes=self._rise_classes(config)))
        self.request = engine.resolve(request)
        self.algorithm = self.request.algorithm
        engine.check(self.request)
        self.items = None  # the file source's items (stages.sources.SourceItem), in order
        self.names = {}
        self._samples = self._open(data)  # validates data now: errors come early

    @property
    def adapter(self) -> Engine:  # earlier name of `engine`
        return self.engine

    # ------------------------------------------------------------------ source + decode
    def _open(self, data) -> Iterator[Sample]:
        from .stages.sources import is_path_input, list_sources

        if isinstance(data, (list, tuple)) and not data:
            raise DataError("the data is an empty list; pass image files, a folder, or tensors [B, 3, H, W]")
        if isinstance(data, SourceList) or is_path_input(data):
            from .stages.sinks import output_names

            self.items = data if isinstance(data, SourceList) else list_sources(data)
            self.names = output_names([it.rel for it in self.items])
            return self._decoded()
        if isinstance(data, (str, bytes)):
            raise DataError(f"cannot explain {data!r}")
        if not isinstance(data, (torch.Tensor, np.ndarray)) and not hasattr(data, "__iter__"):
            raise DataError(f"data of type {type(data).__name__} is not explainable; pass a folder, a list of "
                            "image files, a tensor [B, 3, H, W] or an iterable of tensors (a DataLoader)")
        samples = iter_tensor_samples(data)
        return samples if self.shard[1] == 1 else self._tensor_shard(samples)

    def _decoded(self) -> Iterator[Sample]:
        """Decode the items of every batch that has work left, on a thread pool, in order."""
        from concurrent.futures import ThreadPoolExecutor

        from .stages.decode import read_image_checked

        items, size, skip = self.items, self.options.batch_size, self.skip
        first, last = shard_range(len(items), size, *self.shard)
        todo = [i for start in range(first, last, size)
                if not all(it.rel in skip for it in items[start:start + size])
                for i in range(start, min(start + size, last))]
        preprocess = self.engine.preprocess
        max_pixels = self.options.max_image_pixels

        def load(i: int) -> Sample:
            item = items[i]
            try:
                image = read_image_checked(item.path, max_pixels)
                return Sample(item.path, preprocess(image), image, index=i, item=item)
            except Exception as exc:  # one bad file must not stop a run
                from .errors import ImageReadError

                reason = str(exc) if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
                return Sample(item.path, None, None, reason, index=i, item=item)

        workers = self.options.num_workers or default_workers()
        ahead = max(4, 2 * workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xaifast-decode") as pool:
            pending = []
            for i in todo:
                pending.append(pool.submit(load, i))
                if len(pending) >= ahead:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()

    def _tensor_shard(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        rank, world = self.shard
        size = self.options.batch_size
        for sample in samples:
            if (sample.index // size) % world == rank:
                yield sample

    def _batches(self, samples: Iterator[Sample]) -> Iterator[List[Sample]]:
        """Good samples grouped into batches: the same batch-size window of input positions and one
        input shape; bad ones reported and skipped."""
        batch: List[Sample] = []
        size = self.options.batch_size
        for sample in samples:
            if sample.tensor is None:
                self._skipped(sample)
                continue
            if batch and (batch[0].tensor.shape != sample.tensor.shape
                          or batch[0].index // size != sample.index // size):
                yield batch
                batch = []
            batch.append(sample)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _skipped(self, sample: Sample) -> None:
        reason = sample.error or "unreadable"
        key = sample.item.rel if sample.item is not None else sample.index
        if key in self.skip:
            return
        self.failures.append((sample.source, reason))
        if self.on_skip is not None:
            self.on_skip(sample, reason)
        if self.warn:
            warnings.warn(f"skipping {sample.source}: {reason}", stacklevel=4)

    @staticmethod
    def _rise_classes(config: ExplainConfig):
        """The classes RISE and AISE explain (one H x W map each): every class for ALL (and IMAGE),
        "predicted" for PREDICTIONS, the custom class references (resolved by the engine)."""
        group = config.target_explain_group
        if group is TargetExplainGroup.PREDICTIONS:
            return "predicted"
        if group is TargetExplainGroup.CUSTOM:
            return list(config.target_classes)
        return None

    # ------------------------------------------------------------------ engine + targets
    def batch_results(self) -> Iterator[Tuple[List[Sample], BatchResult]]:
        for batch, result in self.engine.stream(self._batches(self._samples), self.request):
            with single_torch_thread(self.engine.busy_cores):
                yield batch, result

    def __iter__(self) -> Iterator[Explanation]:
        for batch, result in self.batch_results():
            yield from self.explanations(batch, result)
        if self.failures and self.warn:
            listed = "; ".join(f"{src}: {why}" for src, why in self.failures[:10])
            more = f" (and {len(self.failures) - 10} more)" if len(self.failures) > 10 else ""
            warnings.warn(f"{len(self.failures)} input(s) could not be read and were skipped, "
                          f"{self.count} explained: {listed}{more}", stacklevel=2)

    def targets(self, predicted: List[int], num_classes: int) -> List[int]:
        group = self.config.target_explain_group
        if group is TargetExplainGroup.ALL:
            return self._all_keys(num_classes)[0]
        if group is TargetExplainGroup.PREDICTIONS:
            return predicted
        return resolve_classes(self.config.target_classes, num_classes, self.engine.labels)

    def _all_keys(self, num_classes: int):
        """([0..K-1], {k: k}, {k: label}) shared by every image of an ALL run (never modified)."""
        cached = getattr(self, "_all_cache", None)
        if cached is None or len(cached[0]) != num_classes:
            keys = list(range(num_classes))
            cached = self._all_cache = (keys, {k: k for k in keys}, self._labels_of(keys))
        return cached

    def _labels_of(self, keys) -> dict:
        engine = self.engine
        return {} if engine.labels is None else {
            k: engine.label(k) for k in keys if isinstance(k, int) and engine.label(k) is not None}

    def explanations(self, batch: List[Sample], result: BatchResult) -> Iterator[Explanation]:
        cfg = self.config
        if cfg.target_explain_group is TargetExplainGroup.CUSTOM:
            resolve_classes(cfg.target_classes, result.num_classes, self.engine.labels)  # fail before the work
        u8 = result.uint8()
        input_hw = tuple(batch[0].tensor.shape[1:])
        for b, sample in enumerate(batch):
            key = sample.item.rel if sample.item is not None else sample.index
            if key in self.skip:
                continue
            image_hw = sample.image.shape[:2] if sample.image is not None else input_hw
            pred = result.predictions[b].in_image(input_hw, image_hw)
            if result.maps.class_agnostic:
                keys, maps = ["image"], u8[b, :1]
            else:
                keys = self.targets(pred.predicted, result.num_classes)
                if result.map_classes is not None:  # maps of some classes only: rows by class
                    maps = u8[b, [result.map_classes.index(k) for k in keys]]
                else:
                    maps = u8[b] if cfg.target_explain_group is TargetExplainGroup.ALL else u8[b, keys]  # ALL: a view
            yield self.explanation(sample, keys, maps, pred, image_hw)

    def explanation(self, sample: Sample, keys: list, maps: np.ndarray, pred, image_hw) -> Explanation:
        """One image's Explanation; postprocessed maps and overlays render when read."""
        cfg, engine = self.config, self.engine
        item = sample.item
        ex = Explanation(source=sample.source, saliency_map={}, prediction=pred.scores, predicted=pred.predicted,
                         image=sample.image, index=sample.index,
                         rel=item.rel if item is not None else None, gt=item.gt if item is not None else None)
        ex.name = self.names[item.rel] if item is not None else f"image_{sample.index:06d}"
        shared = getattr(self, "_all_cache", None)
        shared = shared if shared is not None and keys is shared[0] else None  # ALL: one index, one labels dict
        index = shared[1] if shared is not None else {k: i for i, k in enumerate(keys)}
        ex.maps = LowResMaps(keys, maps, index)
        ex.renderer = Renderer(keys, maps, sample.image, image_hw, cfg.alpha, pred.shown, engine.labels, index=index)
        ex.postprocessed = cfg.postprocess
        if pred.shown is not None:
            ex.extras["detections"] = pred.shown
        if cfg.postprocess:
            ex.saliency_map = RenderedMaps(ex.renderer, "heat")
            if sample.image is not None:
                ex.overlay = RenderedMaps(ex.renderer, "overlay")
        else:
            ex.saliency_map = ex.maps
        ex.labels = dict(shared[2]) if shared is not None else self._labels_of(keys)
        self.count += 1
        return ex

    def raw_maps(self, normalized_ok: bool = False) -> torch.Tensor:
        """Raw float32 maps [B, K, h, w] of every image (`saliency_maps`); with normalized_ok, the
        uint8 maps as float32 where the engine gives only those (an exported graph's)."""
        raws = []
        for _, result in self.batch_results():
            raw = result.maps.raw
            if raw is None and normalized_ok:
                raw = result.maps.normalized.float()
            if result.map_classes is not None:  # some classes only: the others' maps are zeros
                full = raw.new_zeros((raw.shape[0], result.num_classes) + tuple(raw.shape[2:]))
                full[:, result.map_classes] = raw
                raw = full
            raws.append(raw)
        if self.failures and self.warn:
            warnings.warn(f"{len(self.failures)} input(s) could not be read and were skipped", stacklevel=3)
        if not raws:
            raise DataError("no input could be explained")
        return torch.cat(raws)


def explain(model, data, config: Optional[ExplainConfig] = None, *, model_options: Optional[ModelOptions] = None,
            run_options: Optional[RunOptions] = None, algorithm_options: Optional[AlgorithmOptions] = None,
            _run_kwargs: Optional[dict] = None, **options) -> ExplainRun:
    """Explain `model` on `data`; stream one `Explanation` per image, in input order.

    model: a torch.nn.Module (target layer detected, or target_layer="module.name"), a recipe's
        model, an exported .xml / .onnx path, or None with backbone= and head= callables.
    data: a folder (walked recursively), an image file, a text file of image paths, a COCO
        dataset folder, a list of image files, a tensor [B, 3, H, W], or an iterable of tensors
        (a DataLoader).
    config: `ExplainConfig`: what to explain (target group, classes, algorithm, mask, score,
        postprocess).
    The other options, by group (pass them as keywords, or as the group's object):
      ModelOptions: target_layer, backbone, head, preprocess, labels, target_block, spec
      RunOptions: batch_size (16), engine (auto | openvino | pytorch), precision (f32), memory_budget_mb,
        num_workers, max_image_pixels (100 megapixels)
      AlgorithmOptions: cls_token, use_fast_path (ViT), feature_level, score_threshold, map_size (detectors),
        num_masks, num_cells, prob, seed (RISE: algorithm="rise", any classifier incl. a numpy callable),
        preset, num_iterations_per_kernel, kernel_widths, solver_epsilon, locally_biased (AISE: algorithm="aise")
    engine "auto" (default, or $XAIFAST_ENGINE): OpenVINO on CPU for CNN classifiers given as an
    nn.Module (recipro_cam / activationmap / eigencam), PyTorch otherwise.
    """
    from .stages.sources import is_path_input, list_sources

    config = config or ExplainConfig()
    if is_path_input(data):
        data = SourceList(list_sources(data))  # listed once (the engine's choice counts the images)
    m, r, a = _group_options(dict(options))
    m, r, a = model_options or m, run_options or r, algorithm_options or a
    engine = make_engine(model, config, engine=r.engine, precision=r.precision, data=data,
                         target_layer=m.target_layer, backbone=m.backbone, head=m.head, preprocess=m.preprocess,
                         labels=m.labels, target_block=m.target_block, spec=m.spec)
    return ExplainRun(engine, data, config, r, a, **(_run_kwargs or {}))


def saliency_maps(model, images, algorithm: str = "auto", *, mask: str = "auto", score: str = "auto",
                  **options) -> torch.Tensor:
    """Raw float32 saliency maps [B, K, h, w] (K = 1 for class-agnostic algorithms) of `images`
    (anything `explain` takes as data); options as `explain`'s. mask "auto": 1x1 for CNNs,
    gaussian for transformers (as OTX); score "auto": raw logits for Recipro-CAM (as OTX 2.x)."""
    config = ExplainConfig(target_explain_group=TargetExplainGroup.ALL, algorithm=algorithm, mask=mask, score=score)
    return explain(model, images, config, _run_kwargs=dict(normalize=False), **options).raw_maps()


def metric_maps(model, images, algorithm: str = "auto", **options) -> torch.Tensor:
    """Float32 maps [B, K, h, w] for the quality metrics: `saliency_maps`, except for an exported
    model whose graph normalizes its maps to uint8: those maps, as float32. Every metric gives the
    same result on a map and its min-max normalization (they rank the pixels, take the maximum, or
    rescale to [0, 1] first), up to the uint8 rounding."""
    from .engines.exported import is_exported_model

    if not is_exported_model(model):
        return saliency_maps(model, images, algorithm, **options)
    config = ExplainConfig(target_explain_group=TargetExplainGroup.ALL, algorithm=algorithm)
    return explain(model, images, config, **options).raw_maps(normalized_ok=True)
