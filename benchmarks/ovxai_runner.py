"""OpenVINO XAI 1.1 on an OpenVINO IR, timed: run inside the separate virtual environment that
benchmarks/test_bench_openvino_engine.py creates (benchmarks/.venv-ovxai: openvino-xai==1.1.0 needs
numpy 1.x and pins openvino-dev 2024.4), never in the project's .venv.

    python ovxai_runner.py --ir plain.xml --input x.npy --precision f32|default --rounds 3

Explainer: white-box Recipro-CAM (`Method.RECIPROCAM`, target layer auto-detected, scaling to
uint8 embedded in the graph, as OpenVINO XAI does by default), all classes (`targets=-1`), one image
per call (OpenVINO XAI's Recipro-CAM graph takes batch 1). "explain" rounds keep the low-resolution
maps (`resize=False, colormap=False`, like xaifast's postprocess=False); one "explain_postprocess"
round explains each image's `--targets` class (top-1), resized to the input size and colormapped
(OpenVINO XAI's defaults), and saves the map as a file (`Explanation.save`) under `--dump-dir`. The "floor" rounds run the
plain IR on the same runtime the same way (one image per synchronous call), and batched with
async requests (THROUGHPUT hint), for reference.

Precision: "default" compiles as OpenVINO XAI does (no config: the CPU's default precision, bf16 on
AVX512-BF16 machines); "f32" patches `openvino.Core.compile_model` to add
INFERENCE_PRECISION_HINT=f32. Prints one JSON line: seconds per round of `--images` images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ir", required=True)
    p.add_argument("--input", required=True, help=".npy float32 [N, 3, H, W], preprocessed")
    p.add_argument("--precision", default="default", choices=["default", "f32"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="batch of the async floor rows")
    p.add_argument("--targets", default=None, help=".npy int [N]: the class per image of the postprocess round")
    p.add_argument("--dump-dir", default=None, help="where the postprocess round saves its maps")
    args = p.parse_args()

    import numpy as np
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer import ExplainMode

    config = {} if args.precision == "default" else {"INFERENCE_PRECISION_HINT": args.precision}
    if config:
        original = ov.Core.compile_model

        def compile_model(self, model, device_name=None, config=None, **kw):
            merged = dict(config or {})
            merged.setdefault("INFERENCE_PRECISION_HINT", args.precision)
            return original(self, model, device_name or "CPU", merged, **kw)

        ov.Core.compile_model = compile_model

    x = np.load(args.input).astype(np.float32)
    n = x.shape[0]
    core = ov.Core()
    model = core.read_model(args.ir)
    # static image size, dynamic batch: OpenVINO XAI reads the target layer's C, H, W from the graph
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, *x.shape[1:]])})
    t0 = time.perf_counter()
    explainer = xai.Explainer(model=model, task=xai.Task.CLASSIFICATION, explain_mode=ExplainMode.WHITEBOX,
                              explain_method=xai.Method.RECIPROCAM, embed_scaling=True)
    setup_s = time.perf_counter() - t0
    compiled_xai = explainer.method.model_compiled
    hint = str(compiled_xai.get_property("PERFORMANCE_HINT"))
    precision = str(compiled_xai.get_property("INFERENCE_PRECISION_HINT"))

    def explain(**kw):
        out = None
        for i in range(n):
            out = explainer(x[i:i + 1], targets=-1, **kw)
        return out

    plain = core.compile_model(model, "CPU", {})  # default hint (LATENCY), patched precision
    request = plain.create_infer_request()

    def floor_b1():
        for i in range(n):
            request.infer({0: x[i:i + 1]})

    batched = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    depth = int(batched.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = [batched.create_infer_request() for _ in range(depth + 1)]

    def floor_async():
        pending = []
        for k, i in enumerate(range(0, n, args.batch)):
            r = requests[k % len(requests)]
            r.start_async({0: x[i:i + args.batch]}, share_inputs=True)
            pending.append(r)
            while len(pending) > depth:
                pending.pop(0).wait()
        for r in pending:
            r.wait()

    low = explain(resize=False, colormap=False)  # warm-up, and what it computes
    maps = low.saliency_map
    shape = list(next(iter(maps.values())).shape) if isinstance(maps, dict) else list(np.shape(maps))
    floor_b1()
    floor_async()
    rows = {"explain": [], "floor_b1": [], "floor_async": []}
    fns = {"explain": lambda: explain(resize=False, colormap=False), "floor_b1": floor_b1, "floor_async": floor_async}
    for r in range(args.rounds):
        names = list(fns)
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            rows[name].append(time.perf_counter() - t0)
    if args.targets is not None:
        targets = np.load(args.targets)
        t0 = time.perf_counter()
        for i in range(n):  # resize to the input size + colormap (OpenVINO XAI's defaults), saved
            out = explainer(x[i:i + 1], targets=[int(targets[i])])
            if args.dump_dir:
                out.save(args.dump_dir, prefix=f"image{i:04d}_")
        rows["explain_postprocess"] = [time.perf_counter() - t0]
    print(json.dumps({"images": n, "rounds": rows, "setup_s": setup_s, "maps": len(maps) if isinstance(maps, dict)
                      else None, "map_shape": shape, "hint": hint, "precision": precision,
                      "openvino": ov.get_version(), "openvino_xai": xai.__version__ if hasattr(xai, "__version__")
                      else "1.1.x", "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
