"""Models xaifast did not export: OpenVINO IRs and ONNX files from OTX, OpenVINO XAI or anywhere.

Two kinds are explained as they are:

- **An IR with a `saliency_map` output** (`otx export --explain True`, or OpenVINO XAI's
  `insert_xai`): its own maps, its labels and preprocessing from OTX's `model_info` runtime info
  (`labels`, `mean_values`, `scale_values`, `resize_type`, `reverse_input_channels`; ONNX:
  `metadata_props` keys `"model_info <name>"`). `explained_outputs` finds the classifier's logits
  beside the maps (the input of a final Softmax when the model outputs probabilities).
- **A plain classifier** (one `[B, K]` output, no explain outputs): `insert_recipro_cam` builds
  Recipro-CAM into the OpenVINO graph, white-box, as OpenVINO XAI's `insert_xai` does, with a
  dynamic batch: the target is the input of the last global average pooling (ReduceMean over the
  spatial axes, a global AvgPool or AdaptiveAvgPool to 1x1) or the node named by `target_layer`;
  the head (every op from the target to the logits) is re-run on the masked feature maps
  `F * m_p` (the "mosaic", one per cell p), or, when the head starts with that global pooling, on
  the pooled vectors `sum_q m_p(q) F[:, q] / (H*W)` (SPEC.md's exact GAP shortcut: no masked map
  is built). Scores: raw logits (`none`, OTX 2.x's default), `softmax` or `sigmoid`.

Both give an `ov.Model` whose outputs are, in order, the logits `[B, K]`, the maps and (where
known) the target's feature map `[B, C, H, W]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import XaifastError

SALIENCY = "saliency_map"
POOLS = ("ReduceMean", "AvgPool", "AdaptiveAvgPool")


class ForeignModelError(XaifastError, ValueError):
    """A model file that cannot be explained as it is (names the problem and the fix)."""


def _ops():
    import openvino as ov

    return getattr(ov, "opset13", None) or __import__("openvino.runtime.opset13", fromlist=["x"])


# ---------------------------------------------------------------------------------------------
# OTX's model_info


def model_info(path: Path, model) -> Dict[str, str]:
    """OTX / ModelAPI metadata: the IR's rt_info `model_info/*`, or ONNX metadata_props `model_info X`."""
    info: Dict[str, str] = {}
    if path.suffix.lower() == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        for entry in proto.metadata_props:
            parts = entry.key.split(" ", 1)
            if len(parts) == 2 and parts[0] == "model_info":
                info[parts[1]] = entry.value
        return info
    if not model.has_rt_info(["model_info"]):
        return info
    node = model.get_rt_info(["model_info"])
    try:
        keys = list(node.astype(dict).keys())
    except Exception:  # noqa: BLE001 - older runtimes: no dict view
        keys = []
    for key in keys:
        if model.has_rt_info(["model_info", key]):
            try:
                info[key] = model.get_rt_info(["model_info", key]).astype(str)
            except Exception:  # noqa: BLE001 - a nested entry, not a string
                continue
    return info


def _floats(text: str, what: str, path: Path) -> Tuple[float, float, float]:
    try:
        values = [float(v) for v in str(text).replace(",", " ").replace("[", " ").replace("]", " ").split()]
    except ValueError:
        raise ForeignModelError(f"{path}: model_info {what} {text!r} is not a list of numbers") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ForeignModelError(f"{path}: model_info {what} {text!r} needs 1 or 3 values")
    return tuple(values)  # type: ignore[return-value]


def _flag(text: str) -> bool:
    return str(text).strip().lower() in ("true", "yes", "1", "on")


