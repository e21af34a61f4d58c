"""DetClassProbabilityMap kernels (``xaifast.kernels.det_class_map``): the PyTorch twin, the fused
Numba kernel and the fused Triton kernel (Triton's CPU interpreter here) against the float64 loop
reference ``reference.det_class_map_reference``, on fresh random inputs (``rng`` fixture; the run
seed is in the report header).

Tolerances: float32 against float64, ``rtol = 1e-5`` plus ``atol = 1e-6`` times the largest
magnitude of the expected maps (so a value that cancels to ~0 in the mean over levels is not held
to a relative bound).  Half / bfloat16 inputs are compared against the reference on the same
(rounded) values: every path computes in float32, so the same tolerance holds.
``test_checks_catch_*`` show that these comparisons fail on a wrong resize convention, a wrong
channel layout or one corrupted value.
"""
from triton_interpreter import require_interpreter  # sets TRITON_INTERPRET=1 before triton is imported

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from reference import det_class_map_reference  # noqa: E402
from xaifast import kernels as XK  # noqa: E402
from xaifast.kernels import det_class_map, det_class_map_numba, det_class_map_torch  # noqa: E402
from xaifast.kernels.det_class_map import det_class_map_tables  # noqa: E402

RTOL = 1e-5


def have_triton():
    """Tests that check several backends run their Triton part only where triton is installed
    (pure Triton tests skip instead, see triton_map)."""
    return importlib.util.find_spec("triton") is not None


def check(got, ref, rtol=RTOL):
    """got: float32 tensor [B, K, h, w]; ref: float64 array of the same shape."""
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32, type(got)
    ref = np.asarray(ref, dtype=np.float64)
    assert tuple(got.shape) == ref.shape, (tuple(got.shape), ref.shape)
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(got.detach().cpu().double().numpy(), ref, rtol=rtol, atol=0.1 * rtol * scale)


def make_levels(rng, B, K, shapes, anchors, dtype=torch.float32):
    """Random classification-head outputs, logits around -2 with spread 3 (a detector's range)."""
    anchors = anchors if isinstance(anchors, (list, tuple)) else [anchors] * len(shapes)
    return [torch.from_numpy(-2.0 + 3.0 * rng.standard_normal((B, A * K, H, W))).to(dtype)
            for (H, W), A in zip(shapes, anchors)]


def triton_map(levels, anchors, size=None, softmax=True, **over):
    """The Triton kernel through the dispatcher (validation, default size), or with tile overrides."""
    require_interpreter("Triton DetClassProbabilityMap kernel")
    if not over:
        return det_class_map(levels, anchors, size, softmax, backend="triton")
    from xaifast.kernels.det_class_map import check_det_levels

    lv, an, _, h, w = check_det_levels(levels, anchors, size)
    return XK.det_class_map_triton(lv, an, (h, w), softmax, **over)


# (B, K, level sizes, anchors, size, softmax)
CASES = [
    (1, 1, [(1, 1)], 1, None, True),                                            # 1 level 1x1, K = 1
    (3, 1, [(7, 5), (4, 3)], [3, 1], None, False),                              # K = 1, no softmax
    (1, 4, [(7, 5)], 9, (13, 9), True),                                         # 1 level, A = 9, upsample
    (3, 3, [(13, 9), (7, 5)], 3, None, False),                                  # 2 levels: middle = levels[1]
    (2, 5, [(13, 9), (7, 5), (4, 3)], [1, 3, 9], None, True),                   # mixed anchors
    (1, 2, [(13, 9), (7, 5), (4, 3), (2, 2), (1, 1)], 3, None, False),          # 5 levels incl. 1x1
    (3, 3, [(9, 13), (5, 7), (3, 4), (2, 2), (1, 1)], [9, 3, 1, 1, 3], (4, 11), True),  # explicit size, down+up
    (1, 6, [(5, 7), (3, 3), (2, 3)], 1, (11, 6), False),                        # upsample, non-square
    (2, 4, [(13, 9)], 1, (1, 1), True),                                         # downsample to 1x1
    (1, 7, [(6, 8), (3, 4), (2, 2)], 1, (3, 4), True),                          # exact 2x / identity / odd
]


