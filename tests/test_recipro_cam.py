"""Every Recipro-CAM fast path equals the float64 per-cell reference."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import xaifast
from xaifast import functional as XF
from xaifast.algorithms.recipro_cam import cells_per_chunk
from xaifast.adapters.head_graph import analyse_head
from reference import assert_maps_close, assert_u8_within_one, normalize_reference, recipro_cam_reference


def gap_head(c, k):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, k))


def mean_head(c, k):
    class MeanHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(c)
            self.fc = nn.Linear(c, k)

        def forward(self, f):
            return self.fc(self.norm(f.mean(dim=(-2, -1))))
    return MeanHead()


def conv_head(c, k):
    """Not GAP-first: a conv block runs on the masked map before pooling."""
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c, k))


def flatten_head(c, k, h, w):
    """Not GAP-first: a fully connected layer on the flattened map (position-dependent)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k))


def as64(module):
    return copy.deepcopy(module).double().eval()


SHAPES = [  # B, C, H, W, K
    (1, 8, 4, 4, 5),
    (3, 16, 5, 3, 7),   # batch > 1, non-square grid
    (2, 6, 1, 1, 4),    # 1x1 grid
    (2, 12, 3, 6, 1),   # K = 1
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", ["1x1", "gaussian"])
@pytest.mark.parametrize("make_head", [gap_head, mean_head], ids=["gap", "mean-layernorm"])
def test_gap_shortcut_equals_reference(shape, mask, make_head):
    b, c, h, w, k = shape
    head = make_head(c, k).eval()
    assert analyse_head(head, torch.randn(2, c, h, w)).after_gap is not None, "GAP-first head not detected"
    feature = torch.randn(b, c, h, w)
    kind = "sigmoid" if k == 1 else "softmax"
    fast = XF.recipro_cam(feature, head, mask=mask, score=kind)
    ref = recipro_cam_reference(feature, as64(head), mask, kind)
    assert fast.dtype == torch.float32 and fast.shape == (b, k, h, w)
    assert_maps_close(fast, ref)
    assert_u8_within_one(XF.normalize(fast).numpy(), normalize_reference(ref))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", ["1x1", "gaussian"])
def test_mosaic_path_equals_reference(shape, mask):
    b, c, h, w, k = shape
    head = conv_head(c, k).eval()
    assert analyse_head(head, torch.randn(2, c, h, w)).after_gap is None
    feature = torch.randn(b, c, h, w)
    for kind in ("softmax", "none"):
        fast = XF.recipro_cam(feature, head, mask=mask, score=kind)
        ref = recipro_cam_reference(feature, as64(head), mask, kind)
        assert_maps_close(fast, ref)
        assert_u8_within_one(XF.normalize(fast).numpy(), normalize_reference(ref))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
@pytest.mark.parametrize("shortcut", [True, False])
def test_chunking_is_exact(chunk_size, shortcut):
    b, c, h, w, k = 3, 8, 4, 5, 6
    head = gap_head(c, k).eval()
    feature = torch.randn(b, c, h, w)
    fast = XF.recipro_cam(feature, head, mask="gaussian", chunk_size=chunk_size, use_gap_shortcut=shortcut)
    assert_maps_close(fast, recipro_cam_reference(feature, as64(head), "gaussian"))


def test_position_dependent_head_and_a_plain_function_head():
    b, c, h, w, k = 2, 4, 3, 4, 5
    fc = flatten_head(c, k, h, w).eval()
    feature = torch.randn(b, c, h, w)
    ref = recipro_cam_reference(feature, as64(fc), "1x1")
    assert_maps_close(XF.recipro_cam(feature, fc), ref)
    assert_maps_close(XF.recipro_cam(feature, lambda f: fc(f)), ref)  # opaque callable: general path


def test_memory_budget_sets_the_chunk():
    assert cells_per_chunk(1024, memory_budget_mb=1, chunk_size=None) == 2**20 // (1024 * 4)
    assert cells_per_chunk(10**9, memory_budget_mb=1, chunk_size=None) == 1  # never zero
    assert cells_per_chunk(1024, memory_budget_mb=None, chunk_size=3) == 3
    with pytest.raises(ValueError, match="chunk_size"):
        cells_per_chunk(1024, None, 0)
    b, c, h, w, k = 2, 8, 4, 4, 3
    head = conv_head(c, k).eval()
    feature = torch.randn(b, c, h, w)
    tiny = XF.recipro_cam(feature, head, memory_budget_mb=0.01)
    assert_maps_close(tiny, recipro_cam_reference(feature, as64(head), "1x1"))


def test_float64_inputs_run_the_pytorch_twins_exactly():
    b, c, h, w, k = 2, 5, 3, 3, 4
    head = as64(gap_head(c, k))
    feature = torch.randn(b, c, h, w, dtype=torch.float64)
    fast = XF.recipro_cam(feature, head, mask="gaussian")
    assert_maps_close(fast, recipro_cam_reference(feature, head, "gaussian"), rtol=1e-6)


def test_scores_and_masks_are_validated():
    head = gap_head(4, 3).eval()
    with pytest.raises(ValueError, match="score"):
        XF.recipro_cam(torch.randn(1, 4, 2, 2), head, score="softmaxx")
    with pytest.raises(xaifast.XaifastError, match="mask"):
        XF.recipro_cam(torch.randn(1, 4, 2, 2), head, mask="5x5")
    with pytest.raises(xaifast.TargetLayerError, match="rank 3"):
        XF.recipro_cam(torch.randn(1, 4, 2), head)


def test_normalize_contract():
    maps = np.random.default_rng(0).normal(size=(3, 2, 5, 7)).astype(np.float32)
    maps[1, 1] = 4.0  # constant map -> zeros
    u8 = XF.normalize(maps)
    assert u8.dtype == np.uint8 and u8.shape == maps.shape
    assert (u8[1, 1] == 0).all()
    assert_u8_within_one(u8, normalize_reference(maps))
    per_map_max = u8.reshape(6, -1).max(1)
    assert set(per_map_max.tolist()) == {0, 255}  # float32 evaluation: every map's max is 255
    t = XF.normalize(torch.from_numpy(maps))
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), u8)
    # every backend is bit-identical to the C++ one
    from xaifast.kernels import normalize_maps, normalize_torch
    assert np.array_equal(normalize_torch(torch.from_numpy(maps)).numpy(), u8)
    assert np.array_equal(normalize_maps(torch.from_numpy(maps), backend="numba").numpy(), u8)
    with_nan = maps.copy()
    with_nan[0, 0, 1, 2] = np.nan
    with_nan[2, 1] = np.nan
    expected = XF.normalize(with_nan)
    assert expected[0, 0, 1, 2] == 0 and (expected[2, 1] == 0).all() and expected[0, 0].max() == 255
    assert np.array_equal(normalize_torch(torch.from_numpy(with_nan)).numpy(), expected)
    assert np.array_equal(normalize_maps(torch.from_numpy(with_nan), backend="numba").numpy(), expected)
