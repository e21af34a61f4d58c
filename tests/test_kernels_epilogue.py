"""Epilogue + normalisation kernels: Numba vs PyTorch twin vs float64 loop reference."""
import math

import numpy as np
import pytest
import torch

from xaifast.kernels import (
    epilogue_numba,
    epilogue_torch,
    normalize_maps,
    normalize_numba,
    normalize_torch,
    score_maps,
)

RTOL, ATOL = 1e-5, 1e-6


def ref_scores(logits, B, H, W, score):
    """R[b, k, i, j] = score(L[n])[k]; explicit loops, float64."""
    L = np.asarray(logits, dtype=np.float64)
    N, K = L.shape
    raw = np.zeros((B, K, H, W))
    for n in range(N):
        b, p = divmod(n, H * W)
        i, j = divmod(p, W)
        row = L[n]
        if score == "softmax":
            m = max(row)
            e = [math.exp(x - m) for x in row]
            s = sum(e)
            vals = [x / s for x in e]
        elif score == "sigmoid":
            vals = [1.0 / (1.0 + math.exp(-x)) for x in row]
        else:
            vals = list(row)
        for k in range(K):
            raw[b, k, i, j] = vals[k]
    return raw


def ref_normalize(maps):
    """Per-map min-max to uint8 in float64 (same formula, no float32 rounding)."""
    x = np.asarray(maps, dtype=np.float64)
    out = np.zeros(x.shape, dtype=np.int64)
    flat_x = x.reshape(-1, x.shape[-2] * x.shape[-1])
    flat_o = out.reshape(flat_x.shape)
    for m in range(flat_x.shape[0]):
        mn, mx = min(flat_x[m]), max(flat_x[m])
        for q in range(flat_x.shape[1]):
            u = math.floor((flat_x[m, q] - mn) / ((mx - mn) + 1e-12) * 255.0)
            flat_o[m, q] = min(max(u, 0), 255)
    return out


# (B, H, W, K)
SHAPES = [
    (1, 1, 1, 1),     # 1x1 grid, K=1: constant maps
    (1, 3, 5, 1),     # K=1
    (2, 3, 5, 4),     # non-square, B>1
    (3, 4, 4, 7),
    (2, 5, 3, 10),
    (1, 7, 7, 40),    # several 16-cell tiles + partial tile
    (2, 1, 1, 3),
    (2, 6, 3, 5),     # HW=18: tile boundary inside an image
]


def _within_one(a, b):
    return int(np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)).max(initial=0)) <= 1


