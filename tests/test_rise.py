"""Black-box RISE: batched masks against OpenCV's per-mask loop, maps against a one-inference-per-mask
float64 loop, the peak in the known region of a region-mean model, every model form, the pipeline."""
import numpy as np
import pytest
import torch

import xaifast
from xaifast.algorithms.rise import RiseError, rise
from xaifast.kernels.rise import MaskMaker, draw_masks, rise_accumulate_reference, rise_masks_reference

from test_metrics import REGIONS, RegionMean, model_np  # noqa: E402  (the tests folder is on sys.path)


@pytest.mark.parametrize("hw,cells", [((16, 16), 8), ((13, 21), 4), ((224, 224), 8), ((7, 5), 3), ((10, 10), 1)])
def test_masks_match_opencv_loop(hw, cells):
    rng = np.random.default_rng(3)
    grids, shifts = draw_masks(rng, 9, hw, cells, 0.5)
    got = MaskMaker(hw, cells)(grids, shifts).numpy()
    want = rise_masks_reference(grids, shifts, hw, cells)
    assert got.shape == (9,) + hw
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_draws_follow_openvino_xai_order():
    """Same generator calls, same order as OpenVINO XAI 1.1's _generate_mask: grid, then the two shifts."""
    hw, cells, p = (30, 20), 6, 0.3
    grids, shifts = draw_masks(np.random.default_rng(7), 5, hw, cells, p)
    rng = np.random.default_rng(7)
    cell = np.ceil(np.array(hw) / cells)
    for g, s in zip(grids, shifts):
        np.testing.assert_array_equal(g, (rng.random((cells, cells)) < p).astype(np.float32))
        assert tuple(s) == (rng.integers(0, cell[0]), rng.integers(0, cell[1]))


