"""Ray Data: saliency maps inside a Ray batch-inference job.

    import ray
    from xaifast.ray import SaliencyPredictor

    ds = ray.data.read_images("images/", include_paths=True, mode="RGB")   # columns image, path
    explained = ds.map_batches(SaliencyPredictor, batch_size=32, concurrency=2,
                               fn_constructor_kwargs=dict(model="efficientnet_lite0",
                                                          target_explain_group="PREDICTIONS"))
    explained.write_parquet("explanations/")

`SaliencyPredictor` is a callable class for `Dataset.map_batches` (numpy batches, the default
batch format): each Ray actor builds the model and its xaifast engine once, in `__init__`, and
explains every batch it is given with the same pipeline as `xaifast.explain` (`ExplainRun`:
decode -> batch -> engine -> targets), so its maps and predictions are those of `xaifast.explain`
on the same images.

Input columns: `image` (decoded RGB images, uint8 [H, W, 3] (or gray [H, W]), one ndarray
[B, H, W, 3] or an object column of differently sized ones, as `ray.data.read_images` gives), or
`path` alone (image files, read by xaifast's decode stage, on `num_workers` threads). Every other
column (`path` beside `image`, `id`, labels, ...) is passed through unchanged; `image` is dropped.

Output columns, one row per input row, in order:
  maps          uint8 [K, h, w]: the normalized low-resolution maps of the image's K targets
  targets       int64 [K]: their classes (-1: the class-agnostic map of the IMAGE group)
  predicted     int64 [P]: the predicted classes (what PREDICTIONS explains)
  top_classes   int64 [5], top_scores float32 [5]: the best classes (softmax; sigmoid for
                multilabel models) (classifiers)
  det_boxes     float32 [N, 4] (x1, y1, x2, y2 in the image's pixels), det_scores float32 [N],
  det_labels    int64 [N]: the detections above the threshold (detectors, instead of top_*)
  saliency_map, overlay  uint8 [K, H, W, 3]: JET heat maps and overlays at the image's size, only
                with postprocess=True
  error         None, or why the row could not be explained

An input row that cannot be explained (a missing, corrupt or too large file) is reported, not
raised: its `error` says why and its other columns are empty (0 maps, 0 predictions), so one bad
file does not fail a Ray job of millions (on_error="raise" raises `ImageReadError` instead).
Badly typed data (an `image` column that is not uint8 images, no `image` or `path` column) raises
at once: every row would fail.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .config import ExplainConfig
from .data import Sample
from .errors import DataError, ImageReadError, XaifastError
from .pipeline import ExplainRun, SourceList, _group_options, default_workers

#: ExplainConfig's fields, accepted as keyword arguments of SaliencyPredictor
CONFIG_FIELDS = ("target_explain_group", "target_classes", "postprocess", "algorithm", "mask", "score", "alpha")
#: the columns SaliencyPredictor writes (top_* for classifiers, det_* for detectors; saliency_map and
#: overlay with postprocess=True)
OUTPUT_COLUMNS = ("maps", "targets", "predicted", "top_classes", "top_scores", "det_boxes", "det_scores",
                  "det_labels", "saliency_map", "overlay", "error")
DETECTOR_KINDS = ("detection", "instance_segmentation")


class _BatchRun(ExplainRun):
    """`ExplainRun` over images that are already decoded (`Sample`s with the image and its model input)."""

    def _open(self, data):
        if isinstance(data, _Decoded):
            return iter(data)
        return super()._open(data)


class _Decoded(list):
    """Samples decoded by the caller."""


class SaliencyPredictor:
    """Callable class for `ray.data.Dataset.map_batches`: a batch of images (or image paths) in,
    their saliency maps and predictions out (see the module docstring for the columns).

    model: a built-in recipe name (default: efficientnet_lite0) or a recipe YAML file, a
        `torch.nn.Module`, or an exported `.xml` / `.onnx` (as `xaifast.Engine`).
    checkpoint: the recipe's (or module's) weights, a state_dict `.pth`; or an exported model to
        explain instead.
    explain_config: an `ExplainConfig` or a dict of its fields; or give the fields as keywords
        (target_explain_group, target_classes, postprocess, algorithm, mask, score, alpha). A
        recipe's `score` applies unless one is given.
    device: "cpu", "cuda", "cuda:N"; None: "cuda" when the actor sees a GPU (Ray shows one to actors
        started with num_gpus=...), else "cpu".
    on_error: "report" (default: the row's `error` column says why) or "raise".
    top: how many of the best classes `top_classes` / `top_scores` hold (5).
    **options: anything `xaifast.explain` takes: target_layer, preprocess, labels, spec, ...,
        batch_size (images per forward, default 16; the Ray batch is cut into such batches),
        engine (auto | openvino | pytorch; auto runs CNN classifiers on CPU with OpenVINO, converted
        once per actor: a Ray dataset counts as large), precision, memory_budget_mb, num_workers (decoding
        threads; default: the CPUs Ray gave the actor, $OMP_NUM_THREADS), max_image_pixels,
        cls_token, use_fast_path, feature_level, score_threshold, map_size.

    The model and its engine are built once, when Ray starts the actor; every batch reuses them.
    """

    def __init__(self, model: Union[str, os.PathLike, torch.nn.Module, None] = None,
                 checkpoint: Optional[Union[str, os.PathLike]] = None,
                 explain_config: Union[ExplainConfig, Dict[str, Any], None] = None, *,
                 device: Optional[str] = None, on_error: str = "report", top: int = 5, **options):
        from .engines import make_engine
        from .otx_engine import Engine as _Facade

        if on_error not in ("report", "raise"):
            raise XaifastError(f"on_error must be 'report' or 'raise', got {on_error!r}")
        if int(top) < 1:
            raise XaifastError(f"top must be >= 1, got {top}")
        self.on_error = on_error
        self.top = int(top)
        fields = {k: options.pop(k) for k in list(options) if k in CONFIG_FIELDS}
        if explain_config is not None and fields:
            raise XaifastError(f"give the explain settings either as explain_config or as keywords, not both "
                               f"(got explain_config and {', '.join(sorted(fields))})")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # The recipe / module / exported-model handling of xaifast.Engine (OTX's facade): the same
        # model, weights and recipe options (preprocess, labels, target layer, detector spec).
        facade = _Facade(model=model, checkpoint=None if checkpoint is None else str(checkpoint), device=device)
        net = facade._model(None)
        recipe_options = facade._recipe_options(net)
        if isinstance(explain_config, ExplainConfig):
            config = explain_config
        else:
            fields = dict(explain_config or {}, **fields)
            unknown = set(fields) - set(CONFIG_FIELDS)
            if unknown:
                raise XaifastError(f"unknown explain_config field(s) {', '.join(sorted(unknown))}; "
                                   f"valid: {', '.join(CONFIG_FIELDS)}")
            if "score" not in fields and facade.recipe is not None and not isinstance(net, str):
                fields["score"] = facade.recipe.score  # as `xaifast explain --config`
            config = ExplainConfig(**fields)
        if options.get("num_workers") is None:
            # Ray sets OMP_NUM_THREADS to the CPUs it gave the actor (num_cpus); decode on as many threads
            options["num_workers"] = _env_threads() or default_workers()
        m, r, a = _group_options(dict(recipe_options, **options))
        self.config = config
        self.run_options, self.algorithm_options = r, a
        self.engine = make_engine(net, config, engine=r.engine, precision=r.precision, data=None,
                                  target_layer=m.target_layer, backbone=m.backbone, head=m.head,
                                  preprocess=m.preprocess, labels=m.labels, target_block=m.target_block, spec=m.spec)
        self.detector = self.engine.kind in DETECTOR_KINDS
        # fail now (in the actor's constructor), not in the first batch: the request must be servable
        _BatchRun(self.engine, _Decoded(), config, r, a, warn=False)

    # ------------------------------------------------------------------ one batch
    def __call__(self, batch: Dict[str, Any]) -> Dict[str, np.ndarray]:
        if not isinstance(batch, dict):
            raise DataError(f"SaliencyPredictor takes numpy batches (a dict of column arrays), got a "
                            f"{type(batch).__name__}; call map_batches(..., batch_format='numpy')")
        taken = sorted(set(batch) & set(OUTPUT_COLUMNS))
        if taken:
            raise DataError(f"the input already has column(s) {', '.join(taken)}, which SaliencyPredictor writes; "
                            "rename or drop them first (Dataset.rename_columns / drop_columns)")
        if "image" in batch:
            count = len(batch["image"])
            data = _Decoded(self._decoded(batch["image"], batch))
        elif "path" in batch:
            paths = [_text(p, "path") for p in batch["path"]]
            count = len(paths)
            from .stages.sources import SourceItem

            # rel: the row's position (unique: the same file may be listed twice); only `path` is shown
            data = SourceList(SourceItem(p, str(i)) for i, p in enumerate(paths))
        else:
            raise DataError(f"SaliencyPredictor needs an 'image' column (decoded RGB uint8 images, e.g. from "
                            f"ray.data.read_images) or a 'path' column (image files); the batch has "
                            f"{', '.join(sorted(batch)) or 'no columns'}")
        failures: Dict[int, str] = {}

        def on_skip(sample, reason):
            if self.on_error == "raise":
                raise ImageReadError(f"{sample.source}: {reason}")
            failures[sample.index] = reason

        done = {}
        if count:
            run = _BatchRun(self.engine, data, self.config, self.run_options, self.algorithm_options,
                            warn=False, on_skip=on_skip)
            done = {ex.index: ex for ex in run}
        out = {k: v for k, v in batch.items() if k != "image"}
        out.update(self._columns(count, done, failures))
        return out

    def _decoded(self, images, batch) -> List[Sample]:
        preprocess = self.engine.preprocess
        sources = batch.get("path", batch.get("id"))
        samples = []
        for i, image in enumerate(images):
            image = _rgb(image, i)
            source = _text(sources[i], "path") if sources is not None else i
            samples.append(Sample(source, preprocess(image), image, index=i))
        return samples

    def _columns(self, count: int, done: dict, failures: Dict[int, str]) -> Dict[str, np.ndarray]:
        cols: Dict[str, list] = {"maps": [], "targets": [], "predicted": []}
        if self.detector:
            cols.update(det_boxes=[], det_scores=[], det_labels=[])
        else:
            cols.update(top_classes=[], top_scores=[])
        if self.config.postprocess:
            cols.update(saliency_map=[], overlay=[])
        cols["error"] = []
        for i in range(count):
            ex = done.get(i)
            if ex is None:
                self._failed_row(cols, failures.get(i, "not explained"))
                continue
            keys = list(ex.maps)
            cols["maps"].append(np.stack([ex.maps[k] for k in keys]).astype(np.uint8, copy=False))
            cols["targets"].append(np.array([-1 if k == "image" else int(k) for k in keys], dtype=np.int64))
            cols["predicted"].append(np.array(ex.predicted, dtype=np.int64))
            if self.detector:
                p = ex.prediction
                cols["det_boxes"].append(np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4))
                cols["det_scores"].append(np.asarray(p["scores"], dtype=np.float32).reshape(-1))
                cols["det_labels"].append(np.asarray(p["labels"], dtype=np.int64).reshape(-1))
            else:
                scores = np.asarray(ex.prediction, dtype=np.float64)
                order = np.argsort(-scores, kind="stable")[:self.top]  # as the run index's top-5
                cols["top_classes"].append(order.astype(np.int64))
                cols["top_scores"].append(scores[order].astype(np.float32))
            if self.config.postprocess:
                cols["saliency_map"].append(np.stack([ex.saliency_map[k] for k in keys]))
                cols["overlay"].append(np.stack([ex.overlay[k] for k in keys]))
            cols["error"].append(None)
        return {k: _column(v) for k, v in cols.items()}

    def _failed_row(self, cols: Dict[str, list], reason: str) -> None:
        empty = {"maps": np.zeros((0, 0, 0), np.uint8), "targets": np.zeros(0, np.int64),
                 "predicted": np.zeros(0, np.int64), "top_classes": np.zeros(0, np.int64),
                 "top_scores": np.zeros(0, np.float32), "det_boxes": np.zeros((0, 4), np.float32),
                 "det_scores": np.zeros(0, np.float32), "det_labels": np.zeros(0, np.int64),
                 "saliency_map": np.zeros((0, 0, 0, 3), np.uint8), "overlay": np.zeros((0, 0, 0, 3), np.uint8)}
        for name, values in cols.items():
            values.append(reason if name == "error" else empty[name])


def _column(values: list) -> np.ndarray:
    """An object column of per-row values (Ray turns ndarrays of one shape into a tensor column,
    of several shapes into a variable-shaped tensor column; strings / None into a string column)."""
    col = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


def _env_threads() -> Optional[int]:
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def _text(value, column: str) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    raise DataError(f"column {column!r} holds a {type(value).__name__}; expected file paths (str)")


def _rgb(image, row: int) -> np.ndarray:
    """A decoded image of the `image` column as RGB uint8 [H, W, 3] (gray [H, W] / [H, W, 1] expanded)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"image column, row {row}: dtype {image.dtype}; SaliencyPredictor takes decoded RGB uint8 "
                        "images [H, W, 3] (ray.data.read_images gives them; or pass a 'path' column of files)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise DataError(f"image column, row {row}: shape {list(image.shape)}; SaliencyPredictor takes RGB images "
                        "[H, W, 3] (read_images(..., mode='RGB') converts RGBA and palette images)")
    return np.ascontiguousarray(image)


__all__ = ["SaliencyPredictor", "OUTPUT_COLUMNS"]
