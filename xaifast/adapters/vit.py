"""Transformer (ViT) classifier adapter: where the blocks are, and how to run the end of the
model from a target block's first LayerNorm output, per model family.

ViT Recipro-CAM (SPEC.md) needs, for a target block k from the end: ``T = LN1(X)`` (the block's
first norm applied to its input ``X``), the block continued on a masked ``T_p`` with ``T_p`` as the
residual (``Z = T_p + ls1(Attn(T_p))``, ``Y = Z + ls2(MLP(LN2(Z)))``), the remaining blocks, the
final norm and the head (CLS token, or the model's own pooling). This module finds those pieces:

Blocks, recognized by their members (not by class names):
- timm-style (timm's ``VisionTransformer``, xaifast's built-in ViT, look-alikes): ``norm1``,
  ``attn``, ``norm2``, ``mlp``, optional ``ls1`` / ``ls2`` layer scales;
- Hugging Face ``transformers`` >= 5 (ViT, DeiT): ``layernorm_before``, ``attention`` (``q_proj``,
  ``k_proj``, ``v_proj``, ``o_proj``), ``layernorm_after``, ``mlp``;
- Hugging Face ``transformers`` 4.x: ``layernorm_before``, ``attention.attention`` (``query``,
  ``key``, ``value``), ``attention.output.dense``, ``layernorm_after``, ``intermediate``, ``output``.
The block list is the longest ``nn.ModuleList`` / ``nn.Sequential`` whose children all are blocks
(or the one named by ``target_layer``).

Heads: ``classifier`` on token 0 (HF ViT / DeiT), the mean of ``cls_classifier`` (token 0) and
``distillation_classifier`` (token 1) (HF DeiT with teacher), timm's ``global_pool`` ("token":
token 0; "avg": mean of the patch tokens; anything else: the model's own ``forward_head`` on
all tokens), and, for look-alikes without ``global_pool``, ``head`` on token 0.

Nothing is assumed blindly: on the first batch the adapter rebuilds the model's logits from
these pieces (with the model's true residual ``X``) and refuses the model if they differ. The
exact fast path re-implements each attention with multiplicity weights; it is enabled only for
attentions whose parameters are all understood (no position-dependent bias) and whose
re-implementation reproduces the model's logits too; otherwise the general path runs.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Preprocess
from ..errors import ModelSplitError, TargetLayerError
from .base import ModelAdapter, model_fingerprint, module_list
from .head_graph import extract_logits

LOOKED_FOR = ("an nn.ModuleList / nn.Sequential of transformer blocks, each with either "
              "(norm1, attn, norm2, mlp[, ls1, ls2]) (timm-style), or (layernorm_before, attention, "
              "layernorm_after, mlp | intermediate + output) (Hugging Face transformers)")


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "keys"):
        for value in out.values():
            if isinstance(value, torch.Tensor):
                return value
    raise ModelSplitError(f"a transformer block returned {type(out).__name__}, not a tensor [B, N, D]")


def _identity(x):
    return x


# ------------------------------------------------------------------------------------ attention
@dataclass
class AttnParts:
    """A standard multi-head self-attention: ``out(softmax(scale q k^T) v)`` with
    ``[q, k, v] = x @ weight^T + bias`` split into ``num_heads`` heads (optional per-head
    ``q_norm`` / ``k_norm``), and nothing position-dependent."""

    projections: Tuple[nn.Linear, ...]  # one fused qkv Linear, or the q, k and v Linears
    num_heads: int
    head_dim: int
    scale: float
    out: Callable  # [..., I] -> [..., D]
    q_norm: Optional[Callable] = None
    k_norm: Optional[Callable] = None
    _cache: tuple = field(default=(None, None, None), repr=False)

    def _stacked(self):
        """(weight [3*I, D], bias [3*I] or None); separate q/k/v Linears are concatenated once and
        again only after an in-place update of their parameters (tensor version counters)."""
        if len(self.projections) == 1:
            lin = self.projections[0]
            return lin.weight, lin.bias
        tensors = [t for lin in self.projections for t in (lin.weight, lin.bias) if t is not None]
        key = tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if self._cache[0] != key:
            weight = torch.cat([lin.weight for lin in self.projections])
            bias = None
            if any(lin.bias is not None for lin in self.projections):
                bias = torch.cat([lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0])
                                  for lin in self.projections])
            self._cache = (key, weight.detach(), None if bias is None else bias.detach())
        return self._cache[1], self._cache[2]

    @property
    def weight(self) -> torch.Tensor:
        return self._stacked()[0]

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self._stacked()[1]

    @property
    def inner(self) -> int:
        return self.num_heads * self.head_dim

    def heads(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """[n, L, I] -> [n, h, L, dh] (q: which=0 gets q_norm, k: which=1 gets k_norm)."""
        n, L, _ = x.shape
        x = x.reshape(n, L, self.num_heads, self.head_dim).transpose(1, 2)
        norm = self.q_norm if which == 0 else self.k_norm if which == 1 else None
        return norm(x) if norm is not None else x

    def attend(self, q, k, v, log_count: torch.Tensor) -> torch.Tensor:
        """q [n, Lq, I], k, v [n, U, I] (projected, biased) -> attention output [n, Lq, D]."""
        from ..kernels.token_attention import weighted_attention

        n, L, _ = q.shape
        o = weighted_attention(self.heads(q, 0), self.heads(k, 1), self.heads(v, 2),
                               log_count.to(q.dtype), self.scale)
        return self.out(o.transpose(1, 2).reshape(n, L, self.inner))


def _extra_state(module: nn.Module, known: Sequence[Optional[nn.Module]]) -> List[str]:
    """Names of parameters / buffers of `module` that are not inside the `known` submodules."""
    covered = set()
    for sub in known:
        if isinstance(sub, nn.Module):
            covered.update(id(t) for t in sub.parameters())
            covered.update(id(t) for t in sub.buffers())
    return [name for name, t in list(module.named_parameters()) + list(module.named_buffers())
            if id(t) not in covered]


def _linear(m) -> bool:
    return isinstance(m, nn.Linear)


def _norm_or_none(m):
    return None if m is None or isinstance(m, nn.Identity) else m


def _timm_attention(attn: nn.Module) -> Tuple[Optional[AttnParts], Optional[str]]:
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    heads = getattr(attn, "num_heads", None)
    if not (_linear(qkv) and _linear(proj) and isinstance(heads, int) and heads > 0):
        return None, f"{type(attn).__name__} has no (qkv: Linear, proj: Linear, num_heads: int)"
    if qkv.out_features % 3 or (qkv.out_features // 3) % heads:
        return None, f"{type(attn).__name__}.qkv has {qkv.out_features} outputs, not 3 x num_heads x head_dim"
    inner = qkv.out_features // 3
    head_dim = inner // heads
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    norm = getattr(attn, "norm", None)
    extra = _extra_state(attn, [qkv, proj, q_norm, k_norm, norm])
    if extra:
        return None, f"{type(attn).__name__} has state the standard attention lacks ({', '.join(extra[:4])})"
    scale = getattr(attn, "scale", None)
    scale = float(scale) if isinstance(scale, (int, float)) else head_dim ** -0.5
    norm = _norm_or_none(norm)
    out = (lambda o: proj(norm(o))) if norm is not None else proj
    return AttnParts((qkv,), heads, head_dim, scale, out, _norm_or_none(q_norm), _norm_or_none(k_norm)), None


def _hf_attention(attn: nn.Module) -> Tuple[Optional[AttnParts], Optional[str]]:
    inner_mod, out_lin = attn, getattr(attn, "o_proj", None)
    names = ("q_proj", "k_proj", "v_proj")
    if not _linear(out_lin):  # transformers 4.x: attention.attention.{query,key,value}, attention.output.dense
        inner_mod = getattr(attn, "attention", None)
        out_lin = getattr(getattr(attn, "output", None), "dense", None)
        names = ("query", "key", "value")
    lins = [getattr(inner_mod, n, None) for n in names] if inner_mod is not None else [None] * 3
    if not (all(_linear(m) for m in lins) and _linear(out_lin)):
        return None, f"{type(attn).__name__} has no (q, k, v, output) Linear projections"
    heads = getattr(inner_mod, "num_attention_heads", None) or getattr(getattr(inner_mod, "config", None),
                                                                        "num_attention_heads", None)
    if not isinstance(heads, int) or lins[0].out_features % heads:
        return None, f"{type(attn).__name__}: number of heads unknown"
    head_dim = lins[0].out_features // heads
    extra = _extra_state(attn, lins + [out_lin])
    if extra:
        return None, f"{type(attn).__name__} has state the standard attention lacks ({', '.join(extra[:4])})"
    scale = getattr(inner_mod, "scaling", None)
    scale = float(scale) if isinstance(scale, (int, float)) else head_dim ** -0.5
    return AttnParts(tuple(lins), heads, head_dim, scale, out_lin), None


# ------------------------------------------------------------------------------------ blocks
@dataclass
class BlockParts:
    """One pre-norm transformer block, as pieces."""

    module: nn.Module
    family: str
    norm1: Callable
    attn: Callable  # black box: tokens [n, L, D] -> attention output [n, L, D]
    ls1: Callable
    norm2: Callable
    mlp: Callable
    ls2: Callable
    parts: Optional[AttnParts] = None  # re-implementable attention (fast path)
    no_fast: Optional[str] = None  # why not

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The block as the model runs it."""
        return _first_tensor(self.module(x))

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Z = x + ls1(attn_out); Y = Z + ls2(MLP(LN2(Z)))."""
        z = x + self.ls1(attn_out)
        return z + self.ls2(self.mlp(self.norm2(z)))

    def continue_from(self, residual: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The block after its first norm: residual + attention of t, then the MLP half."""
        return self.finish(residual, self.attn(t))

    def weighted(self, x: torch.Tensor, log_count: torch.Tensor, queries: Optional[Sequence[int]] = None,
                 t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The block on distinct tokens x [n, U, D] standing for exp(log_count) [n, U] copies each
        (re-implemented attention); only the `queries` slots are computed when given. `t`
        replaces norm1(x) as the attention input (x stays the residual)."""
        p = self.parts
        h = self.norm1(x) if t is None else t
        qkv = F.linear(h, p.weight, p.bias)
        inner = p.inner
        q, k, v = qkv[..., :inner], qkv[..., inner:2 * inner], qkv[..., 2 * inner:]
        if queries is not None:
            q, x = q[:, list(queries)], x[:, list(queries)]
        return self.finish(x, p.attend(q, k, v, log_count))


def _module_or_identity(block: nn.Module, name: str) -> Callable:
    m = getattr(block, name, None)
    return m if isinstance(m, nn.Module) else _identity


def recognize_block(block: nn.Module) -> Optional[BlockParts]:
    """BlockParts of a block of a known family, else None."""
    has = lambda *names: all(isinstance(getattr(block, n, None), nn.Module) for n in names)  # noqa: E731
    if has("norm1", "attn", "norm2", "mlp"):
        attn = block.attn
        parts, why = _timm_attention(attn)
        return BlockParts(block, "timm", block.norm1, lambda t: _first_tensor(attn(t)),
                          _module_or_identity(block, "ls1"), block.norm2, block.mlp,
                          _module_or_identity(block, "ls2"), parts, why)
    if has("layernorm_before", "attention", "layernorm_after"):
        attn = block.attention
        if has("mlp"):
            mlp, family = block.mlp, "hf"
        elif has("intermediate", "output") and isinstance(getattr(block.output, "dense", None), nn.Linear):
            inter, dense = block.intermediate, block.output.dense
            mlp, family = (lambda h: dense(inter(h))), "hf4"
        else:
            return None
        parts, why = _hf_attention(attn)
        return BlockParts(block, family, block.layernorm_before, lambda t: _first_tensor(attn(t)), _identity,
                          block.layernorm_after, mlp, _identity, parts, why)
    return None


_BLOCK_LISTS: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, list]]" = weakref.WeakKeyDictionary()


def find_block_lists(model: nn.Module) -> List[Tuple[str, List[nn.Module]]]:
    """(name, blocks) of every ModuleList / Sequential whose children are all recognized blocks.
    Remembered per model while its module tree is the same (the same module objects in the same
    order): engines and adapters ask several times per call, and recognizing every block of a
    ViT-B costs milliseconds."""
    tree = tuple(map(id, module_list(model)))
    memo = _BLOCK_LISTS.get(model)
    if memo is None or memo[0] != tree:
        memo = _BLOCK_LISTS[model] = (tree, _find_block_lists(model))
    return [(name, list(blocks)) for name, blocks in memo[1]]  # copies: a caller may change its lists


def _find_block_lists(model: nn.Module) -> List[Tuple[str, List[nn.Module]]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            children = list(module.children())
            if len(children) == len(module) and all(recognize_block(c) is not None for c in children):
                found.append((name, children))
    return found


def is_transformer(model, target_layer: Optional[str] = None) -> bool:
    """Whether `model` is explained as a transformer (model kind "transformer"): it has a
    recognizable list of transformer blocks and `target_layer`, if given, names that list, one of
    its blocks or a module inside one."""
    if not isinstance(model, nn.Module):
        return False
    lists = find_block_lists(model)
    if not lists or target_layer is None:
        return bool(lists)
    for name, blocks in lists:
        if target_layer == name:
            return True
        for i in range(len(blocks)):
            prefix = f"{name}.{i}" if name else str(i)
            if target_layer == prefix or target_layer.startswith(prefix + "."):
                return True
    return False


# ------------------------------------------------------------------------------------ heads
@dataclass
class HeadSpec:
    """How the final-normed tokens z [n, N, D] become logits.

    kind "tokens": fn(z[:, tokens]) (fn gets [n, len(tokens), D]); "mean": fn(mean of z[:, start:]);
    "full": fn(z) (any pooling: the fast path expands its distinct tokens back to N).
    """

    kind: str
    fn: Callable
    tokens: Tuple[int, ...] = ()
    start: int = 0
    description: str = ""

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            return extract_logits(self.fn(z[:, list(self.tokens)]))
        if self.kind == "mean":
            return extract_logits(self.fn(z[:, self.start:].mean(dim=1)))
        return extract_logits(self.fn(z))


def _getattr_path(obj, names: Sequence[str]):
    for n in names:
        obj = getattr(obj, n, None)
        if obj is None:
            return None
    return obj


@dataclass
class ModelParts:
    blocks_name: str
    block_names: List[str]
    blocks: List[nn.Module]
    norm: Callable
    head: HeadSpec
    num_aux: Optional[int]  # declared by the model (None: inferred from the token count)
    family: str


def _hf_parts(model: nn.Module, owner_name: str):
    """(base model, head spec, num_aux) of a Hugging Face ViT / DeiT image classifier."""
    base = None
    for attr in ("vit", "deit"):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module) and hasattr(m, "embeddings"):
            base = m
    if base is None:
        return None
    emb = base.embeddings
    num_aux = 0
    for tok in ("cls_token", "distillation_token", "register_tokens"):
        t = getattr(emb, tok, None)
        if isinstance(t, torch.Tensor):
            num_aux += int(t.shape[1])
    cls_c, dist_c = getattr(model, "cls_classifier", None), getattr(model, "distillation_classifier", None)
    if isinstance(cls_c, nn.Module) and isinstance(dist_c, nn.Module):
        head = HeadSpec("tokens", lambda z: (cls_c(z[:, 0]) + dist_c(z[:, 1])) / 2, (0, 1),
                        description="(cls_classifier(token 0) + distillation_classifier(token 1)) / 2")
    elif isinstance(getattr(model, "classifier", None), nn.Module):
        clf = model.classifier
        head = HeadSpec("tokens", lambda z: clf(z[:, 0]), (0,), description="classifier(token 0)")
    else:
        return None
    norm = getattr(base, "layernorm", None)
    return base, head, (norm if isinstance(norm, nn.Module) else _identity), num_aux


def _timm_parts(model: nn.Module, owner: nn.Module):
    """(head spec, final norm, num_aux or None) of a timm-style model."""
    def attr(name):
        for m in (owner, model):
            v = getattr(m, name, None)
            if v is not None:
                return v
        return None

    norm = attr("norm")
    norm = norm if isinstance(norm, nn.Module) else _identity
    head = attr("head")
    if not isinstance(head, nn.Module):
        return None
    fc_norm = attr("fc_norm")
    fc_norm = fc_norm if isinstance(fc_norm, nn.Module) else _identity
    head_drop = attr("head_drop")
    head_drop = head_drop if isinstance(head_drop, nn.Module) else _identity
    num_aux = attr("num_prefix_tokens")
    if not isinstance(num_aux, int):
        num_aux = 0
        declared = False
        for tok in ("cls_token", "dist_token", "reg_token"):
            t = attr(tok)
            if isinstance(t, torch.Tensor):
                num_aux += int(t.shape[1]) if t.dim() == 3 else 1
                declared = True
        num_aux = num_aux if declared else None
    pool = attr("global_pool")
    tail = lambda v: head(head_drop(fc_norm(v)))  # noqa: E731
    if pool == "token" or (pool is None and (num_aux or 0) > 0):
        spec = HeadSpec("tokens", lambda z: tail(z[:, 0]), (0,), description="head(token 0)")
    elif pool == "avg" or pool is None:
        spec = HeadSpec("mean", tail, start=num_aux or 0, description="head(mean of the patch tokens)")
    elif callable(getattr(model, "forward_head", None)):
        # a weak reference: the adapter's cache (keyed weakly by the model) must not keep it alive
        forward_head = weakref.WeakMethod(model.forward_head)
        spec = HeadSpec("full", lambda z: forward_head()(z), description=f"forward_head (global_pool={pool!r})")
    else:
        return None
    return spec, norm, num_aux


def describe_model(model: nn.Module, target_layer: Optional[str] = None,
                   target_block: int = 1) -> Tuple[ModelParts, int]:
    """The model's pieces and the index of the target block in its block list."""
    modules = dict(model.named_modules())
    lists = find_block_lists(model)
    index = None
    if target_layer is not None:
        if target_layer not in modules or target_layer == "":
            raise TargetLayerError(_no_blocks_message(model, f"unknown target layer {target_layer!r}", lists))
        chosen = None
        for name, blocks in lists:
            if target_layer == name:
                chosen = (name, blocks)
                break
            for i, blk in enumerate(blocks):
                prefix = f"{name}.{i}" if name else str(i)
                if target_layer == prefix or target_layer.startswith(prefix + "."):
                    chosen, index = (name, blocks), i
                    break
            if chosen:
                break
        if chosen is None:
            target = modules[target_layer]
            if isinstance(target, (nn.ModuleList, nn.Sequential)):
                bad = [f"{target_layer}.{i} ({type(c).__name__})" for i, c in enumerate(target.children())
                       if recognize_block(c) is None]
                raise TargetLayerError(
                    f"target layer {target_layer!r} is a block list, but {', '.join(bad[:3])} "
                    f"{'is' if len(bad) == 1 else 'are'} not a recognizable transformer block. Looked for "
                    f"{LOOKED_FOR}")
            raise TargetLayerError(_no_blocks_message(
                model, f"target layer {target_layer!r} ({type(target).__name__}) is neither a transformer "
                "block nor a list of them", lists))
    else:
        if not lists:
            raise ModelSplitError(_no_blocks_message(model, "no transformer blocks found", lists))
        chosen = max(reversed(lists), key=lambda nb: len(nb[1]))
    name, blocks = chosen
    if index is None:
        k = int(target_block)
        if not 1 <= k <= len(blocks):
            raise TargetLayerError(f"target_block={target_block} is out of range: {name!r} has {len(blocks)} blocks "
                                   f"(target_block counts from the end: 1 = the last block)")
        index = len(blocks) - k
    owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
    block_names = [f"{name}.{i}" if name else str(i) for i in range(len(blocks))]
    hf = _hf_parts(model, name)
    if hf is not None:
        _, head, norm, num_aux = hf
        family = "hf"
    else:
        timm = _timm_parts(model, owner)
        if timm is None:
            raise ModelSplitError(
                f"found the blocks {name!r} but not the head: looked for a timm-style `head` (with optional "
                "`norm`, `fc_norm`, `global_pool`) or a Hugging Face `classifier` / `cls_classifier` + "
                "`distillation_classifier` on a `vit` / `deit` base model. Hierarchical transformers (Swin-like: "
                "the last stage's token grid, a norm, pooling and a linear head) are explained with recipro_cam "
                "(algorithm auto or classwisesaliencymap)")
        head, norm, num_aux = timm
        family = "timm"
    return ModelParts(name, block_names, blocks, norm, head, num_aux, family), index


def _no_blocks_message(model: nn.Module, what: str, lists) -> str:
    containers = [n for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and n]
    hint = f" Block lists found: {', '.join(n for n, _ in lists)}." if lists else ""
    seen = f" Containers in the model: {', '.join(containers[-6:])}." if containers else ""
    return (f"{what} in {type(model).__name__}: looked for {LOOKED_FOR}.{hint}{seen} Pass "
            "target_layer='<name of the block list>' (e.g. 'blocks', 'vit.layers') or "
            "target_layer='<name of one block>' (e.g. 'blocks.11') to point at the blocks explicitly; "
            "models whose blocks lack those members cannot be explained with vit_recipro_cam")


# ------------------------------------------------------------------------------------ the rest
@dataclass
class ViTRest:
    """Everything after the target block's first norm, as pieces (see module docstring)."""

    target: BlockParts
    after: List[BlockParts]
    norm: Callable
    head: HeadSpec
    num_aux: int
    # why the exact fast path is unavailable (None: available); set when the adapter verifies the model
    fast_reason: Optional[str] = "the model's pieces were not verified yet (run ViTAdapter.forward on an input first)"
    _warned: bool = field(default=False, repr=False)

    @property
    def fast_ok(self) -> bool:
        return self.fast_reason is None

    def general(self, t_p: torch.Tensor) -> torch.Tensor:
        """SPEC's re-inference on full token sets T_p [n, N, D] -> logits [n, K]."""
        y = self.target.continue_from(t_p, t_p)
        for blk in self.after:
            y = blk.run(y)
        return self.head.apply(self.norm(y))

    __call__ = general

    def from_residual(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's own computation from the target block's input x (t = LN1(x))."""
        y = self.target.continue_from(x, t)
        for blk in self.after:
            y = blk.run(y)
        return self.head.apply(self.norm(y))

    def from_residual_weighted(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """As from_residual, with every attention re-implemented (counts 1): the fast path's math."""
        zeros = torch.zeros(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        y = self.target.weighted(x, zeros, t=t)
        for blk in self.after:
            y = blk.weighted(y, zeros)
        return self.head.apply(self.norm(y))


@dataclass
class TokenFeature:
    """The target block's LN1 output T [B, N, D] with its patch grid and auxiliary token count."""

    tokens: torch.Tensor
    grid: Tuple[int, int]
    num_aux: int

    @property
    def shape(self):
        return self.tokens.shape

    def feature_map(self) -> torch.Tensor:
        """Patch tokens as a feature map [B, D, H, W] (for class-agnostic maps)."""
        b, _, d = self.tokens.shape
        h, w = self.grid
        return self.tokens[:, self.num_aux:].transpose(1, 2).reshape(b, d, h, w)


def check_token_count(n: int, grid: Tuple[int, int], num_aux: Optional[int], where: str = "the tokens") -> int:
    """The auxiliary token count; refuses a token count that is not aux + H*W."""
    h, w = grid
    if num_aux is None:
        num_aux = n - h * w
        if num_aux < 0:
            raise ModelSplitError(f"{where} hold {n} tokens, fewer than the {h}x{w} = {h * w} patches of the grid: "
                                  "a token count must be (auxiliary tokens) + H*W")
        return num_aux
    if n != num_aux + h * w:
        raise ModelSplitError(f"{where} hold {n} tokens, but {num_aux} auxiliary + {h}x{w} patch tokens = "
                              f"{num_aux + h * w}: vit_recipro_cam needs [B, A + H*W, D] tokens (row-major "
                              "patches after the auxiliary ones)")
    return num_aux


# ------------------------------------------------------------------------------------ adapter
@dataclass
class _State:
    fingerprint: tuple
    parts: Optional[ModelParts] = None
    index: int = -1
    rest: Optional[ViTRest] = None
    verified: bool = False


_STATES: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, _State]]" = weakref.WeakKeyDictionary()


def _tolerance(dtype: torch.dtype) -> float:
    # A faithful decomposition reproduces float32 logits to ~1e-6 relative (ViT-B, 12 blocks).
    return 1e-9 if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 3e-2


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    if a.shape != ref.shape:
        return math.inf
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


class ViTAdapter(ModelAdapter):
    """A transformer classifier: one forward gives T (the target block's LN1 output) and the logits;
    `rest()` re-runs the end of the model on masked token sets."""

    kind = "transformer"

    def __init__(self, model: nn.Module, *, target_layer: Optional[str] = None, target_block: int = 1,
                 preprocess: Optional[Preprocess] = None, labels: Optional[Sequence[str]] = None):
        if not isinstance(model, nn.Module):
            raise ModelSplitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(target_block, bool) or not isinstance(target_block, int) or target_block < 1:
            raise TargetLayerError(f"target_block must be an integer >= 1 (1 = the last block), got {target_block!r}")
        self.model = model
        self.target_layer = target_layer
        self.target_block = target_block
        self.preprocess = preprocess or Preprocess()
        self.labels = list(labels) if labels is not None else None
        modules = module_list(model)
        if any(m.training for m in modules):  # (eval() walks every module: ms per call)
            model.eval()
        states = _STATES.setdefault(model, {})
        key = (target_layer, target_block)
        fp = model_fingerprint(model, modules)
        state = states.get(key)
        if state is None or state.fingerprint != fp:
            state = states[key] = _State(fp)
            state.parts, state.index = describe_model(model, target_layer, target_block)
            blocks = [recognize_block(b) for b in state.parts.blocks[state.index:]]
            state.rest = ViTRest(blocks[0], blocks[1:], state.parts.norm, state.parts.head, -1)
        self._state = state

    # ------------------------------------------------------------------ facts
    @property
    def parts(self) -> ModelParts:
        return self._state.parts

    @property
    def target_name(self) -> str:
        return self.parts.block_names[self._state.index]

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def rest(self, feature: Optional[TokenFeature] = None) -> ViTRest:
        return self._state.rest

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> Tuple[TokenFeature, torch.Tensor]:
        """(TokenFeature of the target block's LN1 output, logits [B, K]) in one forward pass."""
        x = x.to(self.device)
        state = self._state
        target = state.parts.blocks[state.index]
        first = state.parts.blocks[0]
        captured: Dict[str, object] = {}

        def on_conv(_m, _args, out):
            if "blocks_started" not in captured and isinstance(out, torch.Tensor) and out.dim() == 4:
                captured["grid"] = (int(out.shape[2]), int(out.shape[3]))

        def on_first(_m, args, kwargs):
            captured["blocks_started"] = True

        def on_target(_m, args, kwargs):
            if "x" not in captured:
                captured["x"] = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))

        handles = [m.register_forward_hook(on_conv) for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        handles.append(first.register_forward_pre_hook(on_first, with_kwargs=True))
        handles.append(target.register_forward_pre_hook(on_target, with_kwargs=True))
        try:
            with torch.no_grad():
                logits = extract_logits(self.model(x))
        finally:
            for h in handles:
                h.remove()
        tokens = captured.get("x")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            got = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ModelSplitError(f"block {self.target_name!r} received {got}, not tokens [B, N, D]"
                                  if tokens is not None else
                                  f"block {self.target_name!r} was never called in the forward pass; pass "
                                  "target_layer= naming the block list the model runs")
        n = int(tokens.shape[1])
        grid = captured.get("grid")
        num_aux = state.parts.num_aux
        if grid is None:
            if num_aux is None or math.isqrt(n - num_aux) ** 2 != n - num_aux:
                raise ModelSplitError(f"cannot tell the patch grid of {n} tokens: no Conv2d patch embedding ran "
                                      "before the blocks, and the patch count is not a known square")
            side = math.isqrt(n - num_aux)
            grid = (side, side)
        num_aux = check_token_count(n, grid, num_aux, where=f"the input of block {self.target_name!r}")
        with torch.no_grad():
            t = state.rest.target.norm1(tokens)
            if not state.verified:
                self._verify(tokens, t, logits, num_aux)
        return TokenFeature(t, grid, num_aux), logits

    def _verify(self, x: torch.Tensor, t: torch.Tensor, logits: torch.Tensor, num_aux: int) -> None:
        """Rebuild the logits from the pieces; refuse the model or disable the fast path on mismatch."""
        state = self._state
        rest = state.rest
        rest.num_aux = num_aux
        tol = _tolerance(logits.dtype)
        err = _rel_err(rest.from_residual(x, t), logits)
        if not err <= tol:
            raise ModelSplitError(
                f"{type(self.model).__name__}: running block {self.target_name!r} as pieces (norm1, attention, "
                f"norm2, MLP, layer scales), the later blocks, the final norm and the head "
                f"({rest.head.description}) does not reproduce the model's logits (relative error {err:.2g}). "
                "The blocks are not standard pre-norm blocks, or the head pools differently; pass "
                "target_layer= naming the right block list, or explain the model with another algorithm")
        blocks = [rest.target] + rest.after
        reason = next((f"block {state.parts.block_names[state.index + i]}: {b.no_fast}"
                       for i, b in enumerate(blocks) if b.parts is None), None)
        if reason is None:
            err = _rel_err(rest.from_residual_weighted(x, t), logits)
            if not err <= tol:
                reason = (f"the re-implemented attention does not reproduce the model's logits (relative error "
                          f"{err:.2g}): position-dependent attention or a non-standard block")
        rest.fast_reason = reason
        state.verified = True

    def feature_map(self, feature: TokenFeature) -> torch.Tensor:
        return feature.feature_map()


__all__ = ["ViTAdapter", "ViTRest", "TokenFeature", "BlockParts", "AttnParts", "HeadSpec", "ModelParts",
           "recognize_block", "find_block_lists", "is_transformer", "describe_model", "check_token_count",
           "LOOKED_FOR"]
