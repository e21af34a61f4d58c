"""xaifast.evaluate and `xaifast evaluate`: a table per algorithm from class folders and COCO boxes,
the same numbers as the metric functions, evaluate.json / evaluate.csv in a run folder."""
import csv
import json

import cv2
import numpy as np
import pytest
import torch

import xaifast
from xaifast import metrics
from xaifast.zoo import SmallCNN

LABELS = ["c0", "c1", "c2"]


def _photos(root, rng, per_class=2, size=40):
    for k in LABELS:
        (root / k).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / k / f"{i}.png"), rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8))
    return root


def _model():
    torch.manual_seed(0)
    return SmallCNN(num_classes=3).eval()


def test_evaluate_class_folders_matches_the_metric_functions(tmp_path, rng):
    data = _photos(tmp_path / "photos", rng)
    model, pre = _model(), xaifast.Preprocess((32, 32))
    algos = ["recipro_cam", "activationmap", "eigencam", "rise"]
    result = xaifast.evaluate(model, str(data), algos, labels=LABELS, preprocess=pre, steps=8,
                              rise_options=dict(num_masks=24, num_cells=4), work_dir=tmp_path / "work",
                              out=open(tmp_path / "table.txt", "w"), engine="pytorch")
    assert result.images == 6 and result.targets == "gt"
    assert [r["algorithm"] for r in result.rows] == algos
    for r in result.rows:
        assert r["maps"] == 6 and r["seconds_per_image"] > 0 and r["pointing_game"] is None
        for key in ("insertion", "deletion", "adcc", "coherency", "complexity", "average_drop"):
            assert np.isfinite(r[key]), (r["algorithm"], key)
    # the recipro_cam row equals the metric functions on the same maps and gt classes
    x = torch.stack([pre(xaifast.read_image(p)) for p in sorted(data.glob("*/*.png"))])
    classes = [LABELS.index(p.parent.name) for p in sorted(data.glob("*/*.png"))]
    maps = xaifast.saliency_maps(model, x, algorithm="recipro_cam", engine="pytorch")
    auc = metrics.insertion_deletion_auc(model, x, maps, steps=8, targets=classes, baseline=metrics.black_pixel(pre))
    assert result.rows[0]["insertion"] == pytest.approx(auc["insertion"], rel=1e-5)
    assert result.rows[0]["deletion"] == pytest.approx(auc["deletion"], rel=1e-5)
    # files: the json rows and the csv agree, .latest points at the run
    folder = result.run_dir / "evaluate"
    saved = json.loads((folder / "evaluate.json").read_text())
    rows = list(csv.DictReader(open(folder / "evaluate.csv")))
    assert [r["algorithm"] for r in rows] == algos == [r["algorithm"] for r in saved["rows"]]
    assert float(rows[3]["adcc"]) == pytest.approx(saved["rows"][3]["adcc"]) == pytest.approx(result.rows[3]["adcc"])
    assert saved["settings"]["rise"]["num_masks"] == 24
    for r in saved["rows"]:  # the mean curves (the report plots them): their trapezoid areas are the mean AUCs
        c = np.asarray(saved["curves"][r["algorithm"]]["insertion"])
        assert len(c) == 9 and (c.sum() - c[0] / 2 - c[-1] / 2) / 8 == pytest.approx(r["insertion"], rel=1e-6)
    assert (result.run_dir / "report.html").is_file() and (result.run_dir / "report" / "evaluate.js").is_file()
    assert (tmp_path / "work" / ".latest" / "evaluate" / "evaluate.csv").is_file()
    assert "insertion" in (tmp_path / "table.txt").read_text()


def test_evaluate_coco_boxes_pointing_game(tmp_path, rng):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"{i}.png"), rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [0, 0, 64, 48], "iscrowd": 0})
    cats = [{"id": 1, "name": "c1"}, {"id": 2, "name": "c2"}]
    (root / "annotations" / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                     "categories": cats}))
    result = xaifast.evaluate(_model(), str(root), ["activationmap"], labels=LABELS, preprocess=xaifast.Preprocess((32, 32)),
                              steps=4, metrics=["pointing_game", "insertion_deletion"])
    assert result.targets == "gt"
    assert result.rows[0]["pointing_game"] == 1.0  # every box is the whole image
    assert result.rows[0]["adcc"] is None and result.rows[0]["insertion"] is not None


def test_evaluate_bad_input(tmp_path):
    with pytest.raises(xaifast.XaifastError, match="unknown explain algorithm"):
        xaifast.evaluate(_model(), torch.rand(2, 3, 32, 32), ["gradcam"])
    with pytest.raises(xaifast.XaifastError, match="unknown metric"):
        xaifast.evaluate(_model(), torch.rand(2, 3, 32, 32), ["rise"], metrics=["accuracy"])
    with pytest.raises(xaifast.XaifastError, match="targets"):
        xaifast.evaluate(_model(), torch.rand(2, 3, 32, 32), ["rise"], targets=[0])


