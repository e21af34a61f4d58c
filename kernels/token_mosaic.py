"""Token mosaics of ViT Recipro-CAM: per grid cell, the tokens the re-inference runs on.

ViT Recipro-CAM (SPEC.md) re-runs the end of a transformer on ``T_p``: the tokens ``T`` of one
image with the auxiliary tokens kept (or zeroed) and patch token ``q`` multiplied by the mask
``m_p(q)``. Both execution plans are one *row gather* per cell::

    out[cell, s, :] = scale[p, s] * src[b, index[p, s], :]  (+ bias[:])

for cells ``n = start + cell`` of the flattened batch (``b = n // HW``, ``p = n % HW``), driven
by a :class:`TokenLayout` (small tables per grid cell, shared by every image):

- ``dense``: ``U = N`` slots, slot ``t`` is token ``t`` scaled by its mask value: the full
  ``T_p`` ``[N, D]`` (the naive re-inference).
- ``compact``: only the distinct tokens of ``T_p``: the ``A`` auxiliary tokens, the ``k*k``
  tokens of the mask window (slots outside the grid are padding), and one representative of
  the zeroed patch tokens; ``log_count[p, s]`` is the log of how many tokens of ``T_p`` each slot
  stands for (``-inf`` for padding and for an empty zero class), the multiplicity that the
  weighted attention (:mod:`.token_attention`) adds to the key logits. ``slot_of[p, t]`` maps a
  token back to its slot.

``src`` may be the tokens themselves or any per-token linear image of them (``T @ Wqkv^T``: the
mosaic of the projections plus the bias is the projection of the mosaic, exactly).

Backends: Numba (CPU float32), PyTorch (any device / dtype), Triton (CUDA; CPU under
``TRITON_INTERPRET=1``), picked by :func:`token_mosaic`'s ``backend``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ._compat import JIT_OPTS, as_index, njit, pick_backend, prange
from .masks import resolve_kernel

__all__ = ["TokenLayout", "token_layout", "token_mosaic", "token_mosaic_numba", "token_mosaic_torch",
           "layout_rows"]


@dataclass(frozen=True)
class TokenLayout:
    """Per-cell tables of a token mosaic (numpy, shared by every image of a grid).

    index [HW, U] int64: token read by slot s of cell p; scale [HW, U] float32: its factor;
    log_count [HW, U] and count [HW, U] (float64): how many tokens of T_p the slot stands for
    (dense: all ones); slot_of [HW, N] int64: the slot holding token t of T_p;
    patch [U] bool: slot holds patch tokens (not auxiliary ones).
    """

    kind: str
    H: int
    W: int
    num_aux: int
    index: np.ndarray
    scale: np.ndarray
    log_count: np.ndarray
    count: np.ndarray
    slot_of: np.ndarray
    patch: np.ndarray

    @property
    def slots(self) -> int:
        return int(self.index.shape[1])

    @property
    def num_tokens(self) -> int:
        return self.num_aux + self.H * self.W


def _mask_key(mask) -> tuple:
    k = resolve_kernel(mask)
    return k.shape, k.tobytes()


@functools.lru_cache(maxsize=64)
def _layout(kind: str, H: int, W: int, num_aux: int, cls_token: bool, kshape, kbytes) -> TokenLayout:
    kernel = np.frombuffer(kbytes, dtype=np.float32).reshape(kshape)
    k = kernel.shape[0]
    r = k // 2
    HW = H * W
    A = num_aux
    N = A + HW
    aux_scale = np.float32(1.0 if cls_token else 0.0)
    if kind == "dense":
        index = np.broadcast_to(np.arange(N, dtype=np.int64), (HW, N)).copy()
        scale = np.zeros((HW, N), dtype=np.float32)
        scale[:, :A] = aux_scale
        for p in range(HW):
            i, j = divmod(p, W)
            for u in range(k):
                for v in range(k):
                    qi, qj = i + u - r, j + v - r
                    if 0 <= qi < H and 0 <= qj < W:
                        scale[p, A + qi * W + qj] = kernel[u, v]
        ones = np.ones((HW, N))
        patch = np.arange(N) >= A
        layout = TokenLayout(kind, H, W, A, index, scale, np.zeros((HW, N)), ones,
                             index.copy(), patch)
    elif kind == "compact":
        U = A + k * k + 1
        zero = U - 1
        index = np.zeros((HW, U), dtype=np.int64)
        scale = np.zeros((HW, U), dtype=np.float32)
        count = np.zeros((HW, U))
        slot_of = np.full((HW, N), zero, dtype=np.int64)
        index[:, :A] = np.arange(A)
        scale[:, :A] = aux_scale
        count[:, :A] = 1.0
        slot_of[:, :A] = np.arange(A)
        for p in range(HW):
            i, j = divmod(p, W)
            inside = 0
            for u in range(k):
                for v in range(k):
                    qi, qj = i + u - r, j + v - r
                    s = A + u * k + v
                    if 0 <= qi < H and 0 <= qj < W:
                        q = qi * W + qj
                        index[p, s] = A + q
                        scale[p, s] = kernel[u, v]
                        count[p, s] = 1.0
                        slot_of[p, A + q] = s
                        inside += 1
            count[p, zero] = HW - inside  # 0 for a grid no larger than the window: no such token
        with np.errstate(divide="ignore"):
            log_count = np.log(count)
        patch = np.arange(U) >= A
        layout = TokenLayout(kind, H, W, A, index, scale, log_count, count, slot_of, patch)
    else:
        raise ValueError(f"unknown token layout {kind!r}; use 'dense' or 'compact'")
    for a in (layout.index, layout.scale, layout.log_count, layout.count, layout.slot_of, layout.patch):
        a.setflags(write=False)
    return layout


def token_layout(kind: str, H: int, W: int, num_aux: int, mask="gaussian", cls_token: bool = True) -> TokenLayout:
    """The (cached) :class:`TokenLayout` of a grid H x W with ``num_aux`` auxiliary tokens.

    kind: "dense" (T_p itself, N = A + H*W slots) or "compact" (A + k*k + 1 distinct tokens);
    mask: "1x1" | "gaussian" | an odd square kernel; cls_token: keep (True) or zero the auxiliary
    tokens.
    """
    H, W, num_aux = as_index(H, "H"), as_index(W, "W"), as_index(num_aux, "num_aux")
    if H < 1 or W < 1 or num_aux < 0:
        raise ValueError(f"need H, W >= 1 and num_aux >= 0, got H={H}, W={W}, num_aux={num_aux}")
    shape, data = _mask_key(mask)
    return _layout(kind, H, W, num_aux, bool(cls_token), shape, data)


def layout_rows(table: np.ndarray, HW: int, start: int, count: int) -> np.ndarray:
    """Rows of a per-cell table for cells [start, start + count) of the flattened batch."""
    p = np.arange(start, start + count) % HW
    return table[p]


@njit(**JIT_OPTS)
def token_mosaic_numba(src, index, scale, start, count, bias, has_bias, out):
    """Numba kernel. src: f32 C-contig [B, N, C]; index: int64 [HW, U]; scale: f32 [HW, U];
    bias: f32 [C] (ignored unless has_bias); out: f32 C-contig [count, U, C], fully written.
    Parallel over the count*U output rows; each row is one scaled contiguous copy."""
    HW, U = index.shape
    C = src.shape[2]
    for t in prange(count * U):
        cell = t // U
        s = t - cell * U
        n = start + cell
        b = n // HW
        p = n - b * HW
        w = scale[p, s]
        row = src[b, index[p, s]]
        dst = out[cell, s]
        if has_bias:
            for c in range(C):
                dst[c] = row[c] * w + bias[c]
        else:
            for c in range(C):
                dst[c] = row[c] * w


def token_mosaic_torch(src: torch.Tensor, index, scale, start: int, count: int, bias=None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch twin of :func:`token_mosaic_numba`: any device / floating dtype. ``index`` and
    ``scale`` are the [HW, U] tables (numpy or tensors)."""
    B, N, C = (int(s) for s in src.shape)
    dev, dt = src.device, src.dtype
    index = (index if isinstance(index, torch.Tensor) else torch.from_numpy(np.array(index))).to(dev)
    scale = (scale if isinstance(scale, torch.Tensor) else torch.from_numpy(np.array(scale))).to(dev, dt)
    HW = int(index.shape[0])
    n = torch.arange(start, start + count, device=dev)
    p = n % HW
    rows = (n // HW)[:, None] * N + index[p]  # [count, U]
    gathered = src.reshape(B * N, C)[rows]  # [count, U, C]
    result = gathered * scale[p].unsqueeze(-1)
    if bias is not None:
        result = result + bias.to(dev, dt)
    if out is None:
        return result
    out.copy_(result)
    return out


def token_mosaic(src: torch.Tensor, layout: TokenLayout, start: int, count: int, bias: torch.Tensor | None = None,
                 out: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Token mosaic of cells [start, start + count) -> [count, U, C] (U = layout.slots).

    src: [B, N, C] with N = layout.num_tokens (tokens, or their linear projections); bias: [C]
    added to every row (the projection bias). backend: "auto" | "numba" | "torch" | "triton"
    ("auto": CUDA -> Triton, CPU float32 -> Numba, else the PyTorch twin).
    """
    if not isinstance(src, torch.Tensor) or src.dim() != 3:
        raise ValueError(f"src must be a 3-D tensor [B, N, C], got {getattr(src, 'shape', type(src).__name__)}")
    B, N, C = (int(s) for s in src.shape)
    HW = layout.H * layout.W
    if N != layout.num_tokens:
        raise ValueError(f"src has {N} tokens; the layout expects {layout.num_aux} auxiliary + "
                         f"{layout.H}*{layout.W} patch tokens = {layout.num_tokens}")
    start, count = as_index(start, "start"), as_index(count, "count")
    if start < 0 or count < 0 or start + count > B * HW:
        raise ValueError(f"cell range [{start}, {start + count}) is outside [0, {B * HW}]")
    U = layout.slots
    if out is not None and (tuple(out.shape) != (count, U, C) or out.dtype != src.dtype or out.device != src.device):
        raise ValueError(f"out must be a {src.dtype} tensor {(count, U, C)} on {src.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    tensors = (src,) + (() if bias is None else (bias,)) + (() if out is None else (out,))
    path = pick_backend(backend, *tensors)
    if path == "numba" and out is not None and not out.is_contiguous():
        if backend == "numba":
            raise ValueError("out must be contiguous for the numba backend")
        path = "torch"
    if path == "torch":
        return token_mosaic_torch(src, layout.index, layout.scale, start, count, bias, out)
    if out is None:
        out = torch.empty((count, U, C), dtype=src.dtype, device=src.device)
    if count == 0:
        return out
    if path == "triton":
        from .token_triton import token_mosaic_triton

        return token_mosaic_triton(src.detach(), layout, start, count, bias, out)
    b = (bias.detach().contiguous().numpy() if bias is not None else np.zeros(1, dtype=np.float32))
    token_mosaic_numba(src.detach().contiguous().numpy(), layout.index, np.ascontiguousarray(layout.scale),
                       start, count, b, bias is not None, out.detach().numpy())
    return out
