"""The OpenVINO engine vs plain OpenVINO inference, OpenVINO XAI 1.1 and the PyTorch engine, in one
run, on the same model and input: ResNet-50-sized (benchmarks/models.py, random init, seed 0),
224x224, N = 64 images (XAIFAST_BENCH_OV_IMAGES), batch 16, Recipro-CAM 1x1, ALL 1000 classes,
postprocess=False (uint8 low-resolution maps).

Rows (seconds per call of N images; images/s in the summary):
    openvino_floor_{f32,default}  plain OpenVINO inference of the same model without explain (a
                                  logits-only graph converted the same way), THROUGHPUT hint, batches
                                  of 16 on depth+1 async requests: the engine's own setup (the floor)
    xaifast_ov_{f32,default}      list(xaifast.explain(model, x, engine="openvino", precision=...))
    xaifast_pytorch               the same with engine="pytorch"
    ovxai_{f32,default}           OpenVINO XAI 1.1 white-box Recipro-CAM on an IR of the plain model,
                                  one image per call (its graph takes batch 1), in benchmarks/.venv-ovxai
                                  (created here: openvino-xai==1.1.0, numpy<2, which pins OpenVINO 2024.4);
                                  skipped with a message when it cannot be installed
    ovxai_floor_b1_{f32,default}  plain inference in that venv, one image per call (OpenVINO XAI's mode)
"default" = OpenVINO's default CPU precision (bf16 on AVX512-BF16 / AMX machines; engine precision="auto").
In-process rows run interleaved round by round (per-round ratios in the summary); the OpenVINO XAI
rows come from the subprocess, measured right after. Group "..._postprocess_dump": PREDICTIONS,
postprocess=True, maps and overlays written as PNG files (run_explain_job, as the CLI) from 64 PNG
images, OpenVINO vs PyTorch engine, and OpenVINO XAI's resized, colormapped and saved top-1 map.

Command: XAIFAST_BENCH_SUMMARY=/tmp/ov_engine_summary.txt \\
    .venv/bin/python -P -m pytest benchmarks/test_bench_openvino_engine.py --benchmark-only -s
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import xaifast
from xaifast.functional import normalize

from ov_floor import async_floor
from conftest import record_times
from models import benchmark_input, resnet50_sized, write_images
from timing import paired, quiet

openvino = pytest.importorskip("openvino")
from xaifast.engines import openvino as E  # noqa: E402

GROUP = "openvino_engine_resnet50"
GROUP_POST = "openvino_engine_resnet50_postprocess_dump"
N = int(os.environ.get("XAIFAST_BENCH_OV_IMAGES", "64"))
BATCH = 16
ROUNDS = int(os.environ.get("XAIFAST_BENCH_OV_ROUNDS", "8"))
ROUNDS_POST = int(os.environ.get("XAIFAST_BENCH_OV_ROUNDS_POST", "2"))
ALL = xaifast.ExplainConfig(target_explain_group="ALL", postprocess=False)
HERE = Path(__file__).resolve().parent
OVXAI_VENV = Path(os.environ.get("XAIFAST_OVXAI_VENV", HERE / ".venv-ovxai"))
OVXAI_PACKAGES = ["openvino-xai==1.1.0", "numpy<2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bench_note):
    folder = tmp_path_factory.mktemp("ov_engine")
    os.environ["XAIFAST_CACHE_DIR"] = str(folder / "cache")  # a fresh disk cache: the first call converts
    model = resnet50_sized()
    x = benchmark_input(N)
    E.clear_cache()
    t0 = time.perf_counter()
    first = list(xaifast.explain(model, x[:BATCH], ALL, engine="openvino", precision="f32", batch_size=BATCH))
    bench_note(f"OpenVINO engine first call (torch.export + convert_model + verify + compile, 16 images): "
               f"{time.perf_counter() - t0:.1f} s; a later process loads the IR from the disk cache")
    # correctness guard (untimed): f32 maps = PyTorch engine maps within 1
    ref = list(xaifast.explain(model, x[:BATCH], ALL, engine="pytorch", batch_size=BATCH))
    for a, b in zip(first, ref):
        for k in (0, 321, 999):
            assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1
    raw32 = xaifast.saliency_maps(model, x[:BATCH], engine="pytorch")
    rawbf = xaifast.saliency_maps(model, x[:BATCH], engine="openvino", precision="auto")
    diff = (normalize(rawbf).int() - normalize(raw32).int()).abs().numpy()
    bench_note(f"default precision (bf16 here) vs f32 PyTorch maps, uint8: within 1 {np.mean(diff <= 1):.3f}, "
               f"within 4 {np.mean(diff <= 4):.3f}, within 16 {np.mean(diff <= 16):.3f}, mean |diff| "
               f"{diff.mean():.2f}, max {diff.max()}")
    # the floor: the same model without explain, converted the same way, same async setup
    from xaifast.exporter import LogitsOnly, to_openvino

    with torch.no_grad():
        program = torch.export.export(LogitsOnly(model).eval(), (x[:2],),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                                      strict=False)
    plain = to_openvino(program, ["logits"])
    core = openvino.Core()
    floors = {p: core.compile_model(plain, "CPU", E._compile_config(p, None)) for p in ("f32", "auto")}
    ir = xaifast.export(model, folder / "plain.xml", explain=False, example_input=x[:2])
    return dict(model=model, x=x, folder=folder, floors=floors, ir=ir,
                top1=np.array([int(np.argmax(e.prediction)) for e in ref] * (N // BATCH + 1))[:N])


def floor_fn(compiled, x: np.ndarray):
    return async_floor(compiled, x, BATCH)


def explain_fn(model, x, **kw):
    def run():
        count = sum(1 for _ in xaifast.explain(model, x, ALL, batch_size=BATCH, **kw))
        assert count == x.shape[0]

    return run


def test_engine_vs_floor_and_pytorch(benchmark, setup):
    model, x = setup["model"], setup["x"]
    xs = np.ascontiguousarray(x.numpy())
    fns = {"openvino_floor_f32": floor_fn(setup["floors"]["f32"], xs),
           "xaifast_ov_f32": explain_fn(model, x, engine="openvino", precision="f32"),
           "openvino_floor_default": floor_fn(setup["floors"]["auto"], xs),
           "xaifast_ov_default": explain_fn(model, x, engine="openvino", precision="auto"),
           "xaifast_pytorch": explain_fn(model, x, engine="pytorch")}
    times = paired(benchmark, fns, ROUNDS)
    for name, t in times.items():
        record_times(GROUP, name, t, N)
    record_times(GROUP, "paired_rounds", [0.0], N, paired=times)


def _ovxai_python() -> Path | None:
    """The OpenVINO XAI venv's python, created (or reused) here; None with a message when impossible."""
    python = OVXAI_VENV / "bin" / "python"
    check = [str(python), "-c", "import openvino_xai, numpy; assert numpy.__version__ < '2'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(OVXAI_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OVXAI_PACKAGES], check=True,
                       capture_output=True, text=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        pytest.skip(f"OpenVINO XAI 1.1 could not be installed in {OVXAI_VENV} ({' '.join(OVXAI_PACKAGES)}): "
                    f"{detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__}")
    if subprocess.run(check, capture_output=True).returncode != 0:
        pytest.skip(f"OpenVINO XAI 1.1 does not import in {OVXAI_VENV}")
    return python


@pytest.mark.parametrize("precision", ["f32", "default"])
def test_openvino_xai(benchmark, setup, bench_note, precision):
    python = _ovxai_python()
    folder = setup["folder"]
    np.save(folder / "x.npy", setup["x"].numpy())
    np.save(folder / "top1.npy", setup["top1"])
    dump = folder / f"ovxai_dump_{precision}"
    dump.mkdir(exist_ok=True)
    command = [str(python), str(HERE / "ovxai_runner.py"), "--ir", str(setup["ir"]), "--input", str(folder / "x.npy"),
               "--precision", precision, "--rounds", str(max(2, ROUNDS // 2)), "--batch", str(BATCH),
               "--targets", str(folder / "top1.npy"), "--dump-dir", str(dump)]
    # one call of the runner (its own warm-up and rounds inside), after an idle wait
    proc = benchmark.pedantic(lambda: subprocess.run(command, capture_output=True, text=True, timeout=3600),
                              setup=quiet, rounds=1, iterations=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["maps"] == 1000 and out["map_shape"] == [7, 7], out
    rounds = out["rounds"]
    record_times(GROUP, f"ovxai_{precision}", rounds["explain"], N)
    record_times(GROUP, f"ovxai_floor_b1_{precision}", rounds["floor_b1"], N)
    record_times(GROUP, f"ovxai_floor_async_b16_{precision}", rounds["floor_async"], N)
    if "explain_postprocess" in rounds:
        record_times(GROUP_POST, f"ovxai_top1_postprocess_save_{precision}", rounds["explain_postprocess"], N)
    bench_note(f"OpenVINO XAI ({precision}): openvino {out['openvino']}, numpy {out['numpy']}, compiled with "
               f"hint {out['hint']}, precision {out['precision']}; Explainer setup (XAI branch insertion + "
               f"compile) {out['setup_s']:.1f} s")


def test_postprocess_and_dump(benchmark, setup):
    """End to end as the CLI runs: PNG files read, PREDICTIONS, maps resized + JET + overlays, written."""
    from xaifast.job import run_explain_job

    images = write_images(setup["x"], setup["folder"] / "images")
    work = setup["folder"] / "work"
    cfg = xaifast.ExplainConfig(target_explain_group="PREDICTIONS", postprocess=True)

    def job(engine, precision="f32"):
        def run():
            summary = run_explain_job(setup["model"], str(images), cfg, work_dir=str(work), dump=True,
                                      batch_size=BATCH, progress=False, out=io.StringIO(), engine=engine,
                                      precision=precision)
            assert summary.images == N and summary.files == 2 * N
        return run

    fns = {"xaifast_ov_f32_files_postprocess_dump": job("openvino"),
           "xaifast_ov_default_files_postprocess_dump": job("openvino", "auto"),
           "xaifast_pytorch_files_postprocess_dump": job("pytorch")}
    times = paired(benchmark, fns, ROUNDS_POST)
    for name, t in times.items():
        record_times(GROUP_POST, name, t, N)
    shutil.rmtree(work, ignore_errors=True)
