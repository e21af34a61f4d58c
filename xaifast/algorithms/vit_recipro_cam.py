"""ViT Recipro-CAM (OTX's ViTReciproCAM) for transformer classifiers, with an exact fast path.

For every patch cell p, SPEC.md re-runs the end of the model on ``T_p``: the target block's LN1
output ``T`` with the auxiliary tokens kept (``cls_token=True``) or zeroed, and patch token q
multiplied by ``m_p(q)``; ``S[k, p] = score(logits_p)[k]``. Two execution plans, both exact:

- naive (general): the full ``T_p`` [n, A + H*W, D] of a chunk of cells is built by the token
  mosaic kernel and the model's own pieces run on it (the target block's attention and MLP as
  modules, the later blocks as modules, final norm, head). Works for any recognized model.
- fast: in ``T_p`` every zeroed patch token is the same vector, and identical tokens stay
  identical through per-token layers (norms, MLPs, projections) and through attention without
  position-dependent terms. So each cell runs on its distinct tokens only: the A auxiliary
  tokens, the <= k*k tokens of the mask window and one representative of the zero tokens
  (A + k*k + 1 slots), and each attention counts a key standing for c tokens c times (log c added
  to its logit, :mod:`xaifast.kernels.token_attention`). The target block's q/k/v are the
  token mosaic of ``T @ Wqkv^T`` plus the bias (computed once per image, not per cell); in the
  last block only the tokens the head reads are queried (CLS; CLS + distillation for DeiT; every
  slot, weighted by its count, for mean pooling). Not an approximation: it equals the naive
  re-inference up to float rounding, which the tests check in float64.

The fast path is used when the model's pieces allow it (`ViTRest.fast_ok`, decided when the
adapter verified the model); otherwise the naive path runs. Cells are processed in chunks
bounded by a memory budget; logits of every cell go through the fused score / transpose /
normalize epilogue (:func:`xaifast.kernels.score_maps`).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from ..config import normalize_mask_name
from ..errors import ModelSplitError, XaifastError
from ..adapters.vit import TokenFeature, ViTRest, check_token_count
from .base import DEFAULT_MEMORY_BUDGET_MB, SaliencyResult

#: Floats of activation per token and model width in a block (input, q/k/v, attention output,
#: MLP hidden (4x), residuals); the attention logits add heads x sequence length per token.
_FLOATS_PER_TOKEN_AND_DIM = 12


def chunk_cells(tokens_per_cell: int, dim: int, heads: int, itemsize: int, memory_budget_mb: Optional[float],
                chunk_size: Optional[int]) -> int:
    """How many cells one re-inference chunk holds within the memory budget."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    budget = (DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)) * 2**20
    if budget <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    per_cell = tokens_per_cell * (_FLOATS_PER_TOKEN_AND_DIM * dim + heads * tokens_per_cell) * itemsize
    return max(1, int(budget // per_cell))


def _heads(rest) -> int:
    if isinstance(rest, ViTRest) and rest.target.parts is not None:
        return rest.target.parts.num_heads
    return 1


# ------------------------------------------------------------------------------------ naive
def naive_logits(tokens: torch.Tensor, grid: Tuple[int, int], num_aux: int, rest: Callable, mask: str,
                 cls_token: bool, start: int, count: int) -> torch.Tensor:
    """Logits of cells [start, start + count): the rest run on the full T_p of each cell."""
    from ..kernels.token_mosaic import token_layout, token_mosaic

    layout = token_layout("dense", grid[0], grid[1], num_aux, mask, cls_token)
    t_p = token_mosaic(tokens, layout, start, count)
    return rest(t_p)


# ------------------------------------------------------------------------------------ fast
class _FastPlan:
    """Per-batch precomputation of the fast path (projections of T, layout tables)."""

    def __init__(self, tokens: torch.Tensor, grid, num_aux: int, rest: ViTRest, mask: str, cls_token: bool):
        from ..kernels.token_mosaic import token_layout

        self.tokens = tokens
        self.rest = rest
        self.layout = token_layout("compact", grid[0], grid[1], num_aux, mask, cls_token)
        self.HW = grid[0] * grid[1]
        self.num_aux = num_aux
        self.cls_token = cls_token
        parts = rest.target.parts
        self.inner = parts.inner
        self.proj = torch.nn.functional.linear(tokens, parts.weight)  # T @ Wqkv^T, [B, N, 3I], once per batch
        self.bias = parts.bias
        head = rest.head
        if head.kind == "tokens" and all(0 <= t < num_aux for t in head.tokens):
            self.queries = list(head.tokens)  # slots of the auxiliary tokens the head reads
        else:
            self.queries = None  # every slot (mean / full pooling, or a head reading patch tokens)
        dev, dt = tokens.device, tokens.dtype
        self._tables = {name: torch.from_numpy(np.array(getattr(self.layout, name))).to(dev)
                        for name in ("log_count", "count", "slot_of")}
        self._tables["log_count"] = self._tables["log_count"].to(dt)
        self._tables["count"] = self._tables["count"].to(dt)
        self.proj_kv = self.proj[..., self.inner:].contiguous() if self.queries is not None and not rest.after else None
        self.pool_weights = None
        if self.queries is None and head.kind == "mean" and 0 <= head.start <= num_aux:
            # Slot s is pooled when the tokens it stands for sit at positions >= head.start
            # (auxiliary slot a is token a; window and zero slots are patch tokens).
            position = np.where(self.layout.patch, num_aux, np.arange(self.layout.slots))
            pooled = (position >= head.start).astype(np.float64) / (self.layout.num_tokens - head.start)
            self.pool_weights = torch.from_numpy(pooled).to(dev, dt)

    def rows(self, name: str, start: int, count: int) -> torch.Tensor:
        table = self._tables[name]
        p = torch.arange(start, start + count, device=table.device) % self.HW
        return table[p]

    def logits(self, start: int, count: int) -> torch.Tensor:
        from ..kernels.token_mosaic import token_mosaic

        rest, layout, inner = self.rest, self.layout, self.inner
        log_count = self.rows("log_count", start, count)  # [n, U]
        target = rest.target
        only_queries = self.queries is not None and not rest.after
        if only_queries:
            # k = 1, head on auxiliary tokens: the target block needs k, v of every distinct token
            # and q, residual, MLP of the queried auxiliary tokens only.
            kv_bias = self.bias[inner:] if self.bias is not None else None
            kv = token_mosaic(self.proj_kv, layout, start, count, kv_bias)
            k, v = kv[..., :inner], kv[..., inner:]
            images = torch.arange(start, start + count, device=kv.device) // self.HW
            aux = 1.0 if self.cls_token else 0.0
            q = self.proj[:, self.queries, :inner] * aux
            if self.bias is not None:
                q = q + self.bias[:inner]
            x_q = self.tokens[:, self.queries] * aux
            y = target.finish(x_q[images], target.parts.attend(q[images], k, v, log_count))
        else:
            x0 = token_mosaic(self.tokens, layout, start, count)
            qkv = token_mosaic(self.proj, layout, start, count, self.bias)
            q, k, v = qkv[..., :inner], qkv[..., inner:2 * inner], qkv[..., 2 * inner:]
            queries = self.queries if not rest.after else None
            if queries is not None:
                q, x0 = q[:, queries], x0[:, queries]
            y = target.finish(x0, target.parts.attend(q, k, v, log_count))
            for i, blk in enumerate(rest.after):
                last = i == len(rest.after) - 1
                y = blk.weighted(y, log_count, self.queries if last else None)
        z = rest.norm(y)
        head = rest.head
        if self.queries is not None:  # z holds the tokens the head reads, in its order
            return _extract(head.fn(z))
        if self.pool_weights is not None:  # mean pooling: every slot weighted by its count
            w = self.rows("count", start, count) * self.pool_weights
            return _extract(head.fn((w.unsqueeze(-1) * z).sum(1)))
        # Any other pooling: expand the distinct tokens back to the full sequence.
        slot_of = self.rows("slot_of", start, count)  # [n, N]
        z_full = torch.gather(z, 1, slot_of.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
        return head.apply(z_full)


def _extract(out):
    from ..adapters.head_graph import extract_logits

    return extract_logits(out)


# ------------------------------------------------------------------------------------ driver
def _as_tokens(feature, grid, num_aux) -> Tuple[torch.Tensor, Tuple[int, int], int]:
    if isinstance(feature, TokenFeature):
        tokens = feature.tokens
        grid = feature.grid if grid is None else tuple(grid)
        num_aux = feature.num_aux if num_aux is None else num_aux
    else:
        tokens = feature
        if grid is None:
            raise XaifastError("pass grid=(H, W): the patch grid of the tokens")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise XaifastError(f"tokens must be a tensor [B, N, D], got "
                           f"{list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if not tokens.is_floating_point():
        raise XaifastError(f"tokens must be a float tensor, got {tokens.dtype}")
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1:
        raise XaifastError(f"grid must be positive, got {grid}")
    num_aux = check_token_count(int(tokens.shape[1]), (h, w), num_aux)
    return tokens, (h, w), num_aux


def vit_masked_logits(feature: Union[TokenFeature, torch.Tensor], rest: Union[ViTRest, Callable], *,
                      grid: Optional[Tuple[int, int]] = None, num_aux: Optional[int] = None, mask: str = "gaussian",
                      cls_token: bool = True, use_fast_path: bool = True, memory_budget_mb: Optional[float] = None,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
    """Logits of every cell's re-inference: [B*H*W, K], row b*H*W + i*W + j (the model's dtype)."""
    tokens, (h, w), num_aux = _as_tokens(feature, grid, num_aux)
    mask = normalize_mask_name(mask)
    b, n_tok, dim = (int(s) for s in tokens.shape)
    cells = b * h * w
    fast = use_fast_path and isinstance(rest, ViTRest) and rest.fast_ok
    if use_fast_path and isinstance(rest, ViTRest) and not rest.fast_ok and not getattr(rest, "_warned", False):
        rest._warned = True
        warnings.warn(f"vit_recipro_cam: the exact fast path does not apply to this model ({rest.fast_reason}); "
                      "running the general (naive) re-inference", stacklevel=3)
    if isinstance(rest, ViTRest) and rest.num_aux >= 0 and rest.num_aux != num_aux:
        raise ModelSplitError(f"the tokens have {num_aux} auxiliary tokens, the model {rest.num_aux}")
    tokens = tokens.detach()
    outputs = []
    with torch.no_grad():
        if fast:
            plan = _FastPlan(tokens, (h, w), num_aux, rest, mask, cls_token)
            step = chunk_cells(plan.layout.slots, dim, _heads(rest), tokens.element_size(), memory_budget_mb,
                               chunk_size)
            for start in range(0, cells, step):
                outputs.append(plan.logits(start, min(step, cells - start)))
        else:
            step = chunk_cells(n_tok, dim, _heads(rest), tokens.element_size(), memory_budget_mb, chunk_size)
            for start in range(0, cells, step):
                outputs.append(_extract(naive_logits(tokens, (h, w), num_aux, rest, mask, cls_token, start,
                                                     min(step, cells - start))))
    logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    if logits.ndim != 2 or logits.shape[0] != cells:
        raise ModelSplitError(f"the model's rest returned shape {list(logits.shape)} for {cells} masked token "
                              "sets; it must return logits [N, K]")
    return logits


def vit_recipro_cam(feature: Union[TokenFeature, torch.Tensor], rest: Union[ViTRest, Callable], mask: str = "gaussian",
                    score: str = "none", *, grid: Optional[Tuple[int, int]] = None, num_aux: Optional[int] = None,
                    cls_token: bool = True, use_fast_path: bool = True, normalize: bool = False,
                    memory_budget_mb: Optional[float] = None, chunk_size: Optional[int] = None) -> SaliencyResult:
    """ViT Recipro-CAM maps: raw float32 [B, K, H, W] (+ uint8 when normalize)."""
    from ..kernels import score_maps

    tokens, (h, w), num_aux = _as_tokens(feature, grid, num_aux)
    logits = vit_masked_logits(tokens, rest, grid=(h, w), num_aux=num_aux, mask=mask, cls_token=cls_token,
                               use_fast_path=use_fast_path, memory_budget_mb=memory_budget_mb,
                               chunk_size=chunk_size)
    if logits.dtype != torch.float32:
        logits = logits.float()
    raw, u8 = score_maps(logits.contiguous(), tokens.shape[0], h, w, score, normalize)
    return SaliencyResult(raw, u8)


__all__ = ["vit_recipro_cam", "vit_masked_logits", "naive_logits", "chunk_cells", "FastGraph"]


# ------------------------------------------------------------------------------------ graph
#: Stands for log(0) in the graph's attention bias (padding slots, an empty zero class): exp of it
#: is exactly 0 next to any finite logit in float32, and it stays finite in bf16 / f16.
GRAPH_LOG_ZERO = -30000.0


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [..., m, k] @ b [..., k, n] (the same leading dims) as one 3-D torch.bmm. torch.matmul on
    4-D and larger tensors exports an expand of both operands to the common batch shape, even when
    nothing broadcasts, and with a dynamic batch OpenVINO runs each as a multiply by a runtime
    broadcast of ones (in f32, then converted): ~15% of the fast graph's time at bf16."""
    lead = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, a.shape[-2], a.shape[-1]), b.reshape(-1, b.shape[-2], b.shape[-1]))
    return out.reshape(*lead, out.shape[-2], out.shape[-1])


class FastGraph(torch.nn.Module):
    """The exact fast path as static, traceable torch ops (torch.export / OpenVINO): the same math
    as `_FastPlan`, for the whole batch at once, with the compact token layout as constants.

    forward(tokens T [B, N, D]) -> cell logits [B*H*W, K], row b*H*W + i*W + j. Every cell runs on
    its A + k*k + 1 distinct tokens (index / scale tables gathered from T and from T @ Wqkv^T);
    each attention adds the log-multiplicity of its keys to the logits (softmax weighted by
    count); the last block queries only the tokens the head reads (mean pooling: every slot,
    pooled with its count; any other head: the distinct tokens expanded back to N). Batch size is
    the only dynamic dimension. The model's pieces come from the adapter's `ViTRest` (not
    submodules: the graph that owns the model registers its parameters).
    """

    def __init__(self, rest: ViTRest, grid: Tuple[int, int], num_aux: int, mask: str = "gaussian",
                 cls_token: bool = True):
        from ..kernels.token_mosaic import token_layout

        super().__init__()
        if not rest.fast_ok:
            raise ModelSplitError(f"the exact fast path does not apply to this model ({rest.fast_reason})")
        self._rest = [rest]
        layout = token_layout("compact", grid[0], grid[1], num_aux, normalize_mask_name(mask), cls_token)
        self.HW, self.U, self.A, self.N = grid[0] * grid[1], layout.slots, num_aux, layout.num_tokens
        self.aux_scale = 1.0 if cls_token else 0.0
        self.register_buffer("index", torch.from_numpy(layout.index.reshape(-1).copy()), persistent=False)
        self.register_buffer("scale", torch.from_numpy(layout.scale.copy()).unsqueeze(-1), persistent=False)
        # float64 constants, cast to the tokens' dtype in the graph (a float32 log-count would be off by ~1e-8)
        log_count = np.maximum(layout.log_count, GRAPH_LOG_ZERO)
        self.register_buffer("log_count", torch.from_numpy(log_count)[:, None, None, :], persistent=False)
        head = rest.head
        if head.kind == "tokens" and all(0 <= t < num_aux for t in head.tokens):
            self.queries = list(head.tokens)
        else:
            self.queries = None
        self.mode = "queries" if self.queries is not None else "full"
        if self.queries is None and head.kind == "mean" and 0 <= head.start <= num_aux:
            position = np.where(layout.patch, num_aux, np.arange(layout.slots))
            pooled = (position >= head.start).astype(np.float64) / (layout.num_tokens - head.start)
            weights = layout.count * pooled[None, :]  # [HW, U]
            self.register_buffer("pool", torch.from_numpy(weights).unsqueeze(-1), persistent=False)
            self.mode = "mean"
        elif self.queries is None:
            # token t of cell p is slot slot_of[p, t] of that cell: rows p*U + slot_of[p, t]
            rows = layout.slot_of + (np.arange(self.HW) * self.U)[:, None]
            self.register_buffer("expand_rows", torch.from_numpy(rows.reshape(-1).copy()), persistent=False)

    @property
    def rest(self) -> ViTRest:
        return self._rest[0]

    def _mosaic(self, src: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, N, C] -> [B, HW, U, C]: slot s of cell p is scale[p, s] * src[:, index[p, s]] (+ bias)."""
        out = src.index_select(1, self.index).unflatten(1, (self.HW, self.U)) * self.scale.to(src.dtype)
        return out if bias is None else out + bias

    @staticmethod
    def _project(parts, h: torch.Tensor, which, bias: bool = True):
        """The q / k / v projections `which` (0, 1, 2) of h [..., D]: a list of [..., I] (and the
        biases, when bias=False, as a second list: the mosaic adds them after scaling)."""
        inner = parts.inner
        if len(parts.projections) == 1:
            lin = parts.projections[0]
            lo, hi = min(which) * inner, (max(which) + 1) * inner
            w = lin.weight if (lo, hi) == (0, 3 * inner) else lin.weight[lo:hi]
            b = None if lin.bias is None else (lin.bias if (lo, hi) == (0, 3 * inner) else lin.bias[lo:hi])
            y = torch.nn.functional.linear(h, w, b if bias else None)
            outs = [y[..., (i - min(which)) * inner:(i - min(which) + 1) * inner] for i in which]
            biases = [None if b is None else b[(i - min(which)) * inner:(i - min(which) + 1) * inner] for i in which]
        else:
            lins = [parts.projections[i] for i in which]
            outs = [torch.nn.functional.linear(h, lin.weight, lin.bias if bias else None) for lin in lins]
            biases = [lin.bias for lin in lins]
        return outs if bias else (outs, biases)

    def _attend(self, parts, q, k, v) -> torch.Tensor:
        """q [B, P, L, I] (P: HW or 1), k, v [B, HW, U, I] -> [B, HW, L, D]; log-count added to the logits."""
        def heads(x, which):
            x = x.unflatten(-1, (parts.num_heads, parts.head_dim)).transpose(-2, -3)  # [B, P, h, L, dh]
            norm = parts.q_norm if which == 0 else parts.k_norm if which == 1 else None
            return norm(x) if norm is not None else x

        if q.shape[1] == 1 and k.shape[1] != 1:
            # one query set for every cell (the last block's queried tokens): batched over
            # (B, heads) against every cell's keys at once, not broadcast over the cells
            q = heads(q, 0)[:, 0]  # [B, h, L, dh]
            cells, slots = k.shape[1], k.shape[2]
            k = k.unflatten(-1, (parts.num_heads, parts.head_dim))
            k = parts.k_norm(k) if parts.k_norm is not None else k
            k = k.permute(0, 3, 1, 2, 4).flatten(2, 3)  # [B, h, HW * U, dh]
            logits = _bmm(q, k.transpose(-1, -2)).unflatten(-1, (cells, slots)).permute(0, 3, 1, 2, 4)
            q, v = q.unsqueeze(1), heads(v, 2)  # logits [B, HW, h, L, U], v [B, HW, h, U, dh]
        else:
            q, k, v = heads(q, 0), heads(k, 1), heads(v, 2)
            logits = _bmm(q, k.transpose(-1, -2))
        logits = logits * parts.scale + self.log_count.to(q.dtype)
        o = _bmm(torch.softmax(logits, dim=-1), v)  # [B, HW, h, L, dh]
        return parts.out(o.transpose(-2, -3).flatten(-2))

    def _attend_tokens(self, parts, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bv: Optional[torch.Tensor]) -> torch.Tensor:
        """One query set q [B, 1, L, I] for every cell, against the keys and values of the tokens
        k, v [B, N, I] (projected without their biases bk, bv) -> [B, HW, L, D]: `_attend` on the
        mosaic of k and v, computed without building it. Slot u of cell p is s * t + b for token
        t = index[p, u] and scale s = scale[p, u], so (keys, without a key norm)
            q . (s k_t + b_k) = s (q . k_t) + q . b_k   : q . k on the N tokens, then gathered (q . b_k,
                                                          one constant per query, cancels in the softmax);
            sum_u a_u (s_u v_t + b_v) = sum_u (a_u s_u) v_t + b_v   : the scales on the attention
                                                          weights (which sum to 1), not on the values.
        No transposed copy of a gathered tensor; the same maps (tests/test_vit_models.py, float64)."""
        h, dh = parts.num_heads, parts.head_dim
        b_count, L, n = q.shape[0], q.shape[2], k.shape[1]
        q = q[:, 0].unflatten(-1, (h, dh)).transpose(1, 2)  # [B, h, L, dh]
        q = parts.q_norm(q) if parts.q_norm is not None else q
        scale = self.scale[..., 0].to(q.dtype)  # [HW, U]
        kt = k.unflatten(-1, (h, dh)).transpose(1, 2).reshape(-1, n, dh)  # [B*h, N, dh]
        logits = torch.bmm(q.reshape(-1, L, dh), kt.transpose(1, 2)).reshape(b_count, h, L, n)
        logits = logits.index_select(3, self.index).unflatten(3, (self.HW, self.U)) * scale  # [B, h, L, HW, U]
        # (q . b_k is the same for every key of a query: softmax does not see it, so it is left out)
        logits = logits.transpose(2, 3) * parts.scale + self.log_count[:, 0].to(q.dtype)  # [B, h, HW, L, U]
        a = torch.softmax(logits, dim=-1)
        vt = v.unflatten(-1, (h, dh)).transpose(1, 2)  # [B, h, N, dh]
        vg = vt.index_select(2, self.index).unflatten(2, (self.HW, self.U))  # [B, h, HW, U, dh]
        o = _bmm(a * scale[:, None, :], vg)  # [B, h, HW, L, dh]
        if bv is not None:  # (sum_u a_u = 1)
            o = o + bv.reshape(h, 1, 1, dh)
        return parts.out(o.permute(0, 2, 3, 1, 4).flatten(-2))

    def _block(self, blk, y: torch.Tensor, queries) -> torch.Tensor:
        """A block after the target one on the distinct tokens y [B, HW, U, D]."""
        p = blk.parts
        q, k, v = self._project(p, blk.norm1(y), (0, 1, 2))
        if queries is not None:
            q, y = q[:, :, queries], y[:, :, queries]
        return blk.finish(y, self._attend(p, q, k, v))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        rest = self.rest
        target, p = rest.target, rest.target.parts
        last_queries = self.queries is not None
        if last_queries and not rest.after:
            # the target block is the last one and the head reads auxiliary tokens: k, v of every
            # distinct token; q, residual and MLP of the queried auxiliary tokens only (the same in
            # every cell: broadcast over the cells)
            (k, v), (bk, bv) = self._project(p, t, (1, 2), bias=False)
            q = self._project(p, t[:, self.queries] * self.aux_scale, (0,))[0].unsqueeze(1)  # [B, 1, L, I]
            x_q = (t[:, self.queries] * self.aux_scale).unsqueeze(1)
            if p.k_norm is None:
                attended = self._attend_tokens(p, q, k, v, bv)
            else:  # a norm of each key: on the mosaic itself
                attended = self._attend(p, q, self._mosaic(k, bk), self._mosaic(v, bv))
            y = target.finish(x_q, attended)  # [B, HW, L, D]
        else:
            (q, k, v), biases = self._project(p, t, (0, 1, 2), bias=False)
            q, k, v = (self._mosaic(a, b) for a, b in zip((q, k, v), biases))
            x0 = self._mosaic(t)
            y = target.finish(x0, self._attend(p, q, k, v))
            for i, blk in enumerate(rest.after):
                last = i == len(rest.after) - 1
                y = self._block(blk, y, self.queries if last else None)
        z = rest.norm(y)
        head = rest.head
        if self.mode == "queries":  # z: [B, HW, L, D], the tokens the head reads in its order
            return _extract(head.fn(z.flatten(0, 1)))
        if self.mode == "mean":
            return _extract(head.fn((self.pool.to(z.dtype) * z).sum(2).flatten(0, 1)))
        z_full = z.flatten(1, 2).index_select(1, self.expand_rows).unflatten(1, (self.HW, self.N))
        return head.apply(z_full.flatten(0, 1))
