"""Triton kernels, run on CPU tensors by Triton's interpreter, against their PyTorch twins.

TRITON_INTERPRET=1 must be set before the kernel modules (xaifast.kernels.triton_*) are
imported: the dispatchers import them lazily, on the first Triton launch, so setting it at the
top of this module (collected before any test runs) is enough.  The interpreter is slow: shapes
are tiny, and tiles are shrunk (block overrides) so that every loop of a kernel still runs more
than once: several channel / cell / class blocks, several spatial tiles, several groups.

Tolerances: float32 to 1e-5 (in fact bit-identical to the Numba kernels, checked too), half
types to their precision (Triton computes in float32 and rounds once), uint8 within 1.
`test_checks_catch_*` show that the comparisons fail on a wrong index or a corrupted value.
"""
from triton_interpreter import require_interpreter  # sets TRITON_INTERPRET=1 first

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

require_interpreter("Triton kernel tests")

from xaifast import kernels as K  # noqa: E402
from xaifast.kernels import (build_mosaic, epilogue_torch, gap_pool_torch, gap_pooled, mask_kernel,  # noqa: E402
                             mosaic_torch, normalize_maps, normalize_torch, score_maps)

_ASYM = np.random.default_rng(99).standard_normal((5, 5)).astype(np.float32)  # catches flips / transposes
CL = torch.channels_last
HALF_RTOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _mask(name):
    return _ASYM.copy() if name == "asym5" else mask_kernel(name)


