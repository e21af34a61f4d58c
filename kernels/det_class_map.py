"""DetClassProbabilityMap: classification-head outputs of a single-stage detector -> class maps.

``levels[l]`` is ``[B, A_l*K, H_l, W_l]`` (channel ``a*K + k`` for anchor ``a``, class ``k``).
The result ``[B, K, h, w]`` float32 is, per image, class and output pixel::

    M_l[k, y, x] = max_a levels[l][b, a*K + k, y, x]                  # max over anchors
    R_l[k, i, j] = bilinear(M_l[k], i, j)                              # resize to (h, w)
    S[k, i, j]   = (1 / L) * sum_l R_l[k, i, j]                        # mean over levels
    out[b, :, i, j] = softmax(S[:, i, j])   (max-subtracted; or S itself with softmax=False)

``bilinear`` has ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
semantics (half-pixel centers, no antialias): per axis ``src = (dst + 0.5) * in / out - 0.5``
clamped below at 0, ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``lambda = src - i0``.
``(h, w)`` defaults to the size of the middle level ``levels[L // 2]`` (as OTX).

Backends: :func:`det_class_map_numba` (CPU float32, one fused pass), the Triton kernel
(:mod:`.triton_det_class_map`, CUDA, one launch) and :func:`det_class_map_torch` (the plain
batched PyTorch twin, any device / dtype); :func:`det_class_map` dispatches by device.
"""
from __future__ import annotations

import functools
import operator
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ._compat import HAVE_NUMBA, JIT_OPTS, njit, pick_backend, prange
from ._vmath import vexp

__all__ = ["det_class_map", "det_class_map_numba", "det_class_map_torch", "det_class_map_tables",
           "check_det_levels"]

#: A level whose needed source columns (rows) are at least 1/DENSE_FRACTION of its width (height)
#: is read in whole rows (all rows of a band): contiguous, vectorised loads in forward streams
#: beat gathering or skipping (measured: reading every row of a 4x-downsampled level is faster
#: than reading the half it needs).
DENSE_FRACTION = 4
#: Output rows per task of :func:`det_class_map_numba` (a band's source rows are maxed over
#: anchors once, read as forward runs of each channel plane), unless the image has fewer.
MAX_BAND = 16
MIN_BAND = 8
#: Below this much work (input elements + B*K*h*w*L) the Numba kernel runs on the calling thread
#: alone: a fork/join of the thread pool costs more than it saves there, and much more (ms) when
#: other processes hold the cores.
SERIAL_WORK = 250_000

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


