"""Mosaic kernels: Numba vs PyTorch twin vs a slow float64 loop reference."""
import numpy as np
import pytest
import torch

from xaifast.kernels import MASKS, build_mosaic, gap_pooled, mask_kernel, mosaic_numba, mosaic_torch

RTOL, ATOL = 1e-5, 1e-6

# A random asymmetric 5x5 kernel catches any flipped / transposed indexing.
_ASYM = np.random.default_rng(99).standard_normal((5, 5)).astype(np.float32)


def ref_mosaic(feature, start, count, kernel):
    """M[cell, c, q] = F[b, c, q] * m_p(q), p = cell's position; explicit loops, float64."""
    F = np.asarray(feature, dtype=np.float64)
    K = np.asarray(kernel, dtype=np.float64)
    B, C, H, W = F.shape
    r = K.shape[0] // 2
    out = np.zeros((count, C, H, W))
    for cell in range(count):
        n = start + cell
        b, p = divmod(n, H * W)
        i, j = divmod(p, W)
        for c in range(C):
            for qi in range(H):
                for qj in range(W):
                    if abs(qi - i) <= r and abs(qj - j) <= r:
                        out[cell, c, qi, qj] = F[b, c, qi, qj] * K[qi - i + r, qj - j + r]
    return out


# (B, C, H, W, start, count)
SHAPES = [
    (1, 1, 1, 1, 0, 1),      # 1x1 grid, C=1
    (1, 3, 4, 4, 0, 16),     # one full image
    (2, 3, 3, 5, 7, 20),     # non-square, chunk crossing the image 0/1 boundary
    (3, 2, 5, 3, 10, 30),    # chunk spanning three images
    (2, 4, 6, 7, 0, 84),     # whole batch
    (2, 1, 2, 2, 5, 1),      # single cell in the middle of the batch
    (4, 2, 1, 3, 2, 9),      # 1-row grid
]
MASK_CASES = ["1x1", "gaussian", "asym5"]


def _kernel(name):
    return _ASYM.copy() if name == "asym5" else mask_kernel(name)


@pytest.mark.parametrize("mask", MASK_CASES)
@pytest.mark.parametrize("idx", range(len(SHAPES)))
def test_mosaic_matches_reference(idx, mask):
    B, C, H, W, start, count = SHAPES[idx]
    rng = np.random.default_rng(1000 + idx)
    feat = torch.from_numpy(rng.standard_normal((B, C, H, W)).astype(np.float32))
    kernel = _kernel(mask)
    ref = ref_mosaic(feat.numpy(), start, count, kernel)

    got_nb = build_mosaic(feat, start, count, kernel, backend="numba")
    got_th = build_mosaic(feat, start, count, kernel, backend="torch")
    got_auto = build_mosaic(feat, start, count, mask if mask != "asym5" else kernel)
    for got in (got_nb, got_th, got_auto):
        assert isinstance(got, torch.Tensor)
        assert got.dtype == torch.float32 and tuple(got.shape) == (count, C, H, W)
        np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL, atol=ATOL)
    # Each entry is a single float32 product in both backends: bit-identical.
    assert torch.equal(got_nb, got_th)
    assert torch.equal(got_nb, got_auto)


def test_mosaic_numba_raw_kernel_overwrites_out():
    rng = np.random.default_rng(7)
    feat = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    out = np.full((10, 3, 3, 4), np.nan, dtype=np.float32)  # garbage must be overwritten
    mosaic_numba(feat, 5, 10, mask_kernel("gaussian"), out)
    np.testing.assert_allclose(out, ref_mosaic(feat, 5, 10, MASKS["gaussian"]), rtol=RTOL, atol=ATOL)


def test_mosaic_out_argument_and_zero_count():
    rng = np.random.default_rng(8)
    feat = torch.from_numpy(rng.standard_normal((2, 2, 3, 3)).astype(np.float32))
    out = torch.full((6, 2, 3, 3), float("nan"))
    res = build_mosaic(feat, 6, 6, "gaussian", out=out)
    assert res is out
    np.testing.assert_allclose(out.numpy(), ref_mosaic(feat.numpy(), 6, 6, MASKS["gaussian"]), rtol=RTOL, atol=ATOL)
    for backend in ("numba", "torch"):
        empty = build_mosaic(feat, 18, 0, "1x1", backend=backend)
        assert tuple(empty.shape) == (0, 2, 3, 3)


