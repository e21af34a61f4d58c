"""RISE and insertion/deletion AUC: xaifast's batched implementations against the plain
one-inference-per-perturbed-image loops OpenVINO XAI 1.1 runs (its algorithm, re-created here on
the same OpenVINO-compiled model: batch 1 per mask, float64 accumulation of every class's map per
mask; 2 x (steps + 1) single inferences per map), in one run, on the same model file.

    .venv/bin/python -P -m pytest benchmarks/test_bench_metrics.py --benchmark-only -s

Model: a SmallCNN (4 strided convs, 10 classes) exported to ONNX at 224 x 224, run by OpenVINO
(f32) through `xaifast.engines.scorer` in both rows. OpenVINO XAI itself is not run here (its venv,
benchmarks/.venv-ovxai, was not built for this benchmark): the baseline is its loop on our runtime.
Settings (env): XAIFAST_BENCH_RISE_MASKS (default 1000; OpenVINO XAI's default is 5000), images 2.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from xaifast import metrics
from xaifast.algorithms.rise import rise
from xaifast.engines.scorer import as_scorer
from xaifast.kernels.rise import MaskMaker, draw_masks
from xaifast.zoo import SmallCNN

MASKS = int(os.environ.get("XAIFAST_BENCH_RISE_MASKS", "1000"))
SIZE, IMAGES, STEPS = 224, 2, 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10).eval()
    x = torch.randn(IMAGES, 3, SIZE, SIZE)
    path = tmp_path_factory.mktemp("bench_metrics") / "small.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(path), input_names=["x"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return {"path": str(path), "x": x}


def rise_loop(scorer, x: torch.Tensor) -> np.ndarray:
    """OpenVINO XAI 1.1's RISE loop: per image, per mask one inference, sal += scores[:, None, None] * mask."""
    h, w = x.shape[2:]
    make = MaskMaker((h, w), 8)
    out = []
    for b in range(x.shape[0]):
        rng = np.random.default_rng(0)
        sal = None
        for _ in range(MASKS):
            g, s = draw_masks(rng, 1, (h, w), 8, 0.5)
            mask = make(g, s)[0].numpy()
            scores = scorer(torch.from_numpy(mask[None, None] * x[b:b + 1].numpy())).numpy()[0].astype(np.float64)
            term = scores.reshape(-1, 1, 1) * mask
            sal = term if sal is None else sal + term
        out.append(sal)
    return np.stack(out)


def auc_loop(scorer, x: torch.Tensor, maps: np.ndarray, classes) -> list:
    """OpenVINO XAI 1.1's insertion/deletion: per map, per step, one insertion and one deletion inference."""
    res = []
    for b, k in enumerate(classes):
        order = np.argsort(-maps[b].reshape(-1), kind="stable")
        ys, xs = np.unravel_index(order, maps[b].shape)
        ins, dels = [], []
        for i in range(STEPS + 1):
            n = int(i * SIZE * SIZE / STEPS)
            a = np.zeros_like(x[b].numpy())
            d = x[b].numpy().copy()
            a[:, ys[:n], xs[:n]] = d[:, ys[:n], xs[:n]]
            d[:, ys[:n], xs[:n]] = 0
            ins.append(scorer(torch.from_numpy(a[None])).numpy()[0, k])
            dels.append(scorer(torch.from_numpy(d[None])).numpy()[0, k])
        res.append((metrics.auc(ins), metrics.auc(dels)))
    return res


def test_rise_vs_plain_loop(benchmark, setup):
    x, batched, single = setup["x"], as_scorer(setup["path"], batch_size=64), as_scorer(setup["path"], batch_size=1)
    t0 = time.perf_counter()
    ref = rise_loop(single, x)
    loop_s = time.perf_counter() - t0
    fast = benchmark.pedantic(lambda: rise(batched, x, num_masks=MASKS, batch_size=64).raw, rounds=1, iterations=1)
    fast_s = benchmark.stats.stats.mean
    np.testing.assert_allclose(fast.numpy(), ref / (MASKS * 0.5), rtol=2e-3, atol=1e-4)
    benchmark.extra_info.update(loop_seconds=loop_s, ratio=loop_s / fast_s, masks=MASKS)
    print(f"\nRISE {MASKS} masks x {IMAGES} images: plain loop {loop_s:.2f} s, xaifast {fast_s:.2f} s, "
          f"{loop_s / fast_s:.1f}x")


def test_insertion_deletion_vs_plain_loop(benchmark, setup):
    x, batched, single = setup["x"], as_scorer(setup["path"], batch_size=64), as_scorer(setup["path"], batch_size=1)
    maps = np.random.default_rng(0).random((IMAGES, SIZE, SIZE))
    classes = [1, 7]
    t0 = time.perf_counter()
    ref = auc_loop(single, x, maps, classes)
    loop_s = time.perf_counter() - t0
    out = benchmark.pedantic(lambda: metrics.insertion_deletion_auc(batched, x, maps[:, None], steps=STEPS,
                                                                    targets=classes), rounds=1, iterations=1)
    fast_s = benchmark.stats.stats.mean
    np.testing.assert_allclose([(d["insertion"], d["deletion"]) for d in out["per_map"]], ref, rtol=1e-3)
    benchmark.extra_info.update(loop_seconds=loop_s, ratio=loop_s / fast_s)
    print(f"\ninsertion/deletion {IMAGES} maps x {2 * (STEPS + 1)} inputs: plain loop {loop_s:.2f} s, "
          f"xaifast {fast_s:.2f} s, {loop_s / fast_s:.1f}x")
