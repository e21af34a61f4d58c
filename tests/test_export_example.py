"""Export with any example batch size (the exported batch stays dynamic), and no third-party
warning reaches the user of `xaifast export`."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import xaifast
from xaifast.exporter import ExportError
from xaifast.zoo import SmallCNN

pytest.importorskip("openvino")


def _maps(model, x):
    cfg = xaifast.ExplainConfig(target_explain_group="ALL")
    return list(xaifast.explain(model, x, cfg, batch_size=x.shape[0]))


@pytest.mark.parametrize("suffix", [".xml", ".onnx"])
def test_batch_one_example_exports_a_dynamic_batch(tmp_path, suffix):
    model = SmallCNN(num_classes=4).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = xaifast.export(model, tmp_path / f"m{suffix}", explain=True, example_input=torch.randn(1, 3, 40, 56))
    assert [str(w.message) for w in caught] == []
    for n in (1, 3):
        x = torch.randn(n, 3, 40, 56)
        got, want = _maps(path, x), _maps(model, x)
        assert len(got) == n
        for a, b in zip(got, want):
            assert a.predicted == b.predicted
            assert list(a.saliency_map) == list(b.saliency_map) == [0, 1, 2, 3]
            for k in a.saliency_map:
                assert a.saliency_map[k].shape == (5, 7)
                assert np.abs(a.saliency_map[k].astype(int) - b.saliency_map[k].astype(int)).max() <= 1


def test_bad_example_input_is_refused(tmp_path):
    model = SmallCNN(num_classes=4).eval()
    with pytest.raises(ExportError, match=r"\[B, C, H, W\]"):
        xaifast.export(model, tmp_path / "m.xml", example_input=torch.randn(3, 40, 56))
    with pytest.raises(ExportError, match="float"):
        xaifast.export(model, tmp_path / "m.xml", example_input=torch.zeros(1, 3, 40, 56, dtype=torch.uint8))


def test_cli_export_prints_no_third_party_warning(tmp_path):
    """`xaifast export` under -W default (every warning shown once): stderr stays empty (the ONNX
    path also covers torch.onnx's "torchvision is not installed" log lines)."""
    env = dict(os.environ, PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-W", "default", "-m", "xaifast", "export", "--config", "small_cnn",
                           "--explain", "True", "--export_format", "ONNX", "--work_dir", str(tmp_path / "ws")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert "exported small_cnn (ONNX" in proc.stdout
