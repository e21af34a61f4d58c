"""Token kernels of ViT Recipro-CAM: layouts, token mosaic and multiplicity-weighted attention.

Numba, PyTorch and Triton (through Triton's CPU interpreter, TRITON_INTERPRET=1) backends
against float64 loop references: the dense mosaic is T_p built by hand, the compact mosaic
expanded by `slot_of` is the dense one, and weighted attention equals plain softmax attention
over the sequence with every key/value repeated `count` times.
"""
import importlib.util
import os

import numpy as np
import pytest
import torch

from reference import mask_at
from xaifast.kernels.token_attention import weighted_attention
from xaifast.kernels.token_mosaic import token_layout, token_mosaic


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

# (H, W, A, mask, cls_token)
LAYOUTS = [
    (3, 4, 1, "gaussian", True),
    (3, 4, 1, "gaussian", False),
    (2, 2, 2, "gaussian", True),   # no zero token: the window covers the grid
    (1, 1, 0, "1x1", True),        # one cell, no auxiliary token, no zero token
    (4, 3, 3, "1x1", False),
    (1, 5, 1, "gaussian", True),   # one-row grid: clipped windows
]


def dense_reference(src, H, W, A, mask, cls_token, start, count):
    """T_p of cells [start, start+count) in float64, by hand."""
    src = src.double()
    HW = H * W
    out = []
    for n in range(start, start + count):
        b, p = divmod(n, HW)
        i, j = divmod(p, W)
        m = mask_at(H, W, i, j, mask).reshape(-1)
        t = src[b].clone()
        t[:A] *= 1.0 if cls_token else 0.0
        t[A:] *= m[:, None]
        out.append(t)
    return torch.stack(out)


@pytest.mark.parametrize("case", LAYOUTS)
def test_compact_layout_is_the_distinct_tokens_of_t_p(case):
    H, W, A, mask, cls_token = case
    HW, N = H * W, A + H * W
    src = torch.randn(2, N, 5, dtype=torch.float64)
    dense = dense_reference(src, H, W, A, mask, cls_token, 0, 2 * HW)
    lay = token_layout("compact", H, W, A, mask, cls_token)
    compact = token_mosaic(src, lay, 0, 2 * HW)
    for n in range(2 * HW):
        p = n % HW
        slot_of = torch.from_numpy(np.array(lay.slot_of[p]))
        # every token of T_p is the slot it is mapped to ...
        assert torch.equal(compact[n][slot_of], dense[n])
        # ... and each slot stands for exactly `count` tokens (padding and empty zero slot: 0)
        counts = np.bincount(lay.slot_of[p], minlength=lay.slots)
        assert np.array_equal(counts, lay.count[p]), (p, counts, lay.count[p])
        assert np.allclose(np.exp(lay.log_count[p]), lay.count[p])
    assert lay.count.sum(1).tolist() == [N] * HW


@pytest.mark.parametrize("kind", ["dense", "compact"])
@pytest.mark.parametrize("case", LAYOUTS)
def test_token_mosaic_backends(case, kind):
    H, W, A, mask, cls_token = case
    HW, N = H * W, A + H * W
    src = torch.randn(3, N, 6)
    bias = torch.randn(6)
    lay = token_layout(kind, H, W, A, mask, cls_token)
    start, count = max(0, HW - 2), min(2 * HW, 3 * HW - max(0, HW - 2))  # crosses an image boundary
    ref = torch.from_numpy(np.array(lay.scale))[torch.arange(start, start + count) % HW].double()
    rows = (torch.arange(start, start + count) // HW)[:, None] * N + torch.from_numpy(np.array(lay.index))[
        torch.arange(start, start + count) % HW]
    ref = src.double().reshape(-1, 6)[rows] * ref[..., None]
    if kind == "dense":
        assert torch.equal(ref, dense_reference(src, H, W, A, mask, cls_token, start, count))
    for backend in ("numba", "torch"):
        got = token_mosaic(src, lay, start, count, backend=backend)
        torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)
        got_b = token_mosaic(src, lay, start, count, bias, backend=backend)
        torch.testing.assert_close(got_b.double(), ref + bias.double(), rtol=1e-6, atol=1e-6)
    nb = token_mosaic(src, lay, start, count, bias, backend="numba")
    th = token_mosaic(src, lay, start, count, bias, backend="torch")
    assert torch.equal(nb, th)  # same float32 products and sums


