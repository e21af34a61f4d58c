"""`xaifast` command line, with OTX's flags (jsonargparse gives exactly OTX's syntax):

    xaifast explain                                   # embedded default: EfficientNet-Lite0 on
                                                      # scikit-image's photos
    xaifast explain --config small_cnn --checkpoint w.pth --data_root images/ \\
        --explain_config.target_explain_group PREDICTIONS --explain_config.postprocess True
    xaifast export --config small_cnn --checkpoint w.pth --explain True     # OpenVINO IR
    xaifast explain --checkpoint xaifast-workspace/.latest/exported_model.xml --data_root images/
"""
from __future__ import annotations

import sys
from typing import List, Optional, Union

from jsonargparse import ArgumentParser

from pathlib import Path

from . import __version__

DEFAULT_WORK_DIR = "xaifast-workspace"

ALGORITHMS = ["auto", "classwisesaliencymap", "recipro_cam", "vit_recipro_cam", "det_class_probability_map", "instseg",
              "activationmap", "eigencam", "rise", "aise"]
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
    p.add_argument("--data_root", type=Optional[str], default=None,
                   help="a folder of images (walked recursively; class folders give the ground truth), a COCO "
                        "dataset folder (annotations/*.json beside images/) or its json, a text file of image "
                        "paths (one per line, relative to the file), or one image file")
    p.add_argument("--work_dir", type=Optional[str], default=None,
                   help="where run folders are written (default xaifast-workspace); <work_dir>/.latest points at the "
                        "newest. Given alone, explains the newest model of that work dir (its last exported model, "
                        "or the recipe and checkpoint a run recorded) on the data that run used, as otx explain does")
    p.add_argument("--dump", type=bool, default=True, help="write saliency maps and overlays as image files")
    p.add_argument("--report", type=Optional[bool], default=None,
                   help="with --dump: write small thumbnails (explain/thumbs/) and the run's report.html, a static "
                        "page to browse the images, overlays, predictions and scores (`xaifast report` rebuilds it). "
                        "Default: True for png and jpg dumps, False for zarr (a store is a few files; `xaifast report "
                        "<run>` makes the thumbnails and the page from it later)")
    p.add_argument("--dump_format", type=str, default="png",
                   help="png (OTX's files) | jpg (the same names with .jpg, quality 90: faster to write, smaller) | zarr "
                        "(every low-resolution map in explain/maps.zarr and one row per image in explain/index.parquet; "
                        "`xaifast render` writes the PNG files later)")
    p.add_argument("--resume", type=Optional[str], default=None,
                   help="True: continue the newest run of --work_dir (images it finished are skipped); or the "
                        "run folder to continue. Use the flags of the interrupted run")
    p.add_argument("--num_workers", type=Optional[int], default=None,
                   help="threads that decode images and that render and write files (default: the machine's cores)")
    p.add_argument("--max_image_pixels", type=Optional[int], default=100_000_000,
                   help="images larger than this are skipped and reported (default 100 megapixels; raise it for "
                        "larger photos: memory grows with it)")
    p.add_argument("--explain_config.target_explain_group", type=Optional[str], default=None,
                   help=f"{' | '.join(GROUPS)} (default ALL, as OTX; PREDICTIONS for the embedded default)")
    p.add_argument("--explain_config.target_classes", type=Optional[List[str]], default=None,
                   help="class indices or label names for CUSTOM, e.g. '[967, tabby]'")
    p.add_argument("--explain_config.postprocess", type=Optional[bool], default=None,
                   help="True: maps resized to the image and JET-colored; False: low-resolution maps "
                        "(default False; True for the embedded default)")
    p.add_argument("--explain_config.mask", type=str, default="auto",
                   help="Recipro-CAM mask: auto (as OTX: 1x1 for CNNs, gaussian for ViTs) | 1x1 | gaussian")
    p.add_argument("--explain_config.score", type=Optional[str], default=None,
                   help="auto | softmax | sigmoid | none (default: the recipe's, else auto: raw logits for Recipro-CAM as OTX 2.x, softmax for DetClassProbabilityMap)")
    p.add_argument("--explain_algorithm", "--explain-algorithm", type=str, default="auto",
                   help=f"{' | '.join(ALGORITHMS)} (classwisesaliencymap / auto: by model type: recipro_cam "
                        "for CNNs, vit_recipro_cam for transformers, det_class_probability_map for detectors, "
                        "instseg for instance segmentation)")
    p.add_argument("--score_threshold", type=Optional[float], default=None,
                   help="detection / instance segmentation: confidence threshold of the predictions whose "
                        "classes PREDICTIONS explains and that are drawn (default: the model's)")
    p.add_argument("--feature_level", type=int, default=-1,
                   help="detection / instance segmentation: the pyramid level activationmap / eigencam "
                        "explain (-1: the last, as OTX)")
    _black_box_arguments(p)
    p.add_argument("--device", type=str, default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    p.add_argument("--engine", type=Optional[str], default=None,
                   help="auto | openvino | pytorch (default: $XAIFAST_ENGINE, else auto: OpenVINO on CPU for CNN "
                        "classifiers, PyTorch otherwise)")
    p.add_argument("--precision", type=str, default="f32",
                   help="the OpenVINO engine and exported models (--checkpoint model.xml / .onnx): OpenVINO inference precision "
                        "f32 | bf16 | f16 | auto (auto: the device's default, bf16 on CPUs with AVX512-BF16)")
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar on a terminal")
    return p


def _black_box_arguments(p: ArgumentParser) -> None:
    p.add_argument("--num_masks", type=int, default=5000, help="rise: random masks per image (as OpenVINO XAI)")
    p.add_argument("--num_cells", type=int, default=8, help="rise: cells a side of the random grid")
    p.add_argument("--prob", type=float, default=0.5, help="rise: probability that a cell is kept")
    p.add_argument("--seed", type=int, default=0, help="rise: seed of the masks (the same masks for every image)")
    p.add_argument("--preset", type=str, default="balance",
                   help="aise: speed (20 iterations per kernel, 3 kernel widths) | balance (50, 3) | quality (50, 5), "
                        "as OpenVINO XAI")
    p.add_argument("--num_iterations_per_kernel", type=int, default=None,
                   help="aise: DIRECT evaluations per kernel width (default: the preset's)")
    p.add_argument("--kernel_widths", type=str, default=None,
                   help="aise: comma-separated Gaussian widths, fractions of the image side (default: the preset's)")
    p.add_argument("--solver_epsilon", type=float, default=0.1, help="aise: DIRECT's epsilon")
    p.add_argument("--locally_biased", type=bool, default=False, help="aise: DIRECT's locally biased variant (DIRECT-L)")


def _rise_options(a) -> dict:
    return dict(num_masks=a.num_masks, num_cells=a.num_cells, prob=a.prob, seed=a.seed)


def _aise_options(a) -> dict:
    widths = None
    if a.kernel_widths:
        try:
            widths = tuple(float(v) for v in str(a.kernel_widths).split(",") if v.strip())
        except ValueError:
            raise _Usage(f"--kernel_widths must be comma-separated numbers, got {a.kernel_widths!r}") from None
    return dict(preset=a.preset, num_iterations_per_kernel=a.num_iterations_per_kernel, kernel_widths=widths,
                solver_epsilon=a.solver_epsilon, locally_biased=a.locally_biased)


def _export_parser() -> ArgumentParser:
    p = ArgumentParser(description="Export a recipe's model as OpenVINO IR (.xml/.bin) or ONNX. With --explain "
                       "True the model gets the extra outputs saliency_map (uint8 [B, K, h, w]) and feature_map; "
                       "`xaifast explain --checkpoint <exported model>` then explains with it.")
    p.add_argument("--config", type=Optional[str], default=None, help="recipe (YAML file or built-in name); "
                   "default: efficientnet_lite0")
    p.add_argument("--checkpoint", type=Optional[str], default=None, help="weights (a state_dict .pth)")
    p.add_argument("--work_dir", type=str, default="xaifast-workspace", help="the export goes to a new run folder here")
    p.add_argument("--export_format", type=str, default="OPENVINO", help="OPENVINO | ONNX")
    p.add_argument("--explain", type=bool, default=False, help="add the saliency_map and feature_map outputs")
    p.add_argument("--explain_config.target_explain_group", type=str, default="ALL",
                   help="recorded in the model's metadata (the default group when explaining it)")
    p.add_argument("--explain_config.mask", type=str, default="auto", help="Recipro-CAM mask: auto (1x1) | 1x1 | gaussian")
    p.add_argument("--explain_config.score", type=Optional[str], default=None, help="auto | softmax | sigmoid | none (auto: raw logits, as OTX 2.x)")
    p.add_argument("--explain_algorithm", "--explain-algorithm", type=str, default="auto",
                   help="auto | classwisesaliencymap | recipro_cam | activationmap")
    return p


def _render_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write OTX's saliency-map and overlay files of a run after the fact (a zarr run "
                       "keeps only the low-resolution maps): the files the PNG run would have written, under --out "
                       "with the data's folders. The source images must be where the run read them.")
    p.add_argument("run", type=str, help="a run folder, <work_dir>/.latest, or a work dir (its newest run)")
    p.add_argument("--out", type=str, required=True, help="folder to write the files to")
    p.add_argument("--classes", type=Optional[List[Union[int, str]]], default=None,
                   help="only these classes (indices, or 'image' for class-agnostic maps), e.g. '[285, 967]'")
    p.add_argument("--images", type=Optional[List[Union[int, str]]], default=None,
                   help="only these images (paths relative to the data root, or positions), e.g. '[a/x.jpg]'")
    p.add_argument("--format", type=str, default="png", help="png | jpg")
    return p


