"""Black-box methods on an nn.Module on the CPU: the scorer's PyTorch path against its OpenVINO path
(`engines/scorer.py`: engine auto moves to OpenVINO after OPENVINO_AFTER_SECONDS of PyTorch work
and keeps the conversion per model), in one run, interleaved round by round.

Model: EfficientNet-Lite0 (ImageNet weights), one random 224 x 224 input, its class 1.
    aise_pytorch / aise_auto   aise(scorer, x, targets=[1], preset="speed") with a scorer made for
                               each call: as_scorer(model, engine="pytorch") / as_scorer(model)
                               (engine auto; the first call, untimed, converts: its time is a note)
    rise_pytorch / rise_auto   rise(..., num_masks=256) the same way
The ratio pytorch / auto is what a caller's loop of aise(model, image) or rise(model, image)
gains once the model is converted.

    XAIFAST_BENCH_SUMMARY=/tmp/blackbox.txt \\
        .venv/bin/python -P -m pytest benchmarks/test_bench_blackbox_scorer.py --benchmark-only -s
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from conftest import record_times
from timing import paired

ROUNDS = int(os.environ.get("XAIFAST_BENCH_BLACKBOX_ROUNDS", "4"))
GROUP = "blackbox_scorer_efficientnet_lite0"


def test_module_scorer_pytorch_vs_openvino(benchmark, bench_note):
    from xaifast.algorithms.aise import aise
    from xaifast.algorithms.rise import rise
    from xaifast.engines.scorer import as_scorer
    from xaifast.zoo.efficientnet import efficientnet_lite0

    torch.manual_seed(0)
    model = efficientnet_lite0().eval()
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    aise(as_scorer(model), x, targets=[1], preset="speed")  # PyTorch for 2 s, the conversion, then OpenVINO
    bench_note(f"first aise call with engine auto (2 s of PyTorch, the conversion, the rest in OpenVINO): "
               f"{time.perf_counter() - t0:.2f} s")
    fns = {"aise_pytorch": lambda: aise(as_scorer(model, engine="pytorch"), x, targets=[1], preset="speed"),
           "aise_auto": lambda: aise(as_scorer(model), x, targets=[1], preset="speed"),
           "rise_pytorch": lambda: rise(as_scorer(model, engine="pytorch"), x, targets=[1], num_masks=256),
           "rise_auto": lambda: rise(as_scorer(model), x, targets=[1], num_masks=256)}
    times = paired(benchmark, fns, ROUNDS)
    for name, t in times.items():
        record_times(GROUP, name, t, 1)
    for method in ("aise", "rise"):
        ratios = [a / b for a, b in zip(times[f"{method}_pytorch"], times[f"{method}_auto"])]
        line = (f"{method}: PyTorch scorer / engine auto (OpenVINO, converted): per-round median "
                f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f} .. {max(ratios):.2f}), {len(ratios)} rounds; "
                f"medians {statistics.median(times[f'{method}_pytorch']):.2f} s / {statistics.median(times[f'{method}_auto']):.2f} s")
        print(line)
        bench_note(line)
