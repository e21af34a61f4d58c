"""Black-box AISE: the batched, concurrent optimizations against OpenVINO XAI's sequential algorithm
written out (one DIRECT run and one inference at a time), the peak in the known region of a
region-mean model, every model form, bad settings, errors that stop the run, the pipeline."""
import numpy as np
import pytest
import torch

import xaifast
from xaifast.algorithms.aise import AiseError, GaussianMasks, aise, settings

from reference import aise_reference
from test_metrics import REGIONS, RegionMean, model_np  # noqa: E402  (the tests folder is on sys.path)


def _one(x):
    return model_np(x)[0]


@pytest.mark.parametrize("hw,iterations,widths,batch", [((16, 20), 12, (0.1, 0.25), 8), ((18, 18), 20, (0.15,), 64),
                                                        ((11, 23), 9, (0.1, 0.175, 0.25), 3)])
def test_aise_equals_sequential_reference(hw, iterations, widths, batch):
    rng = np.random.default_rng(hw[0] * 100 + iterations)
    x = rng.normal(size=(2, 3) + hw).astype(np.float32)
    targets = [[0, 1], [1, 2]]
    got = aise(model_np, torch.from_numpy(x), targets=targets, num_iterations_per_kernel=iterations,
               kernel_widths=widths, batch_size=batch).raw.numpy()
    assert got.shape == (2, 2) + hw and got.dtype == np.float32
    for b in range(2):
        for t, k in enumerate(targets[b]):
            want = aise_reference(_one, x[b].astype(np.float64), k, iterations, widths)
            np.testing.assert_allclose(got[b, t], want, rtol=1e-5, atol=1e-6)


def test_masks_are_openvino_xais():
    """GaussianPerturbationMask of OpenVINO XAI 1.1, written out: meshgrid(w, h), the first parameter
    on the columns; A exp(-(B + C)) / max."""
    h, w = 13, 17
    points = np.array([[0.2, 0.7, 0.1], [1.0, 0.0, 0.25], [0.5, 0.5, 0.175]])
    got = GaussianMasks((h, w))(points)
    mh_grid, mw_grid = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    for p, g in zip(points, got):
        mh, mw, s = p
        want = 1 / (2 * np.pi * s * s) * np.exp(-((mh_grid - mh) ** 2 / (2 * s ** 2) + (mw_grid - mw) ** 2 / (2 * s ** 2)))
        np.testing.assert_array_equal(g, np.clip(want / want.max(), 0, 1))
    assert got[1].argmax() == w - 1  # (1, 0): the top right corner (last column, first row)


def test_presets():
    assert settings("speed") == (20, tuple(np.linspace(0.1, 0.25, 3)))
    assert settings("balance")[0] == 50 and settings("quality") == (50, tuple(np.linspace(0.075, 0.25, 5)))
    assert settings("balance", 7, [0.2]) == (7, (0.2,))


def test_aise_peaks_in_the_known_region():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.abs(rng.normal(size=(1, 3, 16, 20))).astype(np.float32) + 0.5)
    for k, (rows, cols) in enumerate(REGIONS):
        smap = aise(RegionMean(), x, targets=[k], preset="speed").raw[0, 0].numpy()
        i, j = np.unravel_index(smap.argmax(), smap.shape)
        assert rows.start - 2 <= i < rows.stop + 2 and cols.start - 2 <= j < cols.stop + 2, (k, i, j)
        inside = smap[rows, cols].mean()
        assert inside > 2 * np.delete(smap.ravel(), np.ravel_multi_index(np.mgrid[rows, cols].reshape(2, -1),
                                                                         smap.shape)).mean()


def test_aise_model_forms_agree(tmp_path):
    x = torch.rand(2, 3, 16, 20) + 0.2
    opts = dict(targets=[0, 1], num_iterations_per_kernel=10, kernel_widths=[0.2])
    a = aise(RegionMean(), x, batch_size=16, **opts).raw
    b = aise(model_np, x, batch_size=5, **opts).raw
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    path = tmp_path / "region.onnx"
    torch.onnx.export(RegionMean(), torch.rand(1, 3, 16, 20), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}}, dynamo=False)
    c = aise(str(path), x, batch_size=16, **opts).raw
    torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-4)


