"""Fast, exact image encoders for the dump writer, and atomic file writes.

Images are RGB uint8 [H, W, 3] (RGBA [H, W, 4] also works) or gray uint8 [H, W] ([H, W, 1]).

    encode_png(image) -> bytes        lossless: decoding gives exactly the input's pixels
    encode_jpg(image, quality=90)     libjpeg-turbo (simplejpeg, or OpenCV), 4:2:0
    encode(image, "png" | "jpg")
    write_atomic(path, data)          temp name in the same folder, then os.replace

PNG encoder: fpng when the `fpng` package is installed (PyPI, MIT; a 100 KB wheel wrapping
Rich Geldreich's fpng; wheels for Linux, macOS, Windows), for RGB and RGBA; OpenCV otherwise and for
gray images. fpng writes ordinary PNGs (zlib streams any decoder reads); it must pass a
round-trip self-check on first use (noise, a ramp, odd sizes, RGBA, 1x1, decoded with OpenCV)
or OpenCV takes over. XAIFAST_PNG_ENCODER=opencv forces OpenCV.

Measured with benchmarks/png_encoders.py (2 shared vCPUs, AMD EPYC Zen 4, cv2 5.1.0, fpng 0.1.0;
ms per image, median of 9, mean over 3 heat maps / 5 photo overlays; size relative to OpenCV's
default):

    case               OpenCV default       best other OpenCV setting       fpng
    heat 640x480        6.1 ms  134 KB      c1 FILTERED SUB 3.8 ms  0.55x   1.0-1.4 ms  1.16x
    overlay 640x480    16.2 ms  430 KB      c1 HUFFMAN SUB 12.7 ms  1.00x   1.3-1.8 ms  1.06x
    heat 1200x900      23.0 ms  343 KB      c1 FILTERED SUB 14.9 ms 0.57x   4.0-4.2 ms  1.40x
    overlay 1200x900   54.5 ms  1.22 MB     c1 RLE UP 41.5 ms       0.93x   5.3 ms  0.94x

OpenCV's default is IMWRITE_PNG_COMPRESSION 1, STRATEGY_RLE, FILTER_SUB (same bytes). No
OpenCV setting is 3x faster with files under ~1.5x: levels 2-3, HUFFMAN_ONLY, FILTERED, FIXED
and the other filters trade a few tens of percent one way or the other, and only level 0
(stored) is fast (1-6 ms) with files 2.2-2.7x (overlays) to 7-9x (heat maps) bigger. fpng is
4-12x faster than OpenCV's default with files 0.94-1.40x its size, so it is the choice; the
OpenCV fallback keeps OpenCV's defaults (the settings that win on heat maps lose on overlays).
Pillow at compress_level 1 (10-89 ms) and a numpy SUB filter + zlib level 1 (3-47 ms) are
slower than fpng too.

Threads: OpenCV releases the GIL in imencode, so its encoders scale with threads: on the 2 cores,
2 threads encode 1.86x the overlays/s of one with OpenCV's PNG (65 -> 121/s) and 1.89x with JPEG
q90 (757 -> 1433/s). fpng holds the GIL (0.97x), but one thread of it (~530-700 overlays/s)
still does ~4.5x the work of OpenCV's PNG on both cores; its GIL hold is ~1.4 ms per 640x480
overlay, which other Python threads wait for.

JPEG: OpenCV (libjpeg-turbo), IMWRITE_JPEG_QUALITY 90: 0.9-1.1 ms (640x480), 3-4.5 ms
(1200x900), files 0.13x (overlays) to 0.24x (heat maps) of OpenCV's PNG. With the `simplejpeg`
package (PyPI; wheels bundling libjpeg-turbo for Linux, macOS, Windows), RGB images go to
libjpeg-turbo as RGB, without OpenCV's RGB -> BGR copy: a heat map and an overlay of a dump (0.41 MP
on average, 200 photos of benchmarks/photoset.py, rendered and encoded on one thread) 3.53 -> 3.31 ms
here (Intel Xeon, 2 vCPUs). Gray images still go to OpenCV. XAIFAST_JPEG_ENCODER=opencv forces
OpenCV for all.

Tried and dropped: feeding libjpeg the heat maps as I420 planes made in the C++ postprocessor
(libjpeg's exact YCbCr and 2 x 2 chroma arithmetic from a table; same bytes at sizes that are
multiples of 16). The encoder then saved 0.37 ms a heat map, but making the planes cost about as
much: 3.42 ms against 3.31 for plain RGB through simplejpeg.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["encode_png", "encode_jpg", "encode", "write_atomic", "png_encoder_name", "jpeg_encoder_name",
           "FORMATS"]

FORMATS = ("png", "jpg")
# OpenCV settings for the PNG fallback (gray images, or RGB when fpng is missing). The level goes
# first: OpenCV resets the strategy when it reads IMWRITE_PNG_COMPRESSION.
_CV2_PNG_PARAMS = []

_load_lock = threading.Lock()  # first use of fpng / simplejpeg
_fpng_state: list = []  # [] until first use, then [fpng.from_ndarray or None]


def _loaded(state: list, load):
    """What `load()` returns, computed once (state: [] until then, [the result] after)."""
    if not state:
        with _load_lock:
            if not state:
                state.append(load())
    return state[0]


def _fpng():
    """fpng's encoder when the package is installed and passes a round-trip self-check, else None."""
    return _loaded(_fpng_state, _load_fpng)


