"""Vectorisable float32 helpers for the Numba kernels.

Numba (without Intel SVML) lowers ``np.exp`` to a scalar libm ``expf`` call
per element, which blocks SIMD.  :func:`vexp` is a Cephes-style ``expf``
(range reduction + degree-5 polynomial, scale by ``2**n`` built from integer
bits) written with plain float32/int32 arithmetic and selects only, so LLVM
vectorises it; max error < 1 ulp over the normal range.  Results below
``exp(-87.3365)`` flush to 0 (no denormals) and inputs above 88.0 give
``inf``.  :func:`lane_max` / :func:`lane_sum` are deterministic 8-way interleaved
reductions (fixed association order, no fastmath): they break the serial
dependency chain that a plain float32 loop has without reassociation.
"""
from __future__ import annotations

import numpy as np

from ._compat import njit

_LOG2E = np.float32(1.44269504088896341)
_C1 = np.float32(0.693359375)
_C2 = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_HI = np.float32(88.0)
_LO = np.float32(-87.33654)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


@njit(cache=True, fastmath=False, nogil=True)
def vexp(x, y, ibits, fbits, sign, shift):
    """``y[t] = exp(x[t] * sign - shift)`` (float32) for ``t < x.shape[0]``.

    ``sign`` is +1 or -1 (exact), ``shift`` a float32 (e.g. the row max for
    softmax).  ``y`` must not overlap ``x`` (it would still be correct, but
    LLVM's runtime alias check then takes the scalar path).  ``ibits``: int32
    scratch with at least ``x.shape[0]`` entries, ``fbits =
    ibits.view(np.float32)`` (same memory).
    """
    m = x.shape[0]
    for t in range(m):
        v = x[t] * sign - shift
        vc = min(max(v, _LO), _HI)
        fx = np.floor(vc * _LOG2E + _HALF)
        r = vc - fx * _C1 - fx * _C2
        z = r * r
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        p = p * z + r + _ONE
        if v < _LO:
            p = _ZERO
        elif v > _HI:
            p = _INF
        elif v != v:
            p = v
        y[t] = p
        ibits[t] = (np.int32(fx) + np.int32(127)) << np.int32(23)
    for t in range(m):
        y[t] = y[t] * fbits[t]


@njit(cache=True, fastmath=False, nogil=True)
def lane_max(x):
    """max(x) of a non-empty 1-D float32 array (8 interleaved running maxima).
    NaNs are skipped unless x[0] is NaN."""
    m = x.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = x[0]
    nfull = (m // 8) * 8
    for b in range(0, nfull, 8):
        v = x[b]
        a0 = v if v > a0 else a0
        v = x[b + 1]
        a1 = v if v > a1 else a1
        v = x[b + 2]
        a2 = v if v > a2 else a2
        v = x[b + 3]
        a3 = v if v > a3 else a3
        v = x[b + 4]
        a4 = v if v > a4 else a4
        v = x[b + 5]
        a5 = v if v > a5 else a5
        v = x[b + 6]
        a6 = v if v > a6 else a6
        v = x[b + 7]
        a7 = v if v > a7 else a7
    a0 = a1 if a1 > a0 else a0
    a2 = a3 if a3 > a2 else a2
    a4 = a5 if a5 > a4 else a4
    a6 = a7 if a7 > a6 else a6
    a0 = a2 if a2 > a0 else a0
    a4 = a6 if a6 > a4 else a4
    mx = a4 if a4 > a0 else a0
    for t in range(nfull, m):
        v = x[t]
        mx = v if v > mx else mx
    return mx


@njit(cache=True, fastmath=False, nogil=True)
def lane_sum(x):
    """sum(x) of a 1-D float32 array in float32: 8 interleaved partial sums
    combined pairwise (fixed order, so deterministic), then the tail."""
    m = x.shape[0]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _ZERO
    nfull = (m // 8) * 8
    for b in range(0, nfull, 8):
        a0 += x[b]
        a1 += x[b + 1]
        a2 += x[b + 2]
        a3 += x[b + 3]
        a4 += x[b + 4]
        a5 += x[b + 5]
        a6 += x[b + 6]
        a7 += x[b + 7]
    s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    for t in range(nfull, m):
        s += x[t]
    return s
