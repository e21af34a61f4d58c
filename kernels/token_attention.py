"""Multiplicity-weighted attention: softmax attention over distinct tokens with counts.

When the key/value sequence of an attention holds ``c_u`` identical copies of token ``u``,
attention over the full sequence equals attention over the distinct tokens with ``log(c_u)``
added to their logits::

    out[l] = sum_u c_u exp(s_lu) v_u / sum_u c_u exp(s_lu),   s_lu = scale * q_l . k_u

``log_count`` is ``[n, U]`` (one row per sequence, shared by heads and queries); ``-inf``
leaves a slot out (count 0: padding). Every row must have at least one finite entry.

Shapes: q ``[n, h, L, d]``, k and v ``[n, h, U, d]`` -> ``[n, h, L, d]``. Backends: Numba (CPU
float32, parallel over sequence x head), PyTorch (any device / dtype; max-subtracted softmax in
the input dtype), Triton (CUDA; CPU under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations


import numpy as np
import torch

from ._compat import JIT_OPTS, njit, pick_backend, prange

__all__ = ["weighted_attention", "weighted_attention_numba", "weighted_attention_torch"]


@njit(**JIT_OPTS)
def weighted_attention_numba(q, k, v, log_count, scale, out):
    """Numba kernel. q: f32 C-contig [n, h, L, d]; k, v: [n, h, U, d]; log_count: f32 [n, U];
    out: f32 C-contig [n, h, L, d]. Parallel over the n*h (sequence, head) pairs."""
    n, h, L, d = q.shape
    U = k.shape[2]
    for t in prange(n * h):
        s_ = t // h
        hh = t - s_ * h
        kk = k[s_, hh]
        vv = v[s_, hh]
        lc = log_count[s_]
        logits = np.empty(U, dtype=np.float32)
        for l in range(L):
            ql = q[s_, hh, l]
            mx = -np.inf
            for u in range(U):
                acc = np.float32(0.0)
                for c in range(d):
                    acc += ql[c] * kk[u, c]
                x = acc * scale + lc[u]
                logits[u] = x
                if x > mx:
                    mx = x
            total = np.float32(0.0)
            for u in range(U):
                e = np.float32(np.exp(logits[u] - mx))
                logits[u] = e
                total += e
            o = out[s_, hh, l]
            for c in range(d):
                o[c] = np.float32(0.0)
            for u in range(U):
                w = logits[u] / total
                if w != 0.0:
                    vu = vv[u]
                    for c in range(d):
                        o[c] += w * vu[c]


def weighted_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_count: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """PyTorch twin: explicit matmul, additive log-count, max-subtracted softmax, matmul."""
    logits = torch.matmul(q, k.transpose(-1, -2))
    logits = logits * scale + log_count.to(logits.dtype)[:, None, None, :]
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def weighted_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_count: torch.Tensor,
                       scale: float | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Attention of queries q [n, h, L, d] over distinct keys/values [n, h, U, d] standing for
    exp(log_count) [n, U] copies each. scale defaults to d**-0.5. Returns [n, h, L, d].

    backend: "auto" (CUDA -> Triton, otherwise the PyTorch twin, which beats the Numba loop on
    CPU through batched GEMMs) | "torch" | "numba" | "triton".
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [n, h, len, d], got {getattr(t, 'shape', None)}")
    n, h, L, d = (int(s) for s in q.shape)
    if tuple(k.shape[:2]) != (n, h) or tuple(v.shape) != tuple(k.shape) or int(k.shape[3]) != d:
        raise ValueError(f"k and v must be [n={n}, h={h}, U, d={d}], got {tuple(k.shape)} and {tuple(v.shape)}")
    U = int(k.shape[2])
    if tuple(log_count.shape) != (n, U):
        raise ValueError(f"log_count must be [n={n}, U={U}], got {tuple(log_count.shape)}")
    scale = float(d ** -0.5 if scale is None else scale)
    if backend == "auto":
        path = pick_backend("auto", q, k, v)
        path = "torch" if path == "numba" else path
    else:
        path = pick_backend(backend, q, k, v)
    if path == "torch":
        return weighted_attention_torch(q, k, v, log_count, scale)
    if path == "triton":
        from .token_triton import weighted_attention_triton

        return weighted_attention_triton(q.detach(), k.detach(), v.detach(),
                                         log_count.detach().to(torch.float32), scale)
    out = torch.empty((n, h, L, d), dtype=torch.float32)
    if n * h * L:
        weighted_attention_numba(q.detach().contiguous().numpy(), k.detach().contiguous().numpy(),
                                 v.detach().contiguous().numpy(),
                                 log_count.detach().to(torch.float32).contiguous().numpy(),
                                 np.float32(scale), out.numpy())
    return out
