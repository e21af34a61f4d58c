"""Decode: one image file -> RGB uint8, with a pixel limit checked from the file header first.

`image_size` reads (width, height) from the header of PNG, JPEG, BMP, GIF, WebP, TIFF (and BigTIFF)
and PNM/PAM files, a few hundred bytes at most, without decoding pixels or any third-party library;
other formats give None and are decoded normally (OpenCV still refuses images over its own
CV_IO_MAX_IMAGE_PIXELS, 2^30 pixels by default). `read_image_checked` refuses images over
`max_pixels` (default `DEFAULT_MAX_PIXELS`, 100 megapixels) before decoding them, and after
decoding when the header gave no size.

Error reasons never repeat the path: the caller prints `path: reason`.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, Optional, Tuple, Union

import cv2
import numpy as np

from ..data import to_rgb8
from ..errors import DataError, ImageReadError

DEFAULT_MAX_PIXELS = 100_000_000
UNREADABLE = "not a readable image (corrupt, truncated or unsupported format)"

PathType = Union[str, os.PathLike]


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than the run's limit (`max_image_pixels`); it is skipped and reported."""


def too_large_reason(width: int, height: int, max_pixels: int) -> str:
    """'12000 x 9000 = 108.0 megapixels, over the limit of 100 megapixels; ...' (in pixels when
    megapixels rounded to 0.1 would not show the difference)."""
    pixels = width * height
    if round(pixels / 1e6, 1) > max_pixels / 1e6:
        limit = f"{max_pixels / 1e6:.6f}".rstrip("0").rstrip(".")
        what = f"{pixels / 1e6:.1f} megapixels, over the limit of {limit} megapixels"
    else:
        what = f"{pixels} pixels, over the limit of {max_pixels} pixels"
    return f"{width} x {height} = {what}; raise it with --max_image_pixels / max_image_pixels="


def check_max_pixels(max_pixels: Optional[int]) -> Optional[int]:
    """Validate a pixel limit: a positive number, or None (or infinity) for no limit."""
    if max_pixels is None or max_pixels == float("inf"):
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, float, np.integer, np.floating)) \
            or not max_pixels > 0:
        raise DataError(f"max_image_pixels must be a positive number of pixels, or None for no limit; "
                        f"got {max_pixels!r}")
    return int(max_pixels)


