"""Cutting a model's graph at the target layer: the head is everything computed after it.

The model is captured with `torch.export` (dynamic batch) while a forward hook routes the target
layer's output through a marker op. Every node downstream of the marker is copied into a new
graph whose input is the feature map: that graph is the head. When the head starts with global
average pooling, a second graph that starts right after the pooling ("after_gap") is cut too, so
Recipro-CAM can use the exact GAP shortcut of SPEC.md and never build a mosaic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from ..errors import ModelSplitError


@torch.library.custom_op("xaifast::split_point", mutates_args=())
def split_point(x: torch.Tensor) -> torch.Tensor:
    """Identity that marks the target layer's output in a captured graph."""
    return x.clone()


@split_point.register_fake
def _(x):
    return torch.empty_like(x)


@dataclass
class Head:
    """The part of a model after the target layer.

    full: feature [N, C, H, W] -> logits [N, K].
    after_gap: when the head starts with global average pooling, the rest of the head applied to
        the pooled features ([N, C] or [N, C, 1, 1] per `gap_keepdim`); otherwise None.
    """

    full: Callable[[torch.Tensor], torch.Tensor]
    after_gap: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    gap_keepdim: bool = False
    source: str = "callable"

    def __call__(self, feature: torch.Tensor) -> torch.Tensor:
        return extract_logits(self.full(feature))

    def pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Apply the head's rest to pooled features [N, C]."""
        if self.after_gap is None:
            raise ModelSplitError("this head does not start with global average pooling")
        if self.gap_keepdim:
            pooled = pooled.reshape(pooled.shape[0], pooled.shape[1], 1, 1)
        return extract_logits(self.after_gap(pooled))


def extract_logits(output: Any) -> torch.Tensor:
    """Logits from what a model returns: a tensor, a tuple (first item), or a dict / ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "keys"):
        if "logits" in output:
            return output["logits"]
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(output, (tuple, list)) and output:
        return extract_logits(output[0])
    raise ModelSplitError(f"cannot find logits in a model output of type {type(output).__name__}; "
                          "return a tensor [N, K], a tuple whose first item is it, or a dict with 'logits'")


class _MarkedOutput:
    """Forward hook that routes the n-th call's output of a module through split_point. With a
    `layout` (token outputs [B, H*W, C], see adapters.token_grid.TokenGrid) the marked tensor is
    the feature map `layout.to_map(output)` [B, C, H, W], turned back into tokens after the mark,
    so the head's input is the feature map."""

    def __init__(self, call_index: int, layout=None):
        self.call_index = call_index
        self.layout = layout
        self.calls = 0

    def __call__(self, _module, _args, output):
        index = self.calls
        self.calls += 1
        if index == self.call_index:
            if self.layout is not None:
                return self.layout.to_tokens(split_point(self.layout.to_map(output)))
            return split_point(output)
        return None


class _Marked(nn.Module):
    """Wraps a user head so that its input is the marked feature: head(split_point(f))."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, feature):
        return self.head(split_point(feature))


def _is_batch_size_query(node: fx.Node) -> bool:
    """`x.size(0)` / `x.shape[0]` of the model input: in the head it is the head's batch size."""
    if node.op != "call_function":
        return False
    if node.target is torch.ops.aten.sym_size.int:
        src, dim = node.args[0], node.args[1]
        return isinstance(src, fx.Node) and src.op == "placeholder" and dim == 0
    return False


def _is_batch_query_of(node: fx.Node, feature: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is torch.ops.aten.sym_size.int
            and node.args[0] is feature and node.args[1] == 0)


def _copy_downstream(graph: fx.Graph, start: fx.Node, output_leaf: fx.Node,
                     input_name: str, what: str) -> fx.Graph:
    """A new graph: placeholder -> every node downstream of `start` -> output_leaf."""
    downstream = {start}
    for node in graph.nodes:
        if node is start:
            continue
        if any(a in downstream for a in node.all_input_nodes) and node.op != "output":
            downstream.add(node)
    if output_leaf not in downstream:
        raise ModelSplitError(f"the model's logits do not depend on the {what}: "
                              "choose a layer on the path to the classifier, or pass head=")
    new = fx.Graph()
    placeholder = new.placeholder(input_name)
    env: Dict[fx.Node, fx.Node] = {start: placeholder}
    batch_size = None

    def lookup(node: fx.Node) -> fx.Node:
        nonlocal batch_size
        if node in env:
            return env[node]
        if node.op == "get_attr":
            env[node] = new.get_attr(node.target)
            return env[node]
        if _is_batch_size_query(node):
            if batch_size is None:
                batch_size = new.call_function(torch.ops.aten.sym_size.int, (placeholder, 0))
            env[node] = batch_size
            return batch_size
        raise ModelSplitError(
            f"the head after the {what} also reads '{node.name}' ({node.op} {node.target}), which is computed "
            "before the target layer (a skip connection around it?). Choose a later target layer, "
            "or pass backbone= and head= explicitly")

    for node in graph.nodes:
        if node in downstream and node is not start:
            env[node] = new.node_copy(node, lookup)
    new.output(env[output_leaf])
    new.eliminate_dead_code()
    return new


