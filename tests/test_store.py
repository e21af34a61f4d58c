"""The compact result store (zarr + Parquet), the run reader, `xaifast render`, and the same run on
two processes with torchrun (gloo on CPU), killed and resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("zarr", reason="the result store needs zarr (make test installs it)")
pytest.importorskip("pyarrow", reason="the Parquet index needs pyarrow (make test installs it)")

import xaifast  # noqa: E402
from xaifast.zoo import SmallCNN  # noqa: E402

XAIFAST = [sys.executable, "-P", "-m", "xaifast"]
TORCHRUN = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "xaifast"]


def _photo(rng, h, w):
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def data(tmp_path, rng):
    root = tmp_path / "data"
    for i in range(7):  # 7 images: not a multiple of the world size nor of the batch size
        path = root / f"c{i % 2}" / f"im{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), _photo(rng, int(rng.integers(30, 90)), int(rng.integers(30, 90))))
    (root / "c1" / "bad.png").write_bytes(b"nope")
    return root


@pytest.fixture
def recipe(make_recipe):
    return make_recipe(4)


def run(cmd, *args, env=None, timeout=600):
    """The command in a neutral folder: torchrun's workers run `python -m xaifast` without -P, so the
    repository's source folder must not be the working directory."""
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), cwd="/")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def explain_args(recipe, data, work, *extra):
    path, ckpt = recipe
    return ["explain", "--config", path, "--checkpoint", ckpt, "--data_root", data, "--work_dir", work,
            "--engine", "pytorch", "--batch_size", 2, "--explain_config.target_explain_group", "ALL", *extra]


def maps_of(r) -> dict:
    """{rel: {class: low-resolution map}} of a run, through the reader."""
    return {ex.rel: {k: np.asarray(v) for k, v in ex.maps.items()} for ex in r}


def rows_of(r) -> list:
    cols = ["index", "rel", "gt_label", "predicted", "top_classes", "targets", "failed"]
    frame = r.index[cols]
    return [tuple(tuple(v) if isinstance(v, (list, np.ndarray)) else v for v in row) for row in frame.itertuples(index=False)]


def test_zarr_run_equals_png_run_and_renders_its_files(tmp_path, data, recipe):
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "png"))  # postprocess False: low-res PNG maps
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "zarr", "--dump_format", "zarr"))
    png, store = xaifast.open_run(tmp_path / "png"), xaifast.open_run(tmp_path / "zarr" / ".latest")
    assert len(png) == len(store) == 7 and store.format == "zarr" and store.finished
    a, b = maps_of(png), maps_of(store)
    assert a.keys() == b.keys()
    for rel in a:
        assert sorted(a[rel]) == sorted(b[rel]) == [0, 1, 2, 3]
        for k in a[rel]:
            np.testing.assert_array_equal(a[rel][k], b[rel][k])
    # the reader: by position and by relative path; the index table
    ex = store["c1/im3.jpg"]
    assert ex.gt == {"label": "c1"} and ex.rel == "c1/im3.jpg" and store[5].rel == ex.rel
    frame = store.index
    assert len(frame) == 8 and frame["failed"].notna().sum() == 1  # 7 images and the bad file
    assert list(frame.loc[frame["failed"].isna(), "maps_count"]) == [4] * 7
    assert set(frame.columns) >= {"rel", "gt_label", "top_classes", "top_scores", "maps_array", "maps_row"}
    assert rows_of(png) == rows_of(store)
    # a few bytes per image against two PNG files per map
    store_bytes = sum(p.stat().st_size for p in (store.path / "explain" / "maps.zarr").rglob("*") if p.is_file())
    png_bytes = sum(p.stat().st_size for p in (png.path / "explain" / "saliency_maps").rglob("*") if p.is_file())
    assert store_bytes < png_bytes / 5

    # render: the files a postprocessed PNG run writes, from the zarr run
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "pngpost", "--explain_config.postprocess", "True"))
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "zpost", "--explain_config.postprocess", "True",
                               "--dump_format", "zarr"))
    run(XAIFAST, "render", tmp_path / "zpost", "--out", tmp_path / "rendered")
    want = xaifast.open_run(tmp_path / "pngpost").path / "explain" / "saliency_maps"
    files = sorted(p.relative_to(want).as_posix() for p in want.rglob("*.png"))
    got = sorted(p.relative_to(tmp_path / "rendered").as_posix() for p in (tmp_path / "rendered").rglob("*.png"))
    assert files == got and len(files) == 7 * 4 * 2
    for rel in files:
        assert (want / rel).read_bytes() == (tmp_path / "rendered" / rel).read_bytes(), rel
    heat, overlay = xaifast.open_run(tmp_path / "zpost").render("c0/im0.jpg", 2)
    np.testing.assert_array_equal(heat, cv2.imread(str(want / "c0" / "im0_class_2_saliency_map.png"))[:, :, ::-1])
    # only some classes and images
    run(XAIFAST, "render", tmp_path / "zpost", "--out", tmp_path / "some", "--classes", "[1]", "--images", "[c0/im0.jpg]")
    assert sorted(p.name for p in (tmp_path / "some").rglob("*.png")) == ["im0_class_1_overlay.png",
                                                                          "im0_class_1_saliency_map.png"]
    # the same for JPEG: the rendered files are the jpg run's, byte for byte (one encoder for both)
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "jpgpost", "--explain_config.postprocess", "True",
                               "--dump_format", "jpg"))
    run(XAIFAST, "render", tmp_path / "zpost", "--out", tmp_path / "rendered_jpg", "--format", "jpg")
    want = xaifast.open_run(tmp_path / "jpgpost").path / "explain" / "saliency_maps"
    files = sorted(p.relative_to(want).as_posix() for p in want.rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "rendered_jpg").as_posix()
                           for p in (tmp_path / "rendered_jpg").rglob("*.jpg")) and len(files) == 7 * 4 * 2
    for rel in files:
        assert (want / rel).read_bytes() == (tmp_path / "rendered_jpg" / rel).read_bytes(), rel
    # a postprocessed PNG run kept files, not maps: rendering it says so and what to do
    with pytest.raises(xaifast.XaifastError, match="kept no low-resolution maps.*rendered files.*--dump_format zarr"):
        xaifast.open_run(tmp_path / "pngpost").render("c0/im0.jpg", 2)


