"""Command line: `xaifast explain` (OTX-style flags come with the CLI issue; today it runs
the embedded default: EfficientNet-Lite0 on scikit-image's photos, or on --data_root)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaifast", description="Fast saliency maps for vision models.")
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="explain the embedded default model (EfficientNet-Lite0, ImageNet)")
    explain.add_argument("--data_root", help="folder of images (default: scikit-image's bundled photos)")
    explain.add_argument("--work_dir", default="xaifast-workspace", help="where run folders are written")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .demo import run_demo
    from .data import list_image_files
    from .errors import XaifastError

    args = build_parser().parse_args(argv)
    try:
        photos = [str(p) for p in list_image_files(args.data_root)] if args.data_root else None
        run_demo(args.work_dir, photos)
    except XaifastError as exc:
        print(f"xaifast: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
