"""Export a model with its explanation inside the graph: OpenVINO IR (`.xml`/`.bin`) or ONNX,
with outputs `logits`, `saliency_map` (normalized uint8 [B, K, h, w]) and `feature_map` (the
target layer's output), dynamic batch, and the explain settings in the model's metadata.

The explain graph is the same math as the PyTorch path: the model's forward with a hook on
the target layer, then Recipro-CAM on the cut head (GAP shortcut as a depthwise convolution
with the mask kernel, or the head on a mosaic batch), softmax / sigmoid, the transpose to
[B, K, h, w] and the float32 min-max normalization of SPEC.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .config import ExplainConfig, normalize_mask_name, resolve_score
from .data import Preprocess
from .errors import XaifastError
from .quiet import quiet_exporters
from .adapters.classifier import ClassifierAdapter
from .adapters.head_graph import Head, affine_after_gap, extract_logits, tensor_at

OUTPUTS = ("logits", "saliency_map", "feature_map")
METADATA_KEY = "xaifast"
EXPORTABLE = ("recipro_cam", "vit_recipro_cam", "activationmap")


class ExportError(XaifastError, ValueError):
    """The model cannot be exported as asked."""


def _mask_kernel(mask: str) -> torch.Tensor:
    from .kernels import mask_kernel

    return torch.from_numpy(mask_kernel(normalize_mask_name(mask)))


def _cell_masks(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[H*W, H, W]: m_p for every cell p (zero outside the grid, not renormalized)."""
    k = kernel.shape[0]
    r = k // 2
    masks = torch.zeros(h * w, h + 2 * r, w + 2 * r, dtype=kernel.dtype)
    for i in range(h):
        for j in range(w):
            masks[i * w + j, i:i + k, j:j + k] = kernel
    return masks[:, r:r + h, r:r + w].contiguous()


def _normalize_u8(raw: torch.Tensor) -> torch.Tensor:
    mn = raw.amin(dim=(-2, -1), keepdim=True)
    mx = raw.amax(dim=(-2, -1), keepdim=True)
    u = torch.floor((raw - mn) / ((mx - mn) + 1e-12) * 255.0)
    return u.clamp(0.0, 255.0).to(torch.uint8)


def _maps_out(raw: torch.Tensor, raw_maps: bool) -> torch.Tensor:
    """The graph's map output: normalized uint8 (exported models) or the raw float32 maps (the
    OpenVINO engine, which normalizes on the host exactly as the PyTorch engine does)."""
    return raw if raw_maps else _normalize_u8(raw)


