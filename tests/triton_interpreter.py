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