def preprocess_from_info(info: Dict[str, str], input_size: Sequence[int], path: Path):
    """The preprocessing OTX's model_info describes (ModelAPI's order: reverse the channels of the
    image as given, then (x - mean_values) / scale_values per channel of the reversed image)."""
    from ..data import Preprocess

    resize = info.get("resize_type", "standard").strip() or "standard"
    if resize != "standard":
        raise ForeignModelError(
            f"{path}: model_info resize_type {resize!r} is not supported (xaifast resizes the whole image, "
            "OTX's 'standard'); pass preprocess=xaifast.Preprocess(...) to explain it with a plain resize")
    mean = _floats(info["mean_values"], "mean_values", path) if "mean_values" in info else (0.0, 0.0, 0.0)
    std = _floats(info["scale_values"], "scale_values", path) if "scale_values" in info else (1.0, 1.0, 1.0)
    reverse = _flag(info.get("reverse_input_channels", "False"))
    return Preprocess(tuple(input_size), mean, std, reverse_channels=reverse)


def labels_from_info(info: Dict[str, str]) -> Optional[List[str]]:
    text = info.get("labels")
    if not text or not text.strip():
        return None
    return text.split()  # OTX writes names joined by spaces, spaces inside a name as underscores


# ---------------------------------------------------------------------------------------------
# graph helpers


def static_input(model, input_size: Optional[Sequence[int]]):
    """Reshape the model's image input to [-1, C, H, W] (dynamic batch, static size), as Recipro-CAM
    needs a static feature-map size; H, W from `input_size` or the model."""
    import openvino as ov

    if len(model.inputs) != 1:
        raise ForeignModelError(f"the model has {len(model.inputs)} inputs; xaifast explains single-image-input "
                                "classifiers")
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise ForeignModelError(f"the model's input has shape {shape}; an image classifier takes [B, 3, H, W]")
    channels = shape[1].get_length() if shape[1].is_static else 3
    if input_size is None:
        if not (shape[2].is_static and shape[3].is_static):
            raise ForeignModelError("the model's input size is dynamic and nothing records it; pass "
                                    "preprocess=xaifast.Preprocess((H, W), mean, std)")
        input_size = (shape[2].get_length(), shape[3].get_length())
    wanted = ov.PartialShape([-1, channels, int(input_size[0]), int(input_size[1])])
    if shape != wanted:
        try:
            model.reshape({model.inputs[0]: wanted})
        except Exception as exc:  # noqa: BLE001 - OpenVINO's own message says which op refused
            raise ForeignModelError(f"the model cannot take a dynamic batch of {tuple(input_size)} images "
                                    f"({str(exc).splitlines()[0]})") from None
    return tuple(int(v) for v in input_size)


def _producer(output):
    return output.get_node()


def _source(port):
    return port.get_source_output()


def classifier_output(model, skip: Sequence[str] = (SALIENCY,)):
    """(index, output) of the classifier's [B, K] output: the one named 'logits', else the first
    rank-2 output that is not a map."""
    candidates = []
    for i, out in enumerate(model.outputs):
        names = out.get_names()
        if names & set(skip):
            continue
        shape = out.get_partial_shape()
        if "logits" in names and shape.rank.is_static and shape.rank.get_length() == 2:
            return i, out
        if shape.rank.is_static and shape.rank.get_length() == 2:
            candidates.append((i, out))
    if not candidates:
        shapes = ", ".join(f"{sorted(o.get_names()) or i}: {o.get_partial_shape()}" for i, o in enumerate(model.outputs))
        raise ForeignModelError(f"no classifier output [B, num_classes] among the model's outputs ({shapes})")
    return candidates[0]


def logits_of(output):
    """The raw logits behind a classifier output: the input of a final Softmax (OTX's and OpenVINO
    XAI's choice: Recipro-CAM scores the logits, never probabilities), else the output itself."""
    node = _producer(output)
    if node.get_type_name() == "Result":
        output = _source(node.input(0))
        node = _producer(output)
    if node.get_type_name() in ("Softmax", "SoftMax", "LogSoftmax"):
        return _source(node.input(0)), True
    return output, False


def _node_ids_upstream(node) -> Dict[int, object]:
    """All nodes `node` depends on (itself included), keyed by the node's instance handle."""
    found: Dict[int, object] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        handle = _handle(n)
        if handle in found:
            continue
        found[handle] = n
        for port in n.inputs():
            stack.append(_producer(_source(port)))
    return found