@pytest.mark.parametrize("score", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("idx", range(len(SHAPES)))
def test_epilogue_matches_reference(idx, score):
    B, H, W, K = SHAPES[idx]
    rng = np.random.default_rng(3000 + idx)
    logits = torch.from_numpy((2.5 * rng.standard_normal((B * H * W, K))).astype(np.float32))
    ref_raw = ref_scores(logits.numpy(), B, H, W, score)
    ref_u8 = ref_normalize(ref_raw)

    raw_nb, u8_nb = score_maps(logits, B, H, W, score, backend="numba")
    raw_th, u8_th = score_maps(logits, B, H, W, score, backend="torch")
    raw_auto, u8_auto = score_maps(logits, B, H, W, score)
    for raw, u8 in ((raw_nb, u8_nb), (raw_th, u8_th), (raw_auto, u8_auto)):
        assert raw.dtype == torch.float32 and tuple(raw.shape) == (B, K, H, W)
        assert u8.dtype == torch.uint8 and tuple(u8.shape) == (B, K, H, W)
        np.testing.assert_allclose(raw.numpy(), ref_raw, rtol=RTOL, atol=ATOL)
        assert _within_one(u8.numpy(), ref_u8)
    assert torch.equal(raw_nb, raw_auto) and torch.equal(u8_nb, u8_auto)

    # Given the same float32 raw maps, every normaliser is bit-identical.
    assert torch.equal(normalize_torch(raw_nb), u8_nb)
    assert torch.equal(normalize_torch(raw_th), u8_th)
    assert torch.equal(normalize_maps(raw_th, backend="numba"), u8_th)
    if score == "none":
        # Identity score: raw maps are the same float32 values -> exact uint8 equality.
        assert torch.equal(raw_nb, raw_th) and torch.equal(u8_nb, u8_th)
    else:
        # torch.softmax / torch.sigmoid use vectorised (SLEEF) exp and softmax
        # multiplies by 1/sum, while Numba uses libm expf and divides, so raw
        # values may differ by an ulp or two; a value sitting on a floor()
        # boundary can then land one uint8 step apart.
        assert _within_one(u8_nb.numpy(), u8_th.numpy())


def test_epilogue_without_normalize():
    rng = np.random.default_rng(31)
    logits = torch.from_numpy(rng.standard_normal((2 * 3 * 4, 6)).astype(np.float32))
    for backend in ("numba", "torch"):
        raw, u8 = score_maps(logits, 2, 3, 4, "softmax", normalize=False, backend=backend)
        assert u8 is None
        np.testing.assert_allclose(raw.numpy(), ref_scores(logits.numpy(), 2, 3, 4, "softmax"), rtol=RTOL, atol=ATOL)
    raw2 = torch.empty(2, 6, 3, 4)
    epilogue_numba(logits.numpy(), 2, 3, 4, 1, raw2.numpy(), np.empty((0, 0, 0, 0), np.uint8), False)
    assert torch.equal(raw2, score_maps(logits, 2, 3, 4, "softmax", normalize=False)[0])


def test_softmax_is_stable_for_large_logits():
    logits = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    raw, _ = score_maps(logits, 1, 1, 2, "softmax")
    assert torch.isfinite(raw).all()
    np.testing.assert_allclose(raw[0, :, 0, 1].numpy(), [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(raw.sum(dim=1).numpy(), 1.0, rtol=1e-6)


def test_epilogue_torch_twin_float64_input():
    rng = np.random.default_rng(32)
    logits = torch.from_numpy(rng.standard_normal((2 * 2 * 3, 5)))
    raw, u8 = score_maps(logits, 2, 2, 3, "sigmoid")  # float64 -> torch twin, float32 output
    assert raw.dtype == torch.float32
    raw_d, u8_d = epilogue_torch(logits, 2, 2, 3, "sigmoid")
    assert torch.equal(raw, raw_d) and torch.equal(u8, u8_d)
    np.testing.assert_allclose(raw.numpy(), ref_scores(logits.numpy(), 2, 2, 3, "sigmoid"), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 5), (4, 2, 2), (2, 3, 7, 7), (5, 1, 9)])
def test_normalize_backends_exact(shape):
    rng = np.random.default_rng(4000 + sum(shape) * len(shape))
    maps = torch.from_numpy((rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 4)).astype(np.float32))
    a = normalize_torch(maps)
    b = normalize_maps(maps, backend="numba")
    assert a.dtype == torch.uint8 and tuple(a.shape) == shape
    assert torch.equal(a, b)
    assert _within_one(a.numpy(), ref_normalize(maps.numpy()))
    H, W = shape[-2:]
    out = np.empty((maps.numel() // (H * W), H, W), np.uint8)
    normalize_numba(maps.numpy().reshape(-1, H, W), out)
    assert np.array_equal(out.reshape(shape), a.numpy())


def test_normalize_edge_values():
    maps = torch.tensor([[[3.0, 3.0], [3.0, 3.0]],       # constant -> zeros
                         [[0.0, 1.0], [2.0, 3.0]],
                         [[-5.0, -5.0], [-5.0, 7.0]]])
    for backend in ("numba", "torch"):
        u = normalize_maps(maps, backend=backend)
        assert u[0].eq(0).all()
        assert u[1].flatten().tolist() == [0, 85, 170, 255]
        assert u[2].flatten().tolist() == [0, 0, 0, 255]


def test_epilogue_errors():
    logits = torch.zeros(2 * 3 * 3, 4)
    with pytest.raises(ValueError, match="softmax.*sigmoid"):
        score_maps(logits, 2, 3, 3, "softmx")
    with pytest.raises(ValueError, match="valid scores"):
        epilogue_torch(logits, 2, 3, 3, "relu")
    with pytest.raises(ValueError, match="2-D"):
        score_maps(logits.reshape(2, 9, 4), 2, 3, 3, "none")
    with pytest.raises(ValueError, match="rows"):
        score_maps(logits, 2, 3, 4, "none")
    with pytest.raises(ValueError, match="backend"):
        score_maps(logits, 2, 3, 3, "none", backend="gpu")
    with pytest.raises(ValueError, match="numba"):
        score_maps(logits.double(), 2, 3, 3, "none", backend="numba")
    with pytest.raises(ValueError, match="2 dims"):
        normalize_torch(torch.zeros(5))
    with pytest.raises(ValueError, match="2 dims"):
        normalize_maps(torch.zeros(5))


def test_vectorised_math_helpers():
    """The Numba epilogue's SIMD-friendly exp / max / sum helpers."""
    from xaifast.kernels._vmath import lane_max, lane_sum, vexp

    x = np.linspace(-87.3, 88.0, 200001).astype(np.float32)
    y = np.empty_like(x)
    ib = np.empty(x.shape[0], np.int32)
    vexp(x, y, ib, ib.view(np.float32), np.float32(1.0), np.float32(0.0))
    ref = np.exp(x.astype(np.float64))
    ulps = np.abs(y - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2.0
    special = np.array([-np.inf, -1000.0, -88.0, 0.0, 89.0, np.inf, np.nan], np.float32)
    ys = np.empty_like(special)
    ibs = np.empty(special.shape[0], np.int32)
    vexp(special, ys, ibs, ibs.view(np.float32), np.float32(1.0), np.float32(0.0))
    assert ys[:3].tolist() == [0.0, 0.0, 0.0] and ys[3] == 1.0
    assert np.isposinf(ys[4]) and np.isposinf(ys[5]) and np.isnan(ys[6])
    # sign / shift: exp(-x - 1.5)
    y2 = np.empty_like(x[:1000])
    vexp(x[:1000], y2, ib, ib.view(np.float32), np.float32(-1.0), np.float32(1.5))
    np.testing.assert_allclose(y2, np.exp(-x[:1000].astype(np.float64) - 1.5), rtol=3e-7)

    rng = np.random.default_rng(5000)
    for m in list(range(1, 40)) + [1000, 1001]:
        v = rng.standard_normal(m).astype(np.float32)
        assert lane_max(v) == v.max()
        assert abs(float(lane_sum(v)) - v.astype(np.float64).sum()) <= 1e-5 * max(1.0, np.abs(v).sum())
