"""The fused Triton RISE kernel (kernels/triton_rise.py), run on CPU tensors by Triton's interpreter,
against OpenCV's per-mask loop (float64) and the PyTorch twin (MaskMaker); rise() through the kernel
against rise() through PyTorch; mutants of the kernel that the checks must catch.

Fresh random grids, shifts, probabilities and images every run (the `rng` fixture; the run's seed is in
the pytest header). Masks are float32 and agree to ~1e-7 (the twin's matmuls may round differently:
tolerance 1e-6); the masked batch is one float32 product, rounded once for half types.
"""
from triton_interpreter import require_interpreter  # sets TRITON_INTERPRET=1 first

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

require_interpreter("Triton RISE kernel tests")

from xaifast import kernels as K  # noqa: E402
from xaifast.algorithms.rise import rise  # noqa: E402
from xaifast.kernels import triton_rise  # noqa: E402
from xaifast.kernels.rise import (cell_size, draw_masks, linear_matrix, linear_tap_table,  # noqa: E402
                                  rise_masked_batch_torch, rise_masks_reference)
from xaifast.kernels.triton_rise import rise_masked_batch_triton  # noqa: E402

from test_metrics import RegionMean  # noqa: E402  (the tests folder is on sys.path)

HALF_RTOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}

# (H, W, num_cells, masks, channels, dtype, block_q, grids): "draws" are OpenVINO XAI's 0/1 draws,
# "real" are floats in [-1, 2] (upsampling is linear in G: masks outside [0, 1] show the clip).
CASES = [
    (16, 16, 8, 8, 3, torch.float32, None, "draws"),
    (13, 21, 3, 5, 1, torch.float32, 64, "draws"),     # non-square, H, W not multiples of n, 5 tiles a mask
    (21, 13, 1, 1, 3, torch.float16, None, "draws"),   # one cell, one mask
    (40, 36, 8, 7, 3, torch.float32, 256, "draws"),
    (7, 5, 3, 12, 1, torch.float16, 16, "draws"),      # cell 3 x 2; 3 tiles, the last partial
    (9, 30, 8, 3, 3, torch.bfloat16, None, "draws"),   # cell 2 x 4
    (12, 17, 3, 6, 2, torch.float32, 32, "real"),
    (17, 12, 8, 3, 3, torch.float16, None, "real"),
]


def _inputs(rng, h, w, n, count, c, dtype, grids_kind):
    grids, shifts = draw_masks(rng, count, (h, w), n, float(rng.uniform(0.2, 0.8)))
    if grids_kind == "real":
        grids = rng.uniform(-1.0, 2.0, size=grids.shape).astype(np.float32)
    x = torch.from_numpy(rng.uniform(-2.0, 2.0, size=(c, h, w)).astype(np.float32)).to(dtype)
    return grids, shifts, x


def check_masks(got, grids, shifts, hw, n):
    """got [m, H*W] float32 against OpenCV's float64 loop."""
    ref = rise_masks_reference(grids, shifts, hw, n)
    assert got.dtype == torch.float32 and tuple(got.shape) == (len(grids), hw[0] * hw[1])
    np.testing.assert_allclose(got.numpy().reshape(ref.shape), ref, rtol=0, atol=1e-6)
    return ref


def check_batch(got, ref, dtype):
    """got [m, C, H, W] against a float32 / float64 reference: float32 to ~1e-6, half types one rounding."""
    assert got.dtype == dtype
    ref = np.asarray(ref, dtype=np.float64)
    if dtype == torch.float32:
        np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(got.double().numpy(), ref, rtol=HALF_RTOL[dtype], atol=1e-6)