def _gap_node(graph: fx.Graph, feature: fx.Node) -> Tuple[Optional[fx.Node], bool]:
    """The global-average-pooling node when the head starts with one: (node, keepdim)."""
    users = [u for u in feature.users if not _is_batch_query_of(u, feature)]
    if len(users) != 1:
        return None, False
    node = users[0]
    if node.op != "call_function":
        return None, False
    aten = torch.ops.aten
    if node.target in (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default):
        size = node.args[1]
        size = [size, size] if isinstance(size, int) else list(size)
        return (node, True) if size == [1, 1] else (None, False)
    if node.target is aten.mean.dim:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dims is not None and sorted(d % 4 for d in dims) == [2, 3]:
            return node, bool(keepdim)
    return None, False


def _replace_feature_uses(graph: fx.Graph, gap: fx.Node, feature: fx.Node) -> fx.Graph:
    """Graph whose input is the pooled tensor: the GAP node becomes the placeholder."""
    new = fx.Graph()
    pooled = new.placeholder("pooled")
    env: Dict[fx.Node, fx.Node] = {gap: pooled}
    for node in graph.nodes:
        if node is gap or node is feature:
            continue
        if _is_batch_query_of(node, feature):
            env[node] = new.call_function(torch.ops.aten.sym_size.int, (pooled, 0))
            continue
        if feature in node.all_input_nodes:
            return None  # the feature map is used again after pooling: no shortcut
        if node.op == "output":
            new.output(env[node.args[0]])
            continue
        env[node] = new.node_copy(node, lambda n: env[n])
    new.eliminate_dead_code()
    return new


def head_from_graph(gm: fx.GraphModule, logits_leaf: int, what: str) -> Head:
    """Cut `gm` (a captured graph with one split_point call) into a Head."""
    marks = [n for n in gm.graph.nodes if n.op == "call_function"
             and n.target is torch.ops.xaifast.split_point.default]
    if len(marks) != 1:
        raise ModelSplitError(f"captured graph has {len(marks)} split points; expected 1")
    outputs = [n for n in gm.graph.nodes if n.op == "output"][0]
    leaves = pytree.tree_leaves(outputs.args[0])
    leaf = leaves[logits_leaf]
    if not isinstance(leaf, fx.Node):
        raise ModelSplitError("the model's logits are a constant in the captured graph")
    head_graph = _copy_downstream(gm.graph, marks[0], leaf, "feature", what)
    full = fx.GraphModule(gm, head_graph)
    feature = next(n for n in head_graph.nodes if n.op == "placeholder")
    gap, keepdim = _gap_node(head_graph, feature)
    after_gap = None
    if gap is not None:
        rest = _replace_feature_uses(head_graph, gap, feature)
        if rest is not None:
            after_gap = fx.GraphModule(gm, rest)
    if after_gap is None:
        found = _pooled_by_value(full, marks[0].meta.get("val"), what)
        if found is not None:
            rest, keepdim = found
            after_gap = fx.GraphModule(gm, rest)
    return Head(full=full, after_gap=after_gap, gap_keepdim=keepdim, source="torch.export")


def _pooled_by_value(full: fx.GraphModule, val, what: str) -> Optional[Tuple[fx.Graph, bool]]:
    """Global average pooling that the pattern match does not know (a mean over tokens after a
    reshape, adaptive_avg_pool1d over a transposed token grid, ...): the first node of the head
    whose value is the feature's spatial mean, [N, C] or [N, C, 1, 1], on random feature maps, and
    through which all of the head's later computation goes. Returns (graph from the pooled tensor
    to the logits, keepdim) or None. Checked by value on two random inputs (float32 / float64 heads
    only), so the shortcut is taken only where it is exact. `val`: the feature's fake tensor."""
    if not isinstance(val, torch.Tensor) or val.ndim != 4 or val.dtype not in (torch.float32, torch.float64):
        return None
    try:
        c, h, w = (int(s) for s in val.shape[1:])
    except (TypeError, ValueError):  # a symbolic channel or spatial size
        return None
    device = next((t.device for t in list(full.parameters()) + list(full.buffers())), torch.device("cpu"))
    rtol = 1e-5 if val.dtype == torch.float32 else 1e-10
    envs = []
    try:
        for _ in range(2):
            sample = torch.randn(2, c, h, w, dtype=val.dtype, device=device)
            interpreter = fx.Interpreter(full, garbage_collect_values=False)
            with torch.no_grad():
                interpreter.run(sample)
            envs.append((sample.mean(dim=(2, 3)), interpreter.env))
    except Exception:
        return None
    out = next(n for n in full.graph.nodes if n.op == "output")
    leaf = out.args[0]
    for node in full.graph.nodes:
        if node.op != "call_function" or node is leaf:
            continue
        values = [env.get(node) for _, env in envs]
        if not all(isinstance(v, torch.Tensor) and tuple(v.shape) in ((2, c), (2, c, 1, 1)) for v in values):
            continue
        if not all(torch.allclose(v.reshape(2, c), mean, rtol=rtol, atol=rtol * float(mean.abs().max()))
                   for v, (mean, _) in zip(values, envs)):
            continue
        try:
            rest = _copy_downstream(full.graph, node, leaf, "pooled", what)
        except ModelSplitError:
            continue  # later computation also reads the unpooled map: not a pooled-only head
        return rest, values[0].ndim == 4
    return None


