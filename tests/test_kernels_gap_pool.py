"""GAP-pool kernels: Numba vs PyTorch twin vs a slow float64 loop reference."""
import numpy as np
import pytest
import torch

from xaifast.kernels import gap_pool_numba, gap_pool_torch, gap_pooled, mask_kernel

RTOL, ATOL = 1e-5, 1e-6
_ASYM = np.random.default_rng(98).standard_normal((5, 5)).astype(np.float32)


def ref_gap(feature, kernel):
    """P[n, c] = sum_q m_p(q) F[b, c, q] / (H*W); explicit loops, float64."""
    F = np.asarray(feature, dtype=np.float64)
    K = np.asarray(kernel, dtype=np.float64)
    B, C, H, W = F.shape
    r = K.shape[0] // 2
    out = np.zeros((B * H * W, C))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                n = b * H * W + i * W + j
                for c in range(C):
                    s = 0.0
                    for qi in range(H):
                        for qj in range(W):
                            if abs(qi - i) <= r and abs(qj - j) <= r:
                                s += K[qi - i + r, qj - j + r] * F[b, c, qi, qj]
                    out[n, c] = s / (H * W)
    return out


# (B, C, H, W)
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 4, 4),
    (2, 3, 3, 5),
    (3, 5, 5, 3),
    (2, 70, 4, 6),    # C crosses the 64-channel block boundary
    (1, 1, 7, 7),
    (2, 130, 2, 3),   # three channel blocks, last one partial
    (3, 2, 1, 4),
]


@pytest.mark.parametrize("mask", ["1x1", "gaussian", "asym5"])
@pytest.mark.parametrize("idx", range(len(SHAPES)))
def test_gap_matches_reference(idx, mask):
    B, C, H, W = SHAPES[idx]
    rng = np.random.default_rng(2000 + idx)
    feat = torch.from_numpy(rng.standard_normal((B, C, H, W)).astype(np.float32))
    kernel = _ASYM.copy() if mask == "asym5" else mask_kernel(mask)
    ref = ref_gap(feat.numpy(), kernel)
    got_nb = gap_pooled(feat, kernel, backend="numba")
    got_th = gap_pooled(feat, kernel, backend="torch")
    got_auto = gap_pooled(feat, kernel if mask == "asym5" else mask)
    for got in (got_nb, got_th, got_auto):
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert tuple(got.shape) == (B * H * W, C)
        np.testing.assert_allclose(got.numpy(), ref, rtol=RTOL, atol=ATOL)
    assert torch.equal(got_nb, got_auto)


def test_gap_numba_raw_kernel():
    rng = np.random.default_rng(21)
    feat = rng.standard_normal((2, 66, 3, 2)).astype(np.float32)
    out = np.full((12, 66), np.nan, dtype=np.float32)
    gap_pool_numba(feat, mask_kernel("gaussian"), out)
    np.testing.assert_allclose(out, ref_gap(feat, mask_kernel("gaussian")), rtol=RTOL, atol=ATOL)


def test_gap_torch_twin_float64_channels_last_and_grad():
    rng = np.random.default_rng(22)
    f64 = torch.from_numpy(rng.standard_normal((2, 4, 3, 5)))
    ref = ref_gap(f64.numpy(), mask_kernel("gaussian"))
    got = gap_pooled(f64, "gaussian")
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-14)
    assert torch.equal(gap_pool_torch(f64, mask_kernel("gaussian")), got)
    cl = f64.float().to(memory_format=torch.channels_last)
    np.testing.assert_allclose(gap_pooled(cl, "3x3").numpy(), ref, rtol=RTOL, atol=ATOL)
    g = f64.float().requires_grad_()
    gap_pooled(g, "gaussian").sum().backward()  # grad enabled -> torch twin
    assert g.grad is not None


def test_gap_errors():
    with pytest.raises(ValueError, match="valid masks"):
        gap_pooled(torch.zeros(1, 2, 3, 3), "gauss")
    with pytest.raises(ValueError, match="4-D"):
        gap_pooled(torch.zeros(2, 3, 3), "1x1")
    with pytest.raises(TypeError):
        gap_pooled(np.zeros((1, 2, 3, 3), np.float32), "1x1")
    with pytest.raises(ValueError, match="backend"):
        gap_pooled(torch.zeros(1, 2, 3, 3), "1x1", backend="fast")
