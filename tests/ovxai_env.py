"""OpenVINO XAI 1.1 in its own virtual environment, created once and cached (it needs numpy 1.x and
openvino 2024.4, which the project's .venv does not have).

Where: $XAIFAST_OVXAI_VENV, else <user cache>/xaifast/ovxai-1.1.0 ($XDG_CACHE_HOME or ~/.cache).
The first use installs it with pip (a minute or two); later runs only check that it imports.
Tests call `ovxai_python()`, which skips them with the reason when it cannot be installed.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ["openvino-xai==1.1.0", "numpy<2"]
HERE = Path(__file__).resolve().parent
TOOL = HERE / "ovxai_tool.py"


def venv_dir() -> Path:
    if os.environ.get("XAIFAST_OVXAI_VENV"):
        return Path(os.environ["XAIFAST_OVXAI_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "xaifast" / "ovxai-1.1.0"


def _works(python: Path) -> bool:
    check = [str(python), "-c", "import openvino_xai, numpy; assert numpy.__version__ < '2'"]
    return python.exists() and subprocess.run(check, capture_output=True).returncode == 0


def ovxai_python() -> Path:
    """The OpenVINO XAI venv's python (created here the first time), or pytest.skip with the reason."""
    folder = venv_dir()
    python = folder / "bin" / "python"
    if _works(python):
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / (folder.name + ".lock"), "w") as lock:  # one installer at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _works(python):
            return python
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True,
                               timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True, capture_output=True,
                           text=True, timeout=1800)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = (getattr(exc, "stderr", "") or str(exc) or type(exc).__name__).strip()
            pytest.skip(f"OpenVINO XAI 1.1 could not be installed in {folder} ({' '.join(PACKAGES)}): "
                        f"{detail.splitlines()[-1] if detail else type(exc).__name__}")
    if not _works(python):
        pytest.skip(f"OpenVINO XAI 1.1 does not import in {folder}")
    return python


def run_tool(*args) -> str:
    """tests/ovxai_tool.py in the OpenVINO XAI venv; its JSON line."""
    python = ovxai_python()
    done = subprocess.run([str(python), str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=str(HERE.parent / "tests"))
    if done.returncode != 0:
        raise AssertionError(f"OpenVINO XAI failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]