def test_cli_evaluate(tmp_path, rng, make_recipe, monkeypatch, capsys):
    from xaifast.cli import main

    data = _photos(tmp_path / "photos", rng, per_class=1)
    recipe, ckpt = make_recipe(3)
    monkeypatch.chdir(tmp_path)
    rc = main(["evaluate", "--config", str(recipe), "--checkpoint", str(ckpt), "--data_root", str(data),
               "--algorithms", "activationmap,rise,aise", "--num_masks", "16", "--num_cells", "4", "--steps", "5",
               "--preset", "speed", "--num_iterations_per_kernel", "6", "--kernel_widths", "0.2,0.3", "--work_dir", "ws"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "activationmap" in printed and "rise" in printed and "aise" in printed and "targets from gt" in printed
    rows = list(csv.DictReader(open(tmp_path / "ws" / ".latest" / "evaluate" / "evaluate.csv")))
    assert [r["algorithm"] for r in rows] == ["activationmap", "rise", "aise"]
    saved = json.loads((tmp_path / "ws" / ".latest" / "evaluate" / "evaluate.json").read_text())
    assert saved["settings"]["aise"]["kernel_widths"] == [0.2, 0.3]
    assert main(["evaluate", "--config", str(recipe), "--data_root", str(data), "--algorithms", "aise",
                 "--kernel_widths", "0.2,x"]) == 2
    assert main(["evaluate", "--config", str(recipe), "--data_root", str(data), "--algorithms", "nope"]) == 2


def test_evaluate_a_transformer_with_its_own_method(rng):
    """vit_recipro_cam (and auto) evaluate on a transformer (the names were checked against a CNN);
    an unknown name still fails before any work."""
    from xaifast.zoo.vit import small_vit

    torch.manual_seed(0)
    vit = small_vit(num_classes=3, img_size=(32, 48), depth=2).eval()
    x = torch.rand(3, 3, 32, 48)
    result = xaifast.evaluate(vit, x, ["vit_recipro_cam", "auto"], targets=[0, 1, 2], steps=4,
                              metrics=("insertion_deletion",), engine="pytorch", out=None)
    assert [r["algorithm"] for r in result.rows] == ["vit_recipro_cam", "auto"]
    assert result.rows[0]["insertion"] == pytest.approx(result.rows[1]["insertion"], rel=1e-6)
    maps = xaifast.saliency_maps(vit, x, algorithm="vit_recipro_cam", engine="pytorch")
    auc = metrics.insertion_deletion_auc(vit, x, maps, steps=4, targets=[0, 1, 2],
                                         baseline=metrics.black_pixel(xaifast.Preprocess()))
    assert result.rows[0]["insertion"] == pytest.approx(auc["insertion"], rel=1e-5)
    with pytest.raises(xaifast.XaifastError, match="unknown explain algorithm 'gradcam'"):
        xaifast.evaluate(vit, x, ["gradcam"], out=None)


def test_evaluate_an_exported_explain_model_uses_its_maps(tmp_path, rng):
    """An IR exported with explain outputs evaluates with the maps of its graph (normalized uint8:
    every metric is invariant to that min-max scaling) and gives the PyTorch model's figures, up to
    the uint8 rounding. (It was refused: saliency_maps wants raw maps.)"""
    data = _photos(tmp_path / "photos", rng)
    model, pre = _model(), xaifast.Preprocess((32, 32))
    path = xaifast.export(model, tmp_path / "m.xml", explain=True, preprocess=pre, labels=LABELS)
    algos = ["recipro_cam", "activationmap"]
    kw = dict(labels=LABELS, preprocess=pre, steps=8, metrics=("insertion_deletion", "adcc"), out=None)
    got = xaifast.evaluate(str(path), str(data), algos, **kw)
    want = xaifast.evaluate(model, str(data), algos, engine="pytorch", **kw)
    assert got.targets == want.targets == "gt"
    for g, w in zip(got.rows, want.rows):
        assert g["algorithm"] == w["algorithm"]
        for key in ("insertion", "deletion"):  # pixel ranks: the same maps up to uint8 ties
            assert g[key] == pytest.approx(w[key], abs=1e-4), (g["algorithm"], key, g[key], w[key])
        for key in ("coherency", "complexity", "average_drop"):
            assert np.isfinite(g[key]), (g["algorithm"], key)
    # ADCC rescales a map to [0, 1] unless it already lies there (as OpenVINO XAI does): the class-
    # agnostic raw maps exceed 1, so both sides rescale and agree
    g, w = got.rows[1], want.rows[1]
    for key in ("coherency", "complexity", "average_drop"):
        assert g[key] == pytest.approx(w[key], abs=0.01), (key, g[key], w[key])