def read_image_checked(path: PathType, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3] (grayscale, RGBA, 16-bit and float images converted,
    as `xaifast.data.read_image`), refusing images over `max_pixels` (None: no limit).

    Raises ImageTooLargeError (from the header, before any decoding, when the header gives the size)
    or ImageReadError; their messages give the reason without the path.
    """
    limit = check_max_pixels(max_pixels)
    name = os.fspath(path)
    if os.path.isdir(name):
        raise ImageReadError("is a folder, not an image file")
    if not os.path.isfile(name):
        raise ImageReadError("no such file")
    if limit is not None:
        size = image_size(name)
        if size is not None and size[0] * size[1] > limit:
            raise ImageTooLargeError(too_large_reason(size[0], size[1], limit))
    try:
        raw = np.fromfile(name, dtype=np.uint8)  # handles non-ASCII paths, unlike cv2.imread
    except OSError as exc:
        raise ImageReadError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if raw.size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. over OpenCV's own CV_IO_MAX_IMAGE_PIXELS
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"{UNREADABLE}; OpenCV: {detail}") from None
    if image is None or image.size == 0:
        raise ImageReadError(UNREADABLE)
    if limit is not None and image.shape[0] * image.shape[1] > limit:  # the header gave no size
        raise ImageTooLargeError(too_large_reason(image.shape[1], image.shape[0], limit))
    return to_rgb8(image, "decoded image")


# ------------------------------------------------------------------------------------- header sizes

def image_size(path: PathType) -> Optional[Tuple[int, int]]:
    """(width, height) read from the file header only, as stored (before any EXIF rotation); None when
    the format is not one parsed here or the header is unreadable."""
    name = os.fspath(path)
    if not os.path.isfile(name):  # a folder, a missing file; never block on a FIFO
        return None
    try:
        with open(name, "rb") as f:
            head = f.read(32)
            for parse in (_png, _jpeg, _gif, _bmp, _webp, _tiff, _pnm):
                size = parse(head, f)
                if size is not None:
                    w, h = size
                    return (int(w), int(h)) if w > 0 and h > 0 else None
    except (OSError, ValueError, struct.error, OverflowError):
        return None
    return None


def _png(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def _gif(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", head[6:10])
    return None


def _bmp(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    if head[:2] != b"BM" or len(head) < 26:
        return None
    dib = struct.unpack("<I", head[14:18])[0]
    if dib == 12:  # BITMAPCOREHEADER (OS/2 1.x): 16-bit unsigned sizes
        return struct.unpack("<HH", head[18:22])
    if dib >= 16:  # BITMAPINFOHEADER and later: 32-bit signed, a negative height means top-down rows
        w, h = struct.unpack("<ii", head[18:26])
        return w, abs(h)
    return None


def _webp(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: frame tag (3 bytes), start code 9d 01 2a, 14-bit sizes
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit (size - 1) fields
        if head[20] != 0x2F:
            return None
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1) fields
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


# SOFn markers carrying the frame size (not DHT C4, JPG C8, DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    if head[:3] != b"\xff\xd8\xff":
        return None
    f.seek(2)
    for _ in range(4096):  # marker segments before the frame header; a few dozen in practice
        byte = f.read(1)
        if byte != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None
        m = marker[0]
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # standalone markers: no length
            continue
        if m in (0xD9, 0xDA):  # end of image, start of scan: no frame header before the pixels
            return None
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if length < 2:
            return None
        if m in _SOF:
            frame = f.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            h, w = struct.unpack(">HH", frame[1:5])
            return w, h  # height 0 (set later by a DNL marker) gives None in image_size
        f.seek(length - 2, os.SEEK_CUR)
    return None


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8 (BigTIFF)


def _tiff(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None:
        return None
    version = struct.unpack(order + "H", head[2:4])[0]
    if version == 42:  # classic TIFF: 32-bit offsets, 12-byte entries
        ifd = struct.unpack(order + "I", head[4:8])[0]
        count_fmt, entry_size, value_size = "H", 12, 4
    elif version == 43:  # BigTIFF: 64-bit offsets, 20-byte entries
        if struct.unpack(order + "HH", head[4:8]) != (8, 0):
            return None
        ifd = struct.unpack(order + "Q", head[8:16])[0]
        count_fmt, entry_size, value_size = "Q", 20, 8
    else:
        return None
    f.seek(ifd)
    raw = f.read(struct.calcsize(count_fmt))
    if len(raw) < struct.calcsize(count_fmt):
        return None
    n = struct.unpack(order + count_fmt, raw)[0]
    if n > 4096:
        return None
    table = f.read(n * entry_size)
    found = {}
    for k in range(len(table) // entry_size):
        entry = table[k * entry_size:(k + 1) * entry_size]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257) and typ in _TIFF_TYPES:  # ImageWidth, ImageLength
            fmt, size = _TIFF_TYPES[typ]
            if size <= value_size:
                value = entry[entry_size - value_size:][:size]
                found[tag] = struct.unpack(order + fmt, value)[0]
        if len(found) == 2:
            return found[256], found[257]
    return None


def _pnm(head: bytes, f: BinaryIO) -> Optional[Tuple[int, int]]:
    if len(head) < 3 or head[0:1] != b"P" or head[1:2] not in b"1234567" or head[2:3] not in b" \t\r\n#":
        return None
    f.seek(2)
    text = f.read(4096)
    if head[1:2] == b"7":  # PAM: "WIDTH n" / "HEIGHT n" lines up to ENDHDR
        fields = {}
        for line in text.split(b"\n"):
            parts = line.split(b"#", 1)[0].split()
            if parts[:1] == [b"ENDHDR"]:
                break
            if len(parts) == 2 and parts[0] in (b"WIDTH", b"HEIGHT"):
                fields[parts[0]] = int(parts[1])
        return (fields[b"WIDTH"], fields[b"HEIGHT"]) if len(fields) == 2 else None
    numbers = []
    for line in text.split(b"\n"):  # whitespace-separated numbers; '#' comments run to the line end
        for token in line.split(b"#", 1)[0].split():
            if len(numbers) == 2:
                break
            numbers.append(int(token))
        if len(numbers) == 2:
            return numbers[0], numbers[1]
    return None


__all__ = ["DEFAULT_MAX_PIXELS", "ImageTooLargeError", "image_size", "read_image_checked", "check_max_pixels",
           "too_large_reason"]
