"""Baselines for the GPU benchmarks (benchmarks/test_bench_gpu.py), on any device and dtype.

- `otx_style_recipro_cam`: baselines.otx_style_recipro_cam (OTX 1.x ReciproCAMHook, PyTorch path
  without the GAP optimization: a Python loop over images, per image the mosaic [H*W, C, H, W]
  materialized as the repeated feature map times a dense one-hot mask tensor in the feature's
  dtype, the head on it, softmax, transpose, per-map min-max to uint8).
- `grad_cam`: Grad-CAM with ONE backward pass per batch, written to be as cheap as Grad-CAM can
  be: the forward records the autograd graph only after the target layer (the feature map is
  detached and made a leaf in a forward hook), and `torch.autograd.grad` computes d(top-1 score
  summed over the batch) / d(feature) only, no weight gradients. cam = relu(sum_c mean_q(grad_c)
  * F_c), per-image min-max to uint8. One map per image (the predicted class), where Recipro-CAM
  gives one map per class.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import nn

from baselines import otx_style_recipro_cam  # noqa: F401  (re-exported for test_bench_gpu)


def grad_cam(model: nn.Module, target: str) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """x -> (uint8 Grad-CAM maps [B, h, w] of each image's top-1 class, logits [B, K])."""
    module = model.get_submodule(target)

    def run(x: torch.Tensor):
        captured: List[torch.Tensor] = []

        def hook(_m, _a, out):
            out = out.detach().requires_grad_(True)  # graph starts here: backward through the head only
            captured.append(out)
            return out

        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = model(x)
                logits = logits.logits if hasattr(logits, "logits") else logits
                top = logits.argmax(dim=1)
                score = logits.gather(1, top[:, None]).sum()
                (grad,) = torch.autograd.grad(score, captured[-1])
        finally:
            handle.remove()
        feature = captured[-1].detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feature).sum(dim=1)).float()  # [B, h, w]
        flat = cam.flatten(1)
        lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        u8 = (255 * (flat - lo) / (hi - lo + 1e-12)).to(torch.uint8).reshape(cam.shape)
        return u8, logits.detach()

    return run
