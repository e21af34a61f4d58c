"""OpenVINO XAI 1.1 on a model file: run inside OpenVINO XAI's own virtual environment (numpy 1.x,
openvino 2024.4; see tests/ovxai_env.py), never in the project's .venv.

    python ovxai_tool.py --model plain.xml --size H W --input x.npy --maps maps.npy
                         [--target-layer NODE] [--otx-ir otx_like.xml --labels a b c --mean m m m
                          --scale s s s --reverse-input-channels True]

Inserts white-box Recipro-CAM with `openvino_xai.insert_xai` (target auto-detected or
`--target-layer`, scaling to uint8 in the graph: OpenVINO XAI's defaults), runs the inserted model
at f32 one image per call (its graph takes batch 1) on the preprocessed `--input`, and saves the
uint8 maps [N, K, h, w]. With `--otx-ir` it also writes the inserted model with OTX's `model_info`
runtime info, as `otx export --explain True` does. Prints one JSON line.

    python ovxai_tool.py --aise-region-model REGIONS_JSON --input x.npy --maps maps.npy --targets K ...
                         [--aise-iterations N] [--aise-widths W ...]

Runs OpenVINO XAI's black-box `AISEClassification` on each image of `--input` for the classes
`--targets`, with the region-mean model of tests/test_metrics.py (logit_k = 8 * mean of region k,
a last constant logit 2, softmax; float64 numpy) in place of the compiled OpenVINO model, and saves
the raw maps [N, T, H, W] float64 (scale_output=False).
"""
from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--size", type=int, nargs=2, default=None)
    p.add_argument("--input", default=None, help=".npy float32 [N, 3, H, W], preprocessed")
    p.add_argument("--maps", default=None)
    p.add_argument("--target-layer", default=None)
    p.add_argument("--otx-ir", default=None)
    p.add_argument("--labels", nargs="*", default=None)
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--scale", type=float, nargs=3, default=None)
    p.add_argument("--reverse-input-channels", default="False")
    p.add_argument("--aise-region-model", default=None, help="JSON [[row0, row1, col0, col1], ...]")
    p.add_argument("--targets", type=int, nargs="*", default=None)
    p.add_argument("--aise-iterations", type=int, default=None)
    p.add_argument("--aise-widths", type=float, nargs="*", default=None)
    args = p.parse_args()
    if args.aise_region_model:
        return aise_region(args)

    import numpy as np
    import openvino as ov
    import openvino_xai as xai

    core = ov.Core()
    model = core.read_model(args.model)
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, 3, *args.size])})
    inserted = xai.insert_xai(model, task=xai.Task.CLASSIFICATION, explain_method=xai.Method.RECIPROCAM,
                              target_layer=args.target_layer)
    names = [sorted(o.get_names()) for o in inserted.outputs]
    shape = str(inserted.outputs[-1].get_partial_shape())
    if args.input and args.maps:
        compiled = core.compile_model(inserted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        x = np.load(args.input).astype(np.float32)
        maps = [compiled({0: x[i:i + 1]})["saliency_map"][0] for i in range(x.shape[0])]
        np.save(args.maps, np.stack(maps).astype(np.uint8))
    if args.otx_ir:
        info = {"model_type": "Classification", "task_type": "classification", "resize_type": "standard",
                "pad_value": "0", "reverse_input_channels": str(args.reverse_input_channels)}
        if args.labels:
            info["labels"] = " ".join(label.replace(" ", "_") for label in args.labels)
            info["label_ids"] = info["labels"]
        if args.mean:
            info["mean_values"] = " ".join(str(v) for v in args.mean)
        if args.scale:
            info["scale_values"] = " ".join(str(v) for v in args.scale)
        for key, value in info.items():
            inserted.set_rt_info(value, ["model_info", key])
        ov.save_model(inserted, args.otx_ir, compress_to_fp16=False)
    print(json.dumps({"outputs": names, "saliency_shape": shape, "openvino": ov.get_version(),
                      "numpy": np.__version__}))
    return 0


def aise_region(args) -> int:
    import numpy as np
    import openvino as ov
    from openvino_xai.methods.black_box.aise.classification import AISEClassification

    regions = [tuple(r) for r in json.loads(args.aise_region_model)]

    def forward(x):
        x = np.asarray(x, dtype=np.float32).astype(np.float64)  # an f32 model input, as OpenVINO casts it
        z = [8.0 * x[:, :, r0:r1, c0:c1].mean(axis=(1, 2, 3)) for r0, r1, c0, c1 in regions]
        z.append(np.full(x.shape[0], 2.0))
        z = np.stack(z, axis=1)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return {"probs": e / e.sum(axis=-1, keepdims=True)}

    method = AISEClassification(None, postprocess_fn=lambda out: out["probs"], prepare_model=False)
    method._model_compiled = forward
    x = np.load(args.input).astype(np.float32)
    maps = []
    for i in range(x.shape[0]):
        got = method.generate_saliency_map(x[i:i + 1], target_indices=list(args.targets),
                                           num_iterations_per_kernel=args.aise_iterations,
                                           kernel_widths=args.aise_widths, scale_output=False)
        maps.append(np.stack([got[k] for k in args.targets]))
    np.save(args.maps, np.stack(maps))
    print(json.dumps({"maps": list(np.shape(maps)), "openvino": ov.get_version(), "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
