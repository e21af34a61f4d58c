"""Writing a run's results: <work_dir>/<run>/explain/saliency_maps/*.png, an index, `.latest`.

Files per image and target (SPEC.md): `<stem>_class_<k>_saliency_map.png` and
`<stem>_class_<k>_overlay.png` (`_image_` for the class-agnostic map). The index
(`<run>/explain/index.json`) lists per image its source, predictions and files, plus the
inputs that were skipped. `<work_dir>/.latest` is a symlink to the newest run.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .explanation import Explanation


def new_run_dir(work_dir: Path) -> Path:
    """A fresh run folder <work_dir>/<YYYYmmdd_HHMMSS>[_n]: never an earlier run's."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    run, n = work_dir / stamp, 1
    while True:
        try:
            run.mkdir()
            return run
        except FileExistsError:
            run, n = work_dir / f"{stamp}_{n}", n + 1


def point_latest(work_dir: Path, run_dir: Path) -> None:
    """<work_dir>/.latest -> the run (a relative symlink; a text file where links are not possible)."""
    latest = work_dir / ".latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    try:
        os.symlink(run_dir.name, latest, target_is_directory=True)
    except OSError:
        latest.write_text(run_dir.name + "\n")


def _png(path: Path, image: np.ndarray) -> None:
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"could not encode {path}")
    buf.tofile(str(path))


class RunWriter:
    """Writes explanations of one run as they stream; `close()` writes the index and `.latest`."""

    def __init__(self, work_dir, labels: Optional[Sequence[str]] = None, settings: Optional[dict] = None,
                 alpha: float = 0.5):
        self.work_dir = Path(work_dir)
        self.run_dir = new_run_dir(self.work_dir)
        self.maps_dir = self.run_dir / "explain" / "saliency_maps"
        self.maps_dir.mkdir(parents=True)
        self.labels = list(labels) if labels is not None else None
        self.settings = settings or {}
        self.alpha = alpha
        self.records: List[dict] = []
        self.files = 0
        self._stems: Dict[str, int] = {}

    def _stem(self, source) -> str:
        stem = Path(str(source)).stem if isinstance(source, str) else f"image_{source:06d}"
        count = self._stems.get(stem, 0)
        self._stems[stem] = count + 1
        return stem if count == 0 else f"{stem}_{count}"

    def write(self, ex: Explanation) -> List[str]:
        stem = self._stem(ex.source)
        written = []
        overlays = ex.overlay
        if not overlays and ex.image is not None and ex.saliency_map:
            overlays = self._overlays(ex)
        for key, saliency in ex.saliency_map.items():
            tag = "image" if key == "image" else f"class_{key}"
            for kind, image in (("saliency_map", saliency), ("overlay", overlays.get(key))):
                if image is None:
                    continue
                path = self.maps_dir / f"{stem}_{tag}_{kind}.png"
                _png(path, image)
                written.append(str(path.relative_to(self.run_dir)))
        self.files += len(written)
        if isinstance(ex.prediction, dict):  # detections (boxes in the image's pixels)
            p = ex.prediction
            predictions = [{"class": int(k), "label": self._label(int(k)), "score": float(s),
                            "box": [round(float(v), 2) for v in box]}
                           for box, s, k in zip(p["boxes"], p["scores"], p["labels"])]
        else:
            predictions = [{"class": k, "label": self._label(k), "score": float(ex.prediction[k])}
                           for k in ex.predicted]
        self.records.append({"source": str(ex.source), "predictions": predictions,
                             "targets": [k if k == "image" else int(k) for k in ex.saliency_map], "files": written})
        return written

    def _overlays(self, ex: Explanation) -> Dict:
        """Overlays for low-resolution maps (postprocess=False): the map as it would be shown."""
        from .postprocess import postprocess

        from .engines.detection_run import draw_on_overlays

        keys = list(ex.saliency_map)
        _, over = postprocess(np.stack([ex.saliency_map[k] for k in keys]), ex.image, self.alpha)
        return draw_on_overlays(dict(zip(keys, over)), ex.extras.get("detections"), self.labels)

    def _label(self, k: int) -> Optional[str]:
        return self.labels[k] if self.labels is not None and 0 <= k < len(self.labels) else None

    def close(self, failures: Sequence = ()) -> Path:
        index = {"run": self.run_dir.name, "settings": self.settings, "images": self.records,
                 "failures": [{"source": str(s), "reason": r} for s, r in failures]}
        (self.run_dir / "explain" / "index.json").write_text(json.dumps(index, indent=2))
        point_latest(self.work_dir, self.run_dir)
        return self.run_dir