class ExplainGraph(nn.Module):
    """model(x) -> (logits, saliency_map uint8, feature_map), traceable by torch.export.
    raw_maps=True: saliency_map is the raw float32 maps instead (the OpenVINO engine's graph)."""

    def __init__(self, model: nn.Module, target_name: str, call_index: int, head: Head, feature_shape,
                 algorithm: str = "recipro_cam", mask: str = "1x1", score: str = "none", raw_maps: bool = False,
                 layout=None):
        super().__init__()
        self.raw_maps = raw_maps
        self.layout = layout  # token-grid targets: TokenGrid reads the target's tokens as [B, C, H, W]
        self.model = model
        self.target_name = target_name
        self.call_index = call_index
        self.algorithm = algorithm
        self.score = score
        self.head_full = head.full if isinstance(head.full, nn.Module) else None
        self.head_rest = head.after_gap if isinstance(head.after_gap, nn.Module) else None
        self.gap_keepdim = head.gap_keepdim
        affine = affine_after_gap(self.head_rest) if self.head_rest is not None else None
        if affine is not None and affine[0].shape[1] != feature_shape[1]:
            affine = None  # the reshapes before the Linear regroup the channels: keep the general head
        self.cell_affine = affine is not None  # cell logits as a 1x1 convolution: no transposes
        if affine is not None:  # the model's own tensors, by name (one copy in the exported graph)
            names = {id(t): n for n, t in list(model.named_parameters()) + list(model.named_buffers())}
            self.cell_names = tuple(None if t is None else names.get(id(t)) for t in affine)
            for name, t in zip(("cell_weight", "cell_bias"), affine):
                if t is not None and names.get(id(t)) is None:
                    self.register_buffer(name, t.detach(), persistent=False)
        if algorithm == "recipro_cam" and self.head_rest is None and self.head_full is None:
            raise ExportError("the head is an opaque callable; export needs a model whose head can be cut "
                              "from its graph (pass the nn.Module with target_layer=)")
        _, _, h, w = feature_shape
        kernel = _mask_kernel(mask)
        self.register_buffer("kernel", kernel, persistent=False)
        self.register_buffer("cell_masks", _cell_masks(kernel, h, w), persistent=False)

    def forward(self, x):
        seen = []
        handle = self.model.get_submodule(self.target_name).register_forward_hook(lambda m, a, o: seen.append(o))
        try:
            logits = extract_logits(self.model(x))
        finally:
            handle.remove()
        feature = seen[self.call_index]
        if self.layout is not None:
            feature = self.layout.to_map(feature)
        if self.algorithm == "activationmap":
            return logits, _maps_out(feature.mean(dim=1, keepdim=True), self.raw_maps), feature
        b, c, h, w = feature.shape
        if self.head_rest is not None:
            k = self.kernel.shape[0]
            weight = self.kernel.to(feature.dtype).view(1, 1, k, k).expand(c, 1, k, k)
            pooled = nn.functional.conv2d(feature, weight, padding=k // 2, groups=c) / (h * w)
            if self.cell_affine:  # [B, K, h, w] straight away; softmax over the class channel
                weight, bias = self._cell_affine()
                cell_logits = nn.functional.conv2d(pooled, weight.to(feature.dtype)[:, :, None, None],
                                                   None if bias is None else bias.to(feature.dtype))
                return logits, _maps_out(_scores(cell_logits, self.score), self.raw_maps), feature
            pooled = pooled.permute(0, 2, 3, 1).reshape(-1, c)
            if self.gap_keepdim:
                pooled = pooled.reshape(-1, c, 1, 1)
            cell_logits = extract_logits(self.head_rest(pooled))
        else:
            masks = self.cell_masks.to(feature.dtype)
            mosaic = (feature.unsqueeze(1) * masks[None, :, None]).reshape(-1, c, h, w)
            cell_logits = extract_logits(self.head_full(mosaic))
        raw = _scores(cell_logits, self.score).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return logits, _maps_out(raw, self.raw_maps), feature

    def _cell_affine(self):
        """(weight [K, C], bias [K] or None) of the affine head: the model's tensors when named in it."""
        return [getattr(self, attr, None) if name is None else tensor_at(self.model, name)
                for name, attr in zip(self.cell_names, ("cell_weight", "cell_bias"))]


def _scores(cell_logits: torch.Tensor, score: str) -> torch.Tensor:
    if score == "softmax":
        return torch.softmax(cell_logits, dim=1)
    if score == "sigmoid":
        return torch.sigmoid(cell_logits)
    return cell_logits


class ViTExplainGraph(nn.Module):
    """ViT Recipro-CAM in the graph: T = LN1 output of the target block (the adapter's hooks), the
    rest of the model on the masked token sets of every cell (SPEC.md), scores, transpose,
    normalization. feature_map = the patch tokens of T as [B, D, H, W].

    `graph` says how the rest runs: "fast" (the exact distinct-token fast path as static ops,
    `xaifast.algorithms.vit_recipro_cam.FastGraph`: A + k*k + 1 tokens per cell, attention
    weighted by multiplicity, CLS-only queries in the last block), used whenever the PyTorch
    engine's fast path applies; "naive" (the full T_p of every cell through the model's own
    pieces) for models with position-dependent attention terms, with the PyTorch path's warning.
    use_fast_path=False forces the naive graph."""

    def __init__(self, adapter, grid, num_aux: int, algorithm: str = "vit_recipro_cam", mask: str = "gaussian",
                 score: str = "none", cls_token: bool = True, raw_maps: bool = False, use_fast_path: bool = True):
        super().__init__()
        self.raw_maps = raw_maps
        self.model = adapter.model
        self._adapter = [adapter]  # not a submodule: the model above is the one the graph captures
        self.grid, self.num_aux, self.algorithm, self.score, self.cls_token = tuple(grid), num_aux, algorithm, score, cls_token
        h, w = grid
        self.graph = None
        self.fast = None
        if algorithm != "vit_recipro_cam":
            return
        rest = adapter.rest()
        if use_fast_path and rest.fast_ok:
            from .algorithms.vit_recipro_cam import FastGraph

            self.graph = "fast"
            self.fast = FastGraph(rest, (h, w), num_aux, mask, cls_token)
            return
        if use_fast_path and not rest._warned:
            import warnings

            rest._warned = True
            warnings.warn(f"vit_recipro_cam: the exact fast path does not apply to this model ({rest.fast_reason}); "
                          "running the general (naive) re-inference", stacklevel=3)
        self.graph = "naive"
        masks = _cell_masks(_mask_kernel(mask), h, w).reshape(h * w, h * w)  # [cell, patch token]
        self.register_buffer("token_masks", masks, persistent=False)

    def forward(self, x):
        adapter = self._adapter[0]
        feature, logits = adapter.forward(x)
        fmap = feature.feature_map()
        if self.algorithm == "activationmap":
            return logits, _maps_out(fmap.mean(dim=1, keepdim=True), self.raw_maps), fmap
        t = feature.tokens
        b, n, d = t.shape
        h, w = self.grid
        cells = h * w
        if self.fast is not None:
            cell_logits = _scores(self.fast(t), self.score)
            raw = cell_logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            return logits, _maps_out(raw, self.raw_maps), fmap
        patches = t[:, self.num_aux:].unsqueeze(1) * self.token_masks.to(t.dtype)[None, :, :, None]
        aux = t[:, :self.num_aux].unsqueeze(1).expand(b, cells, self.num_aux, d)
        if not self.cls_token:
            aux = torch.zeros_like(aux)
        t_p = torch.cat([aux, patches], dim=2).reshape(b * cells, n, d)
        cell_logits = _scores(extract_logits(adapter.rest(feature).general(t_p)), self.score)
        raw = cell_logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return logits, _maps_out(raw, self.raw_maps), fmap


class LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return extract_logits(self.model(x))


def export(model: nn.Module, path: Union[str, Path], explain: bool = True, *, config: Optional[ExplainConfig] = None,
           target_layer: Optional[str] = None, preprocess: Optional[Preprocess] = None,
           labels: Optional[Sequence[str]] = None, example_input: Optional[torch.Tensor] = None,
           cls_token: bool = True) -> Path:
    """Write `model` as OpenVINO IR (path ends with .xml) or ONNX (.onnx).

    explain=True adds the outputs `saliency_map` and `feature_map`; the explain algorithm
    (recipro_cam or activationmap), mask, score, target group, preprocessing and labels are
    recorded in the model's metadata so `xaifast.explain(path, data)` needs nothing else.
    """
    from .algorithms import resolve_algorithm

    path = Path(path)
    if path.suffix not in (".xml", ".onnx"):
        raise ExportError(f"export path {path} must end with .xml (OpenVINO IR) or .onnx")
    if not isinstance(model, nn.Module):
        raise ExportError(f"export takes a torch.nn.Module, got {type(model).__name__}")
    from .adapters.token_grid import TokenGridAdapter, is_token_grid_model
    from .adapters.vit import ViTAdapter, is_transformer
    from .algorithms import requested_model_kind

    config = config or ExplainConfig()
    preprocess = preprocess or Preprocess()
    model = model.eval()
    token_grid = (requested_model_kind(config.algorithm) != "transformer"
                  and is_token_grid_model(model, target_layer))
    kind = "transformer" if not token_grid and is_transformer(model, target_layer) else "cnn_classifier"
    algorithm = resolve_algorithm(config.algorithm, kind, config.target_explain_group)
    if explain and algorithm not in EXPORTABLE:
        raise ExportError(f"{algorithm} cannot be exported inside the graph (it needs an SVD); export with "
                          "recipro_cam / vit_recipro_cam (classwisesaliencymap) or activationmap")
    mask = config.mask if config.mask != "auto" else ("gaussian" if kind == "transformer" else "1x1")  # as OTX
    score = resolve_score(config.score, algorithm)
    x = _example(example_input, preprocess)
    if kind == "transformer":
        adapter = ViTAdapter(model, target_layer=target_layer, preprocess=preprocess, labels=labels)
        feature, logits = adapter.forward(x)
        target_name, feature_shape = adapter.target_name, list(feature.feature_map().shape[1:])
        graph = lambda: ViTExplainGraph(adapter, feature.grid, feature.num_aux, algorithm, mask,  # noqa: E731
                                        score, cls_token)
    else:
        make = TokenGridAdapter if token_grid else ClassifierAdapter
        adapter = make(model, target_layer=target_layer, preprocess=preprocess, labels=labels)
        feature, logits = adapter.forward(x)
        target_name, feature_shape = adapter.target.name, list(feature.shape[1:])
        layout = adapter.layout_for(feature) if token_grid else None
        graph = lambda: ExplainGraph(model, adapter.target.name, adapter.target.call_index,  # noqa: E731
                                     adapter.head(feature), tuple(feature.shape), algorithm, mask, score,
                                     layout=layout)
    if explain:
        module, names = graph().eval(), list(OUTPUTS)
    else:
        module, names = LogitsOnly(model).eval(), ["logits"]
    metadata = {"explain": explain, "outputs": names, "model_type": kind,
                "input_size": list(preprocess.input_size), "mean": list(preprocess.mean),
                "std": list(preprocess.std), "labels": list(labels) if labels is not None else None,
                "score": score, "num_classes": int(logits.shape[1])}
    if explain:
        metadata.update(algorithm=algorithm, mask=mask, target_layer=target_name,
                        target_explain_group=config.target_explain_group.name, feature_shape=feature_shape)
        if getattr(module, "graph", None) is not None:  # ViT Recipro-CAM: the distinct-token fast path or not
            metadata.update(graph=module.graph, cls_token=bool(cls_token))
    path.parent.mkdir(parents=True, exist_ok=True)
    x = trace_example(x)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with quiet_exporters(), torch.no_grad():
        if path.suffix == ".xml":
            program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},), strict=False)
            _save_openvino(program, names, metadata, path)
        else:
            _save_onnx(module, x, names, metadata, path)
    return path


