"""Black-box AISE for classifiers, as OpenVINO XAI 1.1's `AISEClassification` defines it, with the
model calls of many optimizations batched.

For one image x [C, H, W], one target class k and each kernel width sigma of `kernel_widths`:
  a Gaussian mask at (a, b) in [0, 1]^2:  g(i, j) = A exp(-((u_j - a)^2 + (v_i - b)^2) / (2 sigma^2)),
      u = linspace(0, 1, W) (columns), v = linspace(0, 1, H) (rows), A = 1 / (2 pi sigma^2);
      mask = clip(g / max(g), 0, 1)   (OpenVINO XAI's meshgrid puts the first coordinate on columns)
  objective(a, b) = -(score_k(x * mask) - score_k(x * (1 - mask)))   (preservation minus deletion)
  minimized by scipy's DIRECT (`scipy.optimize.direct`: bounds [0, 1]^2, eps `solver_epsilon`,
      maxfun `num_iterations_per_kernel`, `locally_biased`);
  K_sigma = sum over the first `num_iterations_per_kernel` evaluated points i of mask_i * d_i, with
      d_i = score_k(x * mask_i) - score_k(x * (1 - mask_i)) (float32, as theirs);
      K_sigma /= max(K_sigma) when that max is > 0.
Map = sum over sigma of K_sigma, divided by its max (raw float32 maps at the input's size; the uint8
maps are the SPEC's min-max normalization, OpenVINO XAI's `scaling` up to its truncation).
Presets (OpenVINO XAI's): speed 20 iterations, widths linspace(0.1, 0.25, 3); balance (default) 50,
linspace(0.1, 0.25, 3); quality 50, linspace(0.075, 0.25, 5).

What is ours: DIRECT asks for one point at a time, so one optimization cannot be batched. But the
optimizations of every (image, class, kernel width) are independent: each runs scipy's DIRECT in
its own thread, and each objective call hands its point to a coordinator (the calling thread),
which waits until every running optimization has asked for one, then scores all their masked
images in one model call and hands the values back. Each optimization sees exactly the values it
would see alone (same points, same order), so the maps equal the sequential algorithm's. DIRECT
finishes its last iteration past `maxfun` (59 calls for 50 here); only the first
`num_iterations_per_kernel` points count in the maps, so an optimization is stopped there
(OpenVINO XAI runs the extra inferences and discards them).

Scores are the model's softmax probabilities (`score=`: sigmoid, none; a Python callable's outputs
are taken as its scores), as RISE. OpenVINO XAI takes its `postprocess_fn`'s output and applies a
sigmoid when that output leaves [0, 1].
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import XaifastError
from .base import SaliencyResult

PRESETS = {
    "speed": (20, (0.1, 0.175, 0.25)),
    "balance": (50, (0.1, 0.175, 0.25)),
    "quality": (50, tuple(float(v) for v in np.linspace(0.075, 0.25, 5))),
}
DEFAULTS = dict(preset="balance", num_iterations_per_kernel=None, kernel_widths=None, solver_epsilon=0.1,
                locally_biased=False)


class AiseError(XaifastError, ValueError):
    """Bad AISE settings."""


def settings(preset: str = "balance", num_iterations_per_kernel: Optional[int] = None,
             kernel_widths: Optional[Sequence[float]] = None) -> Tuple[int, Tuple[float, ...]]:
    """(iterations per kernel, kernel widths) of a preset, explicit values taking precedence."""
    key = str(preset).lower()
    if key not in PRESETS:
        raise AiseError(f"unknown AISE preset {preset!r}; use one of: {', '.join(PRESETS)}")
    iterations, widths = PRESETS[key]
    if key != "quality":  # their linspace(0.1, 0.25, 3), bit for bit
        widths = tuple(float(v) for v in np.linspace(0.1, 0.25, 3))
    if num_iterations_per_kernel is not None:
        iterations = int(num_iterations_per_kernel)
    if kernel_widths is not None:
        widths = tuple(float(v) for v in np.atleast_1d(np.asarray(kernel_widths, dtype=np.float64)))
    return iterations, widths


def check_options(preset: str = "balance", num_iterations_per_kernel: Optional[int] = None,
                  kernel_widths: Optional[Sequence[float]] = None, solver_epsilon: float = 0.1,
                  locally_biased: bool = False) -> Tuple[int, Tuple[float, ...]]:
    iterations, widths = settings(preset, num_iterations_per_kernel, kernel_widths)
    if iterations < 1:
        raise AiseError(f"num_iterations_per_kernel must be >= 1, got {iterations}")
    if not widths or any(not np.isfinite(w) or w <= 0 for w in widths):
        raise AiseError(f"kernel_widths must be positive numbers (fractions of the image side), got {list(widths)}")
    if not float(solver_epsilon) >= 0:
        raise AiseError(f"solver_epsilon must be >= 0, got {solver_epsilon}")
    try:
        import scipy.optimize  # noqa: F401
    except ImportError as exc:  # pragma: no cover - scipy comes with scikit-image
        raise AiseError("AISE needs scipy's DIRECT optimizer: pip install scipy") from exc
    return iterations, widths


class GaussianMasks:
    """Gaussian masks [m, H, W] float64 of points (a, b, sigma), exactly OpenVINO XAI's
    `GaussianPerturbationMask.generate_kernel_mask` (then clipped to [0, 1]), m at a time."""

    def __init__(self, input_hw: Tuple[int, int]):
        h, w = int(input_hw[0]), int(input_hw[1])
        # their `self.h, self.w = np.meshgrid(w, h)`: u varies along the columns, v along the rows [H, W]
        self.u, self.v = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        a, b, sigma = p[:, 0, None, None], p[:, 1, None, None], p[:, 2, None, None]
        amp = 1 / (2 * np.pi * sigma * sigma)
        g = amp * np.exp(-((self.u[None] - a) ** 2 / (2 * sigma ** 2) + (self.v[None] - b) ** 2 / (2 * sigma ** 2)))
        return np.clip(g / g.max(axis=(1, 2), keepdims=True), 0, 1)


class _Abort(BaseException):
    """Raised inside a waiting optimization when the run stops (an error elsewhere)."""


class _Stop(Exception):
    """An optimization has evaluated every point that counts."""


@dataclass
class _Job:
    image: int
    target: int  # column of the [B, T] target table
    width: int  # index into the kernel widths
    sigma: float
    acc: Optional[np.ndarray] = None  # sum of mask * d over the points that count, float64 [H, W]
    count: int = 0


@dataclass
class _Slot:
    job: _Job
    point: Tuple[float, float]
    value: float = 0.0
    ready: bool = False


@dataclass
class _Coordinator:
    """Collects one pending point per running optimization; `running` counts the optimizations
    that are computing (neither waiting for a value nor finished)."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    pending: List[_Slot] = field(default_factory=list)
    running: int = 0
    error: Optional[BaseException] = None

    def ask(self, slot: _Slot) -> float:
        with self.cond:
            if self.error is not None:
                raise _Abort()
            self.pending.append(slot)
            self.running -= 1
            self.cond.notify_all()
            while not slot.ready:
                if self.error is not None:
                    self.running += 1  # running again: its `leave` balances
                    raise _Abort()
                self.cond.wait()
        return slot.value

    def leave(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def next_batch(self) -> List[_Slot]:
        """Wait until every running optimization waits; its points (empty: all finished)."""
        with self.cond:
            while self.running > 0:
                self.cond.wait()
            if self.error is not None:
                return []
            batch, self.pending = self.pending, []
            return batch

    def deliver(self, batch: List[_Slot]) -> None:
        with self.cond:
            for slot in batch:
                slot.ready = True
            self.running += len(batch)
            self.cond.notify_all()

    def stop(self, error: BaseException) -> None:
        with self.cond:
            self.error = error
            self.cond.notify_all()


def aise(model, x, *, targets: Union[None, Sequence[int], Sequence[Sequence[int]]] = None,
         preset: str = "balance", num_iterations_per_kernel: Optional[int] = None,
         kernel_widths: Optional[Sequence[float]] = None, solver_epsilon: float = 0.1, locally_biased: bool = False,
         batch_size: int = 64, score: Optional[str] = None, normalize: bool = False,
         scores: Optional[torch.Tensor] = None) -> SaliencyResult:
    """AISE maps of the images x [B, C, H, W] (preprocessed model inputs), at the input's size.

    targets: None (every class: [B, K, H, W]; slow, as OpenVINO XAI warns), a list of classes for
    every image ([B, T, H, W]) or one list per image (T classes each). batch_size: masked images
    per model call (each point is two images, so up to batch_size // 2 optimizations run at once).
    scores: the model's scores on x, when already known (only their class count is read).
    Returns a SaliencyResult with raw float32 maps (and uint8 maps when normalize)."""
    from scipy.optimize import Bounds, direct

    from .rise import prepare

    iterations, widths = check_options(preset, num_iterations_per_kernel, kernel_widths, solver_epsilon,
                                       locally_biased)
    scorer, x, per_image = prepare(model, x, targets, scores, score, batch_size, "AISE", AiseError)
    b_count, _, h, w = x.shape
    t_count = len(per_image[0]) if per_image else 0
    if t_count > 10:
        import warnings

        warnings.warn(f"aise explains {t_count} classes per image: {t_count * len(widths)} optimizations and about "
                      f"{2 * t_count * len(widths) * iterations} model calls an image. Explain the predicted "
                      "classes (target_explain_group PREDICTIONS) or chosen ones (CUSTOM) instead of ALL",
                      stacklevel=2)
    device = scorer.device
    x64 = x.to(device=device, dtype=torch.float32).double()  # x * mask in float64, as numpy's promotion
    make = GaussianMasks((h, w))
    out = np.zeros((b_count, t_count, h, w), dtype=np.float64)
    kernels = {}  # (image, target) -> {width index: normalized K_sigma}

    jobs = [_Job(b, t, i, s) for b in range(b_count) for t in range(t_count) for i, s in enumerate(widths)]
    job_iter = iter(jobs)
    job_lock = threading.Lock()
    coord = _Coordinator()
    finish_lock = threading.Lock()
    errors: List[BaseException] = []
    bounds = Bounds([0.0, 0.0], [1.0, 1.0])

    def optimize(job: _Job) -> None:
        def objective(point) -> float:
            if job.count >= iterations:
                raise _Stop()
            return coord.ask(_Slot(job, (float(point[0]), float(point[1]))))

        try:
            direct(objective, bounds, eps=float(solver_epsilon), maxfun=iterations,
                   locally_biased=bool(locally_biased))
        except _Stop:
            pass

    def worker() -> None:
        try:
            while True:
                with job_lock:
                    job = next(job_iter, None)
                if job is None:
                    return
                optimize(job)
                with finish_lock:
                    finish(job)
        except _Abort:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
            coord.stop(exc)
        finally:
            coord.leave()

    def finish(job: _Job) -> None:
        k = job.acc if job.acc is not None else np.zeros((h, w))
        job.acc = None
        top = k.max()
        if top > 0:
            k = k / top
        group = kernels.setdefault((job.image, job.target), {})
        group[job.width] = k
        if len(group) == len(widths):
            total = np.zeros((h, w))
            for i in range(len(widths)):
                total += group[i]
            top = total.max()
            if top != 0:  # theirs divides by it whatever its sign (0: NaN there, left at 0 here)
                total /= top
            out[job.image, job.target] = total
            del kernels[(job.image, job.target)]

    threads = [threading.Thread(target=worker, name=f"xaifast-aise-{i}", daemon=True)
               for i in range(min(len(jobs), max(1, int(batch_size) // 2)))]
    coord.running = len(threads)
    index = torch.as_tensor(per_image, dtype=torch.long)  # [B, T]
    for t in threads:
        t.start()
    try:
        while True:
            batch = coord.next_batch()
            if not batch:
                break
            points = np.array([(s.point[0], s.point[1], s.job.sigma) for s in batch], dtype=np.float64)
            masks = make(points)  # [m, H, W] float64
            m = torch.from_numpy(masks).to(device)[:, None]
            images = torch.tensor([s.job.image for s in batch], device=device)
            xs = x64[images]
            perturbed = torch.cat([(xs * m).float(), (xs * (1 - m)).float()])
            s_all = scorer(perturbed)  # [2m, K] float32
            cls = index[[s.job.image for s in batch], [s.job.target for s in batch]]
            rows = torch.arange(len(batch))
            d = (s_all[rows, cls] - s_all[rows + len(batch), cls]).numpy()  # float32, as theirs
            for i, slot in enumerate(batch):
                job = slot.job
                value = np.float64(d[i])
                job.acc = masks[i] * value if job.acc is None else job.acc + masks[i] * value
                job.count += 1
                slot.value = -float(d[i])
            coord.deliver(batch)
    except BaseException as exc:
        coord.stop(_Abort())
        for t in threads:
            t.join()
        raise exc
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    raw = torch.from_numpy(out.astype(np.float32))
    result = SaliencyResult(raw=raw)
    if normalize:
        from ..functional import normalize as _normalize

        result.normalized = _normalize(result.raw)
    return result


__all__ = ["aise", "DEFAULTS", "PRESETS", "AiseError", "check_options", "settings", "GaussianMasks"]