def _feature(shape, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(shape, generator=g).to(dtype)
    return f.to(memory_format=CL) if layout == "cl" else f


def check_mosaic(got, ref):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.equal(got, ref), f"mosaic differs at {int((got != ref).sum())} of {got.numel()} positions"


def check_close(got, ref, dtype):
    """float32: rtol 1e-5; half types: one rounding of the float32 result (relative 2^-10 / 2^-7)."""
    rtol = 1e-5 if dtype == torch.float32 else HALF_RTOL[dtype]
    atol = 1e-6 if dtype == torch.float32 else rtol * float(ref.abs().max()) * 1e-2
    np.testing.assert_allclose(got.float().numpy(), ref.float().numpy(), rtol=rtol, atol=atol)


def check_u8(got, ref):
    assert got.dtype == torch.uint8 and got.shape == ref.shape
    diff = (got.int() - ref.int()).abs()
    assert int(diff.max()) <= 1, f"uint8 maps differ by up to {int(diff.max())}"


# --------------------------------------------------------------------------------- mosaic
# (B, C, H, W, start, count, mask, dtype, layout of feature/out, block_c, block_q)
MOSAIC_CASES = [
    (1, 1, 1, 1, 0, 1, "1x1", torch.float32, "contig", None, None),        # 1x1 grid, C = 1
    (2, 3, 3, 5, 7, 20, "gaussian", torch.float32, "contig", 2, 4),        # odd sizes, crosses images, tiles
    (3, 5, 5, 3, 10, 30, "asym5", torch.float32, "cl", 2, 4),              # channels-last, 3 images, 5x5 kernel
    (2, 6, 4, 3, 0, 24, "gaussian", torch.float16, "cl", 4, 8),
    (2, 4, 3, 4, 5, 13, "1x1", torch.bfloat16, "contig", None, 4),
    (1, 3, 1, 6, 1, 5, "gaussian", torch.bfloat16, "contig", None, None),  # one-row grid
]


@pytest.mark.parametrize("case", MOSAIC_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[6]}-{c[7]}-{c[8]}")
def test_mosaic_triton_matches_twin(case):
    B, C, H, W, start, count, mask, dtype, layout, bc, bq = case
    f = _feature((B, C, H, W), dtype, layout, seed=B * 100 + C * 10 + H)
    kernel = _mask(mask)
    fmt = CL if layout == "cl" else torch.contiguous_format
    out = torch.full((count, C, H, W), float("nan"), dtype=dtype).to(memory_format=fmt)  # garbage to overwrite
    got = K.mosaic_triton(f, start, count, kernel, out, block_c=bc, block_q=bq)
    assert got is out and got.is_contiguous(memory_format=fmt)  # written in the head's layout
    # Power-of-two mask weights (1x1, Gaussian) make the half-type product exact before rounding, so
    # Triton's float32-then-round equals the twin's half multiply; float32 is one product anyway.
    check_mosaic(got, mosaic_torch(f.contiguous(), start, count, kernel))
    # Through the dispatcher, allocating in the requested layout.
    via = build_mosaic(f, start, count, kernel if mask == "asym5" else mask, backend="triton", memory_format=fmt)
    assert via.is_contiguous(memory_format=fmt)
    check_mosaic(via, got)
    if dtype == torch.float32:
        check_mosaic(got, build_mosaic(f, start, count, kernel, backend="numba"))


# ------------------------------------------------------------------------------- GAP pool
# (B, C, H, W, mask, dtype, layout, block_p, block_c)
GAP_CASES = [
    (1, 1, 1, 1, "gaussian", torch.float32, "contig", None, None),  # 1x1 grid: only the centre tap
    (2, 5, 3, 4, "gaussian", torch.float32, "contig", 8, 2),        # blocks span images, several channel blocks
    (3, 6, 5, 3, "asym5", torch.float32, "cl", 16, 4),             # channels-last, 5x5 taps
    (2, 7, 4, 5, "1x1", torch.float16, "cl", 8, 4),
    (2, 3, 3, 3, "gaussian", torch.bfloat16, "contig", 4, 2),
]


@pytest.mark.parametrize("case", GAP_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-{c[4]}-{c[5]}-{c[6]}")
def test_gap_pool_triton_matches_twin(case):
    B, C, H, W, mask, dtype, layout, bp, bc = case
    f = _feature((B, C, H, W), dtype, layout, seed=7 + B * C * H * W)
    kernel = _mask(mask)
    got = K.gap_pool_triton(f, kernel, block_p=bp, block_c=bc)
    assert got.dtype == dtype and tuple(got.shape) == (B * H * W, C) and got.is_contiguous()
    ref = gap_pool_torch(f.float(), kernel)  # float32 twin on the same (half) values
    check_close(got, ref, dtype)
    via = gap_pooled(f, kernel if mask == "asym5" else mask, backend="triton")
    check_close(via, ref, dtype)
    if dtype == torch.float32:  # same float32 operations in the same order as the Numba kernel
        assert torch.equal(got, gap_pooled(f, kernel, backend="numba"))


# ------------------------------------------------------------------------------- epilogue
# (B, H, W, K, score, dtype, transposed logits, overrides)
EPI_CASES = [
    (1, 1, 1, 1, "softmax", torch.float32, False, {}),                 # K = 1, 1x1 grid
    (3, 2, 3, 1, "sigmoid", torch.float32, False, {}),                 # K = 1
    (2, 3, 5, 7, "softmax", torch.float32, False, {}),
    (2, 3, 3, 37, "softmax", torch.float32, True, dict(block_k=8, block_q=4, groups=2)),  # 5 class blocks in 2 groups
    (2, 4, 3, 10, "sigmoid", torch.bfloat16, False, dict(block_q=4, block_k=4)),
    (1, 5, 3, 6, "none", torch.float16, True, dict(block_q=8)),
    (2, 3, 3, 9, "softmax", torch.float16, False, dict(block_k=4, groups=3)),
]


@pytest.mark.parametrize("case", EPI_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-K{c[3]}-{c[4]}-{c[5]}")
def test_epilogue_triton_matches_twin(case):
    B, H, W, Kc, score, dtype, transposed, over = case
    g = torch.Generator().manual_seed(B * 1000 + H * 100 + W * 10 + Kc)
    N = B * H * W
    if transposed:  # non-contiguous logits (column-major): the kernel takes strides
        logits = (torch.randn(Kc, N, generator=g) * 4).to(dtype).t()
    else:
        logits = (torch.randn(N, Kc, generator=g) * 4).to(dtype)
    raw, u8 = K.epilogue_triton(logits, B, H, W, score, True, **over)
    raw_t, u8_t = epilogue_torch(logits, B, H, W, score)
    assert raw.dtype == torch.float32 and tuple(raw.shape) == (B, Kc, H, W)
    check_close(raw, raw_t, torch.float32)  # scores are float32 whatever the logits' dtype
    check_u8(u8, u8_t)
    raw2, none = K.epilogue_triton(logits, B, H, W, score, False, **over)
    assert none is None and torch.equal(raw2, raw)
    via_raw, via_u8 = score_maps(logits, B, H, W, score, backend="triton")
    assert torch.equal(via_raw, raw) and torch.equal(via_u8, u8)
    if dtype == torch.float32:
        raw_n, u8_n = score_maps(logits.contiguous(), B, H, W, score, backend="numba")
        check_close(raw, raw_n, torch.float32)
        check_u8(u8, u8_n)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN/inf maps: numpy notices
def test_epilogue_triton_nan_inf_and_constant_maps():
    B, H, W, Kc = 2, 2, 3, 4
    logits = torch.randn(B * H * W, Kc, generator=torch.Generator().manual_seed(5))
    logits[:, 0] = 2.5                   # map (b, 0) constant -> zeros
    logits[3, 1] = float("nan")          # a NaN cell: ignored for min/max, -> 0
    logits[B * H * W - 6:, 2] = float("nan")  # map (1, 2) all NaN -> zeros
    logits[7, 3] = float("inf")
    raw, u8 = K.epilogue_triton(logits, B, H, W, "none", True, block_q=4, block_k=2)
    raw_t, u8_t = epilogue_torch(logits, B, H, W, "none")
    assert torch.equal(raw.isnan(), raw_t.isnan())
    assert torch.equal(u8, u8_t)
    assert u8[:, 0].eq(0).all() and u8[1, 2].eq(0).all()


# ------------------------------------------------------------------------------ normalize
@pytest.mark.parametrize("shape,dtype,block", [((1, 1, 1), torch.float32, None), ((3, 5, 7), torch.float32, 8),
                                               ((2, 2, 4, 6), torch.bfloat16, 4), ((4, 3, 3), torch.float16, None)])
def test_normalize_triton_matches_twin(shape, dtype, block):
    g = torch.Generator().manual_seed(sum(shape))
    maps = (torch.randn(shape, generator=g) * 10.0).to(dtype)
    got = K.normalize_triton(maps, block=block)
    ref = normalize_torch(maps)
    assert got.shape == maps.shape and got.dtype == torch.uint8
    assert torch.equal(got, ref)  # the same float32 operations on the same values
    assert torch.equal(normalize_maps(maps, backend="triton"), ref)


def test_normalize_triton_edge_values():
    maps = torch.tensor([[[3.0, 3.0], [3.0, 3.0]],
                         [[0.0, 1.0], [2.0, 3.0]],
                         [[-5.0, float("nan")], [-5.0, 7.0]],
                         [[float("nan")] * 2] * 2])
    u = normalize_maps(maps, backend="triton")
    assert u[0].eq(0).all() and u[3].eq(0).all()
    assert u[1].flatten().tolist() == [0, 85, 170, 255]
    assert u[2].flatten().tolist() == [0, 0, 0, 255]
    assert torch.equal(u, normalize_torch(maps))


# ------------------------------------------------------------------- the checks can fail
def test_checks_catch_a_wrong_mosaic_index():
    f = _feature((2, 3, 3, 4), torch.float32, "contig", seed=1)
    kernel = _ASYM[1:4, 1:4].copy()  # asymmetric 3x3
    ref = mosaic_torch(f, 5, 10, kernel)
    wrong_start = K.mosaic_triton(f, 6, 10, kernel, torch.empty_like(ref))           # cell off by one
    flipped = K.mosaic_triton(f, 5, 10, kernel.T.copy(), torch.empty_like(ref))      # kernel transposed
    swapped = K.mosaic_triton(f.transpose(2, 3).contiguous().transpose(2, 3), 5, 10, kernel,
                              torch.empty_like(ref))  # H/W strides not flat: the launcher must copy
    check_mosaic(swapped, ref)  # (a correct result, through a non-flat input)
    for bad in (wrong_start, flipped):
        with pytest.raises(AssertionError):
            check_mosaic(bad, ref)


def _mutant(tmp_path, module: str, old: str, new: str):
    """A copy of kernels/<module>.py with one edit (a deliberate bug), imported as a module."""
    import importlib
    import importlib.util
    import inspect

    source = inspect.getsource(importlib.import_module(f"xaifast.kernels.{module}"))
    assert source.count(old) >= 1, f"mutation target {old!r} not found in {module}"
    source = source.replace(old, new, 1).replace("from .triton_common", "from xaifast.kernels.triton_common")
    path = tmp_path / f"mutant_{module}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"mutant_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checks_catch_index_bugs_in_the_kernels(tmp_path):
    """Mutation tests: each kernel with a one-token index bug must fail the comparison that the
    real kernel passes (the asymmetric mask catches mirrored windows / taps)."""
    f = _feature((2, 3, 3, 4), torch.float32, "contig", seed=2)
    kernel = _ASYM[1:4, 1:4].copy()
    ref = mosaic_torch(f, 5, 10, kernel)
    check_mosaic(K.mosaic_triton(f, 5, 10, kernel, torch.empty_like(ref)), ref)
    bad = _mutant(tmp_path, "triton_mosaic", "dv = qj - j + R", "dv = j - qj + R")  # window mirrored
    with pytest.raises(AssertionError):
        check_mosaic(bad.mosaic_triton(f, 5, 10, kernel, torch.empty_like(ref)), ref)

    pooled_ref = gap_pool_torch(f, kernel)
    check_close(K.gap_pool_triton(f, kernel), pooled_ref, torch.float32)
    bad = _mutant(tmp_path, "triton_gap_pool", "qi = i + (u - R)", "qi = i - (u - R)")  # taps flipped
    with pytest.raises(AssertionError):
        check_close(bad.gap_pool_triton(f, kernel), pooled_ref, torch.float32)

    logits = torch.randn(2 * 3 * 4, 5, generator=torch.Generator().manual_seed(3))
    raw_t, u8_t = epilogue_torch(logits, 2, 3, 4, "softmax")
    raw, u8 = K.epilogue_triton(logits, 2, 3, 4, "softmax", True)
    check_close(raw, raw_t, torch.float32)
    check_u8(u8, u8_t)
    bad = _mutant(tmp_path, "triton_epilogue", "out = maps[None, :] + q[:, None]",
                  "out = maps[None, :] + (HW - 1 - q)[:, None]")  # raw maps stored mirrored
    raw_bad, u8_bad = bad.epilogue_triton(logits, 2, 3, 4, "softmax", True)
    with pytest.raises(AssertionError):
        check_close(raw_bad, raw_t, torch.float32)
    with pytest.raises(AssertionError):
        check_u8(u8_bad, u8_t)
    corrupted = u8.clone()
    corrupted[1, 2, 0, 3] = (int(corrupted[1, 2, 0, 3]) + 2) % 256  # a uint8 off by 2
    with pytest.raises(AssertionError):
        check_u8(corrupted, u8_t)