def _report_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write a run's report.html again (and its data under <run>/report/): a static page "
                       "that shows every image with its overlays, predictions, ground truth and scores as thumbnails, "
                       "filterable by class, sortable by score, paginated; an evaluate run's table and curves. Open it "
                       "in a browser from disk: no server.")
    p.add_argument("run", type=str, help="a run folder, <work_dir>/.latest, or a work dir (its newest run)")
    p.add_argument("--thumbs", type=str, default="missing",
                   help="keep (show the thumbnails the run made) | missing (also make the missing ones, from the source "
                        "images and the stored maps or files; default) | all (make them all again)")
    p.add_argument("--page_size", type=int, default=48, help="images per page")
    return p


def _evaluate_parser() -> ArgumentParser:
    p = ArgumentParser(description="Compare saliency algorithms on one model and dataset: the pointing game (with "
                       "boxes), insertion / deletion AUC, ADCC and the time per image of each algorithm, printed and "
                       "written to <work_dir>/<run>/evaluate/evaluate.json and evaluate.csv. The explained class of "
                       "each image is its ground truth (class folders, COCO boxes), else the predicted class.")
    p.add_argument("--config", type=Optional[str], default=None, help="recipe (YAML file or built-in name); "
                   "default: efficientnet_lite0")
    p.add_argument("--checkpoint", type=Optional[str], default=None,
                   help="weights (.pth) for the recipe's model, or an exported .xml / .onnx model")
    p.add_argument("--data_root", type=str, required=True, help="a folder of images (class folders give the "
                   "ground truth), a COCO dataset folder or json, a text file of image paths, or one image")
    p.add_argument("--algorithms", type=str, default=",".join(("recipro_cam", "activationmap", "eigencam", "rise")),
                   help="comma-separated: recipro_cam, vit_recipro_cam, activationmap, eigencam, rise, aise")
    p.add_argument("--work_dir", type=str, default=DEFAULT_WORK_DIR, help="the run folder is made here")
    p.add_argument("--steps", type=int, default=30, help="insertion / deletion steps")
    p.add_argument("--metrics", type=str, default="pointing_game,insertion_deletion,adcc", help="comma-separated")
    p.add_argument("--max_images", type=Optional[int], default=None, help="evaluate the first N images only")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass of the CAM methods")
    p.add_argument("--score_batch_size", type=int, default=64, help="perturbed images per model call (metrics, rise)")
    _black_box_arguments(p)
    return p


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="xaifast", description="xaifast: fast, exact saliency maps (Recipro-CAM, "
                            "ActivationMap, EigenCAM) for vision models. Run 'xaifast explain --help'.",
                            version=f"xaifast {__version__}")
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand("explain", _explain_parser(), help="explain a model on images (maps, overlays, index)")
    sub.add_subcommand("export", _export_parser(), help="export a model (OpenVINO IR or ONNX), with explain outputs")
    sub.add_subcommand("evaluate", _evaluate_parser(), help="score saliency algorithms: pointing game, "
                       "insertion / deletion AUC, ADCC, time per image")
    sub.add_subcommand("render", _render_parser(), help="write a run's map and overlay files (e.g. of a zarr run)")
    sub.add_subcommand("report", _report_parser(), help="write a run's report.html again (a static page to browse it)")
    return parser


