"""Input data: how an image file is read (OpenCV) and preprocessed, and tensors or iterables of
tensors (a DataLoader) as a stream of `Sample`s. Which files a run reads: `stages.sources`;
reading them with the size limit: `stages.decode`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple, Union

import cv2
import numpy as np
import torch

from .errors import DataError, ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocess:
    """How the model expects its input, as in an OTX recipe.

    input_size: (height, width) the image is resized to (bilinear, OpenCV).
    mean, std: per RGB channel, in 0..255 pixel units (mmpretrain / OTX convention).
    reverse_channels: feed the model BGR (OTX's / ModelAPI's `reverse_input_channels`: the image's
    channels are reversed first, then mean and std apply in the reversed order).
    """

    input_size: Tuple[int, int] = (224, 224)
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    reverse_channels: bool = False

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int):
            object.__setattr__(self, "input_size", (size, size))
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise DataError(f"input_size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DataError(f"mean and std need 3 values each with std > 0, got {self.mean}, {self.std}")

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 [H, W, 3] -> normalized float32 [3, h, w]."""
        h, w = self.input_size
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.reverse_channels:
            resized = resized[..., ::-1]
        x = (resized.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@dataclass
class Sample:
    source: Union[str, int]
    tensor: Optional[torch.Tensor]  # [3, h, w]; None when reading failed
    image: Optional[np.ndarray] = None  # original RGB uint8, for postprocessing
    error: Optional[str] = None
    index: int = -1  # position in the input
    item: Optional[object] = None  # the file source's SourceItem (rel path, ground truth)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3]: grayscale, RGBA and 16-bit images are converted."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    raw = np.fromfile(str(path), dtype=np.uint8)  # handles non-ASCII paths, unlike cv2.imread
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    return to_rgb8(image, str(path))


def to_rgb8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """OpenCV-decoded array (BGR/BGRA/gray, 8/16-bit or float) -> RGB uint8 [H, W, 3]."""
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535  # full 16-bit range -> 0..255
    elif image.dtype in (np.float32, np.float64):
        finite = np.nan_to_num(image.astype(np.float64))
        scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
        image = np.clip(finite * scale, 0, 255)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255)
    image = image.astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3:
        raise ImageReadError(f"{name}: unsupported image shape {image.shape}")
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        # composite over white, as image viewers show transparent pixels
        bgr = image[:, :, :3].astype(np.float32)
        a = image[:, :, 3:4].astype(np.float32) / 255.0
        bgr = bgr * a + 255.0 * (1.0 - a)
        return cv2.cvtColor(np.round(bgr).astype(np.uint8), cv2.COLOR_BGR2RGB)
    raise ImageReadError(f"{name}: unsupported number of channels {channels}")


def _batch_tensor(item, index: int) -> torch.Tensor:
    """Pull the image tensor out of what a DataLoader or a list of tensors yields."""
    if isinstance(item, dict):
        for key in ("pixel_values", "images", "image", "inputs", "img"):
            if key in item:
                return _batch_tensor(item[key], index)
        raise DataError(f"data item {index} is a dict without an image entry "
                        "(looked for pixel_values, images, image, inputs, img)")
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], torch.Tensor):
        return item[0]  # (images, targets) from a classification DataLoader
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        raise DataError(f"data item {index} is a {type(item).__name__}; expected a tensor [B, 3, H, W] or "
                        "[3, H, W], an image path, or a (tensor, target) pair")
    return item


def iter_tensor_samples(data: Union[torch.Tensor, Iterable]) -> Iterator[Sample]:
    """A tensor [B,3,H,W] / [3,H,W], or an iterable of those (e.g. a DataLoader), as single samples."""
    items = [data] if isinstance(data, (torch.Tensor, np.ndarray)) else data
    index = 0
    for n, item in enumerate(items):
        batch = _batch_tensor(item, n)
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        if batch.ndim != 4:
            raise DataError(f"data item {n} has shape {list(batch.shape)}; expected [B, C, H, W] or [C, H, W]")
        if not batch.is_floating_point():
            raise DataError(f"data item {n} has dtype {batch.dtype}; tensors must be preprocessed float "
                            "images (pass image files to have xaifast read and normalize them)")
        for row in batch:
            yield Sample(index, row, index=index)
            index += 1
