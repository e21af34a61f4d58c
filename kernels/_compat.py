"""Optional-Numba shim, backend selection and shared validation helpers.

Numba is the CPU hot path.  If it cannot be imported, the ``*_numba`` kernels
still import (as slow pure-Python functions) and every dispatcher falls back
to the PyTorch twins, so the package keeps working.

Triton is the CUDA hot path (``kernels/triton_*.py``).  It is optional and
imported lazily: only when a dispatcher is about to run a Triton kernel
(a CUDA tensor with backend "auto", or backend "triton").  CPU-only use never
imports it.  With ``TRITON_INTERPRET=1`` (set before the first Triton kernel
module is imported) backend "triton" also runs on CPU tensors through Triton's
interpreter; the tests use that.
"""
from __future__ import annotations

import functools
import operator
import os

import torch

try:  # pragma: no cover - exercised implicitly
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
    # OpenMP first: OpenVINO ships its own TBB, and with it loaded Numba would pick TBB, whose
    # pool is not fork-safe (DataLoader workers) and warns on every fork.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
except ImportError:  # pragma: no cover - numba is a hard dependency in practice
    HAVE_NUMBA = False
    prange = range

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


# Every @njit kernel uses the same options: multithreaded, cached on disk
# (next to the source, or in numba's user cache dir if that is read-only),
# and strict IEEE float32 semantics (no reassociation / FMA contraction).
# Caveat: Numba's cache is keyed on the *defining* file only.  Editing a
# helper module (e.g. _vmath.py, normalize.normalize_plane) does not
# invalidate the cached kernels of other files that call it; during
# development delete kernels/__pycache__ after such an edit.
JIT_OPTS = dict(parallel=True, cache=True, fastmath=False, nogil=True)

BACKENDS = ("auto", "numba", "torch", "triton")

#: Input dtypes the Triton kernels accept (they compute in float32 inside).
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")


def use_numba(backend: str, *tensors: torch.Tensor) -> bool:
    """Decide whether the Numba kernel can serve these tensors.

    Numba serves CPU float32 tensors that do not need autograd.  ``backend``
    "auto" picks Numba when eligible, "torch" forces the twin, "numba" forces
    Numba and raises if the inputs are not eligible.
    """
    check_backend(backend)
    if backend in ("torch", "triton"):
        return False
    eligible = HAVE_NUMBA and all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and not (t.requires_grad and torch.is_grad_enabled())
        for t in tensors
    )
    if backend == "numba" and not eligible:
        if not HAVE_NUMBA:
            raise ValueError("backend='numba' requested but numba is not installed")
        raise ValueError(
            "backend='numba' requires CPU float32 tensors that do not require grad "
            f"(got {[(str(t.device), str(t.dtype), t.requires_grad) for t in tensors]})"
        )
    return eligible


def triton_interpret() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def have_triton() -> bool:
    """Whether ``triton`` can be imported (imports it on the first call, then cached)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _needs_grad(t: torch.Tensor) -> bool:
    return t.requires_grad and torch.is_grad_enabled()


def _triton_problem(tensors) -> str | None:
    """Why the Triton kernels cannot serve these tensors (None: they can)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"all tensors must be on one device, got {sorted(map(str, devices))}"
    device = next(iter(devices))
    if device.type != "cuda" and not (device.type == "cpu" and triton_interpret()):
        return (f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
                f"triton is imported), got {device}")
    for t in tensors:
        if t.dtype not in TRITON_DTYPES:
            return f"backend='triton' supports float32, float16 and bfloat16, got {t.dtype}"
        if _needs_grad(t):
            return "backend='triton' is not differentiable: inputs must not require grad"
    if not have_triton():
        return "backend='triton' requested but triton is not installed (pip install 'xaifast[gpu]')"
    return None


def pick_backend(backend: str, *tensors: torch.Tensor) -> str:
    """The kernel family that serves these tensors: "triton", "numba" or "torch".

    - "auto": CUDA tensors (float32/16/bf16, no grad) -> Triton when it can be
      imported; CPU float32 (no grad) -> Numba; anything else -> the PyTorch twin.
    - "triton": CUDA tensors, or CPU tensors when TRITON_INTERPRET=1; raises
      ValueError otherwise.  "numba" / "torch": as :func:`use_numba`.
    """
    check_backend(backend)
    if backend == "torch":
        return "torch"
    if backend == "triton":
        problem = _triton_problem(tensors)
        if problem is not None:
            raise ValueError(problem)
        return "triton"
    if (backend == "auto" and tensors and all(t.device.type == "cuda" for t in tensors)
            and _triton_problem(tensors) is None):
        return "triton"
    return "numba" if use_numba(backend, *tensors) else "torch"


def as_index(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def check_feature(feature) -> tuple[int, int, int, int]:
    if not isinstance(feature, torch.Tensor):
        raise TypeError(f"feature must be a torch.Tensor, got {type(feature).__name__}")
    if feature.dim() != 4:
        raise ValueError(
            f"feature must be a 4-D tensor [B, C, H, W], got shape {tuple(feature.shape)}"
        )
    if not feature.is_floating_point():
        raise TypeError(f"feature must have a floating dtype, got {feature.dtype}")
    B, C, H, W = (int(s) for s in feature.shape)
    return B, C, H, W