def attention_by_repetition(q, k, v, counts, scale):
    """Softmax attention over the sequence with key/value u repeated counts[n, u] times (float64)."""
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(q.shape, dtype=torch.float64)
    for n in range(q.shape[0]):
        reps = torch.tensor(counts[n], dtype=torch.long)
        kk = torch.repeat_interleave(k[n], reps, dim=1)
        vv = torch.repeat_interleave(v[n], reps, dim=1)
        out[n] = torch.softmax(q[n] @ kk.transpose(-1, -2) * scale, -1) @ vv
    return out


def _attention_case(rng, n=4, h=3, L=2, U=7, d=8):
    q = torch.from_numpy(rng.standard_normal((n, h, L, d)).astype(np.float32))
    k = torch.from_numpy(rng.standard_normal((n, h, U, d)).astype(np.float32))
    v = torch.from_numpy(rng.standard_normal((n, h, U, d)).astype(np.float32))
    counts = rng.integers(0, 5, (n, U))
    counts[:, 0] = np.maximum(counts[:, 0], 1)  # at least one real key per sequence
    with np.errstate(divide="ignore"):
        log_count = torch.from_numpy(np.log(counts).astype(np.float32))
    return q, k, v, counts, log_count


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_weighted_attention_equals_repeated_keys(rng, backend):
    for shape in [dict(), dict(n=1, h=1, L=1, U=1, d=1), dict(L=7, U=7, d=16), dict(n=9, U=12, d=5)]:
        q, k, v, counts, log_count = _attention_case(rng, **shape)
        scale = q.shape[-1] ** -0.5
        ref = attention_by_repetition(q, k, v, counts, scale)
        got = weighted_attention(q, k, v, log_count, backend=backend)
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    # float64 through the torch twin: exact to float64 rounding
    q, k, v, counts, log_count = _attention_case(rng)
    with np.errstate(divide="ignore"):
        log64 = torch.from_numpy(np.log(counts.astype(np.float64)))
    got = weighted_attention(q.double(), k.double(), v.double(), log64, 0.7)
    torch.testing.assert_close(got, attention_by_repetition(q, k, v, counts, 0.7), rtol=1e-12, atol=1e-12)


def test_weighted_attention_validates_shapes():
    q = torch.randn(2, 3, 1, 4)
    with pytest.raises(ValueError, match="log_count"):
        weighted_attention(q, torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="k and v"):
        weighted_attention(q, torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.zeros(2, 5))


def test_token_mosaic_validates_inputs():
    lay = token_layout("compact", 2, 3, 1, "gaussian")
    with pytest.raises(ValueError, match="auxiliary"):
        token_mosaic(torch.randn(1, 8, 4), lay, 0, 6)
    with pytest.raises(ValueError, match="outside"):
        token_mosaic(torch.randn(1, 7, 4), lay, 4, 3)


TRITON_SCRIPT = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: its own jit'd helpers (tl.sum, ...) too
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
import test_vit_kernels as t
t.run_triton_checks(np.random.default_rng(int(sys.argv[2])))
print("TRITON-OK")
"""


def run_triton_checks(rng):
    """Triton kernels (interpreter) against the Numba kernels and the repetition reference."""
    H, W, A = 3, 4, 2
    src = torch.from_numpy(rng.standard_normal((2, A + H * W, 5)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(5).astype(np.float32))
    for kind, mask, cls_token in (("compact", "gaussian", True), ("dense", "1x1", False)):
        lay = token_layout(kind, H, W, A, mask, cls_token)
        for b in (None, bias):
            got = token_mosaic(src, lay, 5, 13, b, backend="triton")
            assert torch.equal(got, token_mosaic(src, lay, 5, 13, b, backend="numba")), (kind, b is None)
    for shape in [dict(n=3, h=2, L=1, U=6, d=8), dict(n=2, h=1, L=5, U=5, d=3)]:
        q, k, v, counts, log_count = _attention_case(rng, **shape)
        ref = attention_by_repetition(q, k, v, counts, 0.5)
        got = weighted_attention(q, k, v, log_count, 0.5, backend="triton")
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
        # strided (non-contiguous) inputs, as the fast path passes head views
        qt = q.transpose(1, 2).contiguous().transpose(1, 2)
        got = weighted_attention(qt, k, v, log_count, 0.5, backend="triton")
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


@needs_triton
def test_triton_kernels_under_the_interpreter(rng):
    """In a fresh interpreter: TRITON_INTERPRET must be set before triton is first imported, which
    another test module of the session may already have done."""
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-P", "-c", TRITON_SCRIPT, os.path.dirname(__file__),
                           str(int(rng.integers(1 << 30)))], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "TRITON-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


COMPILE_SCRIPT = r"""
import json, os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from xaifast.kernels import token_triton as tt

