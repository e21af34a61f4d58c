"""For test modules that run xaifast's Triton kernels on CPU: import this module first.

It sets TRITON_INTERPRET=1 (Triton decides at import time whether it interprets) and
`require_interpreter(what)` skips the module when triton is missing, and fails it clearly when
triton was imported before the variable was set (then its kernels cannot run here).
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def require_interpreter(what: str) -> None:
    pytest.importorskip("triton", reason=f"triton is not installed (pip install triton): {what} skipped")
    import triton.language as tl

    if type(tl.zeros).__name__ != "InterpretedFunction":
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run in the "
                    "interpreter in this process; set TRITON_INTERPRET=1 before anything imports triton "
                    "(e.g. at the top of tests/conftest.py) or run tests/test_triton_*.py on their own",
                    pytrace=False)


def compile_ahead(script: str) -> dict:
    """Run `script` (it prints one line "RESULT<json>") in a fresh interpreter without
    TRITON_INTERPRET, so that Triton compiles for real; its JSON. Skips when Triton's bundled ptxas
    is missing (no NVIDIA target can be compiled here)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        pytest.skip("Triton's ptxas is not available: cannot compile for NVIDIA targets here")
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
