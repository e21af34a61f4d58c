"""Recipro-CAM for CNN classifiers (OTX's ClassWiseSaliencyMap for CNNs).

For every cell p of the feature grid the head re-scores the feature map masked at p:
S[k, i, j] = score(head(F * m_p))[k]. Two exact execution plans:
- GAP shortcut: when the head starts with global average pooling, head(F * m_p) is the rest of
  the head applied to sum_q m_p(q) F[:, q] / (H*W); the pooled vectors of all cells come from one
  kernel and the rest of the head runs on them in large chunks. No mosaic is materialized.
- General: mosaics F * m_p for a chunk of cells are written by a kernel and the whole head runs
  on them; chunks are sized from a memory budget.
Scores, the transpose to [B, K, H, W] and the uint8 normalization are one fused epilogue kernel.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..models.head_graph import Head, analyse_head
from .base import DEFAULT_MEMORY_BUDGET_MB, SaliencyResult, check_feature

# A head's activations are a few times its input; the budget covers both.
_ACTIVATION_FACTOR = 4


def cells_per_chunk(bytes_per_cell: int, memory_budget_mb: Optional[float], chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    budget = (DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)) * 2**20
    if budget <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    return max(1, int(budget // (bytes_per_cell * _ACTIVATION_FACTOR)))


def masked_logits(feature: torch.Tensor, head: Head, mask: str = "1x1", *,
                  memory_budget_mb: Optional[float] = None, chunk_size: Optional[int] = None,
                  use_gap_shortcut: bool = True) -> torch.Tensor:
    """Logits of every masked feature map: [B*H*W, K], row b*H*W + i*W + j."""
    from ..kernels import build_mosaic, gap_pooled

    b, c, h, w = feature.shape
    cells = b * h * w
    itemsize = feature.element_size()
    outputs = []
    with torch.no_grad():
        if use_gap_shortcut and head.after_gap is not None:
            pooled = gap_pooled(feature, mask)  # [B*H*W, C]
            step = cells_per_chunk(c * itemsize, memory_budget_mb, chunk_size)
            for start in range(0, cells, step):
                outputs.append(head.pooled(pooled[start:start + step]))
        else:
            step = min(cells, cells_per_chunk(c * h * w * itemsize, memory_budget_mb, chunk_size))
            # One buffer for every chunk: fresh pages cost more than writing the mosaic itself.
            buffer = torch.empty((step, c, h, w), dtype=feature.dtype, device=feature.device)
            for start in range(0, cells, step):
                count = min(step, cells - start)
                mosaic = build_mosaic(feature, start, count, mask, out=buffer[:count])
                outputs.append(head(mosaic))
    logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    if logits.ndim != 2 or logits.shape[0] != cells:
        raise ValueError(f"the head returned shape {list(logits.shape)} for {cells} masked maps; "
                         "it must return logits [N, K]")
    return logits


def recipro_cam(feature: torch.Tensor, head: Callable | Head, mask: str = "1x1", score: str = "softmax", *,
                normalize: bool = False, memory_budget_mb: Optional[float] = None,
                chunk_size: Optional[int] = None, use_gap_shortcut: bool = True) -> SaliencyResult:
    from ..kernels import score_maps

    feature = check_feature(feature)
    head = analyse_head(head, feature.detach())
    b, _, h, w = feature.shape
    logits = masked_logits(feature.detach(), head, mask, memory_budget_mb=memory_budget_mb,
                           chunk_size=chunk_size, use_gap_shortcut=use_gap_shortcut)
    if logits.dtype != torch.float32:
        logits = logits.float()
    raw, u8 = score_maps(logits.contiguous(), b, h, w, score, normalize)
    return SaliencyResult(raw, u8)
