"""`xaifast` command line, with OTX's flags (jsonargparse gives exactly OTX's syntax):

    xaifast explain                                   # embedded default: EfficientNet-Lite0 on
                                                      # scikit-image's photos
    xaifast explain --config small_cnn --checkpoint w.pth --data_root images/ \\
        --explain_config.target_explain_group PREDICTIONS --explain_config.postprocess True
"""
from __future__ import annotations

import sys
from typing import List, Optional

from jsonargparse import ArgumentParser

from . import __version__

ALGORITHMS = ["auto", "classwisesaliencymap", "recipro_cam", "activationmap", "eigencam"]
GROUPS = ["ALL", "PREDICTIONS", "IMAGE", "CUSTOM"]


def _explain_parser() -> ArgumentParser:
    from .recipe import builtin_recipes

    p = ArgumentParser(description="Explain a model's predictions with saliency maps, and write each map "
                       "and its overlay on the image to a run folder of --work_dir. With no --config and no "
                       "--data_root, the embedded default runs: the pretrained EfficientNet-Lite0 on the photos "
                       "bundled with scikit-image, explaining its predictions.")
    p.add_argument("--config", type=Optional[str], default=None,
                   help=f"recipe: a YAML file, or a built-in name ({', '.join(builtin_recipes())}); "
                        "default: efficientnet_lite0")
    p.add_argument("--checkpoint", type=Optional[str], default=None, help="weights (a state_dict .pth) for the recipe's model")
    p.add_argument("--data_root", type=Optional[str], default=None, help="a folder of images, or one image file")
    p.add_argument("--work_dir", type=str, default="xaifast-workspace",
                   help="where run folders are written; <work_dir>/.latest points at the newest")
    p.add_argument("--dump", type=bool, default=True, help="write saliency maps and overlays as PNG files")
    p.add_argument("--explain_config.target_explain_group", type=Optional[str], default=None,
                   help=f"{' | '.join(GROUPS)} (default ALL, as OTX; PREDICTIONS for the embedded default)")
    p.add_argument("--explain_config.target_classes", type=Optional[List[str]], default=None,
                   help="class indices or label names for CUSTOM, e.g. '[967, tabby]'")
    p.add_argument("--explain_config.postprocess", type=Optional[bool], default=None,
                   help="True: maps resized to the image and JET-colored; False: low-resolution maps "
                        "(default False; True for the embedded default)")
    p.add_argument("--explain_config.mask", type=str, default="1x1", help="Recipro-CAM mask: 1x1 (as OTX) | gaussian")
    p.add_argument("--explain_config.score", type=Optional[str], default=None,
                   help="softmax | sigmoid | none (default: the recipe's)")
    p.add_argument("--explain_algorithm", "--explain-algorithm", type=str, default="auto",
                   help=f"{' | '.join(ALGORITHMS)} (classwisesaliencymap = recipro_cam for CNNs)")
    p.add_argument("--device", type=str, default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar on a terminal")
    return p


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="xaifast", description="xaifast: fast, exact saliency maps (Recipro-CAM, "
                            "ActivationMap, EigenCAM) for vision models. Run 'xaifast explain --help'.",
                            version=f"xaifast {__version__}")
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand("explain", _explain_parser(), help="explain a model on images (maps, overlays, index)")
    return parser


def _explain(a) -> int:
    from .config import ExplainConfig
    from .demo import demo_photos
    from .job import run_explain_job
    from .recipe import load_recipe

    embedded = a.config is None and a.data_root is None
    if a.config is not None and a.data_root is None:
        raise _Usage("--data_root is required with --config (a folder of images or an image file)")
    recipe = load_recipe(a.config)
    ec = a.explain_config
    group = ec.target_explain_group or ("PREDICTIONS" if embedded else "ALL")
    if ec.target_classes and ec.target_explain_group is None:
        group = "CUSTOM"
    classes = [int(c) if str(c).lstrip("-").isdigit() else c for c in ec.target_classes] if ec.target_classes else None
    postprocess = ec.postprocess if ec.postprocess is not None else embedded
    config = ExplainConfig(target_explain_group=group, target_classes=classes, postprocess=postprocess,
                           algorithm=a.explain_algorithm, mask=ec.mask, score=ec.score or recipe.score)
    data = demo_photos() if embedded else a.data_root
    if a.batch_size < 1:
        raise _Usage(f"--batch_size must be >= 1, got {a.batch_size}")
    summary = run_explain_job(recipe, data, config, work_dir=a.work_dir, dump=a.dump, checkpoint=a.checkpoint,
                              batch_size=a.batch_size, device=a.device, progress=a.progress)
    return 0 if summary.images > 0 else 1


class _Usage(Exception):
    pass


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import XaifastError

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _explain(args.explain)
    except (XaifastError, _Usage) as exc:
        print(f"xaifast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xaifast: interrupted; finished maps are on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