@pytest.mark.parametrize("hw,cells,masks,batch", [((16, 20), 4, 37, 8), ((9, 9), 3, 10, 64)])
def test_rise_matches_plain_loop(hw, cells, masks, batch):
    x = np.random.default_rng(1).uniform(0, 1, size=(2, 3) + hw).astype(np.float32)
    regions = REGIONS if hw == (16, 20) else [(slice(1, 4), slice(2, 6)), (slice(5, 8), slice(0, 3))]

    def score(a):
        a = np.asarray(a, dtype=np.float64)
        z = [8.0 * a[:, :, r, c].mean(axis=(1, 2, 3)) for r, c in regions] + [np.full(a.shape[0], 2.0)]
        z = np.stack(z, axis=1)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    got = rise(score, torch.from_numpy(x), num_masks=masks, num_cells=cells, prob=0.5, seed=4, batch_size=batch).raw
    grids, shifts = draw_masks(np.random.default_rng(4), masks, hw, cells, 0.5)
    mask_ref = rise_masks_reference(grids, shifts, hw, cells)
    for b in range(2):
        want = rise_accumulate_reference(x[b].astype(np.float64), mask_ref, score, [0, 1, 2]) / (masks * 0.5)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-4, atol=1e-5)
    sub = rise(score, torch.from_numpy(x), targets=[[2, 0], [1, 1]], num_masks=masks, num_cells=cells, seed=4,
               batch_size=batch).raw
    np.testing.assert_allclose(sub[0], got[0, [2, 0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sub[1], got[1, [1, 1]], rtol=1e-5, atol=1e-6)


def test_rise_peaks_in_the_known_region():
    x = torch.rand(1, 3, 16, 20) * 0.5 + 0.5
    maps = rise(RegionMean(), x, num_masks=600, num_cells=4, seed=0).raw[0]  # softmax scores of the module
    for k, (r, c) in enumerate(REGIONS):
        y, xx = np.unravel_index(int(torch.argmax(maps[k])), maps[k].shape)
        assert r.start <= y < r.stop and c.start <= xx < c.stop, (k, y, xx)
    u8 = rise(RegionMean(), x, num_masks=64, num_cells=4, normalize=True).normalized
    assert u8.dtype == torch.uint8 and int(u8.max()) == 255


def test_rise_model_forms_agree(tmp_path):
    """nn.Module, numpy callable, ONNX file: the same maps (softmax scores)."""
    x = torch.rand(2, 3, 16, 20)
    a = rise(RegionMean(), x, num_masks=50, num_cells=4, batch_size=16).raw
    b = rise(model_np, x, num_masks=50, num_cells=4, batch_size=7).raw
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    path = tmp_path / "region.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(RegionMean(), (x[:1],), str(path), input_names=["x"], output_names=["logits"], dynamo=False)
    c = rise(str(path), x, num_masks=50, num_cells=4, batch_size=16).raw
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


def test_rise_bad_settings():
    x = torch.rand(1, 3, 16, 20)
    for kwargs, match in [(dict(num_masks=0), "num_masks"), (dict(num_cells=0), "num_cells"), (dict(prob=0.0), "prob"),
                          (dict(targets=[5]), "out of range")]:
        with pytest.raises(RiseError, match=match):
            rise(model_np, x, **kwargs)
    with pytest.raises(xaifast.XaifastError, match="IMAGE"):
        list(xaifast.explain(model_np, x, xaifast.ExplainConfig(algorithm="rise", target_explain_group="IMAGE")))


def test_explain_pipeline_with_rise():
    """algorithm="rise" in xaifast.explain: maps at the input's size, predictions from the scores,
    the same maps as the function."""
    x = torch.rand(3, 3, 16, 20)
    cfg = xaifast.ExplainConfig(algorithm="rise", target_explain_group="PREDICTIONS")
    exs = list(xaifast.explain(RegionMean(), x, cfg, num_masks=40, num_cells=4, seed=2, batch_size=2))
    want = xaifast.functional.normalize(rise(RegionMean(), x, num_masks=40, num_cells=4, seed=2).raw)
    for b, ex in enumerate(exs):
        k = int(np.argmax(model_np(x[b:b + 1].numpy())[0]))
        assert ex.predicted == [k] and list(ex.saliency_map) == [k]
        assert np.abs(ex.saliency_map[k].astype(int) - want[b, k].numpy().astype(int)).max() <= 1
    raw = xaifast.saliency_maps(model_np, x, algorithm="rise", num_masks=40, num_cells=4, seed=2)
    assert raw.shape == (3, 3, 16, 20)


def test_explain_rise_accumulates_only_the_asked_classes():
    """PREDICTIONS and custom classes: RISE makes maps of those classes only (not K x H x W per
    image), equal to the same classes of the full computation; ALL keeps every class."""
    from xaifast.engines import make_engine
    from xaifast.engines.base import Request

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(32, 12)).eval()
    x = torch.rand(3, 3, 16, 20)
    opts = dict(num_masks=48, num_cells=4, seed=1)
    full = rise(model, x, **opts).raw  # every class [3, 12, 16, 20]
    full_u8 = xaifast.functional.normalize(full)
    engine = make_engine(model, xaifast.ExplainConfig(algorithm="rise"))
    pred = torch.softmax(model(x), 1).argmax(1).tolist()

    req = engine.resolve(Request("rise", normalize=False, rise=dict(opts, classes="predicted")))
    res = engine.explain_batch(x, req)
    assert res.map_classes == sorted(set(pred)) and res.maps.raw.shape[1] == len(set(pred)) < 12
    torch.testing.assert_close(res.maps.raw, full[:, res.map_classes], rtol=1e-5, atol=1e-7)

    cfg = xaifast.ExplainConfig(algorithm="rise", target_explain_group="PREDICTIONS")
    for b, ex in enumerate(xaifast.explain(model, x, cfg, **opts)):
        assert list(ex.saliency_map) == [pred[b]]
        assert np.abs(ex.saliency_map[pred[b]].astype(int) - full_u8[b, pred[b]].numpy().astype(int)).max() <= 1

    cfg = xaifast.ExplainConfig(algorithm="rise", target_explain_group="CUSTOM", target_classes=[7, 2])
    req = engine.resolve(Request("rise", normalize=False, rise=dict(opts, classes=[7, 2])))
    assert engine.explain_batch(x, req).map_classes == [2, 7]
    for b, ex in enumerate(xaifast.explain(model, x, cfg, **opts)):
        assert list(ex.saliency_map) == [7, 2]
        for k in (7, 2):
            assert np.abs(ex.saliency_map[k].astype(int) - full_u8[b, k].numpy().astype(int)).max() <= 1

    raw = xaifast.saliency_maps(model, x, algorithm="rise", **opts)  # ALL: every class
    torch.testing.assert_close(torch.as_tensor(raw), full, rtol=1e-5, atol=1e-7)