def _load_fpng():
    if os.environ.get("XAIFAST_PNG_ENCODER", "auto").lower() == "opencv":
        return None
    try:
        import fpng
        encoder = fpng.from_ndarray
    except Exception:  # ImportError, or a broken build
        return None
    # Self-check: noise and a smooth ramp, odd sizes, RGB and RGBA, must decode to the same pixels.
    rng = np.random.default_rng(12345)
    ramp = np.broadcast_to(np.arange(37, dtype=np.uint8)[None, :, None] * 7, (23, 37, 3))
    for probe in (rng.integers(0, 256, (23, 37, 3), dtype=np.uint8), np.ascontiguousarray(ramp),
                  rng.integers(0, 256, (5, 3, 4), dtype=np.uint8), np.zeros((1, 1, 3), np.uint8)):
        try:
            data = encoder(probe)
            ok = bool(data) and np.array_equal(_decode(data, probe.shape[2]), probe)
        except Exception:
            ok = False
        if not ok:
            log.warning("fpng failed its round-trip self-check; PNGs are encoded with OpenCV")
            return None
    return encoder


def _decode(data: bytes, channels: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return np.empty((0,), np.uint8)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


_sj_state: list = []  # [] until first use, then [the simplejpeg module or None]


def _simplejpeg():
    """The simplejpeg module when it is installed and round-trips a probe, else None (OpenCV then)."""
    return _loaded(_sj_state, _load_simplejpeg)


def _load_simplejpeg():
    if os.environ.get("XAIFAST_JPEG_ENCODER", "auto").lower() == "opencv":
        return None
    try:
        import simplejpeg
        # a colored probe (red ramp, green falling, blue flat, some noise): a channel swap shows
        rng = np.random.default_rng(7)
        ramp = np.arange(48)[None, :] * 5 + np.zeros((32, 1), int)
        probe = np.dstack([ramp, 240 - ramp, np.full_like(ramp, 60)]) + rng.integers(-3, 4, (32, 48, 3))
        probe = np.ascontiguousarray(np.clip(probe, 0, 255).astype(np.uint8))
        back = _decode(simplejpeg.encode_jpeg(probe, 90, "RGB", "420"), 3)
        ok = back.shape == probe.shape and np.abs(back.astype(int) - probe).mean() < 3
    except Exception:  # ImportError, or a broken build
        return None
    if not ok:
        log.warning("simplejpeg failed its round-trip self-check; JPEGs are encoded with OpenCV")
        return None
    return simplejpeg


def jpeg_encoder_name() -> str:
    """Which encoder RGB JPEGs get here: "simplejpeg" or "opencv" (gray JPEGs always use OpenCV)."""
    return "simplejpeg" if _simplejpeg() is not None else "opencv"


def png_encoder_name() -> str:
    """Which encoder RGB(A) PNGs get here: "fpng" or "opencv" (gray PNGs always use OpenCV)."""
    return "fpng" if _fpng() is not None else "opencv"


def _checked(image: np.ndarray) -> np.ndarray:
    """A C-contiguous uint8 [H, W] or [H, W, 3|4] view or copy of `image` (else ValueError)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images to encode must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"images to encode must be [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image (shape {image.shape})")
    return np.ascontiguousarray(image)


def _bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)


def _cv2_encode(ext: str, image: np.ndarray, params) -> bytes:
    ok, buf = cv2.imencode(ext, _bgr(image), params)
    if not ok:
        raise OSError(f"OpenCV could not encode a {ext[1:].upper()} image of shape {image.shape}")
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB / RGBA / gray uint8 image: decoding it gives exactly `image`."""
    image = _checked(image)
    if image.ndim == 3:
        encoder = _fpng()
        if encoder is not None:
            data = encoder(image)
            if data:
                return data
    return _cv2_encode(".png", image, _CV2_PNG_PARAMS)


def _check_quality(quality) -> int:
    if not 0 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    return int(quality)


def encode_jpg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG (libjpeg-turbo, 4:2:0) of an RGB or gray uint8 image; RGBA drops its alpha. RGB goes to
    simplejpeg when installed (no channel swap), else to OpenCV."""
    quality = _check_quality(quality)
    image = _checked(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = np.ascontiguousarray(image[:, :, :3])
    sj = _simplejpeg() if image.ndim == 3 else None
    if sj is not None:
        return sj.encode_jpeg(image, quality, "RGB", "420")
    return _cv2_encode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])


def encode(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """encode_png or encode_jpg by `fmt`: "png" or "jpg" ("jpeg" also accepted); `quality`: JPEG's."""
    f = str(fmt).lower().lstrip(".")
    if f == "png":
        return encode_png(image)
    if f in ("jpg", "jpeg"):
        return encode_jpg(image, quality)
    raise ValueError(f"unknown image format {fmt!r}: expected one of {', '.join(FORMATS)}")


def write_atomic(path: Union[str, os.PathLike], data, make_parents: bool = True) -> None:
    """Write `data` (bytes or any buffer) to `path` so that no file ever holds the final name
    half-written: write to `.{name}.tmp-{pid}-{thread id}` in the same folder, then os.replace
    (atomic on one file system; an existing file is replaced). Parent folders are created. On any
    error (or KeyboardInterrupt) the temp file is removed and the final name is left as it was.
    No fsync: atomic for readers and against this process failing, not durable against a power loss.
    make_parents False: the caller made the folder (saves a mkdir system call per file)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if make_parents and folder:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