def _example(example_input, preprocess: Preprocess) -> torch.Tensor:
    """The example batch the model is traced with: the user's (any batch size), checked."""
    if example_input is None:
        return torch.randn(2, 3, *preprocess.input_size)
    if not isinstance(example_input, torch.Tensor) or example_input.ndim != 4 or example_input.shape[0] < 1:
        got = list(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ExportError(f"example_input must be an image batch tensor [B, C, H, W] (B >= 1), got {got}; "
                          "e.g. torch.randn(1, 3, 224, 224)")
    if not example_input.is_floating_point():
        raise ExportError(f"example_input must be a float tensor (the preprocessed images), got {example_input.dtype}")
    return example_input


def trace_example(x: torch.Tensor) -> torch.Tensor:
    """The batch torch.export traces with: at least 2 images. A batch of 1 would make torch.export
    specialize the batch size to the constant 1 (its 0/1 specialization) and refuse the dynamic batch;
    the exported graph keeps a dynamic batch either way (it runs at batch 1 too)."""
    return x if x.shape[0] >= 2 else torch.cat([x, x])




def to_openvino(program, names):
    """An ov.Model from a torch.export program, in memory; outputs named `names`, input "image"."""
    import openvino as ov

    ov_model = ov.convert_model(program)
    for output, name in zip(ov_model.outputs, names):
        output.get_tensor().set_names({name})
    ov_model.inputs[0].get_tensor().set_names({"image"})
    return ov_model


def _save_openvino(program, names, metadata, path: Path) -> None:
    import openvino as ov

    ov_model = to_openvino(program, names)
    ov_model.set_rt_info(json.dumps(metadata), ["model_info", METADATA_KEY])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)


def _save_onnx(module: nn.Module, x: torch.Tensor, names, metadata, path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        torch.onnx.export(module, (x,), str(path), input_names=["image"], output_names=names,
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(path))