def _id(c):
    B, K, shapes, A, size, sm = c
    return f"B{B}-K{K}-L{len(shapes)}-A{A}-{'x'.join(map(str, size)) if size else 'mid'}-{'sm' if sm else 'raw'}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_twin_and_numba_match_reference(case, rng):
    B, K, shapes, A, size, sm = case
    levels = make_levels(rng, B, K, shapes, A)
    ref = det_class_map_reference(levels, A, size, sm)
    twin = det_class_map_torch(levels, A, size, sm)
    numba = det_class_map(levels, A, size, sm, backend="numba")
    auto = det_class_map(levels, A, size, sm)
    for got in (twin, numba, auto):
        check(got, ref)
    assert torch.equal(auto, numba)  # CPU float32 -> Numba
    assert torch.equal(det_class_map(levels, A, size, sm, backend="torch"), twin)
    if sm:
        np.testing.assert_allclose(numba.sum(dim=1).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_triton_matches_reference(case, rng):
    B, K, shapes, A, size, sm = case
    levels = make_levels(rng, B, K, shapes, A)
    got = triton_map(levels, A, size, sm)
    check(got, det_class_map_reference(levels, A, size, sm))


@pytest.mark.parametrize("sm", [True, False])
def test_k1_softmax_is_all_ones(sm, rng):
    levels = make_levels(rng, 3, 1, [(7, 5), (4, 3), (2, 2)], [3, 1, 9])
    outs = [det_class_map(levels, [3, 1, 9], softmax=sm, backend=b) for b in ("torch", "numba")]
    if have_triton():
        outs.append(triton_map(levels, [3, 1, 9], softmax=sm))
    for out in outs:
        assert tuple(out.shape) == (3, 1, 4, 3)
        if sm:
            assert torch.equal(out, torch.ones_like(out))
        else:
            check(out, det_class_map_reference(levels, [3, 1, 9], softmax=False))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sm", [True, False])
def test_half_inputs_twin_and_triton(dtype, sm, rng):
    shapes, A = [(9, 7), (5, 4), (3, 2)], [3, 1, 9]
    levels = make_levels(rng, 2, 4, shapes, A, dtype)
    ref = det_class_map_reference(levels, A, (6, 5), sm)  # float64 of the same rounded values
    twin = det_class_map(levels, A, (6, 5), sm)  # auto: CPU half -> twin
    check(twin, ref)
    assert torch.equal(twin, det_class_map_torch(levels, A, (6, 5), sm))
    with pytest.raises(ValueError, match="numba"):
        det_class_map(levels, A, backend="numba")
    if have_triton():
        check(triton_map(levels, A, (6, 5), sm), ref)


def test_mixed_dtypes_per_level(rng):
    levels = make_levels(rng, 2, 3, [(8, 6), (4, 3), (2, 2)], 3)
    levels[0] = levels[0].to(torch.bfloat16)
    levels[2] = levels[2].to(torch.float16)
    ref = det_class_map_reference(levels, 3)
    check(det_class_map(levels, 3), ref)  # auto: not all float32 -> twin
    if have_triton():
        check(triton_map(levels, 3), ref)


@pytest.mark.parametrize("sm", [True, False])
def test_triton_tiles_class_blocks_and_chained_levels(sm, rng):
    # 7 levels (> 6: chained launches, the later ones accumulate), 11 classes in blocks of 4
    # (two-pass softmax), pixel tiles of 8 over 7x5 = 35 pixels (a partial tile).
    shapes = [(13, 9), (9, 7), (7, 5), (5, 4), (4, 3), (2, 2), (1, 1)]
    A = [1, 3, 1, 9, 1, 3, 1]
    levels = make_levels(rng, 2, 11, shapes, A)
    ref = det_class_map_reference(levels, A, None, sm)
    check(triton_map(levels, A, None, sm, block_k=4, block_p=8), ref)
    check(triton_map(levels, A, None, sm), ref)
    check(det_class_map_torch(levels, A, None, sm), ref)
    # one launch, several class blocks and tiles
    lv3, A3 = levels[:3], A[:3]
    check(triton_map(lv3, A3, (6, 7), sm, block_k=4, block_p=16), det_class_map_reference(lv3, A3, (6, 7), sm))


def _non_contiguous(levels):
    """Same values, other memory layouts: channels-last, a channel slice of a wider tensor, and a
    transposed-back view."""
    out = []
    for n, x in enumerate(levels):
        if n % 3 == 0:
            out.append(x.to(memory_format=torch.channels_last))
        elif n % 3 == 1:
            wide = torch.zeros((x.shape[0], x.shape[1] + 5) + tuple(x.shape[2:]), dtype=x.dtype)
            wide[:, 2:2 + x.shape[1]] = x
            out.append(wide[:, 2:2 + x.shape[1]])
        else:
            out.append(x.transpose(2, 3).contiguous().transpose(2, 3))
    return out


def test_non_contiguous_inputs(rng):
    shapes, A = [(9, 7), (5, 4), (3, 3)], [3, 1, 9]
    levels = make_levels(rng, 2, 3, shapes, A)
    nc = _non_contiguous(levels)
    assert not any(x.is_contiguous() for x in nc)
    ref = det_class_map_reference(levels, A, (4, 6))
    numba = det_class_map(nc, A, (4, 6), backend="numba")
    check(numba, ref)
    assert torch.equal(numba, det_class_map(levels, A, (4, 6), backend="numba"))
    check(det_class_map(nc, A, (4, 6), backend="torch"), ref)
    if have_triton():
        check(triton_map(nc, A, (4, 6)), ref)


def _interpolate_pipeline(levels, anchors, size, softmax):
    """Independent check written with F.interpolate, per image and level (OTX's structure)."""
    B = levels[0].shape[0]
    K = levels[0].shape[1] // anchors[0]
    out = torch.empty((B, K) + tuple(size), dtype=torch.float64)
    for b in range(B):
        per_level = []
        for x, A in zip(levels, anchors):
            m = x[b].double().reshape(A, K, x.shape[2], x.shape[3]).max(dim=0).values
            per_level.append(F.interpolate(m[None], size=size, mode="bilinear", align_corners=False))
        out[b] = torch.cat(per_level).mean(dim=0)
    return torch.softmax(out, dim=1) if softmax else out


@pytest.mark.parametrize("size", [None, (37, 29), (5, 9)])
def test_against_interpolate_on_realistic_shapes(size, rng):
    shapes, A = [(46, 62), (23, 31), (12, 16), (6, 8), (3, 4)], [9, 9, 9, 9, 9]
    levels = make_levels(rng, 2, 5, shapes, A)
    target = size or (12, 16)
    for sm in (True, False):
        ref = _interpolate_pipeline(levels, A, target, sm).numpy()
        check(det_class_map(levels, A, size, sm, backend="numba"), ref)
        check(det_class_map_torch(levels, A, size, sm), ref)


@pytest.mark.parametrize("sm", [True, False])
def test_numba_kernel_direct_call_any_band(sm, rng):
    # Every band of output rows per task gives the same bits (1 row, partial bands, all rows).
    levels = make_levels(rng, 2, 3, [(13, 9), (7, 5), (4, 3)], [1, 3, 9])
    ref = det_class_map_reference(levels, [1, 3, 9], (9, 4), sm)
    tables = det_class_map_tables(((13, 9), (7, 5), (4, 3)), 9, 4)
    first = None
    for band in (1, 2, 4, 9, 16):
        out = np.full((2, 3, 9, 4), np.nan, np.float32)
        det_class_map_numba(tuple(x.numpy() for x in levels), np.array([1, 3, 9]), *tables, band, sm, out)
        check(torch.from_numpy(out), ref)
        first = out if first is None else first
        assert np.array_equal(out, first), band
    assert np.array_equal(first, det_class_map(levels, [1, 3, 9], (9, 4), sm, backend="numba").numpy())


def test_dispatch_and_autograd(rng):
    levels = make_levels(rng, 1, 3, [(6, 4), (3, 2)], 1)
    grad_levels = [x.clone().requires_grad_(True) for x in levels]
    out = det_class_map(grad_levels, 1)  # requires grad -> differentiable twin
    assert out.requires_grad
    out[:, 0].sum().backward()
    assert grad_levels[0].grad is not None and grad_levels[0].grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(det_class_map(grad_levels, 1), det_class_map(levels, 1, backend="numba"))
    empty = det_class_map([torch.zeros(0, 6, 4, 4), torch.zeros(0, 6, 2, 2)], 2)
    assert tuple(empty.shape) == (0, 3, 2, 2)
    assert tuple(det_class_map([torch.zeros(0, 6, 4, 4)], 2, backend="torch").shape) == (0, 3, 4, 4)
    out64 = det_class_map([x.double() for x in levels], (1, 1))  # float64 -> twin, float32 result
    assert out64.dtype == torch.float32
    check(out64, det_class_map_reference(levels, 1))
    # numpy anchor counts are accepted too
    assert torch.equal(det_class_map(levels, np.array([1, 1])), det_class_map(levels, 1))


# --------------------------------------------------------------------------- validation
def _lv(*shapes):
    return [torch.zeros(s) for s in shapes]


@pytest.mark.parametrize("args,exc,match", [
    (([], 1), ValueError, "levels is empty"),
    ((torch.zeros(1, 3, 4, 4), 1), TypeError, "single tensor"),
    ((_lv((1, 3, 4, 4), (3, 2, 2)), 1), ValueError, r"levels\[1\] must be a 4-D tensor"),
    ((_lv((1, 3, 4, 4), (2, 3, 2, 2)), 1), ValueError, "same batch size"),
    ((_lv((1, 6, 4, 4), (1, 7, 2, 2)), 2), ValueError, r"levels\[1\] has 7 channels.*anchor count 2"),
    ((_lv((1, 6, 4, 4), (1, 9, 2, 2)), 3), ValueError, "different class counts"),
    ((_lv((1, 6, 4, 4), (1, 6, 2, 2)), [3, 3, 3]), ValueError, "num_anchors has 3 entries but there are 2 levels"),
    ((_lv((1, 6, 4, 4)), 0), ValueError, "at least one anchor"),
    ((_lv((1, 6, 4, 4), (1, 6, 2, 2)), [3, -1]), ValueError, "level 1 is -1"),
    ((_lv((1, 6, 4, 4)), 2.5), TypeError, "num_anchors must be an int"),
    ((_lv((1, 0, 4, 4)), 1), ValueError, "not a positive multiple"),
    ((_lv((1, 3, 0, 4)), 1), ValueError, "empty spatial size"),
    ((_lv((1, 3, 4, 4)), 1, (0, 5)), ValueError, "size must be positive"),
    ((_lv((1, 3, 4, 4)), 1, (4, -2)), ValueError, "size must be positive"),
    ((_lv((1, 3, 4, 4)), 1, 7), ValueError, "pair of positive ints"),
    (([torch.zeros(1, 3, 4, 4, dtype=torch.int64)], 1), TypeError, "floating dtype"),
    (([torch.zeros(1, 3, 4, 4), "x"], 1), TypeError, r"levels\[1\] must be a torch.Tensor"),
    (([torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2, device="meta")], 1), ValueError, "one device"),
])
def test_validation_errors(args, exc, match):
    for fn in (det_class_map, det_class_map_torch):
        with pytest.raises(exc, match=match):
            fn(*args)


