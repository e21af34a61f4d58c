"""Black-box RISE (Petsiuk et al. 2018) for classifiers, as OpenVINO XAI 1.1 defines it, batched.

    S[k] = sum over masks m of score_k(mask_m * x) * mask_m, divided by (num_masks * prob)

Masks: `num_cells` x `num_cells` random cells (on with probability `prob`), upsampled bilinearly
to (num_cells + 1) cells and cropped at a random shift (`xaifast.kernels.rise`); the same seed
gives the same masks for every image, and the same grids and shifts as OpenVINO XAI's
`default_rng(seed)`. The division is the paper's Monte-Carlo normalization (OpenVINO XAI leaves
the plain sum; min-max normalization makes the two the same uint8 map). score: softmax (default:
probabilities, as the paper and OpenVINO XAI's classification postprocessing), sigmoid or none.

The model is anything that maps inputs to scores (`xaifast.engines.scorer.as_scorer`): an
nn.Module, an Engine, an .xml / .onnx file, or a Python callable on numpy batches. Masks are made
on the model's device in chunks of `batch_size`, applied there, and the masked chunk goes through
the model at once; the chunk's scores are folded into the maps by one matmul. On CUDA (with triton)
one Triton kernel makes a chunk's masks and writes the masked images (`kernels/triton_rise.py`; the
masks are stored once per chunk, for the matmul); elsewhere the PyTorch MaskMaker does.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import XaifastError
from .base import SaliencyResult

DEFAULTS = dict(num_masks=5000, num_cells=8, prob=0.5, seed=0)


class RiseError(XaifastError, ValueError):
    """Bad RISE settings."""


def check_options(num_masks: int, num_cells: int, prob: float) -> None:
    if int(num_masks) < 1:
        raise RiseError(f"num_masks must be >= 1, got {num_masks}")
    if int(num_cells) < 1:
        raise RiseError(f"num_cells must be >= 1, got {num_cells}")
    if not 0.0 < float(prob) <= 1.0:
        raise RiseError(f"prob must be in (0, 1], got {prob}")


def _targets_per_image(targets, batch: int, num_classes: int):
    if targets is None:
        return [list(range(num_classes))] * batch
    targets = list(targets)
    if targets and all(np.isscalar(t) for t in targets):
        per = [[int(t) for t in targets]] * batch
    else:
        if len(targets) != batch:
            raise RiseError(f"targets: {len(targets)} lists for {batch} images")
        per = [[int(t) for t in ([ts] if np.isscalar(ts) else ts)] for ts in targets]
        if len({len(p) for p in per}) != 1:
            raise RiseError("targets per image must have the same number of classes")
    for p in per:
        for k in p:
            if not 0 <= k < num_classes:
                raise RiseError(f"target class {k} is out of range for a model with {num_classes} classes")
    return per


def prepare(model, x, targets, scores, score: Optional[str], batch_size: int, what: str, error=RiseError):
    """What a black-box method starts from: (the scorer of `model`, x as float [B, C, H, W], the
    classes of each image); the model scores x when `scores` is not given (its class count is read)."""
    from ..engines.scorer import as_scorer

    scorer = as_scorer(model, score=score, batch_size=batch_size)  # None: softmax (a callable's own scores)
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or not x.is_floating_point():
        raise error(f"{what} explains float model inputs [B, C, H, W], got {list(x.shape)} {x.dtype}")
    if scores is None:
        scores = scorer(x)
    return scorer, x, _targets_per_image(targets, x.shape[0], int(scores.shape[1]))


def rise(model, x, *, targets: Union[None, Sequence[int], Sequence[Sequence[int]]] = None, num_masks: int = 5000,
         num_cells: int = 8, prob: float = 0.5, seed: int = 0, batch_size: int = 64, score: Optional[str] = None,
         normalize: bool = False, scores: Optional[torch.Tensor] = None, backend: str = "auto") -> SaliencyResult:
    """RISE maps of the images x [B, C, H, W] (preprocessed model inputs), at the input's size.

    targets: None (every class: [B, K, H, W]), a list of classes for every image ([B, T, H, W]),
    or one list per image (T classes each, in that order). batch_size: masked images per model call.
    scores: the model's scores on x, when already known (only their class count is read).
    backend: how masks are made and applied: "auto" (the fused Triton kernel on CUDA when triton can be
    imported, else PyTorch), "torch", or "triton" (CUDA, or CPU tensors with TRITON_INTERPRET=1);
    "numba" is the PyTorch path (there is no Numba RISE kernel).
    Returns a SaliencyResult with raw float32 maps (and uint8 maps when normalize)."""
    from ..kernels._compat import check_backend, pick_backend
    from ..kernels.rise import MaskMaker, draw_masks

    check_options(num_masks, num_cells, prob)
    check_backend(backend)
    scorer, x, per_image = prepare(model, x, targets, scores, score, batch_size, "RISE", RiseError)
    b_count, c, h, w = x.shape
    device = scorer.device
    xd = x.to(device=device, dtype=torch.float32)
    fused = pick_backend("torch" if backend == "numba" else backend, xd) == "triton"
    if fused:
        from ..kernels.triton_rise import rise_masked_batch_triton
    else:
        make = MaskMaker((h, w), num_cells, device=device)
    rng = np.random.default_rng(seed)
    index = torch.tensor(per_image, device=device)  # [B, T]
    sal = torch.zeros(b_count, index.shape[1], h * w, dtype=torch.float32, device=device)
    chunk = max(1, scorer.batch_size)
    for start in range(0, int(num_masks), chunk):
        count = min(chunk, int(num_masks) - start)
        grids, shifts = draw_masks(rng, count, (h, w), num_cells, prob)
        if fused:  # masks made and applied in one kernel, stored [m, H*W] with the first image only
            grids, shifts = torch.from_numpy(grids).to(device), torch.from_numpy(shifts).to(device)
            flat = None
        else:
            masks = make(grids, shifts)  # [m, H, W]
            flat = masks.reshape(count, h * w)
        for b in range(b_count):
            if fused:
                batch, made = rise_masked_batch_triton(grids, shifts, xd[b], num_cells, out_masks=flat is None)
                flat = made if flat is None else flat
            else:
                batch = masks[:, None] * xd[b][None]
            s = scorer(batch).to(device)  # [m, K]
            sal[b] += s[:, index[b]].T @ flat
    raw = (sal / (float(num_masks) * float(prob))).reshape(b_count, -1, h, w)
    result = SaliencyResult(raw=raw.cpu())
    if normalize:
        from ..functional import normalize as _normalize

        result.normalized = _normalize(result.raw)
    return result


__all__ = ["rise", "DEFAULTS", "RiseError", "check_options"]
