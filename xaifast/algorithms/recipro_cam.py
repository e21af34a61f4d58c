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

from typing import Any, Callable, Dict, Optional, Union

import torch

from ..adapters.head_graph import Head, analyse_head
from .base import SaliencyResult, check_feature

# A head's activations are a few times its input; the budget covers both.
_ACTIVATION_FACTOR = 4
# On a CUDA device the chunk also fits in this fraction of the memory that is free now (free on
# the device plus what PyTorch's caching allocator holds unused), whatever the budget says.
GPU_FREE_FRACTION = 0.5
# Default budget on a CUDA device when none is given (then capped by the free memory as above).
DEFAULT_GPU_MEMORY_BUDGET_MB = 4096

CompileSpec = Union[None, bool, str, Dict[str, Any]]


def free_device_bytes(device: torch.device) -> Optional[int]:
    """Bytes the head may still allocate on a CUDA device (None on other devices)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


# On CPU, smaller chunks keep the head's activations in cache: measured on the 2-core CI machine
# (benchmarks/RESULTS.md), 64 MB instead of 1024 MB made the mosaic path 1.4x faster on a
# ResNet-50 stage-3 head and 2.1x on ConvHeadCNN. The GAP shortcut is unaffected (784 rows of
# C=2048 still fit one chunk).
CPU_CHUNK_BUDGET_MB = 64


def memory_budget_bytes(memory_budget_mb: Optional[float], device: Optional[torch.device] = None) -> float:
    """The memory one chunk may use: the user's budget (default 64 MB on CPU, 4096 MB on CUDA),
    and on CUDA at most GPU_FREE_FRACTION of the free device memory (torch.cuda.mem_get_info)."""
    if memory_budget_mb is not None and float(memory_budget_mb) <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    free = free_device_bytes(device) if device is not None else None
    if free is None:
        mb = CPU_CHUNK_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)
        return mb * 2**20
    mb = DEFAULT_GPU_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)
    return min(mb * 2**20, GPU_FREE_FRACTION * free)


def cells_per_chunk(bytes_per_cell: int, memory_budget_mb: Optional[float], chunk_size: Optional[int],
                    device: Optional[torch.device] = None) -> int:
    """How many masked maps (cells) the head sees at once: `chunk_size` when given, else as many
    as fit the memory budget (see memory_budget_bytes; `device` adds the free-memory cap)."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    budget = memory_budget_bytes(memory_budget_mb, device)
    return max(1, int(budget // (bytes_per_cell * _ACTIVATION_FACTOR)))


def balanced_step(cells: int, step: int) -> int:
    """Chunks of (nearly) equal size: as few chunks as `step` allows, the cells spread evenly over
    them (a compiled head pads the last chunk to the full size; this keeps the padding small)."""
    step = max(1, min(step, cells))
    chunks = -(-cells // step)
    return -(-cells // chunks)


def _compile_kwargs(compile_head: CompileSpec) -> Optional[Dict[str, Any]]:
    if compile_head is None or compile_head is False:
        return None
    if compile_head is True:
        return {"dynamic": False}
    if isinstance(compile_head, str):
        return {"mode": compile_head, "dynamic": False}
    if isinstance(compile_head, dict):
        return {"dynamic": False, **compile_head}
    raise TypeError("compile_head must be None, a bool, a torch.compile mode name "
                    f"or a dict of torch.compile arguments, got {type(compile_head).__name__}")


def _head_runner(head: Head, which: str, compile_head: CompileSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """head(x) ("full") or head.pooled(x) ("pooled"), eager or torch.compile'd. Compiled
    functions are cached on the Head (which the model split cache keeps), so a model is
    compiled once per chunk shape, not once per batch."""
    fn = head.__call__ if which == "full" else head.pooled
    kwargs = _compile_kwargs(compile_head)
    if kwargs is None:
        return fn
    cache = head.__dict__.setdefault("_xaifast_compiled", {})
    key = (which, repr(sorted(kwargs.items())))
    if key not in cache:
        cache[key] = torch.compile(fn, **kwargs)
    compiled = cache[key]
    if "reduce-overhead" not in str(kwargs.get("mode", "")):
        return compiled

    def run(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graph outputs: copied out before the next call
        return compiled(x)

    return run


def _channels_last(feature: torch.Tensor) -> bool:
    return (feature.dim() == 4 and not feature.is_contiguous()
            and feature.is_contiguous(memory_format=torch.channels_last))


def masked_logits(feature: torch.Tensor, head: Head, mask: str = "1x1", *,
                  memory_budget_mb: Optional[float] = None, chunk_size: Optional[int] = None,
                  use_gap_shortcut: bool = True, backend: str = "auto",
                  compile_head: CompileSpec = None) -> torch.Tensor:
    """Logits of every masked feature map: [B*H*W, K], row b*H*W + i*W + j.

    The whole batch is one job (no per-image loop): the cells of all images are cut into chunks
    of `step` cells (chunk_size, or sized from memory_budget_mb and, on CUDA, the free device
    memory) and the head runs once per chunk.
    - GAP shortcut (the head starts with global average pooling): one kernel writes the pooled
      vectors [B*H*W, C] of all cells, the rest of the head runs on chunks of them.
    - General: a kernel writes each chunk's mosaic into one reused buffer, in the feature's memory
      layout (channels-last stays channels-last), and the whole head runs on it.
    backend: kernel family ("auto": Triton on CUDA, Numba on CPU; or "numba" | "torch" | "triton").
    compile_head: None (eager), True / a torch.compile mode ("default", "reduce-overhead" = CUDA
    graphs, "max-autotune", ...) / a dict of torch.compile arguments. Compiled heads always see
    chunks of exactly `step` rows (the last one padded) so one static-shape graph serves all.
    """
    from ..kernels import build_mosaic, gap_pooled

    b, c, h, w = feature.shape
    cells = b * h * w
    itemsize = feature.element_size()
    compiled = _compile_kwargs(compile_head) is not None
    with torch.no_grad():
        if use_gap_shortcut and head.after_gap is not None:
            pooled = gap_pooled(feature, mask, backend=backend)  # [B*H*W, C]
            step = min(cells, cells_per_chunk(c * itemsize, memory_budget_mb, chunk_size, feature.device))
            if chunk_size is None:
                step = balanced_step(cells, step)
            run = _head_runner(head, "pooled", compile_head)
            pad = None

            def chunk(start: int, count: int) -> torch.Tensor:
                nonlocal pad
                rows = pooled[start:start + count]
                if compiled and count < step:  # static shape for the compiled head
                    if pad is None:
                        pad = torch.zeros((step, c), dtype=pooled.dtype, device=pooled.device)
                    pad[:count].copy_(rows)
                    return run(pad)[:count]
                return run(rows)
        else:
            step = min(cells, cells_per_chunk(c * h * w * itemsize, memory_budget_mb, chunk_size,
                                              feature.device))
            if chunk_size is None:
                step = balanced_step(cells, step)
            layout = torch.channels_last if _channels_last(feature) else torch.contiguous_format
            # One buffer for every chunk: fresh pages cost more than writing the mosaic itself.
            buffer = torch.empty((step, c, h, w), dtype=feature.dtype, device=feature.device,
                                 memory_format=layout)
            run = _head_runner(head, "full", compile_head)

            def chunk(start: int, count: int) -> torch.Tensor:
                mosaic = build_mosaic(feature, start, count, mask, out=buffer[:count], backend=backend)
                if compiled and count < step:  # static shape: rows past `count` are stale, ignored
                    return run(buffer)[:count]
                return run(mosaic)

        logits = None
        for start in range(0, cells, step):
            count = min(step, cells - start)
            out = chunk(start, count)
            if out.ndim != 2 or out.shape[0] != count:
                raise ValueError(f"the head returned shape {list(out.shape)} for {count} masked maps; "
                                 "it must return logits [N, K]")
            if logits is None:
                if count == cells and not compiled:
                    return out
                logits = torch.empty((cells, out.shape[1]), dtype=out.dtype, device=out.device)
            logits[start:start + count].copy_(out)
    if logits is None:
        raise ValueError("no cells to explain: the feature map is empty")
    return logits


def recipro_cam(feature: torch.Tensor, head: Callable | Head, mask: str = "1x1", score: str = "none", *,
                normalize: bool = False, memory_budget_mb: Optional[float] = None,
                chunk_size: Optional[int] = None, use_gap_shortcut: bool = True, backend: str = "auto",
                compile_head: CompileSpec = None) -> SaliencyResult:
    from ..kernels import score_maps

    feature = check_feature(feature)
    head = analyse_head(head, feature.detach())
    b, _, h, w = feature.shape
    logits = masked_logits(feature.detach(), head, mask, memory_budget_mb=memory_budget_mb,
                           chunk_size=chunk_size, use_gap_shortcut=use_gap_shortcut, backend=backend,
                           compile_head=compile_head)
    if logits.dtype != torch.float32 and logits.device.type != "cuda":
        logits = logits.float()  # CPU: the Numba epilogue reads float32 (Triton reads any float dtype)
    raw, u8 = score_maps(logits.contiguous(), b, h, w, score, normalize, backend=backend)
    return SaliencyResult(raw, u8)