# ----------------------------------------------------------------------------- validation
def check_det_levels(levels, num_anchors, size=None) -> Tuple[list, Tuple[int, ...], int, int, int]:
    """Validate the inputs of :func:`det_class_map`.

    Returns ``(levels as a list, anchors per level, K, h, w)``; raises ValueError (TypeError
    for a wrong kind of object) with a message that names the problem and the fix.
    """
    if isinstance(levels, torch.Tensor):
        raise TypeError("levels must be a list of per-level tensors [B, A_l*K, H_l, W_l], got a single tensor; "
                        "wrap it in a list ([tensor]) for a one-level head")
    try:
        levels = list(levels)
    except TypeError:
        raise TypeError(f"levels must be a list of tensors [B, A_l*K, H_l, W_l], got {type(levels).__name__}") from None
    if not levels:
        raise ValueError("levels is empty: pass the classification-head output of at least one pyramid level "
                         "([B, A_l*K, H_l, W_l] per level)")
    L = len(levels)
    for l, x in enumerate(levels):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"levels[{l}] must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"levels[{l}] must be a 4-D tensor [B, A_l*K, H_l, W_l], got shape {tuple(x.shape)}; "
                             "add the batch dimension (x.unsqueeze(0)) for a single image")
        if not x.is_floating_point():
            raise TypeError(f"levels[{l}] must have a floating dtype, got {x.dtype}; convert it with .float()")
    devices = {x.device for x in levels}
    if len(devices) != 1:
        raise ValueError(f"all levels must be on one device, got {[str(x.device) for x in levels]}; "
                         "move them with .to(device)")
    batches = [int(x.shape[0]) for x in levels]
    if len(set(batches)) != 1:
        raise ValueError(f"all levels must have the same batch size, got {batches}; pass the head outputs of "
                         "one batch")
    for l, x in enumerate(levels):
        if int(x.shape[2]) < 1 or int(x.shape[3]) < 1:
            raise ValueError(f"levels[{l}] has an empty spatial size {tuple(x.shape[2:])}; every level needs "
                             "H_l, W_l >= 1")
    if isinstance(num_anchors, (list, tuple)):
        anchors = list(num_anchors)
        if len(anchors) != L:
            raise ValueError(f"num_anchors has {len(anchors)} entries but there are {L} levels; give one anchor "
                             "count per level (or a single int for all)")
    elif isinstance(num_anchors, np.ndarray) and num_anchors.ndim == 1:
        anchors = num_anchors.tolist()
        if len(anchors) != L:
            raise ValueError(f"num_anchors has {len(anchors)} entries but there are {L} levels; give one anchor "
                             "count per level (or a single int for all)")
    else:
        anchors = [num_anchors] * L
    for l, a in enumerate(anchors):
        if isinstance(a, bool):
            raise TypeError(f"num_anchors[{l}] must be an integer, got bool")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"num_anchors must be an int or a list of ints, got {type(a).__name__} "
                            f"for level {l}") from None
        if a < 1:
            raise ValueError(f"num_anchors for level {l} is {a}; every level needs at least one anchor "
                             "(use 1 for anchor-free heads)")
        anchors[l] = a
    ks = []
    for l, (x, a) in enumerate(zip(levels, anchors)):
        C = int(x.shape[1])
        if C == 0 or C % a:
            raise ValueError(f"levels[{l}] has {C} channels, which is not a positive multiple of its anchor count "
                             f"{a}; channels must be A_l*K (anchor a, class k at channel a*K + k): check num_anchors")
        ks.append(C // a)
    if len(set(ks)) != 1:
        raise ValueError(f"the levels give different class counts K = channels / anchors: {ks} "
                         f"(channels {[int(x.shape[1]) for x in levels]}, anchors {anchors}); check num_anchors "
                         "and that every level comes from the same classification head")
    K = ks[0]
    if size is None:
        mid = levels[L // 2]
        h, w = int(mid.shape[2]), int(mid.shape[3])
    else:
        try:
            h, w = size
            h, w = operator.index(h), operator.index(w)
        except (TypeError, ValueError):
            raise ValueError(f"size must be None or a pair of positive ints (h, w), got {size!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"size must be positive, got {(h, w)}; pass (h, w) >= (1, 1) or None for the "
                             "middle level's size")
    return levels, tuple(anchors), K, h, w


# ------------------------------------------------------------------------------ torch twin
def _torch_impl(levels, anchors, K, h, w, softmax):
    acc = None
    for x, A in zip(levels, anchors):
        B, _, H, W = (int(s) for s in x.shape)
        m = x.reshape(B, A, K, H, W).amax(dim=1).to(torch.float32)
        r = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        acc = r if acc is None else acc + r
    acc = acc / len(levels)
    return torch.softmax(acc, dim=1) if softmax else acc


def det_class_map_torch(levels: Sequence[torch.Tensor], num_anchors: Union[int, Sequence[int]],
                        size: Optional[Tuple[int, int]] = None, softmax: bool = True) -> torch.Tensor:
    """Plain batched PyTorch twin: any device and floating dtype, computed in float32.
    Returns float32 ``[B, K, h, w]`` on the input device (differentiable)."""
    levels, anchors, K, h, w = check_det_levels(levels, num_anchors, size)
    return _torch_impl(levels, anchors, K, h, w, bool(softmax))


# ---------------------------------------------------------------------------- Numba kernel
def _axis(n_in: int, n_out: int):
    """Per output index: (i0, i1, lambda1) along one axis, float64 (lambda1 = 0 where i1 == i0)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = src - i0
    i1 = np.where((i0 < n_in - 1) & (lam > 0.0), i0 + 1, i0)
    lam = np.where(i1 == i0, 0.0, lam)
    return i0, i1, lam


@functools.lru_cache(maxsize=64)
def det_class_map_tables(shapes: Tuple[Tuple[int, int], ...], h: int, w: int):
    """Interpolation tables of :func:`det_class_map_numba` for levels of spatial sizes ``shapes``
    ((H_l, W_l) per level) resized to ``(h, w)`` (cached; treat as read-only).

    Returns ``(ys, yw, need, cols, ncols, dense, xp, xw)``:
    ``ys`` int64 [L, h, 2] source rows (y0, y1) of every output row, ``yw`` float64 [L, h] weight
    of y1; ``need`` uint8 [L, max H_l]: 1 for the source rows some output row reads (all rows
    when that is at least 1/DENSE_FRACTION of them);
    ``cols`` int64 [L, Cmax] the source columns a level reads (sorted, ``ncols[l]`` of them: the
    ones its taps need, or all when that is at least 1/DENSE_FRACTION of them), ``dense[l]`` 1
    when they are all columns 0..W_l-1; ``xp`` int64 [L, 2, w] positions of (x0, x1) in
    ``cols[l]``, ``xw`` float64 [L, w] weight of x1.
    """
    L = len(shapes)
    ys = np.zeros((L, h, 2), np.int64)
    yw = np.zeros((L, h), np.float64)
    need = np.zeros((L, max(H for H, _ in shapes)), np.uint8)
    xp = np.zeros((L, 2, w), np.int64)
    xw = np.zeros((L, w), np.float64)
    per_level_cols = []
    for l, (H, W) in enumerate(shapes):
        y0, y1, ly = _axis(H, h)
        ys[l, :, 0], ys[l, :, 1], yw[l] = y0, y1, ly
        need[l, y0] = 1
        need[l, y1] = 1
        if int(need[l].sum()) * DENSE_FRACTION >= H:  # read every row: skipping rows breaks the
            need[l, :H] = 1                            # hardware prefetcher's forward streams
        x0, x1, lx = _axis(W, w)
        cols = np.unique(np.concatenate([x0, x1]))
        if len(cols) * DENSE_FRACTION >= W:  # cheaper to read whole rows (contiguous, vectorised)
            cols = np.arange(W, dtype=np.int64)
        per_level_cols.append(cols)
        xp[l, 0] = np.searchsorted(cols, x0)
        xp[l, 1] = np.searchsorted(cols, x1)
        xw[l] = lx
    cmax = max(len(c) for c in per_level_cols)
    cols = np.zeros((L, cmax), np.int64)
    ncols = np.zeros(L, np.int64)
    dense = np.zeros(L, np.uint8)
    for l, c in enumerate(per_level_cols):
        cols[l, :len(c)] = c
        ncols[l] = len(c)
        dense[l] = 1 if len(c) == shapes[l][1] else 0  # sorted unique subset of 0..W-1 of size W
    return ys, yw, need, cols, ncols, dense, xp, xw


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _anchor_max_rows(x, b, k, K, A, ylo, yhi, need, cols, nc, dense, M):
    """M[y - ylo, c] = max_a x[b, a*K + k, y, cols[c]] for the rows ylo <= y <= yhi with need[y]
    and c < nc (NaN propagates, as torch.amax).  Row by row, all anchors of a row in turn: the A
    channel planes are read as A forward streams, as torch.amax reads them (anchor by anchor
    over the band measured 2x slower).  Plain element indexing, no array views (a view costs a
    reference-count update)."""
    for y in range(ylo, yhi + 1):
        if need[y]:
            r = y - ylo
            if dense:
                for c in range(nc):
                    M[r, c] = x[b, k, y, c]
            else:
                for c in range(nc):
                    M[r, c] = x[b, k, y, cols[c]]
            for a in range(1, A):
                ch = a * K + k
                if dense:
                    for c in range(nc):
                        v = x[b, ch, y, c]
                        o = M[r, c]
                        M[r, c] = v if (v > o) | (v != v) else o  # no short-circuit: a select LLVM vectorises
                else:
                    for c in range(nc):
                        v = x[b, ch, y, cols[c]]
                        o = M[r, c]
                        M[r, c] = v if (v > o) | (v != v) else o


@njit(**JIT_OPTS)
def det_class_map_numba(levels, anchors, ys, yw, need, cols, ncols, dense, xp, xw, band, do_softmax, out):
    """Numba kernel, one fused pass.

    levels: tuple of L float32 C-contig arrays [B, A_l*K, H_l, W_l]; anchors: int64 [L];
    ys, yw, need, cols, ncols, dense, xp, xw: :func:`det_class_map_tables`; band: output rows per
    task (any value >= 1 gives the same bits); out: float32 C-contig [B, K, h, w].

    Parallel over tasks (image b, band of ``band`` output rows).  Per task, level and class: the
    anchor-max of the source rows the band reads (each once, at the source columns the level
    reads: a strongly downsampled level is gathered at the needed columns only), then per output
    row the vertical blend of its two rows and the two horizontal taps of every output column,
    accumulated over levels.  Weights, blends and the level sum are float64; the mean (sum times
    1/L) is rounded once to float32.  Then the per-pixel softmax over the K classes in float32
    (max-subtracted, the vectorised exp of :mod:`._vmath`, IEEE division).  Numba compiles one
    specialisation per number of levels (the length of the ``levels`` tuple; cached on disk).
    """
    B, K, h, w = out.shape
    L = len(levels)
    cmax = cols.shape[1]
    hmax = need.shape[1]
    inv = 1.0 / np.float64(L)
    nband = (h + band - 1) // band
    for task in prange(B * nband):
        b = task // nband
        i0 = (task - b * nband) * band
        i1 = min(i0 + band, h)
        acc = np.zeros((i1 - i0, K, w), dtype=np.float64)
        M = np.empty((hmax, cmax), dtype=np.float32)
        v = np.empty(cmax, dtype=np.float64)
        for l in range(L):
            x = levels[l]
            A = anchors[l]
            nc = ncols[l]
            dn = dense[l] != 0
            cl = cols[l]
            nd = need[l]
            ylo = ys[l, i0, 0]
            yhi = ys[l, i1 - 1, 1]
            for k in range(K):
                _anchor_max_rows(x, b, k, K, A, ylo, yhi, nd, cl, nc, dn, M)
                for i in range(i0, i1):
                    r0 = ys[l, i, 0] - ylo
                    r1 = ys[l, i, 1] - ylo
                    if r1 != r0:
                        wy1 = yw[l, i]
                        wy0 = 1.0 - wy1
                        for c in range(nc):
                            v[c] = wy0 * M[r0, c] + wy1 * M[r1, c]
                    else:
                        for c in range(nc):
                            v[c] = M[r0, c]
                    ii = i - i0
                    for j in range(w):
                        a1 = xw[l, j]
                        acc[ii, k, j] += (1.0 - a1) * v[xp[l, 0, j]] + a1 * v[xp[l, 1, j]]
        if not do_softmax:
            for i in range(i0, i1):
                for k in range(K):
                    for j in range(w):
                        out[b, k, i, j] = np.float32(acc[i - i0, k, j] * inv)
        else:
            s2 = np.empty((K, w), dtype=np.float32)
            e2 = np.empty((K, w), dtype=np.float32)
            s1 = s2.reshape(K * w)
            e1 = e2.reshape(K * w)
            ibits = np.empty(K * w, dtype=np.int32)
            fbits = ibits.view(np.float32)
            mx = np.empty(w, dtype=np.float32)
            tot = np.empty(w, dtype=np.float32)
            for i in range(i0, i1):
                ii = i - i0
                for k in range(K):
                    for j in range(w):
                        s2[k, j] = np.float32(acc[ii, k, j] * inv)
                for j in range(w):
                    mx[j] = s2[0, j]
                for k in range(1, K):
                    for j in range(w):
                        t = s2[k, j]
                        mx[j] = t if t > mx[j] else mx[j]
                for k in range(K):
                    for j in range(w):
                        s2[k, j] = s2[k, j] - mx[j]
                vexp(s1, e1, ibits, fbits, _ONE, _ZERO)  # the whole [K, w] row block in one call
                for j in range(w):
                    tot[j] = e2[0, j]
                for k in range(1, K):
                    for j in range(w):
                        tot[j] += e2[k, j]
                for k in range(K):
                    for j in range(w):
                        out[b, k, i, j] = e2[k, j] / tot[j]


def _band(B: int, h: int) -> int:
    """Output rows per Numba task: about 2 tasks per thread, MIN_BAND..MAX_BAND rows (longer
    bands read the channel planes in longer forward runs)."""
    try:
        import numba

        threads = int(numba.get_num_threads())
    except Exception:  # no numba: the pure-Python fallback runs serially anyway
        threads = 1
    band = -(-B * h // (2 * threads))
    return max(1, min(MIN_BAND, h), min(MAX_BAND, h, band))


def _numba_impl(levels, anchors, K, h, w, softmax):
    B = int(levels[0].shape[0])
    out = torch.empty((B, K, h, w), dtype=torch.float32)
    if B == 0:
        return out
    arrays = tuple(x.detach().contiguous().numpy() for x in levels)
    shapes = tuple((int(x.shape[2]), int(x.shape[3])) for x in levels)
    tables = det_class_map_tables(shapes, h, w)
    args = (arrays, np.asarray(anchors, dtype=np.int64), *tables)
    work = sum(int(x.numel()) for x in levels) + B * K * h * w * len(levels)
    if work >= SERIAL_WORK or not HAVE_NUMBA:
        det_class_map_numba(*args, _band(B, h), bool(softmax), out.numpy())
        return out
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # this calling thread only
    try:
        det_class_map_numba(*args, max(1, min(MAX_BAND, h)), bool(softmax), out.numpy())
    finally:
        numba.set_num_threads(threads)
    return out


# ------------------------------------------------------------------------------ dispatcher
def det_class_map(levels: Sequence[torch.Tensor], num_anchors: Union[int, Sequence[int]],
                  size: Optional[Tuple[int, int]] = None, softmax: bool = True,
                  backend: str = "auto") -> torch.Tensor:
    """Per-level classification scores -> class probability maps float32 ``[B, K, h, w]``.

    ``levels``: list of L tensors ``[B, A_l*K, H_l, W_l]`` (channel ``a*K + k``);
    ``num_anchors``: int (every level) or one int per level; ``size``: ``(h, w)``, default the
    middle level's (``levels[L // 2]``); ``softmax``: softmax over the classes per pixel.
    ``backend``: "auto" | "numba" | "torch" | "triton".  "auto": CUDA float32/16/bf16 -> one
    fused Triton launch; CPU float32 (not requiring grad) -> the fused Numba kernel; anything
    else (other dtypes, mixed dtypes, autograd) -> :func:`det_class_map_torch`.  "triton" runs
    on CPU tensors under TRITON_INTERPRET=1.  Non-contiguous inputs are accepted (the Numba
    path copies them to contiguous memory first, the Triton kernel reads any strides).  The
    result is on the input device.
    """
    levels, anchors, K, h, w = check_det_levels(levels, num_anchors, size)
    path = pick_backend(backend, *levels)
    if path == "torch":
        return _torch_impl(levels, anchors, K, h, w, bool(softmax))
    if path == "triton":
        from .triton_det_class_map import det_class_map_triton

        return det_class_map_triton([x.detach() for x in levels], anchors, (h, w), bool(softmax))
    return _numba_impl(levels, anchors, K, h, w, softmax)
