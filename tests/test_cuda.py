"""The GPU paths on a real CUDA device against the CPU paths and the float64 references.

Skipped where CUDA is not available (this module is what `make gpu-check` runs on a GPU machine).
Every Triton kernel (normalize, GAP pooling, mosaic, the fused epilogue, the token mosaic, the
multiplicity-weighted attention, DetClassProbabilityMap, the fused RISE masks) runs on CUDA
tensors, as `backend="auto"` picks it there, and is compared with float64 loop references
(tests/reference.py, OpenCV for RISE) and the CPU kernels; then whole models (SmallCNN: the GAP shortcut; ConvHeadCNN: the mosaic path; a ViT: the
exact fast path) on the GPU against float64 references on the CPU, and `xaifast.explain` on the GPU
against the same call on the CPU.

TF32 is switched off in this module (cuDNN convolutions and matmuls in full float32), so float32
holds to 1e-4 relative (maps, against their largest value) and uint8 maps to within 1.

XAIFAST_CUDA_TESTS_DEVICE=cpu runs the same tests on CPU tensors with Triton's interpreter
(`gpu_check.py --cpu-rehearsal`: a check of this module where no GPU is at hand; the CUDA-only
dispatch test skips).
"""
import os

import torch

DEVICE = torch.device(os.environ.get("XAIFAST_CUDA_TESTS_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import copy  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch import nn  # noqa: E402

if ON_GPU and not torch.cuda.is_available():
    pytest.skip(f"CUDA is not available (torch {torch.__version__}): the GPU tests need an NVIDIA GPU and a CUDA "
                "build of torch (make gpu-check)", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed: the GPU kernels are Triton kernels")

import xaifast  # noqa: E402
from reference import (assert_maps_close, assert_u8_within_one, det_class_map_reference, mask_at,  # noqa: E402
                       normalize_reference, recipro_cam_reference, score)
from xaifast.kernels import (build_mosaic, det_class_map, gap_pooled, normalize_maps, pick_backend,  # noqa: E402
                             score_maps, token_layout, token_mosaic, weighted_attention)
from xaifast.zoo import ConvHeadCNN, SmallCNN  # noqa: E402
from xaifast.zoo.vit import small_vit  # noqa: E402

BACKEND = "auto" if ON_GPU else "triton"  # on CUDA "auto" must pick Triton (checked below)
CL = torch.channels_last
HALF_RTOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.fixture(autouse=True, scope="module")
def _full_float32():
    """No TF32: the GPU's float32 convolutions and matmuls are compared with float64 references."""
    if not ON_GPU:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _dev(t: torch.Tensor) -> torch.Tensor:
    return t.to(DEVICE)


def _cpu64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().to(torch.float64)


def _sizes(small, large):
    """Tiny shapes everywhere; realistic ones too on a GPU (the interpreter is slow)."""
    return small + (large if ON_GPU else [])


# ------------------------------------------------------------------------------------ dispatch
@pytest.mark.skipif(not ON_GPU, reason="dispatch on CUDA tensors")
def test_auto_picks_triton_on_cuda():
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert pick_backend("auto", torch.zeros(2, 2, device=DEVICE, dtype=dt)) == "triton"
    assert pick_backend("auto", torch.zeros(2, 2, device=DEVICE, dtype=torch.float64)) == "torch"


# ------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("shape", _sizes([(2, 3, 4, 5), (1, 1, 1, 1)], [(4, 1000, 7, 7), (4, 20, 23, 31)]),
                         ids=lambda s: "x".join(map(str, s)))
def test_normalize_matches_float64_reference(shape, rng):
    maps = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * rng.uniform(1e-3, 1e3))
    maps[0, 0] = 2.5  # a constant map -> zeros
    if shape[-1] > 1:
        maps[-1, -1, 0, 0] = float("nan")  # ignored in min / max, -> 0
    got = normalize_maps(_dev(maps), backend=BACKEND)
    assert got.device.type == DEVICE.type and got.dtype == torch.uint8
    got = got.cpu()
    finite = maps.clone()  # the NaN as the map's minimum: the same min / max, and 0 there
    finite[-1, -1] = torch.nan_to_num(maps[-1, -1], nan=float(np.nanmin(maps[-1, -1].numpy())))
    ref = normalize_reference(finite.numpy())
    assert_u8_within_one(got.numpy(), ref)
    assert torch.equal(got, normalize_maps(maps, backend="numba"))  # bit-identical to the CPU kernel


def _pooled_reference(f64: torch.Tensor, mask: str) -> torch.Tensor:
    """[B*H*W, C]: sum_q m_p(q) F[b, :, q] / (H*W) for every image b and cell p, float64."""
    B, C, H, W = f64.shape
    rows = []
    for b in range(B):
        for i in range(H):
            for j in range(W):
                rows.append((f64[b] * mask_at(H, W, i, j, mask)).sum((1, 2)) / (H * W))
    return torch.stack(rows)


@pytest.mark.parametrize("mask", ["1x1", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", _sizes([(2, 5, 3, 4)], [(4, 2048, 7, 7), (2, 64, 14, 9)]),
                         ids=lambda s: "x".join(map(str, s)))
def test_gap_pooling_matches_float64_reference(shape, dtype, mask):
    f = torch.randn(shape).to(dtype)
    got = gap_pooled(_dev(f).to(memory_format=CL), mask, backend=BACKEND)
    assert got.device.type == DEVICE.type
    ref = _pooled_reference(_cpu64(f), mask)  # on the (rounded) input values
    rtol = 1e-5 if dtype == torch.float32 else HALF_RTOL[dtype]
    assert_maps_close(_cpu64(got), ref, rtol=rtol)


@pytest.mark.parametrize("mask", ["1x1", "gaussian"])
@pytest.mark.parametrize("layout", ["contig", "cl"])
@pytest.mark.parametrize("shape,start,count", _sizes([((2, 3, 3, 5), 7, 20)], [((4, 64, 14, 14), 100, 500)]),
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_mosaic_matches_float64_reference(shape, start, count, layout, mask):
    B, C, H, W = shape
    f = torch.randn(shape)
    feature = _dev(f).to(memory_format=CL) if layout == "cl" else _dev(f)
    got = build_mosaic(feature, start, count, mask, backend=BACKEND)
    assert got.shape == (count, C, H, W) and got.device.type == DEVICE.type
    f64 = _cpu64(f)
    ref = torch.stack([f64[n // (H * W)] * mask_at(H, W, (n % (H * W)) // W, n % W, mask)
                       for n in range(start, start + count)])
    # mask weights are powers of two: the float32 products are exact
    assert torch.equal(_cpu64(got), ref), "mosaic differs from F * m_p"


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("shape", _sizes([(2, 3, 4, 5)], [(4, 7, 7, 1000), (2, 14, 14, 37)]),
                         ids=lambda s: "x".join(map(str, s)))
def test_epilogue_matches_float64_reference(shape, kind, rng):
    B, H, W, K = shape
    logits = torch.from_numpy(rng.standard_normal((B * H * W, K)).astype(np.float32) * 3)
    raw, u8 = score_maps(_dev(logits), B, H, W, kind, True, backend=BACKEND)
    ref = score(_cpu64(logits), kind).reshape(B, H, W, K).permute(0, 3, 1, 2)
    assert_maps_close(_cpu64(raw), ref, rtol=1e-5)
    assert_u8_within_one(u8.cpu().numpy(), normalize_reference(ref.numpy()))


@pytest.mark.parametrize("kind", ["dense", "compact"])
def test_token_mosaic_matches_float64(kind):
    H, W, A, mask = (14, 14, 1, "gaussian") if ON_GPU else (3, 4, 1, "gaussian")
    HW, N, C = H * W, A + H * W, (768 if ON_GPU else 6)
    src, bias = torch.randn(3, N, C), torch.randn(C)
    lay = token_layout(kind, H, W, A, mask, True)
    start, count = HW - 2, 2 * HW  # crosses an image boundary
    cells = torch.arange(start, start + count)
    rows = (cells // HW)[:, None] * N + torch.from_numpy(np.array(lay.index))[cells % HW]
    scale = torch.from_numpy(np.array(lay.scale)).double()[cells % HW]
    ref = _cpu64(src).reshape(-1, C)[rows] * scale[..., None] + _cpu64(bias)
    got = token_mosaic(_dev(src), lay, start, count, _dev(bias), backend=BACKEND)
    assert got.device.type == DEVICE.type
    torch.testing.assert_close(_cpu64(got), ref, rtol=1e-6, atol=1e-6)


def test_weighted_attention_equals_repeated_keys(rng):
    n, h, L, U, d = (64, 12, 1, 11, 64) if ON_GPU else (4, 3, 2, 7, 8)
    q, k, v = (torch.from_numpy(rng.standard_normal(s).astype(np.float32))
               for s in ((n, h, L, d), (n, h, U, d), (n, h, U, d)))
    counts = rng.integers(0, 5, (n, U))
    counts[:, 0] = np.maximum(counts[:, 0], 1)
    with np.errstate(divide="ignore"):
        log_count = torch.from_numpy(np.log(counts).astype(np.float32))
    got = weighted_attention(_dev(q), _dev(k), _dev(v), _dev(log_count), 0.125, backend=BACKEND)
    ref = torch.zeros(q.shape, dtype=torch.float64)
    for i in range(n):  # softmax attention over keys repeated counts[i, u] times, float64
        reps = torch.tensor(counts[i], dtype=torch.long)
        kk, vv = (torch.repeat_interleave(_cpu64(t[i]), reps, dim=1) for t in (k, v))
        ref[i] = torch.softmax(_cpu64(q[i]) @ kk.transpose(-1, -2) * 0.125, -1) @ vv
    torch.testing.assert_close(_cpu64(got), ref, rtol=1e-5, atol=1e-5)


DET_CASES = _sizes([(2, 3, [(7, 5), (4, 3)], [3, 1], None, True)],
                   [(2, 20, [(92, 124), (46, 62), (23, 31), (12, 16), (6, 8)], 9, None, True),  # ATSS-sized
                    (2, 16, [(40, 40), (20, 20), (10, 10)], 1, (16, 16), False)])  # (the reference is a Python loop)


@pytest.mark.parametrize("case", DET_CASES, ids=lambda c: f"b{c[0]}-k{c[1]}-l{len(c[2])}")
def test_det_class_map_matches_float64_reference(case, rng):
    B, K, shapes, A, size, softmax = case
    anchors = A if isinstance(A, list) else [A] * len(shapes)
    levels = [torch.from_numpy((-2.0 + 3.0 * rng.standard_normal((B, a * K, H, W))).astype(np.float32))
              for (H, W), a in zip(shapes, anchors)]
    got = det_class_map([_dev(x) for x in levels], A, size, softmax, backend=BACKEND)
    assert got.device.type == DEVICE.type and got.dtype == torch.float32
    ref = det_class_map_reference(levels, A, size, softmax)
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(_cpu64(got).numpy(), ref, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("hw,cells,count", _sizes([((13, 21), 3, 5)], [((224, 224), 8, 500), ((97, 130), 7, 64)]),
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_rise_masks_match_opencv_loop(hw, cells, count, rng):
    """The fused RISE kernel: masks against OpenCV's float64 per-mask loop, the masked batch against
    those masks times the image."""
    from xaifast.kernels.rise import draw_masks, rise_masks_reference
    from xaifast.kernels.triton_rise import rise_masked_batch_triton

    grids, shifts = draw_masks(rng, count, hw, cells, 0.5)
    x = torch.from_numpy(rng.uniform(-2.0, 2.0, (3,) + hw).astype(np.float32))
    batch, masks = rise_masked_batch_triton(_dev(torch.from_numpy(grids)), _dev(torch.from_numpy(shifts)), _dev(x),
                                            cells)
    assert batch.device.type == masks.device.type == DEVICE.type
    ref = rise_masks_reference(grids, shifts, hw, cells)
    np.testing.assert_allclose(masks.cpu().numpy().reshape(ref.shape), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_cpu64(batch).numpy(), ref[:, None] * x.double().numpy()[None], rtol=1e-6, atol=1e-6)


def test_rise_on_the_gpu_equals_the_cpu(monkeypatch):
    """rise() with the model on the GPU (the fused Triton kernel, picked by "auto" there) against the CPU."""
    from xaifast.algorithms.rise import rise
    from xaifast.kernels import triton_rise

    calls = []
    kernel = triton_rise.rise_masked_batch_triton
    monkeypatch.setattr(triton_rise, "rise_masked_batch_triton", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    model = SmallCNN(num_classes=5, width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    opts = dict(num_masks=1000 if ON_GPU else 24, num_cells=4, batch_size=100 if ON_GPU else 8, seed=3)
    cpu = rise(model, x, backend="torch", **opts).raw
    gpu = rise(copy.deepcopy(model).to(DEVICE), x, backend=BACKEND, **opts).raw
    assert len(calls) == 2 * -(-opts["num_masks"] // opts["batch_size"])  # every chunk, every image
    assert_maps_close(gpu, cpu, rtol=1e-4)


# ------------------------------------------------------------------------------------ models
def _cnn_reference(model: nn.Module, x: torch.Tensor, head) -> torch.Tensor:
    """Recipro-CAM of `model` at `features` in float64 on the CPU, one head call per cell."""
    m64 = copy.deepcopy(model).cpu().double().eval()
    with torch.no_grad():
        feature = m64.features(_cpu64(x))
    return recipro_cam_reference(feature, lambda f: head(m64, f), "1x1", "none")


CNNS = {
    "small_cnn-gap": (lambda: SmallCNN(num_classes=7, width=16), lambda m, f: m.classifier(m.pool(f).flatten(1))),
    "conv_head_cnn-mosaic": (lambda: ConvHeadCNN(num_classes=5, width=8),
                             lambda m, f: m.classifier(m.neck(f).mean(dim=(2, 3)))),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contig", "channels_last"])
@pytest.mark.parametrize("name", list(CNNS))
def test_cnn_maps_match_float64_reference(name, channels_last):
    make, head = CNNS[name]
    model = make().eval()
    for mod in model.modules():  # non-trivial batch-norm statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 64, 48)
    ref = _cnn_reference(model, x, head)
    gpu_model = copy.deepcopy(model).to(DEVICE)
    xd = _dev(x)
    if channels_last:
        gpu_model, xd = gpu_model.to(memory_format=CL), xd.to(memory_format=CL)
    got = xaifast.saliency_maps(gpu_model, xd, target_layer="features")
    assert_maps_close(_cpu64(got), ref, rtol=1e-4)
    cpu = xaifast.saliency_maps(model, x, target_layer="features")  # the CPU (Numba) path
    assert_maps_close(_cpu64(got), _cpu64(cpu), rtol=1e-4)


@pytest.mark.parametrize("name", list(CNNS))
def test_cnn_bfloat16_maps_follow_float64_reference(name):
    make, head = CNNS[name]
    model = make().eval()
    x = torch.randn(2, 3, 64, 64)
    ref = _cnn_reference(model, x, head)
    got = xaifast.saliency_maps(copy.deepcopy(model).to(DEVICE, torch.bfloat16), _dev(x).bfloat16(),
                                target_layer="features")
    assert got.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([_cpu64(got).flatten(), ref.flatten()]))[0, 1]
    assert corr > 0.98, f"bfloat16 maps correlate {float(corr):.4f} with the float64 reference"


def test_explain_on_the_gpu_equals_the_cpu():
    """The public API end to end (uint8 maps of ALL classes, predictions) on the GPU vs the CPU."""
    model = SmallCNN(num_classes=6).eval()
    x = torch.randn(5, 3, 64, 64)
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    cpu = list(xaifast.explain(model, x, cfg, batch_size=2))
    gpu = list(xaifast.explain(copy.deepcopy(model).to(DEVICE), x, cfg, batch_size=2))
    assert len(gpu) == len(cpu) == 5
    for a, b in zip(gpu, cpu):
        assert a.predicted == b.predicted and sorted(a.saliency_map) == sorted(b.saliency_map)
        for k in b.saliency_map:
            assert_u8_within_one(np.asarray(a.saliency_map[k]), np.asarray(b.saliency_map[k]))


def test_vit_fast_path_matches_float64_naive_reference():
    torch.manual_seed(0)
    model = small_vit(num_classes=9, img_size=64 if not ON_GPU else 96, depth=3).eval()
    size = 64 if not ON_GPU else 96
    x = torch.randn(2, 3, size, size)
    ref = xaifast.saliency_maps(copy.deepcopy(model).double(), x.double(), use_fast_path=False)
    got = xaifast.saliency_maps(copy.deepcopy(model).to(DEVICE), _dev(x))  # exact fast path, Triton kernels
    assert_maps_close(_cpu64(got), _cpu64(ref), rtol=1e-4)
    naive = xaifast.saliency_maps(copy.deepcopy(model).to(DEVICE), _dev(x), use_fast_path=False)
    assert_maps_close(_cpu64(naive), _cpu64(ref), rtol=1e-4)