def _logits_leaf_index(output: Any) -> int:
    leaves = pytree.tree_leaves(output)
    logits = extract_logits(output)
    for i, leaf in enumerate(leaves):
        if leaf is logits:
            return i
    raise ModelSplitError("could not locate the logits among the model's outputs")


def _export(module: nn.Module, sample: torch.Tensor):
    from ..quiet import quiet_exporters

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with quiet_exporters():
            return torch.export.export(module, (sample,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:
        raise ModelSplitError(
            f"could not capture the model's graph with torch.export ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Pass backbone= and head= callables "
            "explicitly to explain this model") from exc


def split_model(model: nn.Module, target_name: str, call_index: int, sample: torch.Tensor, layout=None) -> Head:
    """The head of `model` after the `call_index`-th call of module `target_name` (whose token
    output is read as a feature map through `layout`, when given)."""
    sample = sample[:2] if sample.shape[0] >= 2 else torch.cat([sample, sample])
    with torch.no_grad():
        output = model(sample)
    leaf = _logits_leaf_index(output)
    hook = _MarkedOutput(call_index, layout)
    handle = model.get_submodule(target_name).register_forward_hook(hook)
    try:
        program = _export(model, sample)
    finally:
        handle.remove()
    return head_from_graph(program.module(), leaf, f"target layer {target_name!r}")


def analyse_head(head: Callable, feature_sample: torch.Tensor) -> Head:
    """Wrap a user head; an nn.Module head is captured to find an exact GAP shortcut."""
    if isinstance(head, Head):
        return head
    if isinstance(head, nn.Module):
        sample = feature_sample[:2] if feature_sample.shape[0] >= 2 else torch.cat([feature_sample] * 2)
        try:
            with torch.no_grad():
                leaf = _logits_leaf_index(head(sample))
            program = _export(_Marked(head), sample)
            split = head_from_graph(program.module(), leaf, "head input")
            split.full = head  # run the user's own module; the graph only told us about GAP
            split.source = "nn.Module"
            return split
        except ModelSplitError:
            pass
    return Head(full=head)


_aten = torch.ops.aten
#: Ops that may stand between the pooled input and the Linear of an affine head (shape-only, or
#: eval-mode dropout).
_RESHAPES = {_aten.flatten.using_ints, _aten.view.default, _aten.reshape.default, _aten._unsafe_view.default,
             _aten.squeeze.dims, _aten.squeeze.dim, _aten.squeeze.default, _aten.clone.default,
             _aten.contiguous.default, _aten.dropout.default, _aten.alias.default}


def affine_after_gap(after_gap: Any) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(weight [K, C], bias [K] or None) when the head after pooling is one affine layer (a Linear,
    possibly behind flatten / reshape / eval-mode dropout); else None. Such a head maps each pooled
    cell independently, so Recipro-CAM's cell logits are a 1x1 convolution of the pooled map."""
    if isinstance(after_gap, nn.Linear):
        return after_gap.weight, after_gap.bias
    if isinstance(after_gap, nn.Sequential):
        layers = [m for m in after_gap if not isinstance(m, (nn.Flatten, nn.Dropout, nn.Identity))]
        if len(layers) == 1 and isinstance(layers[0], nn.Linear) and isinstance(after_gap[-1], nn.Linear):
            return layers[0].weight, layers[0].bias
        return None
    if not isinstance(after_gap, fx.GraphModule):
        return None
    placeholders, linear, out, values = [], None, None, {}
    for node in after_gap.graph.nodes:
        if node.op == "placeholder":
            placeholders.append(node)
        elif node.op == "get_attr":
            values[node] = tensor_at(after_gap, node.target)
        elif node.op == "output":
            out = node
        elif node.op == "call_function":
            if node.target is _aten.linear.default and linear is None:
                linear = node
            elif node.target not in _RESHAPES or (node.target is _aten.dropout.default
                                                  and _arg(node, 2, "train", False)):
                return None
        else:
            return None
    if len(placeholders) != 1 or linear is None or out is None or out.args[0] is not linear:
        return None
    source = linear.args[0]
    while source is not placeholders[0]:  # only reshapes between the pooled input and the Linear
        if not isinstance(source, fx.Node) or source.op != "call_function" or source.target not in _RESHAPES:
            return None
        source = source.args[0]
    weight = values.get(linear.args[1])
    bias = values.get(linear.args[2]) if len(linear.args) > 2 and linear.args[2] is not None else None
    if weight is None or weight.ndim != 2 or (len(linear.args) > 2 and linear.args[2] is not None and bias is None):
        return None
    return weight, bias


def _arg(node: fx.Node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def tensor_at(module: nn.Module, target: str) -> Optional[torch.Tensor]:
    """The parameter, buffer or tensor attribute at a dotted path of `module` (None if there is none)."""
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None
