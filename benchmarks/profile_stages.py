"""Where the time of one xaifast Recipro-CAM call goes, stage by stage (not a pytest test).

    PYTHONPATH=... python -P benchmarks/profile_stages.py [--reps 7] [--mosaic-reps 3] [--no-mosaic]

Each stage is timed with time.perf_counter on the same input, the stages interleaved within
every repetition (so a busy machine slows them alike); min and median over the repetitions are
printed, with the process's CPU time / wall time during the stage (2.00 = both cores ours on a
2-core machine; well below that means other processes took CPU and that round is noisy).

GAP head (batch 16, target = last stage): plain forward; adapter forward (with hook); head
lookup; GAP-pooled vectors (Numba); rest of the head (fc) on [B*H*W, C]; fused epilogue (raw
only, as saliency_maps; raw + uint8, as explain); Recipro-CAM proper on the feature map (no
forward) for xaifast, the OTX-style loop and the float64 reference; the whole saliency_maps and
explain calls.
Non-GAP head (batch 2, target = stage 2): mosaic kernel, head on the mosaic chunks, epilogue,
against the OTX-style loop's mosaic and head, and the exported head against the eager modules.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xaifast  # noqa: E402
from xaifast.algorithms.recipro_cam import cells_per_chunk, masked_logits, recipro_cam  # noqa: E402
from xaifast.kernels import build_mosaic, gap_pooled, score_maps  # noqa: E402
from xaifast.adapters.classifier import ClassifierAdapter  # noqa: E402

from baselines import (_otx_mosaic, _otx_normalize, float64_head, otx_style_recipro_cam,  # noqa: E402
                       slow_reference)
from models import NON_GAP_TARGET, benchmark_input, gap_head, non_gap_head, resnet50_sized  # noqa: E402

ALL = xaifast.ExplainConfig(target_explain_group="ALL")


class Stages:
    def __init__(self):
        self.wall = {}
        self.util = {}

    def time(self, name, fn):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        self.wall.setdefault(name, []).append(wall)
        self.util.setdefault(name, []).append((time.process_time() - c0) / wall)
        return out

    def report(self, title, ref=None):
        print(f"\n{title}")
        print(f"{'stage':<46} {'min ms':>10} {'median ms':>10} {'% of ref':>9} {'cpu/wall':>9}")
        base = min(self.wall[ref]) if ref else None
        for name, walls in self.wall.items():
            share = f"{100 * min(walls) / base:8.1f}%" if base else ""
            print(f"{name:<46} {1e3 * min(walls):>10.1f} {1e3 * statistics.median(walls):>10.1f} {share:>9} "
                  f"{statistics.median(self.util[name]):>9.2f}")


def profile_gap(model, reps):
    x = benchmark_input(16)
    adapter = ClassifierAdapter(model)
    xaifast.saliency_maps(adapter, x, algorithm="recipro_cam")  # setup + warm-up
    list(xaifast.explain(adapter, x, config=ALL, batch_size=16))
    eager = gap_head(model)
    eager64 = float64_head(eager)
    s = Stages()
    for _ in range(reps):
        def plain():
            with torch.no_grad():
                return model(x).logits
        s.time("plain forward model(x)", plain)
        feature, _ = s.time("adapter.forward (forward + hook)", lambda: adapter.forward(x))
        head = s.time("adapter.head (cached lookup)", lambda: adapter.head(feature))
        b, c, h, w = feature.shape
        pooled = s.time("gap_pooled (Numba) -> [B*H*W, C]", lambda: gap_pooled(feature, "1x1"))
        with torch.no_grad():
            logits = s.time("head.pooled (fc) on [B*H*W, C]", lambda: head.pooled(pooled))
        s.time("masked_logits (pooled + fc, as called)", lambda: masked_logits(feature, head, "1x1"))
        s.time("score_maps raw only (softmax+transpose)", lambda: score_maps(logits, b, h, w, "softmax", False))
        s.time("score_maps raw+uint8 (fused epilogue)", lambda: score_maps(logits, b, h, w, "softmax", True))
        s.time("xaifast recipro_cam(feature) -> raw + uint8", lambda: recipro_cam(feature, head, "1x1", "softmax",
                                                                              normalize=True))
        s.time("OTX-style loop on the feature -> uint8", lambda: otx_style_recipro_cam(feature, eager))
        s.time("float64 reference on the feature -> raw", lambda: slow_reference(feature, eager64))
        s.time("TOTAL xaifast.saliency_maps(adapter, x)",
               lambda: xaifast.saliency_maps(adapter, x, algorithm="recipro_cam"))
        s.time("TOTAL list(xaifast.explain(adapter, x, ALL))",
               lambda: list(xaifast.explain(adapter, x, config=ALL, batch_size=16)))
    s.report(f"GAP head, batch 16, feature {list(feature.shape)}, logits [{b * h * w}, {logits.shape[1]}]; "
             "% of the plain forward's min", ref="plain forward model(x)")


def profile_mosaic(model, reps):
    x = benchmark_input(2)
    adapter = ClassifierAdapter(model, target_layer=NON_GAP_TARGET)
    list(xaifast.explain(adapter, x, config=ALL, batch_size=2))  # setup + warm-up
    eager = non_gap_head(model)
    s = Stages()
    feature, _ = adapter.forward(x)
    head = adapter.head(feature)
    b, c, h, w = feature.shape
    cells = b * h * w
    step = cells_per_chunk(c * h * w * feature.element_size(), None, None)
    print(f"\nmosaic path: feature {list(feature.shape)}, {cells} cells, xaifast chunk = {step} cells "
          f"(default memory budget), OTX chunk = {h * w} cells (one image)")
    for _ in range(reps):
        def plain():
            with torch.no_grad():
                return model(x).logits
        s.time("plain forward model(x)", plain)
        feature, _ = s.time("adapter.forward (forward + hook)", lambda: adapter.forward(x))
        with torch.no_grad():
            def xaifast_chunks():
                mosaics = [build_mosaic(feature, start, min(step, cells - start), "1x1")
                           for start in range(0, cells, step)]
                return mosaics
            mosaics = s.time(f"build_mosaic (Numba), chunks of {step}", xaifast_chunks)
            outs = s.time("exported head.full on xaifast chunks", lambda: [head(m) for m in mosaics])
            s.time("eager nn.Module head on xaifast chunks", lambda: [eager(m) for m in mosaics])
            per_image = s.time("build_mosaic (Numba), chunks of H*W=196",
                               lambda: [build_mosaic(feature, n, h * w, "1x1") for n in range(0, cells, h * w)])
            s.time("exported head.full on 196-cell chunks", lambda: [head(m) for m in per_image])
            s.time("eager nn.Module head on 196-cell chunks", lambda: [eager(m) for m in per_image])
            logits = torch.cat(outs)
            s.time("score_maps raw+uint8 (fused epilogue)", lambda: score_maps(logits, b, h, w, "softmax", True))
            otx_m = s.time("OTX: _otx_mosaic (torch, per image)", lambda: [_otx_mosaic(f) for f in feature])
            otx_l = s.time("OTX: eager head on its mosaics", lambda: [eager(m) for m in otx_m])

            def otx_tail():
                return [_otx_normalize(torch.softmax(lg, 1).transpose(1, 0).reshape(-1, h * w)) for lg in otx_l]
            s.time("OTX: softmax + transpose + normalize", otx_tail)
        s.time("TOTAL list(xaifast.explain(adapter, x, ALL))",
               lambda: list(xaifast.explain(adapter, x, config=ALL, batch_size=2)))
        s.time("TOTAL OTX-style (forward + loop)", lambda: otx_style_recipro_cam(adapter.forward(x)[0], eager))
    s.report("non-GAP head (stage 3 + pool + fc), batch 2; % of the xaifast explain min",
             ref="TOTAL list(xaifast.explain(adapter, x, ALL))")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--mosaic-reps", type=int, default=3)
    parser.add_argument("--no-mosaic", action="store_true")
    parser.add_argument("--no-gap", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, xaifast from "
          f"{os.path.dirname(xaifast.__file__)}")
    model = resnet50_sized()
    if not args.no_gap:
        profile_gap(model, args.reps)
    if not args.no_mosaic:
        profile_mosaic(model, args.mosaic_reps)


if __name__ == "__main__":
    main()