def _explain(a) -> int:
    from .config import ExplainConfig
    from .demo import demo_photos
    from .job import run_explain_job
    from .engines.exported import is_exported_model
    from .recipe import load_recipe

    if a.work_dir is not None and a.config is None and a.checkpoint is None:
        _newest_model_of(a)  # `xaifast explain --work_dir W`: the newest model of W
    a.work_dir = a.work_dir or DEFAULT_WORK_DIR
    exported = a.checkpoint is not None and is_exported_model(a.checkpoint)
    embedded = a.config is None and a.data_root is None and not exported
    if (a.config is not None or exported) and a.data_root is None:
        raise _Usage("--data_root is required with --config or an exported model (a folder of images or an image file)")
    if a.batch_size < 1:
        raise _Usage(f"--batch_size must be >= 1, got {a.batch_size}")
    recipe = load_recipe(a.config) if (a.config is not None or not exported) else None
    ec = a.explain_config
    group = ec.target_explain_group or ("PREDICTIONS" if embedded else "ALL")
    if ec.target_classes and ec.target_explain_group is None:
        group = "CUSTOM"
    classes = [int(c) if str(c).lstrip("-").isdigit() else c for c in ec.target_classes] if ec.target_classes else None
    postprocess = ec.postprocess if ec.postprocess is not None else embedded
    score = ec.score or (recipe.score if recipe else "auto")
    config = ExplainConfig(target_explain_group=group, target_classes=classes, postprocess=postprocess,
                           algorithm=a.explain_algorithm, mask=ec.mask, score=score)
    data = demo_photos() if embedded else a.data_root
    if exported:
        model, settings = a.checkpoint, {"model": str(Path(a.checkpoint).resolve()), "precision": a.precision}
    else:
        from .distributed import Dist

        model = recipe.build(a.checkpoint).to(Dist.from_env().device(a.device))  # torchrun: this rank's GPU
        source = str(Path(recipe.source).resolve()) if Path(recipe.source).is_file() else recipe.source
        checkpoint = a.checkpoint or recipe.checkpoint
        settings = {"recipe": source, "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None}
    if not embedded:
        settings["data_root"] = str(Path(a.data_root).resolve())
    summary = run_explain_job(
        model, data, config, work_dir=a.work_dir, dump=a.dump, dump_format=a.dump_format, resume=_resume(a.resume),
        num_workers=a.num_workers, max_image_pixels=a.max_image_pixels, settings=settings, batch_size=a.batch_size,
        progress=a.progress, precision=a.precision, engine=a.engine, report=a.report,
        preprocess=recipe.preprocess if recipe else None, labels=recipe.labels if recipe else None,
        target_layer=recipe.target_layer if recipe else None,
        explain_options={**(_detection_options(recipe, model, a) or {}), **_rise_options(a), **_aise_options(a)})
    # success when the run holds explained images: this call's, or an earlier one's that --resume found done
    return 0 if summary.images + summary.resumed > 0 else 1


def _newest_model_of(a) -> None:
    """Fill a.config / a.checkpoint / a.data_root from the newest model of a.work_dir: its newest
    exported_model.xml / .onnx, or the recipe and checkpoint its newest explain run recorded."""
    import json

    work = Path(a.work_dir)
    if not work.is_dir():
        return  # a new work dir: the embedded default writes there
    found = []  # (mtime, kind, value)
    # resolved: `.latest` links to a run folder, and this run is about to point `.latest` at a new one
    exported = {p.resolve() for p in list(work.glob("*/exported_model.xml")) + list(work.glob("*/exported_model.onnx"))}
    for path in sorted(exported):
        found.append((path.stat().st_mtime, "exported", str(path)))
    runs = []
    for path in sorted({p.resolve() for p in work.glob("*/explain/run.json")}):
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runs.append((path.stat().st_mtime, settings))
        if settings.get("recipe") and settings.get("data_root"):  # (runs of the embedded default have no data)
            found.append((path.stat().st_mtime, "recipe", settings))
    if not found:
        return
    _, kind, value = max(found, key=lambda f: f[0])
    if kind == "exported":
        a.checkpoint = value
        what = f"the exported model {value}"
    else:
        a.config, a.checkpoint = value["recipe"], value.get("checkpoint")
        what = f"recipe {value['recipe']}" + (f" with checkpoint {a.checkpoint}" if a.checkpoint else "")
    if a.data_root is None:
        data = [s.get("data_root") for _, s in sorted(runs, key=lambda r: r[0], reverse=True) if s.get("data_root")]
        if not data:
            raise _Usage(f"--work_dir {work}: found {what}, but no run of it recorded its data; add --data_root")
        a.data_root = data[0]
    print(f"xaifast: explaining {what} (the newest model in {work}) on {a.data_root}", file=sys.stderr)


def _resume(value: Optional[str]):
    if value is None or str(value).lower() in ("false", "no", "0", ""):
        return None
    return True if str(value).lower() in ("true", "yes", "1") else value


def _detection_options(recipe, model, a) -> Optional[dict]:
    """explain() options of a detection / instance-segmentation recipe (None for classifiers)."""
    if recipe is None or recipe.task == "classification":
        return None
    spec = recipe.spec
    if spec is None and callable(getattr(model, "xaifast_spec", None)):
        spec = model.xaifast_spec()
    if spec is None:
        raise _Usage(f"recipe {recipe.name} has task {recipe.task} but its model has no xaifast_spec() and the "
                     "recipe no 'spec:' (e.g. spec: {cls_outputs: head.cls_logits, num_anchors: 9})")
    return dict(spec=spec, feature_level=a.feature_level, score_threshold=a.score_threshold)


def _export(a) -> int:
    from pathlib import Path

    from .config import ExplainConfig
    from .rundir import new_run_dir, point_latest
    from .exporter import export
    from .recipe import load_recipe

    formats = {"OPENVINO": ".xml", "ONNX": ".onnx"}
    fmt = a.export_format.upper()
    if fmt not in formats:
        raise _Usage(f"--export_format must be OPENVINO or ONNX, got {a.export_format}")
    recipe = load_recipe(a.config)
    model = recipe.build(a.checkpoint)
    ec = a.explain_config
    config = ExplainConfig(target_explain_group=ec.target_explain_group, algorithm=a.explain_algorithm,
                           mask=ec.mask, score=ec.score or recipe.score)
    run_dir = new_run_dir(Path(a.work_dir))
    path = export(model, run_dir / f"exported_model{formats[fmt]}", explain=a.explain, config=config,
                  target_layer=recipe.target_layer, preprocess=recipe.preprocess, labels=recipe.labels)
    point_latest(Path(a.work_dir), run_dir)
    outputs = "logits, saliency_map, feature_map" if a.explain else "logits"
    print(f"exported {recipe.name} ({fmt}, outputs: {outputs}) -> {path}")
    return 0


def _render(a) -> int:
    from .reader import open_run
    from .stages.sinks import check_dump_format

    fmt = check_dump_format(a.format)
    if fmt == "zarr":
        raise _Usage("--format must be png or jpg")
    run = open_run(a.run)
    images = [int(i) if str(i).lstrip("-").isdigit() else i for i in a.images] if a.images else None
    count = run.write_files(a.out, classes=a.classes, images=images, fmt=fmt)
    print(f"rendered {count} files of {run.path} -> {a.out}")
    return 0 if count else 1


def _report(a) -> int:
    from .report import write_report

    s = write_report(a.run, thumbs=a.thumbs, page_size=a.page_size)
    made = f", thumbnails made for {s.thumbs_made} images" if s.thumbs_made else ""
    what = f"{s.images} images, {s.views} views" + (", evaluation" if s.evaluate else "")
    print(f"report: {s.path} ({what}{made}; {s.seconds:.1f} s)")
    return 0


def _evaluate(a) -> int:
    from .engines.exported import is_exported_model
    from .evaluation import evaluate
    from .recipe import load_recipe

    exported = a.checkpoint is not None and is_exported_model(a.checkpoint)
    if exported:
        model, recipe = a.checkpoint, None
        settings = {"model": str(Path(a.checkpoint).resolve())}
    else:
        recipe = load_recipe(a.config)
        model = recipe.build(a.checkpoint)
        settings = {"recipe": recipe.source if not Path(recipe.source).is_file() else str(Path(recipe.source).resolve()),
                    "checkpoint": a.checkpoint}
    settings["data_root"] = str(Path(a.data_root).resolve())
    result = evaluate(model, a.data_root, a.algorithms, steps=a.steps, batch_size=a.batch_size,
                      score_batch_size=a.score_batch_size, rise_options=_rise_options(a),
                      aise_options=_aise_options(a),
                      metrics=[m.strip() for m in a.metrics.split(",") if m.strip()], work_dir=a.work_dir,
                      max_images=a.max_images, labels=recipe.labels if recipe else None,
                      preprocess=recipe.preprocess if recipe else None,
                      target_layer=recipe.target_layer if recipe else None, settings=settings, out=sys.stdout)
    for path, reason in result.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0 if result.rows else 1


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
        if args.command == "export":
            return _export(args.export)
        if args.command == "render":
            return _render(args.render)
        if args.command == "report":
            return _report(args.report)
        if args.command == "evaluate":
            return _evaluate(args.evaluate)
        return _explain(args.explain)
    except (XaifastError, _Usage) as exc:
        print(f"xaifast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xaifast: interrupted; finished maps are on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