def test_fewer_model_calls_than_points():
    """The points of concurrent optimizations share model calls; DIRECT's points past the budget are
    never scored."""
    calls = []

    def counting(x):
        calls.append(len(x))
        return model_np(x)

    x = torch.rand(2, 3, 16, 20)
    aise(counting, x, targets=[[0, 1], [1, 2]], num_iterations_per_kernel=10, kernel_widths=[0.1, 0.2], batch_size=64)
    images = sum(calls) - 2  # the scores of x itself
    assert images == 2 * 2 * 2 * 2 * 10  # images x classes x widths x (keep, drop) x iterations
    assert len(calls) <= 1 + 12  # one call per round of DIRECT points (8 optimizations at a time)


def test_aise_bad_settings_and_errors():
    x = torch.rand(1, 3, 16, 20)
    for kwargs in (dict(preset="fast"), dict(num_iterations_per_kernel=0), dict(kernel_widths=[0.1, -1]),
                   dict(solver_epsilon=-1)):
        with pytest.raises(AiseError):
            aise(model_np, x, **kwargs)
    with pytest.raises(AiseError, match="float model inputs"):
        aise(model_np, torch.zeros(1, 3, 16, 20, dtype=torch.uint8))

    def broken(xb):
        if len(xb) > 1:
            raise RuntimeError("the model broke")
        return model_np(xb)

    with pytest.raises(RuntimeError, match="the model broke"):  # raised once, every optimization stopped
        aise(broken, x, targets=[0, 1], num_iterations_per_kernel=5, kernel_widths=[0.1, 0.2])
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("xaifast-aise")]


def test_explain_pipeline_with_aise():
    x = torch.rand(2, 3, 16, 20) + 0.2
    cfg = xaifast.ExplainConfig(algorithm="aise", target_explain_group="PREDICTIONS")
    got = list(xaifast.explain(RegionMean(), x, cfg, preset="speed", num_iterations_per_kernel=8))
    assert len(got) == 2
    for b, e in enumerate(got):
        (k,) = e.predicted
        want = aise(RegionMean(), x[b:b + 1], targets=[k], preset="speed", num_iterations_per_kernel=8,
                    normalize=True).normalized[0, 0].numpy()
        np.testing.assert_array_equal(np.asarray(e.saliency_map[k]), want)
    raw = xaifast.saliency_maps(model_np, x, algorithm="aise", num_iterations_per_kernel=4, kernel_widths=[0.2])
    assert tuple(raw.shape) == (2, 3, 16, 20)


def test_aise_equals_openvino_xai(tmp_path):
    """OpenVINO XAI 1.1's AISEClassification itself (its venv, tests/ovxai_env.py), the region-mean model
    in place of its compiled model on both sides: the same maps, so the same DIRECT points and the same
    kernel density estimate. (The first `num_iterations_per_kernel` points count on both sides; ours
    stops each optimization there.)"""
    from ovxai_env import run_tool

    rng = np.random.default_rng(5)
    x = (np.abs(rng.normal(size=(2, 3, 16, 20))) + 0.3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    regions = [[r.start, r.stop, c.start, c.stop] for r, c in REGIONS]
    import json

    for iterations, widths in ((None, None), (13, [0.12, 0.3])):
        args = ["--aise-region-model", json.dumps(regions), "--input", tmp_path / "x.npy", "--maps", tmp_path / "m.npy",
                "--targets", 0, 1]
        if iterations:
            args += ["--aise-iterations", iterations, "--aise-widths", *widths]
        run_tool(*args)
        theirs = np.load(tmp_path / "m.npy")
        ours = aise(model_np, torch.from_numpy(x), targets=[0, 1], num_iterations_per_kernel=iterations,
                    kernel_widths=widths).raw.numpy()
        assert ours.shape == theirs.shape == (2, 2, 16, 20)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_aise_warns_about_many_classes():
    many = lambda x: np.tile(model_np(x), (1, 4))  # noqa: E731  (12 classes)
    with pytest.warns(UserWarning, match="12 classes per image.*PREDICTIONS"):
        aise(many, torch.rand(1, 3, 16, 20), num_iterations_per_kernel=2, kernel_widths=[0.2])
