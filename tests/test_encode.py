"""xaifast.stages.encode: exact PNG round trips (fpng when installed, and the OpenCV fallback),
JPEG shape / closeness / size, encode() dispatch, and write_atomic's guarantees."""
from __future__ import annotations

import os
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from xaifast.stages import encode as E


@pytest.fixture(params=["auto", "opencv"])
def backend(request, monkeypatch):
    """Every PNG and JPEG test runs with the encoders this install picks (fpng and simplejpeg when
    present) and with OpenCV forced."""
    if request.param == "opencv":
        monkeypatch.setattr(E, "_fpng", lambda: None)
        monkeypatch.setattr(E, "_simplejpeg", lambda: None)
    return request.param


def decode(data: bytes) -> np.ndarray:
    """cv2.imdecode, as RGB / RGBA / gray (the channel count the file has)."""
    assert isinstance(data, bytes) and len(data) > 0
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a decodable image"
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth(shape, seed=0):
    """A JET heat map of a 7x7 map resized to (H, W), as the dump writes (gray: the resized map)."""
    H, W = shape[:2]
    m = np.random.default_rng(seed).integers(0, 256, (7, 7), dtype=np.uint8)
    resized = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
    if len(shape) == 2:
        return resized
    heat = cv2.cvtColor(cv2.applyColorMap(resized, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    if shape[2] == 4:
        return np.ascontiguousarray(np.dstack([heat, noise((H, W), seed)]))
    return heat


SIZES = [(1, 1), (1, 9), (9, 1), (2, 3), (17, 31), (63, 65), (480, 641)]


@pytest.mark.parametrize("channels", [None, 3, 4])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("content", [noise, smooth])
def test_png_round_trip_exact(backend, content, size, channels):
    shape = size if channels is None else (*size, channels)
    image = content(shape, seed=size[0] * 1000 + size[1])
    out = decode(E.encode_png(image))
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


def test_png_constant_and_extreme_values(backend):
    for value in (0, 1, 254, 255):
        for shape in [(5, 7), (5, 7, 3)]:
            image = np.full(shape, value, np.uint8)
            np.testing.assert_array_equal(decode(E.encode_png(image)), image)


def test_png_non_contiguous_inputs(backend):
    base = noise((40, 50, 3), seed=3)
    for view in (base[:, ::2], base[::3, 5:41], base.transpose(1, 0, 2), base[:, :, ::-1]):
        assert not view.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(decode(E.encode_png(view)), view)
    gray = noise((30, 20), seed=4).T
    np.testing.assert_array_equal(decode(E.encode_png(gray)), gray)


def test_png_single_channel_3d_is_gray(backend):
    image = noise((11, 13, 1), seed=5)
    out = decode(E.encode_png(image))
    assert out.shape == (11, 13)
    np.testing.assert_array_equal(out, image[:, :, 0])


def test_png_rejects_what_it_cannot_encode_exactly(backend):
    with pytest.raises(ValueError, match="uint8"):
        E.encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        E.encode_png(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="shape"):
        E.encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        E.encode_png(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        E.encode_png(np.zeros((0, 4, 3), np.uint8))


def test_png_parallel_threads_give_the_same_bytes(backend):
    images = [smooth((120, 160, 3), seed=s) for s in range(6)] + [noise((50, 70, 3), seed=s) for s in range(6)]
    serial = [E.encode_png(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(E.encode_png, images * 3))
    assert parallel == serial * 3


def test_fpng_used_when_installed():
    fpng = pytest.importorskip("fpng")
    assert E.png_encoder_name() == "fpng"
    image = smooth((48, 64, 3))
    assert E.encode_png(image) == fpng.from_ndarray(image)


def test_broken_fpng_fails_the_self_check_and_opencv_takes_over(monkeypatch):
    """An fpng whose output does not decode to the input (or is empty) is never used."""
    def corrupt(image):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image ^ 1, cv2.COLOR_RGB2BGR))  # off by one bit
        return buf.tobytes()

    for fake_encoder in (corrupt, lambda image: b""):
        monkeypatch.setitem(sys.modules, "fpng", types.SimpleNamespace(from_ndarray=fake_encoder))
        monkeypatch.setattr(E, "_fpng_state", [])
        assert E.png_encoder_name() == "opencv"
        image = noise((9, 10, 3))
        np.testing.assert_array_equal(decode(E.encode_png(image)), image)
    monkeypatch.setitem(sys.modules, "fpng", types.SimpleNamespace(from_ndarray=lambda image: image.tobytes()))
    monkeypatch.setattr(E, "_fpng_state", [])
    assert E.png_encoder_name() == "opencv"


def test_png_encoder_env_forces_opencv(monkeypatch):
    monkeypatch.setenv("XAIFAST_PNG_ENCODER", "opencv")
    monkeypatch.setattr(E, "_fpng_state", [])
    assert E.png_encoder_name() == "opencv"


# ------------------------------------------------------------------------------ JPEG
def photo_like(H=240, W=320):
    """A smooth JET overlay on a photo-ish gradient: the kind of image JPEG is for."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    base = np.dstack([x / W * 200 + 20, y / H * 180 + 40, (x + y) / (H + W) * 150 + 60])
    return np.floor(0.5 * base + 0.5 * smooth((H, W, 3)).astype(np.float32) + 0.5).astype(np.uint8)


def test_jpg_shape_close_and_smaller_than_png(backend):
    image = photo_like()
    data = E.encode_jpg(image)
    assert data[:2] == b"\xff\xd8"
    out = decode(data)
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 2.0
    assert len(data) < len(E.encode_png(image)) / 3
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    out = decode(E.encode_jpg(gray))
    assert out.shape == gray.shape
    assert np.abs(out.astype(int) - gray.astype(int)).mean() < 2.0


def test_jpg_keeps_rgb_order(backend):
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 250  # pure red in RGB
    out = decode(E.encode_jpg(image)).astype(int)
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 15


def test_jpg_quality_and_odd_inputs(backend):
    image = photo_like(101, 77)
    assert len(E.encode_jpg(image, quality=50)) < len(E.encode_jpg(image, quality=95))
    assert decode(E.encode_jpg(image[:, ::2])).shape == (101, 39, 3)  # non-contiguous
    assert decode(E.encode_jpg(np.zeros((1, 1, 3), np.uint8))).shape == (1, 1, 3)
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    assert decode(E.encode_jpg(rgba)).shape == image.shape
    for q in (-1, 101):
        with pytest.raises(ValueError, match="quality"):
            E.encode_jpg(image, quality=q)


def test_simplejpeg_used_when_installed():
    pytest.importorskip("simplejpeg")
    assert E.jpeg_encoder_name() == "simplejpeg"


def test_simplejpeg_and_opencv_agree(monkeypatch):
    """Both are libjpeg-turbo at quality 90, 4:2:0, from the same pixels: the decoded images
    agree closely (a channel swap would not), at even and odd sizes; OpenCV's build differs in
    small details (mean difference about 0.6 on this image)."""
    pytest.importorskip("simplejpeg")
    for H, W in ((240, 320), (121, 161), (1, 1)):
        image = photo_like(H, W)
        ours = decode(E.encode_jpg(image)).astype(int)
        with monkeypatch.context() as m:
            m.setattr(E, "_simplejpeg", lambda: None)
            theirs = decode(E.encode_jpg(image)).astype(int)
        assert ours.shape == theirs.shape == image.shape
        assert np.abs(ours - theirs).mean() < 1.0, (H, W)
        assert np.abs(ours - image.astype(int)).mean() < 2.5, (H, W)
        assert np.abs(theirs - image.astype(int)).mean() < 2.5, (H, W)


def test_broken_simplejpeg_fails_the_self_check_and_opencv_takes_over(monkeypatch):
    def swapped(image, quality, colorspace, subsampling):  # BGR order: the self-check must notice
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return buf.tobytes()

    monkeypatch.setitem(sys.modules, "simplejpeg", types.SimpleNamespace(encode_jpeg=swapped))
    monkeypatch.setattr(E, "_sj_state", [])
    assert E.jpeg_encoder_name() == "opencv"
    out = decode(E.encode_jpg(np.dstack([np.full((16, 16), 250, np.uint8)] + [np.zeros((16, 16), np.uint8)] * 2)))
    assert out[..., 0].mean() > 240  # red stays red


def test_jpeg_encoder_env_forces_opencv(monkeypatch):
    monkeypatch.setenv("XAIFAST_JPEG_ENCODER", "opencv")
    monkeypatch.setattr(E, "_sj_state", [])
    assert E.jpeg_encoder_name() == "opencv"


def test_encode_dispatch():
    image = photo_like(20, 30)
    assert E.encode(image, "png") == E.encode_png(image)
    assert E.encode(image, "PNG") == E.encode_png(image)
    assert E.encode(image, "jpg") == E.encode_jpg(image, 90)
    assert E.encode(image, "jpeg") == E.encode_jpg(image, 90)
    with pytest.raises(ValueError, match="format"):
        E.encode(image, "zarr")


# ------------------------------------------------------------------------------ write_atomic
def test_write_atomic_writes_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "x.png"  # parent folders are created
    E.write_atomic(path, b"hello")
    assert path.read_bytes() == b"hello"
    assert os.listdir(path.parent) == ["x.png"]
    E.write_atomic(str(path), memoryview(b"again"))  # str paths, any buffer
    assert path.read_bytes() == b"again"
    assert os.listdir(path.parent) == ["x.png"]


def test_write_atomic_replaces_an_existing_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"old contents, longer than the new")
    E.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["x.png"]


def test_write_atomic_renames_from_a_hidden_temp_in_the_same_folder(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((str(src), str(dst)))
        assert os.path.exists(src) and not os.path.exists(dst)
        real_replace(src, dst)

    monkeypatch.setattr(E.os, "replace", spy)
    E.write_atomic(tmp_path / "m.jpg", b"data")
    (src, dst), = seen
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path)
    assert os.path.basename(src).startswith(".m.jpg.tmp-")
    assert f"-{os.getpid()}-" in os.path.basename(src)


class _FailingFile:
    """A file object that writes half of the data and then fails (disk full, interrupt...)."""

    def __init__(self, path, mode, exc):
        self.f = open(path, mode)
        self.exc = exc

    def write(self, data):
        data = bytes(data)
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise self.exc

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.f.close()


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_write_atomic_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, exc):
    monkeypatch.setattr(E, "open", lambda path, mode: _FailingFile(path, mode, exc), raising=False)
    path = tmp_path / "new.png"
    with pytest.raises(type(exc)):
        E.write_atomic(path, b"x" * 1000)
    assert os.listdir(tmp_path) == []  # neither the final name nor a temp file
    old = tmp_path / "old.png"
    old.write_bytes(b"previous")
    with pytest.raises(type(exc)):
        E.write_atomic(old, b"y" * 1000)
    assert os.listdir(tmp_path) == ["old.png"] and old.read_bytes() == b"previous"


def test_write_atomic_failure_at_rename_leaves_nothing(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(E.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        E.write_atomic(tmp_path / "x.png", b"data")
    assert os.listdir(tmp_path) == []


def test_write_atomic_concurrent_writers_of_one_name(tmp_path):
    path = tmp_path / "same.png"
    payloads = [bytes([i]) * (50_000 + i) for i in range(8)]
    barrier = threading.Barrier(8)

    def write(data):
        barrier.wait()
        for _ in range(20):
            E.write_atomic(path, data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, payloads))
    assert path.read_bytes() in payloads  # one whole payload, never a mix
    assert os.listdir(tmp_path) == ["same.png"]
