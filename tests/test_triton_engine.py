"""Backend dispatch and the batched re-inference engine with the Triton kernels (interpreted on
CPU): backend selection, lazy triton import, chunk sizing from free device memory, the Recipro-CAM
engine on the Triton path (GAP shortcut and mosaic, float32 / bfloat16, channels-last), and the
torch.compile option of the head."""
import os

from triton_interpreter import require_interpreter  # sets TRITON_INTERPRET=1 first

import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

require_interpreter("Triton engine tests")

import xaifast.algorithms.recipro_cam  # noqa: E402,F401
rc = sys.modules["xaifast.algorithms.recipro_cam"]  # (xaifast.algorithms.recipro_cam is also a function name)
from xaifast.kernels import _compat, pick_backend  # noqa: E402


def _fake(device="cuda", dtype=torch.float32, requires_grad=False):
    """Enough of a tensor for backend selection (no CUDA needed)."""
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype, requires_grad=requires_grad)


# ------------------------------------------------------------------------------ dispatch
def test_backend_selection(monkeypatch):
    cpu32, cpu64 = torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)
    assert pick_backend("auto", cpu32) == "numba"
    assert pick_backend("auto", cpu64) == "torch"
    assert pick_backend("auto", cpu32.bfloat16()) == "torch"  # CPU: never Triton unless asked
    assert pick_backend("triton", cpu32) == "triton"           # TRITON_INTERPRET=1 here
    assert pick_backend("triton", cpu32.half()) == "triton"
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert pick_backend("auto", _fake(dtype=dt)) == "triton"  # CUDA -> Triton
    assert pick_backend("auto", _fake(dtype=torch.float64)) == "torch"
    assert pick_backend("auto", _fake(requires_grad=True)) == "torch"
    with pytest.raises(ValueError, match="float32, float16 and bfloat16"):
        pick_backend("triton", cpu64)
    with pytest.raises(ValueError, match="not differentiable"):
        pick_backend("triton", torch.zeros(2, 2, requires_grad=True))
    with pytest.raises(ValueError, match="valid backends: auto, numba, torch, triton"):
        pick_backend("cuda", cpu32)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA tensors"):
        pick_backend("triton", cpu32)
    monkeypatch.setattr(_compat, "have_triton", lambda: False)  # no triton: CUDA falls back to the twin
    assert pick_backend("auto", _fake()) == "torch"
    with pytest.raises(ValueError, match="not installed"):
        pick_backend("triton", _fake())


_CPU_RUN = ("import sys, torch\n"
            "{pre}"
            "import xaifast\n"
            "assert sys.modules.get('triton') is None, 'import xaifast imported triton'\n"
            "from xaifast import functional as XF\n"
            "from xaifast.kernels import score_maps, normalize_maps\n"
            "head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
            "f = torch.randn(2, 4, 3, 3)\n"
            "XF.recipro_cam(f, head); XF.recipro_cam(f, head, use_gap_shortcut=False)\n"
            "XF.recipro_cam(f.double(), head.double())\n"
            "normalize_maps(torch.randn(2, 3, 3)); score_maps(torch.randn(18, 3).bfloat16(), 2, 3, 3, 'softmax')\n"
            "loaded = [m for m in sys.modules if m.startswith('xaifast.kernels.triton')]\n"
            "assert not loaded, loaded\n"
            "print('ok')\n")


@pytest.mark.parametrize("triton_available", [True, False])
def test_cpu_use_never_loads_the_triton_kernels(triton_available):
    """CPU work never loads xaifast's Triton modules (torch.export itself may import triton when it
    is installed); with triton unimportable everything on CPU still works."""
    pre = "" if triton_available else "sys.modules['triton'] = None  # import triton -> ImportError\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-P", "-c", _CPU_RUN.format(pre=pre)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


# -------------------------------------------------------------------------- chunk sizing
def test_chunks_are_sized_from_free_device_memory(monkeypatch):
    cuda = torch.device("cuda")
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gib)
    assert rc.free_device_bytes(cuda) == 8 * gib  # free + cached by PyTorch but unused
    assert rc.free_device_bytes(torch.device("cpu")) is None
    # default budget on CUDA (4096 MB) is under half the free memory (4 GiB): 4 GiB
    assert rc.memory_budget_bytes(None, cuda) == 4 * gib
    assert rc.memory_budget_bytes(1024, cuda) == 1 * gib       # the user's budget when it fits
    assert rc.memory_budget_bytes(100_000, cuda) == 4 * gib    # never more than half the free memory
    assert rc.memory_budget_bytes(None, torch.device("cpu")) == rc.CPU_CHUNK_BUDGET_MB * 2**20  # CPU default
    per_cell = 1024 * 14 * 14 * 2  # a bf16 [1024, 14, 14] masked feature map
    assert rc.cells_per_chunk(per_cell, None, None, cuda) == 4 * gib // (per_cell * 4)
    assert rc.cells_per_chunk(per_cell, 512, None, cuda) == 512 * 2**20 // (per_cell * 4)
    assert rc.cells_per_chunk(per_cell, None, 77, cuda) == 77
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    assert rc.cells_per_chunk(per_cell, None, None, cuda) == 1  # a full device still makes progress
    with pytest.raises(ValueError, match="positive"):
        rc.memory_budget_bytes(0, cuda)


