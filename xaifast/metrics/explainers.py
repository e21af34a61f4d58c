"""An algorithm as a function of the metrics: (inputs [N, C, H, W], classes [N]) -> maps [N, h, w]."""
from __future__ import annotations

from typing import Callable, List

import numpy as np
import torch

from ._common import MetricError


def make_explainer(model, algorithm: str, **options) -> Callable[[torch.Tensor, List[int]], np.ndarray]:
    """The maps of `algorithm` on `model` for each input's class (raw float32, low resolution for the
    CAM methods, the input's size for RISE). Class-agnostic methods (activationmap, eigencam) give
    their one map whatever the class.

    options: RISE's num_masks, num_cells, prob, seed, batch_size, score (AISE: its preset,
    num_iterations_per_kernel, kernel_widths, solver_epsilon, locally_biased, batch_size, score); for the others, options of
    `xaifast.saliency_maps` (target_layer=, batch_size=, engine=, ...)."""
    name = str(algorithm).lower()
    if name == "rise":
        from ..algorithms.rise import rise

        def explain_rise(x: torch.Tensor, classes: List[int]) -> np.ndarray:
            return rise(model, x, targets=[[int(k)] for k in classes], **options).raw[:, 0].numpy()

        return explain_rise
    if name in ("aise", "aiseclassification"):
        from ..algorithms.aise import aise

        def explain_aise(x: torch.Tensor, classes: List[int]) -> np.ndarray:
            return aise(model, x, targets=[[int(k)] for k in classes], **options).raw[:, 0].numpy()

        return explain_aise

    def explain_cam(x: torch.Tensor, classes: List[int]) -> np.ndarray:
        from ..pipeline import metric_maps

        maps = metric_maps(model, x, algorithm=name, **options)  # [N, K or 1, h, w]
        if maps.shape[0] != len(classes):
            raise MetricError(f"{name} gave {maps.shape[0]} maps for {len(classes)} inputs")
        if maps.shape[1] == 1:
            return maps[:, 0].numpy()
        return maps[torch.arange(len(classes)), torch.as_tensor(classes)].numpy()

    return explain_cam