def test_backend_errors():
    levels = _lv((1, 3, 4, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        det_class_map(levels, 1, backend="cuda")
    with pytest.raises(ValueError, match="numba"):
        det_class_map([x.double() for x in levels], 1, backend="numba")


# ------------------------------------------------------------------- the checks can fail
def test_checks_catch_a_wrong_resize_convention(rng):
    shapes, A = [(9, 7), (5, 4), (2, 3)], 3
    levels = make_levels(rng, 2, 4, shapes, A)
    got = det_class_map(levels, A, (7, 6), softmax=False, backend="numba")
    check(got, det_class_map_reference(levels, A, (7, 6), softmax=False))
    with pytest.raises(AssertionError):
        check(got, det_class_map_reference(levels, A, (7, 6), softmax=False, align_corners=True))
    with pytest.raises(AssertionError):  # also after the softmax
        check(det_class_map(levels, A, (7, 6)), det_class_map_reference(levels, A, (7, 6), align_corners=True))
    if have_triton():
        with pytest.raises(AssertionError):
            check(triton_map(levels, A, (7, 6)), det_class_map_reference(levels, A, (7, 6), align_corners=True))


def test_checks_catch_a_wrong_channel_layout_or_value(rng):
    levels = make_levels(rng, 2, 4, [(7, 5), (4, 3)], 3)
    ref = det_class_map_reference(levels, 3)
    got = det_class_map(levels, 3, backend="numba")
    check(got, ref)
    # anchor-major vs class-major channel order (k*A + a instead of a*K + k)
    swapped = [x.reshape(2, 3, 4, *x.shape[2:]).transpose(1, 2).reshape(x.shape) for x in levels]
    with pytest.raises(AssertionError):
        check(det_class_map(swapped, 3, backend="numba"), ref)
    bad = got.clone().flatten()
    bad[int(np.abs(ref).argmax())] *= 1.0 + 1e-4  # the largest value, off by 1e-4 relative
    bad = bad.reshape(got.shape)
    with pytest.raises(AssertionError):
        check(bad, ref)
