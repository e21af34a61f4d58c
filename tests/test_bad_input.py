"""Bad input gets a clear error naming the problem and the fix; bad images never stop a run."""
import warnings

import cv2
import numpy as np
import pytest
import torch

import xaifast
from xaifast import ExplainConfig
from xaifast.data import read_image
from xaifast.zoo import SmallCNN


@pytest.fixture
def model():
    return SmallCNN(num_classes=5).eval()


def write(path, array):
    assert cv2.imwrite(str(path), array), path
    return str(path)


def test_unknown_target_layer_lists_candidates(model):
    with pytest.raises(xaifast.TargetLayerError) as err:
        xaifast.saliency_maps(model, torch.randn(1, 3, 32, 32), target_layer="layer4")
    msg = str(err.value)
    assert "'layer4'" in msg and "features" in msg and "features.3" in msg


def test_target_layer_of_wrong_rank(model):
    with pytest.raises(xaifast.TargetLayerError, match=r"rank 2.*\[B, C, H, W\]"):
        xaifast.saliency_maps(model, torch.randn(1, 3, 32, 32), target_layer="classifier")


def test_no_feature_map_to_detect():
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(xaifast.TargetLayerError, match="target_layer="):
        xaifast.saliency_maps(mlp, torch.randn(1, 3, 2, 2))


def test_class_index_out_of_range(model):
    with pytest.raises(xaifast.ClassIndexError, match=r"out of range.*5 classes.*0\.\.4"):
        list(xaifast.explain(model, torch.randn(1, 3, 32, 32), ExplainConfig(target_explain_group=[7])))
    with pytest.raises(xaifast.ClassIndexError, match="unknown class name 'zebra'"):
        list(xaifast.explain(model, torch.randn(1, 3, 32, 32), ExplainConfig(target_explain_group=["zebra"]),
                             labels=list("abcde")))


def test_corrupt_and_missing_images_are_skipped_and_reported(model, tmp_path):
    good1 = write(tmp_path / "a.png", np.full((20, 30, 3), 120, np.uint8))
    corrupt = tmp_path / "b.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    empty = tmp_path / "c.jpg"
    empty.write_bytes(b"")
    good2 = write(tmp_path / "d.jpg", np.full((25, 25, 3), 60, np.uint8))
    files = [good1, str(corrupt), str(empty), str(tmp_path / "missing.png"), good2]
    run = xaifast.explain(model, files, preprocess=xaifast.Preprocess(input_size=(32, 32)), batch_size=2)
    with pytest.warns(UserWarning) as caught:
        done = list(run)
    assert [e.source for e in done] == [good1, good2]
    assert [src for src, _ in run.failures] == [str(corrupt), str(empty), str(tmp_path / "missing.png")]
    assert run.count == 2
    summary = str(caught[-1].message)
    assert "3 input(s) could not be read" in summary and "b.png" in summary and "2 explained" in summary


def test_empty_folder_and_missing_path(model, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(xaifast.DataError, match="no images found in folder"):
        xaifast.explain(model, str(tmp_path))
    with pytest.raises(xaifast.DataError, match="no such file or folder"):
        xaifast.explain(model, str(tmp_path / "nope"))
    with pytest.raises(xaifast.DataError, match="empty"):
        xaifast.explain(model, [])


def test_bad_tensors(model):
    with pytest.raises(xaifast.DataError, match=r"shape \[3, 32\]"):
        list(xaifast.explain(model, torch.randn(3, 32)))
    with pytest.raises(xaifast.DataError, match="uint8"):
        list(xaifast.explain(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)))
    with pytest.raises(xaifast.DataError, match="not explainable"):
        xaifast.explain(model, 42)


def test_model_arguments():
    with pytest.raises(xaifast.ModelSplitError, match="backbone= and head="):
        xaifast.explain(None, torch.randn(1, 3, 8, 8))
    with pytest.raises(xaifast.XaifastError, match="torch.nn.Module"):
        xaifast.explain("resnet50", torch.randn(1, 3, 8, 8))


def test_grayscale_rgba_and_16bit_images_are_converted(tmp_path):
    gray = write(tmp_path / "g.png", np.full((6, 8), 200, np.uint8))
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 255  # blue in OpenCV's BGRA
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # a transparent pixel: white
    rgba_path = write(tmp_path / "a.png", rgba)
    deep = np.full((6, 8, 3), 65535, np.uint16)
    deep[..., 2] = 0  # no red
    deep_path = write(tmp_path / "d.png", deep)
    gray16 = write(tmp_path / "g16.png", np.full((6, 8), 32896, np.uint16))
    g = read_image(gray)
    assert g.shape == (6, 8, 3) and g.dtype == np.uint8 and (g == 200).all()
    a = read_image(rgba_path)
    assert a.shape == (6, 8, 3) and tuple(a[1, 1]) == (0, 0, 255) and tuple(a[0, 0]) == (255, 255, 255)
    d = read_image(deep_path)
    assert d.dtype == np.uint8 and tuple(d[0, 0]) == (0, 255, 255)
    assert (read_image(gray16) == 128).all()


def test_converted_images_explain(model, tmp_path):
    paths = [write(tmp_path / "g.png", np.full((40, 40), 90, np.uint8)),
             write(tmp_path / "d.png", (np.random.default_rng(0).random((40, 40, 3)) * 65535).astype(np.uint16))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped
        done = list(xaifast.explain(model, paths, preprocess=xaifast.Preprocess(input_size=(32, 32))))
    assert len(done) == 2 and all(e.image.shape == (40, 40, 3) for e in done)