def test_mosaic_torch_twin_other_dtypes_and_layouts():
    rng = np.random.default_rng(9)
    f64 = torch.from_numpy(rng.standard_normal((2, 3, 4, 5)))
    ref = ref_mosaic(f64.numpy(), 3, 25, MASKS["gaussian"])
    got = build_mosaic(f64, 3, 25, "gaussian")  # float64 -> torch twin
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-14)
    direct = mosaic_torch(f64, 3, 25, mask_kernel("gaussian"))
    assert torch.equal(direct, got)
    # channels_last (non-contiguous) float32 input goes through numba after .contiguous()
    f32_cl = f64.float().to(memory_format=torch.channels_last)
    got_cl = build_mosaic(f32_cl, 3, 25, "gaussian", backend="numba")
    np.testing.assert_allclose(got_cl.numpy(), ref, rtol=RTOL, atol=ATOL)


def test_mosaic_gap_consistency():
    """Spatial mean of the mosaic equals the GAP-pooled vectors (same mask convention)."""
    rng = np.random.default_rng(10)
    feat = torch.from_numpy(rng.standard_normal((2, 5, 3, 4)).astype(np.float32))
    for mask in ("1x1", "gaussian", _ASYM.copy()):
        mos = build_mosaic(feat, 0, 24, mask)
        pooled = gap_pooled(feat, mask)
        np.testing.assert_allclose(mos.double().mean(dim=(2, 3)).numpy(), pooled.numpy(), rtol=1e-5, atol=1e-6)


def test_mosaic_grad_enabled_uses_torch_twin():
    feat = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(11), requires_grad=True)
    mos = build_mosaic(feat, 0, 9, "gaussian")
    mos.sum().backward()
    assert feat.grad is not None and feat.grad.shape == feat.shape
    with pytest.raises(ValueError, match="numba"):
        build_mosaic(feat, 0, 9, "gaussian", backend="numba")


def test_mask_kernels():
    assert mask_kernel("1x1").tolist() == [[1.0]]
    g = mask_kernel("gaussian")
    assert g.dtype == np.float32 and g.shape == (3, 3)
    np.testing.assert_array_equal(g * 16, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    np.testing.assert_array_equal(mask_kernel("3x3"), g)
    g[0, 0] = 5.0  # a private copy: the canonical kernel is untouched
    assert MASKS["gaussian"][0, 0] == np.float32(1 / 16)
    assert set(MASKS) == {"1x1", "gaussian"}


def test_mosaic_errors():
    feat = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="1x1.*gaussian"):
        mask_kernel("box")
    with pytest.raises(ValueError, match="valid masks"):
        build_mosaic(feat, 0, 1, "box")
    with pytest.raises(ValueError, match="4-D"):
        build_mosaic(torch.zeros(3, 4, 4), 0, 1, "1x1")
    with pytest.raises(ValueError, match="4-D"):
        build_mosaic(torch.zeros(1, 2, 3, 4, 4), 0, 1, "1x1")
    with pytest.raises(ValueError, match="outside"):
        build_mosaic(feat, 30, 3, "1x1")  # 30 + 3 > 32
    with pytest.raises(ValueError, match="outside"):
        build_mosaic(feat, -1, 1, "1x1")
    with pytest.raises(ValueError, match="outside"):
        build_mosaic(feat, 0, -1, "1x1")
    with pytest.raises(ValueError, match="k odd"):
        build_mosaic(feat, 0, 1, np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        build_mosaic(feat, 0, 4, "1x1", out=torch.empty(3, 3, 4, 4))
    with pytest.raises(ValueError, match="backend"):
        build_mosaic(feat, 0, 4, "1x1", backend="cuda")
    with pytest.raises(TypeError):
        build_mosaic(torch.zeros(1, 1, 2, 2, dtype=torch.int64), 0, 1, "1x1")
