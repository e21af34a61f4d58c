"""`xaifast.Engine` (OTX 2.x's calls) and `xaifast explain --work_dir W` alone, as someone who
switches from OTX uses them."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import xaifast
from xaifast import Engine, ExplainConfig
from xaifast.zoo import SmallCNN

XAIFAST = [sys.executable, "-P", "-m", "xaifast.cli"]


@pytest.fixture
def images(tmp_path, rng):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / name), cv2.resize(small, (50, 40), interpolation=cv2.INTER_CUBIC))
    return folder


@pytest.fixture
def recipe(make_recipe):
    return make_recipe(3)


def test_tutorial_lines_run_as_written(tmp_path, images, recipe):
    """OTX's tutorial: export with explain outputs, then explain the exported model."""
    path, ckpt = recipe
    engine = Engine(model=str(path), work_dir=tmp_path / "otx-workspace", data_root=images)
    exported = engine.export(checkpoint=ckpt, export_format="OPENVINO", export_precision="FP32", explain=True)
    assert exported.name == "exported_model.xml" and exported.is_file()
    assert (tmp_path / "otx-workspace" / ".latest" / "exported_model.xml").is_file()
    predictions = engine.explain(checkpoint=exported, datamodule=images,
                                 explain_config=ExplainConfig(target_explain_group="PREDICTIONS"), dump=True)
    assert [Path(p.source).name for p in predictions] == ["a.png", "b.jpg", "c.png"]
    run = tmp_path / "otx-workspace" / ".latest"
    index = json.loads((run / "explain" / "index.json").read_text())
    assert len(index["images"]) == 3 and all(len(r["files"]) == 2 for r in index["images"])
    # the same maps as explaining the PyTorch model (within 1)
    native = engine.explain(checkpoint=ckpt, explain_config=ExplainConfig(target_explain_group="PREDICTIONS"),
                            engine="pytorch")
    for a, b in zip(predictions, native):
        assert a.predicted == b.predicted
        for k in a.maps:
            assert np.abs(a.maps[k].astype(int) - b.maps[k].astype(int)).max() <= 1


def test_engine_with_a_module_and_a_dataloader(tmp_path):
    model = SmallCNN(num_classes=4).eval()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(5, 3, 32, 32)), batch_size=2)
    engine = Engine(model=model, work_dir=tmp_path / "w")
    out = engine.explain(datamodule=loader, engine="pytorch")
    assert len(out) == 5 and sorted(out[0].saliency_map) == [0, 1, 2, 3]
    assert np.array_equal(out[0].maps[0], xaifast.explain(model, torch.cat([b[0] for b in loader]),
                                                          engine="pytorch").__iter__().__next__().maps[0])
    onnx_path = engine.export(export_format="ONNX")
    assert onnx_path.name == "exported_model.onnx" and onnx_path.is_file()
    fp32 = engine.export()
    fp16 = engine.export(export_precision="FP16")
    assert fp16.with_suffix(".bin").stat().st_size < 0.6 * fp32.with_suffix(".bin").stat().st_size
    with pytest.raises(xaifast.XaifastError, match="FP16"):
        engine.export(export_format="ONNX", export_precision="FP16")
    with pytest.raises(xaifast.XaifastError, match="needs data"):
        engine.explain()


def test_work_dir_alone_explains_the_newest_model(tmp_path, images, recipe):
    path, ckpt = recipe
    work = tmp_path / "ws"
    run = subprocess.run(XAIFAST + ["explain", "--config", str(path), "--checkpoint", str(ckpt), "--data_root",
                                    str(images), "--work_dir", str(work), "--engine", "pytorch"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    again = subprocess.run(XAIFAST + ["explain", "--work_dir", str(work), "--engine", "pytorch"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "newest model" in again.stderr and str(path.resolve()) in again.stderr
    assert "explained 3 images" in again.stdout
    export = subprocess.run(XAIFAST + ["export", "--config", str(path), "--checkpoint", str(ckpt), "--work_dir",
                                       str(work), "--explain", "True"], capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr
    third = subprocess.run(XAIFAST + ["explain", "--work_dir", str(work)], capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    assert "exported_model.xml" in third.stderr and "explained 3 images" in third.stdout
    # the model is named by its run folder, never through `.latest` (which this run moves to its own folder)
    assert "/.latest/" not in third.stderr.splitlines()[0]


def test_newest_model_never_goes_through_latest(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from xaifast import cli

    run = tmp_path / "20261207_000000"
    run.mkdir()
    (run / "exported_model.xml").write_text("<net/>")
    (tmp_path / ".latest").symlink_to(run.name)
    glob = Path.glob
    for reverse in (False, True):  # whatever order the directory lists them in
        monkeypatch.setattr(Path, "glob", lambda self, pattern: sorted(glob(self, pattern), reverse=reverse))
        a = SimpleNamespace(work_dir=str(tmp_path), config=None, checkpoint=None, data_root="x")
        cli._newest_model_of(a)
        assert a.checkpoint == str((run / "exported_model.xml").resolve())
