"""`make gpu-check` (scripts/gpu_check.py) where there is no GPU, its plan, and its helpers: which
wheels it installs, and the figures it takes from pytest's output."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
STEPS = ["deps", "build", "tests-cuda", "bench-gpu", "bench-vit", "bench-det", "torchrun", "tests-triton"]

if not SCRIPT.is_file():
    pytest.skip(f"{SCRIPT} is not in this checkout", allow_module_level=True)


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def _run(argv, cwd, **kw):
    return subprocess.run(argv, cwd=str(cwd), capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_gpu_says_so_and_exits_0(tmp_path):
    proc = _run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU present" in proc.stdout and "nothing to check" in proc.stdout
    assert f"torch {torch.__version__}" in proc.stdout  # why: this python's torch sees no CUDA device
    assert not (tmp_path / "w").exists()  # nothing was built or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_gpu_check_without_gpu(tmp_path):
    """The Makefile target with the system python (no .venv, maybe no torch at all: then torch is not
    importable, which also means no GPU here)."""
    python = shutil.which("python3") or sys.executable
    proc = _run(["make", "-s", "-C", str(REPO), "gpu-check", f"GPU_PYTHON={python}",
                 f"GPU_CHECK_ARGS=--work {tmp_path / 'w'}"], tmp_path)
    assert proc.returncode == 0 and "no GPU present" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "w").exists()


def test_dry_run_names_every_step(tmp_path):
    wheels = tmp_path / "wheels"
    proc = _run([sys.executable, str(SCRIPT), "--dry-run", "--wheels", str(wheels)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    named = [line.split()[0] for line in lines[1:] if line.startswith("  ") and not line.startswith("  wheels")]
    assert named == ["detect"] + STEPS
    assert f"--no-index --find-links {wheels}" in proc.stdout
    for what in ("tests/test_cuda.py", "test_bench_gpu.py", "test_bench_vit.py", "test_bench_det.py",
                 "--dump_format zarr", "torchrun"):
        assert what in proc.stdout, what
    # the bounds add up to more than the budget: the deadline, not the sum, keeps it under 8 minutes
    assert "budget 470 s" in proc.stdout
    bad = _run([sys.executable, str(SCRIPT), "--dry-run", "--only", "bench-gpu,nonsense"], tmp_path)
    assert bad.returncode == 2 and "unknown step(s) nonsense" in bad.stderr


def _touch_wheel(folder: Path, filename: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / filename).write_bytes(b"")


def test_only_missing_projects_are_installed_never_torch(gpu_check, tmp_path):
    for name in ["jsonargparse-4.53.0-py3-none-any.whl", "PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl",
                 "pytest_benchmark-5.1.0-py3-none-any.whl", "zarr-3.1.6-py3-none-any.whl",
                 "torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl", "numpy-2.3.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "opencv_python_headless-4.12.0-cp37-abi3-manylinux2014_x86_64.whl", "notes.txt"]:
        _touch_wheel(tmp_path, name)
    installed = {"PyYAML", "zarr", "Pytest.Benchmark"}
    assert gpu_check.wheels_to_install(tmp_path, installed) == ["jsonargparse"]
    assert gpu_check.wheels_to_install(tmp_path, set()) == ["jsonargparse", "pytest-benchmark", "pyyaml", "zarr"]
    assert gpu_check.wheel_project("pytest_benchmark-5.1.0-py3-none-any.whl") == "pytest-benchmark"
    assert gpu_check.wheel_project("zarr-3.1.6.tar.gz") is None


def test_figures_are_taken_from_pytest_sections(gpu_check):
    text = "\n".join([
        "....s.", "=============== warnings summary ===============", "some warning",
        "======= xaifast GPU benchmark summary (same run) =======",
        "| gap_fp32_b64 | xaifast | 64 | 12.00 |", "", "goal gap_fp32_b64: xaifast / forward throughput = 0.950 (>= 0.9: met)",
        "--------- benchmark 'gap_fp32_b64': 5 tests ---------", "Name (time in ms)   Median", "test_x  12.0 (1.0)",
        "Legend:", "  OPS: Operations Per Second, computed as 1 / Mean",
        "=========== short test summary info ===========", "SKIPPED [1] x.py:3: no triton",
        "============ 11 passed, 1 skipped in 42.17s ============",
    ])
    lines = gpu_check.pytest_sections(text, keep=lambda t: "benchmark summary" in t)
    assert lines == ["-- xaifast GPU benchmark summary (same run)", "| gap_fp32_b64 | xaifast | 64 | 12.00 |",
                     "goal gap_fp32_b64: xaifast / forward throughput = 0.950 (>= 0.9: met)",
                     "pytest: 11 passed, 1 skipped in 42.17s"]
    failed = gpu_check.pytest_sections("F\n===== 1 failed, 2 passed in 3.00s =====", keep=lambda t: False)
    assert failed == ["pytest: 1 failed, 2 passed in 3.00s"]
    quiet = gpu_check.pytest_sections("....\n12 passed in 101.31s (0:01:41)\n", keep=lambda t: False)  # -q
    assert quiet == ["pytest: 12 passed in 101.31s (0:01:41)"]
    assert gpu_check.pytest_sections("3 passed the test in 2.0s of\n", keep=lambda t: False) == []


def test_gpu_present_but_unusable_torch_is_an_error(tmp_path):
    """nvidia-smi lists a GPU but this python's torch cannot use it: exit 1 with the fix, not 'no GPU'."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '')}", CUDA_VISIBLE_DEVICES="")
    proc = _run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w")], tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nvidia-smi lists 1 GPU(s)" in proc.stderr and "CUDA build of torch" in proc.stderr