def build(fn, types, consts, arch=90):
    sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=dict(consts)),
                       target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "enable_fp_fusion": False})
    ptx = k.asm["ptx"]
    return {"cubin": len(k.asm.get("cubin", b"")), "fma": "fma.rn.f32" in ptx,
            "div_approx": ("div.full.f32" in ptx) or ("div.approx.f32" in ptx)}

i32 = "i32"
out = {}
for dt in ("fp32", "bf16", "fp16"):
    t = dict(src_ptr=f"*{dt}", idx_ptr="*i64", scale_ptr="*fp32", bias_ptr=f"*{dt}", out_ptr=f"*{dt}",
             start=i32, U=i32, HW=i32, C=i32, ssb=i32, ssn=i32, ssc=i32, son=i32, sou=i32, soc=i32)
    for has_bias in (False, True):
        out[f"mosaic-{dt}-{has_bias}"] = build(tt._token_mosaic_kernel, t, dict(HAS_BIAS=has_bias, BLOCK_C=1024))
    names = ["sqn", "sqh", "sql", "sqd", "skn", "skh", "sku", "skd", "svn", "svh", "svu", "svd",
             "sln", "slu", "son", "soh", "sol", "sod"]
    t = dict(q_ptr=f"*{dt}", k_ptr=f"*{dt}", v_ptr=f"*{dt}", lc_ptr="*fp32", o_ptr=f"*{dt}", H=i32, L=i32, U=i32,
             D=i32, scale="fp32", **{n: i32 for n in names})
    out[f"attention-{dt}"] = build(tt._weighted_attention_kernel, t, dict(BLOCK_L=2, BLOCK_U=16, BLOCK_D=64))
    out[f"attention-{dt}-all-queries"] = build(tt._weighted_attention_kernel, t,
                                               dict(BLOCK_L=16, BLOCK_U=16, BLOCK_D=64))
# contiguous tensors: Triton specializes unit strides to constants
t = dict(src_ptr="*fp32", idx_ptr="*i64", scale_ptr="*fp32", bias_ptr="*fp32", out_ptr="*fp32",
         start=i32, U=i32, HW=i32, C=i32, ssb=i32, ssn=i32, ssc=i32, son=i32, sou=i32, soc=i32)
out["mosaic-unit-strides"] = build(tt._token_mosaic_kernel, t, dict(HAS_BIAS=True, BLOCK_C=64, ssc=1, soc=1, start=1))
print("RESULT" + json.dumps(out))
"""


@needs_triton
@pytest.mark.slow
def test_triton_kernels_compile_for_sm90():
    """The interpreter accepts things the GPU compiler rejects: compile the kernels ahead of time
    for an H100 (sm_90) with Triton's bundled ptxas (no GPU needed)."""
    from triton_interpreter import compile_ahead

    compiled = compile_ahead(COMPILE_SCRIPT)
    assert len(compiled) == 3 * 4 + 1
    for name, info in compiled.items():
        assert info["cubin"] > 0, name
        assert not info["div_approx"], f"{name}: approximate division"
        if name.startswith("mosaic"):
            assert not info["fma"], f"{name}: mul+add contracted (the Numba twin rounds twice)"
