"""`xaifast` driven as a user would: subprocesses, files on disk, exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xaifast.zoo import SmallCNN

XAIFAST = [sys.executable, "-P", "-m", "xaifast.cli"]


def cli(*args, cwd=None):
    proc = subprocess.run(XAIFAST + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (48, 64), "b.jpg": (70, 50), "c.png": (33, 33)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(folder / name), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder, sizes


@pytest.fixture
def recipe(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "small.pth"
    torch.save({"state_dict": SmallCNN(num_classes=3).state_dict()}, ckpt)
    path = tmp_path / "recipe.yaml"
    path.write_text("model:\n  class_path: xaifast.zoo.builtin.SmallCNN\n  init_args: {num_classes: 3}\n"
                    "input_size: [32, 32]\nlabels: [circle, square, triangle]\n")
    return path, ckpt


def test_help_reads_well():
    code, out, _ = cli("--help")
    assert code == 0 and "explain" in out
    code, out, _ = cli("explain", "--help")
    assert code == 0
    for flag in ("--config", "--checkpoint", "--data_root", "--work_dir", "--dump", "--explain_config.postprocess",
                 "--explain_config.target_explain_group", "--explain-algorithm", "--device", "--batch_size"):
        assert flag in out, flag


def test_recipe_run_writes_every_file_and_reports_bad_images(tmp_path, photos, recipe):
    folder, sizes = photos
    path, ckpt = recipe
    work = tmp_path / "work"
    args = ["explain", "--config", path, "--checkpoint", ckpt, "--data_root", folder, "--work_dir", work,
            "--explain_config.target_explain_group", "ALL", "--explain_config.postprocess", "True", "--batch_size", 2]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "explained 3 images: 9 maps, 18 files, 1 failed" in out and "skipped" in out and "broken.png" in out
    run = work / ".latest"
    index = json.loads((run / "explain" / "index.json").read_text())
    assert [Path(r["source"]).name for r in index["images"]] == ["a.png", "b.jpg", "c.png"]
    assert [Path(f["source"]).name for f in index["failures"]] == ["broken.png"]
    assert index["settings"]["target_explain_group"] == "ALL"
    written = sorted(os.listdir(run / "explain" / "saliency_maps"))
    assert len(written) == 18
    for record in index["images"]:
        name = Path(record["source"]).name
        h, w = sizes[name]
        assert record["targets"] == [0, 1, 2] and record["predictions"][0]["label"] in ("circle", "square", "triangle")
        for rel in record["files"]:
            image = cv2.imread(str(run / rel))
            assert image is not None and image.shape == (h, w, 3), rel
    assert "a_class_2_saliency_map.png" in written and "a_class_2_overlay.png" in written
    first_run = os.path.realpath(run)
    # a second run gets its own folder; the first stays
    code, out, err = cli(*args[:-4], "--explain_config.target_explain_group", "PREDICTIONS")
    assert code == 0, err
    assert os.path.realpath(run) != first_run and len(os.listdir(Path(first_run) / "explain" / "saliency_maps")) == 18
    assert "explained 3 images: 3 maps, 6 files, 1 failed" in out


def test_low_resolution_maps_and_class_agnostic_algorithm(tmp_path, photos, recipe):
    folder, sizes = photos
    path, ckpt = recipe
    work = tmp_path / "w"
    code, _, err = cli("explain", "--config", path, "--checkpoint", ckpt, "--data_root", folder / "a.png",
                       "--work_dir", work, "--explain_config.target_explain_group", "PREDICTIONS")
    assert code == 0, err
    files = sorted(os.listdir(work / ".latest" / "explain" / "saliency_maps"))
    low = [f for f in files if f.endswith("saliency_map.png")][0]
    assert cv2.imread(str(work / ".latest" / "explain" / "saliency_maps" / low), cv2.IMREAD_UNCHANGED).shape == (4, 4)
    code, _, err = cli("explain", "--config", path, "--data_root", folder / "c.png", "--work_dir", work,
                       "--explain-algorithm", "eigencam", "--explain_config.target_explain_group", "IMAGE")
    assert code == 0, err
    assert sorted(os.listdir(work / ".latest" / "explain" / "saliency_maps")) == [
        "c_image_overlay.png", "c_image_saliency_map.png"]


def test_bad_recipe_and_checkpoint_give_one_clear_line(tmp_path, photos, recipe):
    folder, _ = photos
    path, _ = recipe
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    wrong = tmp_path / "wrong.pth"
    torch.save(SmallCNN(num_classes=7).state_dict(), wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {class_path: nowhere.Model}\n")
    cases = [
        (["--config", bad_yaml], "invalid YAML"),
        (["--config", unknown], "cannot import nowhere.Model"),
        (["--config", tmp_path / "missing.yaml"], "not a built-in recipe"),
        (["--config", path, "--checkpoint", wrong], "does not fit the recipe's model"),
        (["--config", path, "--checkpoint", junk], "not a PyTorch checkpoint"),
        (["--config", path, "--checkpoint", tmp_path / "nope.pth"], "no such file"),
    ]
    for extra, message in cases:
        code, out, err = cli("explain", "--data_root", folder, "--work_dir", tmp_path / "w", *extra)
        lines = [line for line in err.strip().splitlines() if line]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("xaifast: error:") and message in lines[0], err
    code, _, err = cli("explain", "--config", path, "--work_dir", tmp_path / "w")
    assert code == 2 and "--data_root is required" in err
    code, _, err = cli("explain", "--config", path, "--data_root", tmp_path / "empty_nothing", "--work_dir", tmp_path)
    assert code == 2 and "no such file or folder" in err


@pytest.mark.slow
def test_embedded_default(tmp_path):
    code, out, err = cli("explain", "--work_dir", tmp_path)
    assert code == 0, err
    assert "coffee.png: espresso" in out and "chelsea.png: Egyptian cat" in out
    maps = tmp_path / ".latest" / "explain" / "saliency_maps"
    assert (maps / "coffee_class_967_overlay.png").is_file()
    assert f"results: {tmp_path}" in out


def test_job_in_process_writes_to_the_current_stdout(tmp_path, photos, capsys):
    """run_explain_job (the CLI's job) prints to sys.stdout as it is when called (capsys swaps it
    after import), or to `out=`; the summary counts images, maps, files and the bad image."""
    import io

    import xaifast
    from xaifast.job import run_explain_job

    folder, sizes = photos
    model = SmallCNN(num_classes=3).eval()
    cfg = xaifast.ExplainConfig(target_explain_group="ALL", postprocess=True)
    pre = xaifast.Preprocess(input_size=(32, 32))
    summary = run_explain_job(model, str(folder), cfg, work_dir=str(tmp_path / "w"), preprocess=pre,
                              labels=["circle", "square", "triangle"], progress=False)
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.count("broken.png") == 2 and "broken.png" not in captured.err  # while it goes, in the summary
    assert summary.images == len(sizes) and summary.maps == 3 * len(sizes) and summary.files == 2 * 3 * len(sizes)
    assert [Path(s).name for s, _ in summary.failures] == ["broken.png"]
    assert f"explained {len(sizes)} images: {3 * len(sizes)} maps" in printed and "broken.png" in printed
    assert all(name in printed for name in sizes)
    buffer = io.StringIO()
    run_explain_job(model, str(folder), cfg, work_dir=str(tmp_path / "w"), preprocess=pre, progress=False,
                    dump=False, out=buffer)
    assert capsys.readouterr().out == "" and f"explained {len(sizes)} images" in buffer.getvalue()


def test_aise_run_from_the_cli(tmp_path, photos, recipe):
    """--explain_algorithm aise with its flags: the predicted class of each image, maps at the image's size."""
    folder, sizes = photos
    path, ckpt = recipe
    work = tmp_path / "work"
    code, out, err = cli("explain", "--config", path, "--checkpoint", ckpt, "--data_root", folder, "--work_dir", work,
                         "--explain_algorithm", "aise", "--preset", "speed", "--num_iterations_per_kernel", 5,
                         "--kernel_widths", "0.15,0.3", "--explain_config.target_explain_group", "PREDICTIONS",
                         "--explain_config.postprocess", "True")
    assert code == 0, err
    assert "explained 3 images: 3 maps, 6 files, 1 failed" in out
    index = json.loads((work / ".latest" / "explain" / "index.json").read_text())
    for record in index["images"]:
        h, w = sizes[Path(record["source"]).name]
        assert record["targets"] == [record["predictions"][0]["class"]]
        for rel in record["files"]:
            assert cv2.imread(str(work / ".latest" / rel)).shape == (h, w, 3)
    code, _, err = cli("explain", "--config", path, "--checkpoint", ckpt, "--data_root", folder, "--work_dir", work,
                       "--explain_algorithm", "aise", "--preset", "fastest")
    assert code != 0 and "preset" in err and "speed, balance, quality" in err
