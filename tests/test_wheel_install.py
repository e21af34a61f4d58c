"""Build a wheel from what is on disk, install it into a fresh venv and use it from outside the repo.

Steps: `git clone` the repository, overlay the working tree's tracked + untracked-not-ignored
files (so uncommitted work is tested too), `pip wheel --no-build-isolation --no-deps`, unpack the
wheel into a new venv whose only link to the main .venv is a .pth file (for torch and the other
dependencies), then import and run xaifast from a directory outside the repository.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

pytestmark = pytest.mark.slow

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (
        f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
        f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc.stdout


def _repo_root():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        return _run(["git", "-C", TESTS_DIR, "rev-parse", "--show-toplevel"]).strip()
    except AssertionError:
        pytest.skip("tests are not inside a git work tree")


def _snapshot_working_tree(root, dest):
    """A clone of `root` with the working tree's current files laid over it."""
    _run(["git", "clone", "--quiet", "--no-hardlinks", root, dest])
    listed = _run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    for rel in filter(None, listed.split("\0")):
        src = os.path.join(root, rel)
        dst = os.path.join(dest, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
        elif not os.path.exists(src) and os.path.lexists(dst):  # deleted in the working tree
            os.remove(dst)


def _site_packages(python):
    return _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()


SMOKE = textwrap.dedent("""
    import os, sys
    import numpy as np
    import torch
    from torch import nn

    import xaifast
    import xaifast._C
    import xaifast.kernels

    fresh_site, main_prefix, repo = sys.argv[1:4]
    real = os.path.realpath
    pkg = real(os.path.dirname(xaifast.__file__))
    assert pkg == real(os.path.join(fresh_site, "xaifast")), (pkg, fresh_site)
    assert not pkg.startswith(real(main_prefix) + os.sep), pkg
    assert real(os.path.dirname(xaifast._C.__file__)) == pkg, xaifast._C.__file__
    assert real(os.path.dirname(xaifast.kernels.__file__)) == os.path.join(pkg, "kernels")
    assert not any(real(p or os.getcwd()) == real(repo) for p in sys.path), sys.path

    u8 = xaifast._C.normalize_u8(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert u8.tolist() == [[0, 127, 255]], u8

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    ).eval()
    maps = xaifast.saliency_maps(model, torch.randn(2, 3, 32, 32), algorithm="recipro_cam", target_layer="3")
    assert tuple(maps.shape) == (2, 5, 16, 16), maps.shape
    assert maps.dtype == torch.float32, maps.dtype
    assert bool(torch.isfinite(maps).all())

    explanations = list(xaifast.explain(model, torch.randn(2, 3, 32, 32), target_layer="3"))
    assert len(explanations) == 2, len(explanations)
    for ex in explanations:
        sal = ex.saliency_map
        assert isinstance(sal, dict) and len(sal) == 5, sal.keys()
        for m in sal.values():
            m = np.asarray(m)
            assert m.dtype == np.uint8 and m.shape == (16, 16), (m.dtype, m.shape)
    print("XAIFAST-WHEEL-OK", pkg)
""")


def test_wheel_builds_installs_and_runs_outside_repo(tmp_path):
    root = _repo_root()
    src = tmp_path / "src"
    _snapshot_working_tree(root, str(src))

    # 1. the wheel, with this interpreter's toolchain (scikit-build-core, pybind11: no isolation)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-cache-dir",
          "-w", str(dist), str(src)], cwd=str(tmp_path))
    wheels = sorted(dist.glob("xaifast-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        assert any(n.startswith("xaifast/_C.") and n.endswith((".so", ".pyd")) for n in names), names
        assert "xaifast/__init__.py" in names and "xaifast/kernels/__init__.py" in names, names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names), names
        assert not any(n.startswith(("csrc/", "tests/", "kernels/", "benchmarks/")) for n in names), names

    # 2. a fresh venv; dependencies (torch, numpy, ...) come from the main venv through a .pth
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    fresh_python = str(venv / "bin" / "python")
    fresh_site = _site_packages(fresh_python)
    main_site = _site_packages(sys.executable)
    assert os.path.realpath(fresh_site) != os.path.realpath(main_site)
    with open(os.path.join(fresh_site, "_xaifast_main_venv.pth"), "w") as f:
        f.write(main_site + "\n")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(fresh_site)

    # 3. use it from a directory outside the repository
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = outside / "smoke.py"
    script.write_text(SMOKE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = _run([fresh_python, "-P", str(script), fresh_site, sys.prefix, root], cwd=str(outside), env=env)
    assert "XAIFAST-WHEEL-OK" in out
