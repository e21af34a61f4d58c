"""OpenVINO XAI 1.1's RISE and InsertionDeletionAUC on an OpenVINO IR, timed, as a worker: run inside
OpenVINO XAI's own virtual environment (XAIFAST_OVXAI_VENV, e.g. /work/ovxai-venv: openvino-xai==1.1.0,
numpy<2), never in the project's .venv. benchmarks/test_bench_ovxai_metrics.py starts it once and
sends it one task at a time, so that its rows and xaifast's are interleaved on a shared machine.

    python ovxai_metrics_runner.py --ir model.xml --precision f32|default < tasks.jsonl

One JSON task per stdin line, one JSON answer per stdout line (seconds = the library call only):
    {"op": "rise", "input": "x.npy" [1, 3, H, W] preprocessed, "targets": [k] | null, "masks": M,
     "cells": 8, "prob": 0.5, "seed": 0, "out": "map.npy"}
        -> `openvino_xai.methods.black_box.rise.RISE(...).generate_saliency_map(..., scale_output=False)`
           (postprocess: softmax of the model's first output, as OpenVINO XAI's examples); the raw
           map(s) [T, H, W] saved to "out"
    {"op": "aise", "input": "x.npy" [1, 3, H, W] preprocessed, "targets": [k], "out": "map.npy"}
        -> `AISEClassification(model, postprocess_fn=softmax).generate_saliency_map(x, [k], scale_output=False)`
           (preset balance: 50 iterations per kernel, 3 kernel widths); the raw maps [T, H, W] saved
    {"op": "auc", "image": "photo.npy" [H, W, 3] float32 (the photo, 0..255), "map": "map.npy" [H, W],
     "target": k, "steps": 30}
        -> `openvino_xai.metrics.InsertionDeletionAUC(model, preprocess_fn, postprocess_fn)(map, k, image,
           steps)`; preprocess_fn = (image - mean) / std, HWC -> NCHW (what xaifast's Preprocess does)
    {"op": "quit"}
Precision "f32" patches `openvino.Core.compile_model` to add INFERENCE_PRECISION_HINT=f32 (RISE and
the metric compile their own models); "default" leaves OpenVINO's default (bf16 on AMX machines).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ir", required=True)
    p.add_argument("--precision", default="f32", choices=["default", "f32"])
    p.add_argument("--mean", default="127,127,127")
    p.add_argument("--std", default="128,128,128")
    args = p.parse_args()

    import numpy as np
    import openvino as ov

    if args.precision != "default":
        original = ov.Core.compile_model

        def compile_model(self, model, device_name=None, config=None, **kw):
            merged = dict(config or {})
            merged.setdefault("INFERENCE_PRECISION_HINT", args.precision)
            return original(self, model, device_name or "CPU", merged, **kw)

        ov.Core.compile_model = compile_model

    from openvino_xai.methods.black_box.aise.classification import AISEClassification
    from openvino_xai.methods.black_box.rise import RISE
    from openvino_xai.metrics import InsertionDeletionAUC

    mean = np.array([float(v) for v in args.mean.split(",")], dtype=np.float32)
    std = np.array([float(v) for v in args.std.split(",")], dtype=np.float32)

    def softmax(out) -> np.ndarray:
        logits = np.asarray(out[0], dtype=np.float32)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def preprocess(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None])

    model = ov.Core().read_model(args.ir)
    rise = RISE(model, postprocess_fn=softmax)
    metric = InsertionDeletionAUC(model, preprocess_fn=preprocess, postprocess_fn=softmax)
    aise = AISEClassification(model, postprocess_fn=softmax)
    info = {"ready": True, "openvino": ov.get_version(), "numpy": np.__version__,
            "precision": str(rise.model_compiled.get_property("INFERENCE_PRECISION_HINT")),
            "hint": str(rise.model_compiled.get_property("PERFORMANCE_HINT"))}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        op = task.get("op")
        if op == "quit":
            break
        load = os.getloadavg()[0]
        if op == "rise":
            x = np.load(task["input"]).astype(np.float32)
            t0 = time.perf_counter()
            maps = rise.generate_saliency_map(x, target_indices=task.get("targets"), num_masks=int(task["masks"]),
                                              num_cells=int(task.get("cells", 8)), prob=float(task.get("prob", 0.5)),
                                              seed=int(task.get("seed", 0)), scale_output=False)
            seconds = time.perf_counter() - t0
            if isinstance(maps, dict):
                maps = np.stack([maps[k] for k in task["targets"]])
            maps = np.asarray(maps, dtype=np.float64)
            np.save(task["out"], maps[0] if maps.ndim == 4 else maps)  # all classes: [1, K, H, W] -> [K, H, W]
            answer = {"seconds": seconds}
        elif op == "aise":
            x = np.load(task["input"]).astype(np.float32)
            t0 = time.perf_counter()
            maps = aise.generate_saliency_map(x, target_indices=task["targets"], scale_output=False)
            seconds = time.perf_counter() - t0
            np.save(task["out"], np.stack([np.asarray(maps[k], dtype=np.float64) for k in task["targets"]]))
            answer = {"seconds": seconds}
        elif op == "auc":
            image = np.load(task["image"]).astype(np.float32)
            sal = np.load(task["map"])
            t0 = time.perf_counter()
            res = metric(sal, int(task["target"]), image, steps=int(task.get("steps", 30)))
            seconds = time.perf_counter() - t0
            answer = {"seconds": seconds, "insertion": float(res["insertion"]), "deletion": float(res["deletion"])}
        else:
            answer = {"error": f"unknown op {op!r}"}
        answer["loadavg_before"] = load
        answer["loadavg_after"] = os.getloadavg()[0]
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