def _handle(node) -> int:
    """A node's identity (Python wrappers of one OpenVINO node are new objects each time)."""
    return node.get_instance_id()


def _axes(node) -> Optional[List[int]]:
    src = _producer(_source(node.input(1)))
    if src.get_type_name() != "Constant":
        return None
    rank = node.get_input_partial_shape(0).rank.get_length()
    return sorted(int(a) % rank for a in np.asarray(src.get_data()).reshape(-1))


def is_global_pool(node) -> bool:
    """ReduceMean over the spatial axes of a 4-D tensor, or an AvgPool / AdaptiveAvgPool whose output
    is 1x1 (its kernel covers the whole map)."""
    kind = node.get_type_name()
    if kind not in POOLS:
        return False
    shape_in = node.get_input_partial_shape(0)
    if shape_in.rank.is_dynamic or shape_in.rank.get_length() != 4:
        return False
    if kind == "ReduceMean":
        return _axes(node) == [2, 3]
    out = node.get_output_partial_shape(0)
    if not (out.rank.is_static and out.rank.get_length() == 4 and out[2].is_static and out[3].is_static):
        return False
    if (out[2].get_length(), out[3].get_length()) != (1, 1):
        return False
    if kind == "AvgPool":
        attrs = node.get_attributes()
        if any(int(p) for p in list(attrs.get("pads_begin", [])) + list(attrs.get("pads_end", []))):
            return False
        if shape_in[2].is_static and shape_in[3].is_static:
            return list(attrs.get("kernel", [])) == [shape_in[2].get_length(), shape_in[3].get_length()]
        return False
    return True


@dataclass
class Target:
    output: object           # ov.Output: the feature map [B, C, H, W]
    name: str                # its producer's friendly name
    pool: Optional[object]   # the global pooling that reads it (the GAP shortcut's start), else None


def _spatial_ops(model, logits_node) -> List[object]:
    upstream = _node_ids_upstream(logits_node)
    return [op for op in model.get_ordered_ops() if _handle(op) in upstream]


def find_target(model, logits, target_layer: Optional[str] = None) -> Target:
    """The feature map Recipro-CAM masks: the node named `target_layer` (friendly name or output
    tensor name), else the input of the last global average pooling on the way to the logits."""
    ops = _spatial_ops(model, _producer(logits))
    if target_layer:
        for op in reversed(ops):
            names = set()
            for out in op.outputs():
                names |= set(out.get_names())
            if op.get_friendly_name() == target_layer or target_layer in names:
                out = op.output(0)
                shape = out.get_partial_shape()
                if shape.rank.is_dynamic or shape.rank.get_length() != 4:
                    raise ForeignModelError(f"target_layer {target_layer!r} gives shape {shape}; Recipro-CAM needs "
                                            "a feature map [B, C, H, W]")
                pools = [p.get_node() for p in out.get_target_inputs() if is_global_pool(p.get_node())]
                consumers = [p.get_node() for p in out.get_target_inputs()]
                pool = pools[0] if len(pools) == 1 and len(consumers) == 1 else None
                return Target(out, op.get_friendly_name(), pool)
        maps = [op.get_friendly_name() for op in ops if op.get_output_size() == 1
                and op.get_output_partial_shape(0).rank.is_static and op.get_output_partial_shape(0).rank.get_length() == 4
                and op.get_type_name() != "Constant"]
        raise ForeignModelError(f"target_layer {target_layer!r} is no node on the way to the logits; the last "
                                f"feature maps are: {', '.join(maps[-5:]) or 'none'}")
    for op in reversed(ops):
        if is_global_pool(op):
            out = _source(op.input(0))
            return Target(out, _producer(out).get_friendly_name(),
                          op if len(out.get_target_inputs()) == 1 else None)
    raise ForeignModelError("no global average pooling (ReduceMean over H, W; AvgPool to 1x1) was found before the "
                            "logits; name the feature map to explain with target_layer='<node name>'")


