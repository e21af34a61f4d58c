"""The embedded default: the pretrained EfficientNet-Lite0 explains the photos bundled with
scikit-image (PREDICTIONS, postprocessed), and the saliency maps and overlays are written to a
run folder. `make demo` / `python -m xaifast.demo [work_dir]` / `xaifast explain`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from .errors import XaifastError

DEMO_PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
DEFAULT_WORK_DIR = "xaifast-workspace"


def demo_photos() -> List[str]:
    try:
        import skimage
    except ImportError as exc:
        raise XaifastError("the demo photos ship with scikit-image: pip install scikit-image") from exc
    folder = Path(skimage.__file__).parent / "data"
    return [str(folder / name) for name in DEMO_PHOTOS if (folder / name).is_file()]


def main(argv: Optional[List[str]] = None) -> int:
    from .cli import main as cli_main

    argv = sys.argv[1:] if argv is None else argv
    return cli_main(["explain"] + (["--work_dir", argv[0]] if argv else []))


if __name__ == "__main__":
    raise SystemExit(main())