def _probe_wheel(folder: Path) -> str:
    """A minimal pure-Python wheel (project xaifast-gpu-probe, module xaifast_gpu_probe)."""
    import zipfile

    folder.mkdir(exist_ok=True)
    name = "xaifast_gpu_probe-0.1-py3-none-any.whl"
    info = "xaifast_gpu_probe-0.1.dist-info"
    files = {"xaifast_gpu_probe/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: xaifast-gpu-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / name, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return name


def test_deps_step_installs_missing_wheels_offline_into_the_site_folder(gpu_check, tmp_path, monkeypatch):
    """The real pip path (--no-index --find-links --no-deps --target): a missing project is installed into
    the site folder, an installed one (numpy) and a machine one (torch) are not; nothing else changes."""
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels)
    _touch_wheel(wheels, "torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl")  # never considered
    _touch_wheel(wheels, "numpy-9.0.0-cp311-cp311-manylinux_2_28_x86_64.whl")   # installed: never considered
    ctx = gpu_check.Context(work=tmp_path / "work", wheels=wheels, rehearsal=True, compile_rows=False, photos=8)
    ctx.deadline = gpu_check.time.monotonic() + 120
    ctx.logs.mkdir(parents=True)
    ctx.env = dict(os.environ, PYTHONPATH=str(ctx.site), PIP_NO_INDEX="1")
    # the import check after the install: the probe (from the site folder) and two that are (not) there
    monkeypatch.setattr(gpu_check, "MODULES", {"numpy": "x", "xaifast_gpu_probe": "x", "no_such_module_x": "y"})
    step = gpu_check.Step("deps", "test", 120)
    gpu_check.step_deps(ctx, step)
    assert step.result == "ok", (step.result, step.figures, (ctx.logs / "deps.log").read_text()[-2000:])
    assert (ctx.site / "xaifast_gpu_probe" / "__init__.py").read_text() == "VALUE = 42\n"
    assert not list(ctx.site.glob("torch*")) and not list(ctx.site.glob("numpy*"))
    assert any("xaifast-gpu-probe" in f for f in step.figures), step.figures
    assert ctx.missing == {"no_such_module_x"}
    assert any(f.startswith("missing: no_such_module_x (y)") for f in step.figures), step.figures
    # a second run finds it installed (in the site folder) and installs nothing
    step2 = gpu_check.Step("deps", "test", 120)
    gpu_check.step_deps(ctx, step2)
    assert any("nothing (all present)" in f for f in step2.figures), step2.figures