def _check_head(model, target: Target, logits) -> None:
    """The head (target -> logits) may read only the target and constants: a tensor computed before
    the target (a skip connection, a shape read from the input) would not follow the masked batch."""
    target_node = _producer(target.output)
    tid = _handle(target_node)
    upstream_of_target = _node_ids_upstream(target_node)
    head, stack = {}, [_producer(logits)]
    while stack:
        n = stack.pop()
        h = _handle(n)
        if h in head or h == tid:
            continue
        head[h] = n
        for port in n.inputs():
            stack.append(_producer(_source(port)))
    # nodes the logits depend on that also feed from the input without passing through the target
    for h, n in head.items():
        if h in upstream_of_target:
            continue
        if n.get_type_name() == "Parameter":
            raise ForeignModelError(
                f"the head after {target.name!r} reads the model's input directly or through another path "
                "(a skip connection around the target, or a shape taken from the input); choose a later "
                "target_layer that every path to the logits passes through")
    if tid not in _node_ids_upstream(_producer(logits)):
        raise ForeignModelError(f"the logits do not depend on {target.name!r}")


def _mask_matrix(h: int, w: int, mask: str) -> np.ndarray:
    """M[p, q] = m_p(q) (SPEC.md): one-hot, or the 3x3 Gaussian /16 cut at the borders."""
    m = np.zeros((h * w, h * w), dtype=np.float64)
    g = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16.0
    for i in range(h):
        for j in range(w):
            p = i * w + j
            if mask == "1x1":
                m[p, p] = 1.0
                continue
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    qi, qj = i + di, j + dj
                    if 0 <= qi < h and 0 <= qj < w:
                        m[p, qi * w + qj] = g[di + 1, dj + 1]
    return m


def _clone_map(model, clone):
    """Nodes of `model` -> the same nodes of its clone (ordered ops match one to one)."""
    a, b = model.get_ordered_ops(), clone.get_ordered_ops()
    if len(a) != len(b) or any(x.get_type_name() != y.get_type_name() for x, y in zip(a, b)):
        raise ForeignModelError("internal: the cloned OpenVINO model does not match the original")
    return {_handle(x): y for x, y in zip(a, b)}


@dataclass
class Insertion:
    model: object            # ov.Model: outputs logits [B, K], saliency_map raw float32 [B, K, H, W], feature_map
    target: str              # the target's friendly name
    shortcut: bool           # the GAP shortcut (pooled vectors) instead of masked feature maps
    feature_shape: Tuple[int, int, int]
    softmax_output: bool     # the model's own output was a Softmax (its input is reported as logits)


