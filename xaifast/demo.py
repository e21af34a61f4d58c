"""The embedded default: the pretrained EfficientNet-Lite0 explains the photos bundled with
scikit-image (PREDICTIONS, postprocessed), and the saliency maps and overlays are written to a
run folder. `make demo` / `python -m xaifast.demo [work_dir]`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import xaifast

DEMO_PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
DEFAULT_WORK_DIR = "xaifast-workspace"


def demo_photos() -> List[str]:
    try:
        import skimage
    except ImportError as exc:
        raise xaifast.XaifastError("the demo photos ship with scikit-image: pip install scikit-image") from exc
    folder = Path(skimage.__file__).parent / "data"
    return [str(folder / name) for name in DEMO_PHOTOS if (folder / name).is_file()]


def run_demo(work_dir: str = DEFAULT_WORK_DIR, photos: Optional[List[str]] = None, out=sys.stdout) -> Path:
    from .dump import RunWriter
    from .models.efficientnet import EFFICIENTNET_LITE_PREPROCESS, efficientnet_lite0, imagenet_labels

    labels = imagenet_labels()
    model = efficientnet_lite0()
    config = xaifast.ExplainConfig(target_explain_group="PREDICTIONS", postprocess=True)
    photos = photos or demo_photos()
    writer = RunWriter(work_dir, labels, {"model": "efficientnet_lite0 (ImageNet)", "algorithm": "recipro_cam",
                                          "target_explain_group": "PREDICTIONS", "postprocess": True})
    start = time.perf_counter()
    run = xaifast.explain(model, photos, config, preprocess=EFFICIENTNET_LITE_PREPROCESS, labels=labels)
    for ex in run:
        writer.write(ex)
        for k in ex.predicted:
            print(f"{Path(str(ex.source)).name:>22}: {labels[k]} (class {k}, p={ex.prediction[k]:.2f})", file=out)
    run_dir = writer.close(run.failures)
    seconds = time.perf_counter() - start
    print(f"explained {run.count} images, {writer.files} files in {seconds:.1f} s -> {run_dir / 'explain'}",
          file=out)
    print(f"latest run: {Path(work_dir) / '.latest'}", file=out)
    return run_dir


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_demo(argv[0] if argv else DEFAULT_WORK_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