def test_tap_tables_are_the_matrix_rows():
    for out_size, in_size in ((18, 8), (9, 1), (35, 4), (4, 3), (1, 1)):
        idx, wts = linear_tap_table(out_size, in_size)
        dense = torch.zeros(out_size, in_size, dtype=torch.float32)
        rows = torch.arange(out_size)
        dense[rows, idx[:, 0].long()] += wts[:, 0]
        dense[rows, idx[:, 1].long()] += wts[:, 1]
        assert torch.equal(dense, linear_matrix(out_size, in_size))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-n{c[2]}-m{c[3]}-C{c[4]}-{str(c[5])[6:]}-{c[7]}")
def test_rise_kernel_matches_opencv_loop_and_twin(case, rng):
    h, w, n, count, c, dtype, block_q, kind = case
    grids, shifts, x = _inputs(rng, h, w, n, count, c, dtype, kind)
    out = torch.full((count, c, h, w), float("nan"), dtype=dtype)  # garbage to overwrite
    batch, masks = rise_masked_batch_triton(grids, shifts, x, n, out=out, block_q=block_q)
    assert batch is out
    ref = check_masks(masks, grids, shifts, (h, w), n)
    if kind == "real":  # the clip did something
        assert ref.min() == 0.0 and ref.max() == 1.0
    # the masked batch: against float64 masks times the (rounded) image, and against the twin
    check_batch(batch, ref[:, None] * x.double().numpy()[None], dtype)
    twin_batch, twin_masks = rise_masked_batch_torch(grids, shifts, x, n)
    np.testing.assert_allclose(masks.numpy(), twin_masks.numpy(), rtol=0, atol=1e-6)
    check_batch(batch, twin_batch.double().numpy(), dtype)
    # masks not stored: the same batch; through the package's lazy name, from tensors
    again, none = K.rise_masked_batch_triton(torch.from_numpy(grids), torch.from_numpy(shifts), x, n,
                                             out_masks=False, block_q=block_q)
    assert none is None and torch.equal(again, batch)


def test_rise_kernel_rejects_bad_shifts_and_shapes():
    x = torch.rand(3, 10, 12)
    grids, shifts = draw_masks(np.random.default_rng(0), 4, (10, 12), 4, 0.5)
    ch, cw = cell_size((10, 12), 4)
    bad = shifts.copy()
    bad[2, 1] = cw  # one past the cell
    with pytest.raises(ValueError, match="shifts"):
        rise_masked_batch_triton(grids, bad, x, 4)
    with pytest.raises(ValueError, match="grids"):
        rise_masked_batch_triton(grids, shifts, x, 3)
    with pytest.raises(ValueError, match="one image"):
        rise_masked_batch_triton(grids, shifts, x[None], 4)
    empty, masks = rise_masked_batch_triton(grids[:0], shifts[:0], x, 4)
    assert tuple(empty.shape) == (0, 3, 10, 12) and tuple(masks.shape) == (0, 120)


def test_rise_through_the_kernel_equals_the_torch_path(monkeypatch):
    """backend="triton" (CPU tensors, interpreter) gives the torch path's maps; the kernel runs once per
    image and chunk, storing the masks with the chunk's first image only. "auto" on CPU is the torch path."""
    x = torch.rand(2, 3, 16, 20)
    opts = dict(num_masks=20, num_cells=4, prob=0.5, seed=int(torch.randint(0, 1000, ()).item()), batch_size=8)
    want = rise(RegionMean(), x, backend="torch", **opts).raw
    calls = []

    def counting(grids, shifts, image, num_cells, out_masks=True, **kw):
        calls.append(out_masks)
        return rise_masked_batch_triton(grids, shifts, image, num_cells, out_masks, **kw)

    monkeypatch.setattr(triton_rise, "rise_masked_batch_triton", counting)
    got = rise(RegionMean(), x, backend="triton", **opts).raw
    assert calls == [True, False] * 3  # 3 chunks (8, 8, 4 masks) x 2 images
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    calls.clear()
    auto = rise(RegionMean(), x, **opts).raw
    assert calls == [] and torch.equal(auto, want)
    with pytest.raises(ValueError, match="unknown backend"):
        rise(RegionMean(), x, backend="cuda", **opts)