def insert_recipro_cam(model, *, target_layer: Optional[str] = None, mask: str = "1x1",
                       score: str = "none") -> Insertion:
    """Recipro-CAM inside the OpenVINO graph of a plain classifier (see the module's docstring).
    `model` must already have a static input size (`static_input`)."""
    import openvino as ov

    ops = _ops()
    if mask not in ("1x1", "gaussian"):
        raise ForeignModelError(f"unknown mask {mask!r}; use 1x1 or gaussian")
    if score not in ("none", "softmax", "sigmoid"):
        raise ForeignModelError(f"unknown score {score!r}; use none, softmax or sigmoid")
    _, output = classifier_output(model)
    logits, was_softmax = logits_of(output)
    target = find_target(model, logits, target_layer)
    _check_head(model, target, logits)
    shape = target.output.get_partial_shape()
    if not all(shape[i].is_static for i in (1, 2, 3)):
        raise ForeignModelError(f"the feature map at {target.name!r} has shape {shape}; its C, H, W must be static "
                                "(give the model a static input size)")
    c, h, w = (shape[i].get_length() for i in (1, 2, 3))
    k_shape = logits.get_partial_shape()
    if k_shape.rank.get_length() != 2 or k_shape[1].is_dynamic:
        raise ForeignModelError(f"the logits have shape {k_shape}; expected [B, num_classes]")
    k = k_shape[1].get_length()

    clone = model.clone()
    mapping = _clone_map(model, clone)
    logits_clone = mapping[_handle(_producer(logits))].output(logits.get_index())
    feature = target.output  # the original graph's tensor: computed once, shared by both branches
    cells = h * w
    if target.pool is not None:
        # GAP shortcut: pool(F * m_p) = sum_q m_p(q) F[:, q] / (H*W)
        flat = ops.reshape(feature, ops.constant(np.array([-1, c, cells], dtype=np.int64)), False)
        if mask == "1x1":
            pooled = ops.multiply(flat, ops.constant(np.float32(1.0 / cells)))
        else:
            weights = (_mask_matrix(h, w, mask) / cells).astype(np.float32)
            pooled = ops.matmul(flat, ops.constant(weights), False, True)  # [B, C, HW]
        pooled = ops.transpose(pooled, ops.constant(np.array([0, 2, 1], dtype=np.int64)))  # [B, HW, C]
        pool_clone = mapping[_handle(target.pool)]
        out_rank = pool_clone.get_output_partial_shape(0).rank.get_length()
        new_shape = [-1, c] + [1] * (out_rank - 2)
        source = ops.reshape(pooled, ops.constant(np.array(new_shape, dtype=np.int64)), False)
        consumers = list(pool_clone.output(0).get_target_inputs())
    else:
        masks = _mask_matrix(h, w, mask).reshape(1, cells, 1, h, w).astype(np.float32)
        expanded = ops.unsqueeze(feature, ops.constant(np.array([1], dtype=np.int64)))  # [B, 1, C, H, W]
        mosaic = ops.multiply(expanded, ops.constant(masks))                              # [B, HW, C, H, W]
        source = ops.reshape(mosaic, ops.constant(np.array([-1, c, h, w], dtype=np.int64)), False)
        target_clone = mapping[_handle(_producer(target.output))]
        consumers = list(target_clone.output(target.output.get_index()).get_target_inputs())
    for port in consumers:
        port.replace_source_output(source.output(0))
    cell_logits = logits_clone
    if score == "softmax":
        cell_logits = ops.softmax(cell_logits, -1).output(0)
    elif score == "sigmoid":
        cell_logits = ops.sigmoid(cell_logits).output(0)
    per_cell = ops.reshape(cell_logits, ops.constant(np.array([-1, cells, k], dtype=np.int64)), False)
    per_class = ops.transpose(per_cell, ops.constant(np.array([0, 2, 1], dtype=np.int64)))
    maps = ops.reshape(per_class, ops.constant(np.array([-1, k, h, w], dtype=np.int64)), False)
    results = [ops.result(logits), ops.result(maps), ops.result(feature)]
    try:
        explained = ov.Model(results, model.get_parameters(), "xaifast_recipro_cam")
    except Exception as exc:  # noqa: BLE001 - e.g. the head reads a tensor from before the target
        raise ForeignModelError(f"Recipro-CAM cannot be inserted after {target.name!r} "
                                f"({str(exc).splitlines()[0]}); name another target_layer") from None
    return Insertion(explained, target.name, target.pool is not None, (c, h, w), was_softmax)


def explained_outputs(model) -> Tuple[object, bool, Optional[str]]:
    """An IR that carries its own `saliency_map` (OTX, OpenVINO XAI): an ov.Model with outputs
    logits, saliency_map (and the pooled feature map when a global pooling is found, for the
    class-agnostic maps); also whether the maps come one image at a time (OpenVINO XAI's graphs
    take batch 1) and the name of the feature map's node."""
    import openvino as ov

    ops = _ops()
    saliency = next(o for o in model.outputs if SALIENCY in o.get_names())
    _, output = classifier_output(model)
    logits, _ = logits_of(output)
    results = [ops.result(logits), ops.result(_source(_producer(saliency).input(0))
                                              if _producer(saliency).get_type_name() == "Result" else saliency)]
    feature_name = None
    try:
        target = find_target(model, logits)
        results.append(ops.result(target.output))
        feature_name = target.name
    except ForeignModelError:
        pass
    shape = saliency.get_partial_shape()
    one_at_a_time = shape.rank.is_static and shape[0].is_static and shape[0].get_length() == 1
    return ov.Model(results, model.get_parameters(), "xaifast_explained"), one_at_a_time, feature_name