def test_balanced_chunks():
    assert rc.balanced_step(12544, 10460) == 6272   # 2 chunks of 6272, not 10460 + 2084
    assert rc.balanced_step(100, 30) == 25          # 4 chunks of 25
    assert rc.balanced_step(100, 100) == 100 and rc.balanced_step(7, 1000) == 7
    assert rc.balanced_step(10, 1) == 1 and rc.balanced_step(10, 3) == 3  # 3+3+3+1 -> ceil(10/4) = 3
    for cells in range(1, 60):
        for step in range(1, 70):
            s = rc.balanced_step(cells, step)
            assert s <= max(1, min(step, cells)) and -(-cells // s) == -(-cells // min(step, cells))


# ------------------------------------------------------------------------------- engine
def _gap_head(c, k):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, k)).eval()


class _ConvHead(nn.Module):
    """Not GAP-first (a 3x3 conv before pooling): the mosaic path. Records its inputs' layout."""

    def __init__(self, c, k):
        super().__init__()
        self.conv = nn.Conv2d(c, 6, 3, padding=1)
        self.fc = nn.Linear(6, k)
        self.layouts = []

    def forward(self, x):
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("shortcut", [True, False])
def test_engine_triton_matches_numba(shortcut):
    b, c, h, w, k = 3, 5, 3, 4, 7
    torch.manual_seed(0)
    head = _gap_head(c, k) if shortcut else _ConvHead(c, k).eval()
    feature = torch.randn(b, c, h, w)
    kw = dict(mask="gaussian", normalize=True, chunk_size=10, use_gap_shortcut=shortcut)  # chunks span images
    fast = rc.recipro_cam(feature, head, backend="triton", **kw)
    ref = rc.recipro_cam(feature, head, backend="numba", **kw)
    np.testing.assert_allclose(fast.raw.numpy(), ref.raw.numpy(), rtol=1e-5, atol=1e-6)
    assert int((fast.normalized.int() - ref.normalized.int()).abs().max()) <= 1


def test_engine_mosaic_keeps_channels_last():
    b, c, h, w, k = 2, 4, 3, 3, 5
    torch.manual_seed(1)
    head = _ConvHead(c, k).eval().to(memory_format=torch.channels_last)
    feature = torch.randn(b, c, h, w).to(memory_format=torch.channels_last)
    split = rc.analyse_head(head, feature)  # the split (torch.export) runs the head once: do it first
    ref = rc.recipro_cam(feature.contiguous(), split, backend="numba", chunk_size=7).raw
    for backend in ("triton", "auto"):  # auto on CPU: the torch twin writes channels-last
        head.layouts.clear()
        got = rc.recipro_cam(feature, split, backend=backend, chunk_size=7, use_gap_shortcut=False).raw
        assert head.layouts and all(head.layouts), "the head did not get channels-last mosaics"
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_engine_bfloat16_on_the_triton_path():
    b, c, h, w, k = 2, 6, 3, 3, 4
    torch.manual_seed(2)
    head = _gap_head(c, k)
    feature = torch.randn(b, c, h, w)
    ref = rc.recipro_cam(feature, head, backend="numba").raw
    head16 = _gap_head(c, k)
    head16.load_state_dict(head.state_dict())
    head16 = head16.bfloat16()
    for shortcut in (True, False):
        got = rc.recipro_cam(feature.bfloat16(), head16, backend="triton", use_gap_shortcut=shortcut).raw
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=0.05, atol=0.02)  # bf16 weights and features


def test_compiled_head_is_exact_and_cached():
    """compile_head: static-shape chunks (the last one padded), one compiled graph per head.
    The 'eager' torch.compile backend runs the Dynamo path without a C++ toolchain."""
    b, c, h, w, k = 2, 3, 3, 3, 4
    torch.manual_seed(3)
    feature = torch.randn(b, c, h, w)
    for shortcut, head in ((True, _gap_head(c, k)), (False, _ConvHead(c, k).eval())):
        split = rc.analyse_head(head, feature)
        ref = rc.recipro_cam(feature, split, chunk_size=5, use_gap_shortcut=shortcut).raw  # 18 cells: 5+5+5+3
        for _ in range(2):
            got = rc.recipro_cam(feature, split, chunk_size=5, use_gap_shortcut=shortcut, backend="triton",
                                 compile_head={"backend": "eager"}).raw
            np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
        assert len(split.__dict__["_xaifast_compiled"]) == 1
    with pytest.raises(TypeError, match="compile_head"):
        rc.masked_logits(feature, split, compile_head=3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecations inside inductor
@pytest.mark.skipif(not any(__import__("shutil").which(cc) for cc in ("c++", "g++", "clang++")),
                    reason="torch.compile's inductor backend needs a C++ compiler on CPU")
def test_compiled_head_with_inductor_on_cpu():
    """compile_head=True (inductor, the default torch.compile backend) on a tiny mosaic-path head:
    ~20 s the first time on 2 cores (C++ compile), a few seconds once inductor's cache is warm."""
    torch.manual_seed(4)
    head = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4)).eval()
    feature = torch.randn(2, 3, 3, 3)
    split = rc.analyse_head(head, feature)
    ref = rc.recipro_cam(feature, split, chunk_size=5, use_gap_shortcut=False).raw
    got = rc.recipro_cam(feature, split, chunk_size=5, use_gap_shortcut=False, compile_head=True).raw
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