# ------------------------------------------------------------------- the checks can fail
def _mutant(tmp_path, old: str, new: str):
    """A copy of kernels/triton_rise.py with one edit (a deliberate bug), imported as a module."""
    import importlib.util
    import inspect

    source = inspect.getsource(triton_rise)
    assert source.count(old) == 1, f"mutation target {old!r} not found once in triton_rise"
    source = source.replace(old, new).replace("from .", "from xaifast.kernels.")
    path = tmp_path / "mutant_triton_rise.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mutant_triton_rise", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("old,new", [
    pytest.param("v = tl.minimum(tl.maximum(v, 0.0), 1.0)", "v = v", id="no-clip"),
    pytest.param("sx = tl.load(s_ptr + m64 * 2 + 1)", "sx = tl.load(s_ptr + m64 * 2)", id="sy-as-sx"),
    pytest.param("rx = (sx + w) * 2", "rx = (sx + w // 2) * 2", id="columns-at-half-speed"),
    pytest.param("t0 = wy0 * g00 + wy1 * g10", "t0 = wy1 * g00 + wy0 * g10", id="row-weights-swapped"),
    pytest.param("tl.store(o_base + c * HW", "tl.store(o_base + (C - 1 - c) * HW", id="channels-flipped"),
])
def test_checks_catch_bugs_in_the_kernel(tmp_path, old, new):
    rng = np.random.default_rng(5)
    h, w, n = 13, 17, 3
    grids, shifts, x = _inputs(rng, h, w, n, 6, 3, torch.float32, "real")
    bad = _mutant(tmp_path, old, new)
    batch, masks = bad.rise_masked_batch_triton(grids, shifts, x, n)
    ref = rise_masks_reference(grids, shifts, (h, w), n)
    with pytest.raises(AssertionError):
        check_masks(masks, grids, shifts, (h, w), n)
        check_batch(batch, ref[:, None] * x.double().numpy()[None], torch.float32)


COMPILE_SCRIPT = r'''
import json, os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from xaifast.kernels import triton_rise as tr

out = {}
i32 = "i32"
# dtypes x STORE_MASKS, and the launches where Triton turns arguments equal to 1 into constants
for tag, dt, consts in (("fp32", "fp32", dict(STORE_MASKS=True)), ("fp16", "fp16", dict(STORE_MASKS=False)),
                        ("bf16", "bf16", dict(STORE_MASKS=True)),
                        ("ones", "fp32", dict(STORE_MASKS=True, C=1, N=1, TILES=1))):
    types = dict(g_ptr="*fp32", s_ptr="*i64", yi_ptr="*i32", yw_ptr="*fp32", xi_ptr="*i32", xw_ptr="*fp32",
                 x_ptr=f"*{dt}", o_ptr=f"*{dt}", mk_ptr="*fp32", C=i32, H=i32, W=i32, N=i32, TILES=i32)
    consts = dict(consts, BLOCK_Q=1024)
    sig = {name: ("constexpr" if name in consts else types[name]) for name in tr._rise_kernel.arg_names}
    k = triton.compile(ASTSource(fn=tr._rise_kernel, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options=dict(tr.LAUNCH_OPTS))
    out[tag] = {"cubin": len(k.asm.get("cubin", b"")), "fma": "fma.rn.f32" in k.asm["ptx"]}
print("RESULT" + json.dumps(out))
'''


@pytest.mark.slow
def test_rise_kernel_compiles_for_sm90():
    """The interpreter accepts things the GPU compiler rejects: compile the kernel ahead of time for an
    H100 (sm_90) with Triton's bundled ptxas (no GPU needed), without mul+add contraction."""
    from triton_interpreter import compile_ahead

    compiled = compile_ahead(COMPILE_SCRIPT)
    assert sorted(compiled) == ["bf16", "fp16", "fp32", "ones"]
    for name, info in compiled.items():
        assert info["cubin"] > 0, name
        assert not info["fma"], f"{name}: mul+add contracted to FMA"
