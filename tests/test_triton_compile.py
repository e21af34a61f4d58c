"""The Triton kernels compile for real NVIDIA GPUs (no GPU needed): each kernel is compiled ahead
of time to PTX and a cubin (Triton's bundled ptxas) for sm_90 (H100; every dtype) and sm_80
(A100; one variant each), in a
subprocess without TRITON_INTERPRET.  The interpreter accepts things the compiler rejects (shape
mismatches that numpy broadcasts, unsupported ops), so this is the check that the kernels tested
in test_triton_kernels.py would build on a GPU.  The PTX is also checked for the float32 contract:
IEEE division (div.rn), no mul+add contraction where the Numba twin has none, a CTA barrier
between the epilogue's raw-map stores and their reload."""
import os

# The first test_triton_* module collected: set the interpreter flag before anything imports triton
# in this process (Triton decides at import time whether its standard library is interpreted), so
# that test_triton_kernels / test_triton_engine can run the kernels on CPU.
os.environ["TRITON_INTERPRET"] = "1"

import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402

if importlib.util.find_spec("triton") is None:  # (no import here: the compiler runs in a subprocess)
    pytest.skip("triton is not installed: Triton compile checks skipped", allow_module_level=True)

SCRIPT = textwrap.dedent(r'''
    import json, os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from xaifast.kernels import triton_epilogue as te, triton_gap_pool as tg, triton_mosaic as tm

    def build(fn, types, consts, arch):
        sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=dict(consts)),
                           target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "enable_fp_fusion": False})
        ptx = k.asm["ptx"]
        return {"cubin": len(k.asm.get("cubin", b"")), "div_rn": "div.rn.f32" in ptx,
                "div_approx": ("div.full.f32" in ptx) or ("div.approx.f32" in ptx),
                "fma_f32": "fma.rn.f32" in ptx, "bar": "bar.sync" in ptx or "barrier.sync" in ptx}

    i32 = "i32"
    out = {}
    # sm_90 (H100): every kernel and dtype; sm_80 (A100): one variant of each kernel (time).
    for arch, dts, epis in ((90, ("fp32", "bf16", "fp16"), (("fp32", 1), ("bf16", 2), ("fp16", 0), ("bf16", 1))),
                            (80, ("bf16",), (("fp32", 1),))):
        for dt in dts:
            t = dict(f_ptr=f"*{dt}", k_ptr="*fp32", o_ptr=f"*{dt}", start=i32, C=i32, H=i32, W=i32,
                     sfb=i32, sfc=i32, sfq=i32, son=i32, soc=i32, soq=i32)
            out[f"mosaic-{dt}-{arch}"] = build(tm._mosaic_kernel, t, dict(KS=3, BLOCK_C=16, BLOCK_Q=256), arch)
            t = dict(f_ptr=f"*{dt}", k_ptr="*fp32", o_ptr=f"*{dt}", N=i32, C=i32, H=i32, W=i32,
                     sfb=i32, sfc=i32, sfq=i32, son=i32)
            out[f"gap-{dt}-{arch}"] = build(tg._gap_pool_kernel, t, dict(KS=3, BLOCK_P=32, BLOCK_C=64), arch)
        for dt, score in epis:
            t = dict(x_ptr=f"*{dt}", raw_ptr="*fp32", u8_ptr="*u8", st_ptr="*fp32", K=i32, HW=i32,
                     sxn=i32, sxk=i32, NKB=i32, KB_PER_GROUP=i32)
            out[f"epilogue-{score}-{dt}-{arch}"] = build(
                te._epilogue_kernel, t, dict(SCORE=score, NORMALIZE=True, BLOCK_Q=64, BLOCK_K=64, BLOCK_KS=128), arch)
        out[f"normalize-fp32-{arch}"] = build(te._normalize_kernel, dict(x_ptr="*fp32", u8_ptr="*u8", HW=i32),
                                              dict(BLOCK=1024), arch)
    # Triton's JIT turns integer arguments equal to 1 into constants (unit strides of contiguous /
    # channels-last tensors, 1x1 grids, K = 1): those specialisations must compile too.
    t = dict(f_ptr="*fp32", k_ptr="*fp32", o_ptr="*fp32", start=i32, C=i32, H=i32, W=i32,
             sfb=i32, sfc=i32, sfq=i32, son=i32, soc=i32, soq=i32)
    for tag, ones in (("contig", dict(soq=1, sfq=1, start=1)), ("grid1x1", dict(H=1, W=1, KS=1, C=1, soc=1))):
        out[f"mosaic-ones-{tag}-90"] = build(tm._mosaic_kernel, t, dict(dict(KS=3, BLOCK_C=16, BLOCK_Q=256), **ones), 90)
    t = dict(f_ptr="*bf16", k_ptr="*fp32", o_ptr="*bf16", N=i32, C=i32, H=i32, W=i32,
             sfb=i32, sfc=i32, sfq=i32, son=i32)
    for tag, ones in (("cl", dict(sfc=1, C=1, son=1)), ("grid1x1", dict(H=1, W=1, KS=1, N=1))):
        out[f"gap-ones-{tag}-90"] = build(tg._gap_pool_kernel, t, dict(dict(KS=3, BLOCK_P=32, BLOCK_C=64), **ones), 90)
    t = dict(x_ptr="*fp16", raw_ptr="*fp32", u8_ptr="*u8", st_ptr="*fp32", K=i32, HW=i32,
             sxn=i32, sxk=i32, NKB=i32, KB_PER_GROUP=i32)
    for tag, score, ones in (("contig", 1, dict(sxk=1)), ("k1", 1, dict(K=1, sxn=1, NKB=1, KB_PER_GROUP=1)),
                             ("grid1x1", 2, dict(HW=1))):
        out[f"epilogue-ones-{tag}-90"] = build(
            te._epilogue_kernel, t,
            dict(dict(SCORE=score, NORMALIZE=True, BLOCK_Q=64, BLOCK_K=64, BLOCK_KS=128), **ones), 90)
    print("RESULT" + json.dumps(out))
''')


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-P", "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode != 0 and ("ptxas" in res.stderr and "not found" in res.stderr.lower()):
        pytest.skip("Triton's ptxas is not available: cannot compile for NVIDIA targets here")
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(l for l in res.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    assert len(compiled) == (2 * 3 + 4 + 1) + (2 + 1 + 1) + 7
    for name, info in compiled.items():
        assert info["cubin"] > 0, f"{name}: no cubin"


@pytest.mark.slow
def test_ptx_keeps_the_float32_contract(compiled):
    for name, info in compiled.items():
        assert not info["div_approx"], f"{name}: approximate division in the PTX"
        if name.startswith(("gap-", "epilogue-", "normalize-")) and "grid1x1" not in name:  # 1x1: /1 folded
            assert info["div_rn"], f"{name}: no IEEE division in the PTX"
        if name.startswith("gap-"):
            assert not info["fma_f32"], f"{name}: mul+add contracted to FMA (the Numba twin rounds twice)"
        if name.startswith("epilogue-"):
            assert info["bar"], f"{name}: no CTA barrier between the raw stores and their reload"