def test_zarr_run_killed_and_resumed_keeps_everything(tmp_path, data, recipe, rng):
    # the same settings as the cut run (batch size included: batches of 1 and of 2 may round a map
    # value differently)
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "whole", "--dump_format", "zarr", "--batch_size", 1))
    work = tmp_path / "cut"
    cmd = XAIFAST + [str(a) for a in explain_args(recipe, data, work, "--dump_format", "zarr", "--batch_size", 1)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, XAIFAST_ZARR_FLUSH_SECONDS="0"))
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        journals = list(work.glob("*/explain/index.jsonl"))
        if journals and journals[0].read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run(XAIFAST, *explain_args(recipe, data, work, "--dump_format", "zarr", "--batch_size", 1, "--resume", "True"))
    a, b = maps_of(xaifast.open_run(tmp_path / "whole")), maps_of(xaifast.open_run(work))
    assert a.keys() == b.keys() and len(a) == 7
    for rel in a:
        for k in a[rel]:
            np.testing.assert_array_equal(a[rel][k], b[rel][k])


def _children(pid: int) -> list:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _rank_of(pid: int):
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in env:
        if entry.startswith(b"RANK="):
            return int(entry[5:])
    return None


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_then_a_killed_rank_is_resumed(tmp_path, data, recipe):
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "one", "--dump_format", "zarr"))
    run(TORCHRUN, *explain_args(recipe, data, tmp_path / "two", "--dump_format", "zarr"))
    one, two = xaifast.open_run(tmp_path / "one"), xaifast.open_run(tmp_path / "two")
    assert rows_of(one) == rows_of(two)  # every image exactly once, same order, same predictions
    a, b = maps_of(one), maps_of(two)
    for rel in a:
        for k in a[rel]:
            np.testing.assert_array_equal(a[rel][k], b[rel][k])
    arrays = set(two.index["maps_array"].dropna())
    assert arrays == {"maps_4x4", "maps_4x4_rank1"}  # each rank wrote its own part of the store

    # PNG files: the same tree, byte for byte; then rank 1 is killed mid-run and the run resumed
    run(XAIFAST, *explain_args(recipe, data, tmp_path / "png1", "--explain_config.postprocess", "True", "--batch_size", 1))
    work = tmp_path / "png2"
    cmd = TORCHRUN + [str(a) for a in explain_args(recipe, data, work, "--explain_config.postprocess", "True",
                                                   "--batch_size", 1)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    killed = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        journals = list(work.glob("*/explain/index.rank-1.jsonl"))
        if journals and journals[0].read_bytes().count(b"\n") >= 1:
            for child in _children(proc.pid):
                if _rank_of(child) == 1:
                    os.kill(child, signal.SIGKILL)
                    killed = True
        time.sleep(0.005)
    proc.wait(timeout=300)
    assert killed and proc.returncode != 0
    run_dir = next(work.glob("2*"))
    assert not (run_dir / "explain" / "index.json").exists()
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "explain" / "saliency_maps").rglob("*.png")}
    journal0 = (run_dir / "explain" / "index.jsonl").read_bytes().count(b"\n")
    run(TORCHRUN, *explain_args(recipe, data, work, "--explain_config.postprocess", "True", "--batch_size", 1,
                                "--resume", "True"))
    for p, mtime in before.items():  # finished images were not computed again: their files are untouched
        assert p.stat().st_mtime_ns == mtime, p
    want, got = tmp_path / "png1", run_dir
    want = xaifast.open_run(want).path / "explain" / "saliency_maps"
    files = sorted(p.relative_to(want).as_posix() for p in want.rglob("*.png"))
    assert files == sorted(p.relative_to(got / "explain" / "saliency_maps").as_posix()
                           for p in (got / "explain" / "saliency_maps").rglob("*.png"))
    for rel in files:
        assert (want / rel).read_bytes() == (got / "explain" / "saliency_maps" / rel).read_bytes()
    one_index = json.loads((xaifast.open_run(tmp_path / "png1").path / "explain" / "index.json").read_text())
    two_index = json.loads((got / "explain" / "index.json").read_text())
    one_index.pop("run"), two_index.pop("run")
    assert one_index == two_index
    assert (run_dir / "explain" / "index.jsonl").read_bytes().count(b"\n") >= journal0
