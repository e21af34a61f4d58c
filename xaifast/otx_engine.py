"""`xaifast.Engine`: OTX 2.x's `Engine` calls, for people who have OTX code.

    from xaifast import Engine, ExplainConfig
    engine = Engine(model="efficientnet_lite0", work_dir="otx-workspace", data_root="images/")
    path = engine.export(export_format="OPENVINO", explain=True)          # <work_dir>/<run>/exported_model.xml
    preds = engine.explain(checkpoint=path, explain_config=ExplainConfig(postprocess=True), dump=True)

model: a built-in recipe name or a recipe YAML file, a `torch.nn.Module`, or an exported
`.xml` / `.onnx` (default: the embedded EfficientNet-Lite0 recipe). `explain` returns the
`Explanation`s (one per image, in input order) and, with `dump=True`, writes OTX's run folder
under `work_dir` (maps, overlays, the index; `.latest`). `export` writes `exported_model.xml`
(or `.onnx`) in a new run folder of `work_dir` and returns its path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

import torch

from .config import ExplainConfig
from .errors import XaifastError
from .explanation import Explanation

EXPORT_FORMATS = {"OPENVINO": ".xml", "ONNX": ".onnx"}
EXPORT_PRECISIONS = ("FP32", "FP16")


class Engine:
    """OTX-style entry point: a model, a work dir, a data root; `explain` and `export`."""

    def __init__(self, model: Union[str, os.PathLike, torch.nn.Module, None] = None,
                 work_dir: Union[str, os.PathLike] = "./xaifast-workspace",
                 data_root: Union[str, os.PathLike, None] = None, checkpoint: Optional[str] = None,
                 device: str = "cpu", **explain_options):
        from .engines.exported import is_exported_model
        from .recipe import load_recipe

        self.work_dir = Path(work_dir)
        self.data_root = data_root
        self.checkpoint = checkpoint
        self.device = device
        self.explain_options = explain_options  # more options of xaifast.explain (target_layer=, preprocess=, ...)
        self.recipe = None
        self.model = model
        if isinstance(model, torch.nn.Module):
            pass
        elif model is not None and is_exported_model(model):
            self.model = str(model)
        else:
            self.recipe = load_recipe(None if model is None else str(model))
            self.model = None  # built on first use, with the checkpoint given then

    # ------------------------------------------------------------------ the model
    def _model(self, checkpoint: Optional[str]):
        """The model to run: an exported file (checkpoint .xml / .onnx), or the module with the checkpoint's
        weights (a state_dict .pth)."""
        from .engines.exported import is_exported_model
        from .recipe import load_checkpoint

        checkpoint = checkpoint if checkpoint is not None else self.checkpoint
        if checkpoint is not None and is_exported_model(checkpoint):
            return str(checkpoint)
        if self.recipe is not None:
            return self.recipe.build(None if checkpoint is None else str(checkpoint)).to(self.device)
        if isinstance(self.model, torch.nn.Module):
            if checkpoint is not None:
                load_checkpoint(self.model, str(checkpoint))
            return self.model.to(self.device)
        if checkpoint is not None:
            raise XaifastError(f"checkpoint {checkpoint} is for a PyTorch model, but this Engine's model is the "
                               f"exported {self.model}; pass an exported .xml / .onnx as checkpoint")
        return self.model

    def _recipe_options(self, model) -> dict:
        if self.recipe is None or isinstance(model, str):
            return dict(self.explain_options)
        options = dict(preprocess=self.recipe.preprocess, labels=self.recipe.labels,
                       target_layer=self.recipe.target_layer)
        if self.recipe.task != "classification":
            spec = self.recipe.spec or (model.xaifast_spec() if callable(getattr(model, "xaifast_spec", None)) else None)
            options["spec"] = spec
        options.update(self.explain_options)
        return options

    # ------------------------------------------------------------------ explain
    def explain(self, checkpoint: Optional[Union[str, os.PathLike]] = None, datamodule=None,
                explain_config: Optional[ExplainConfig] = None, dump: bool = False,
                **kwargs) -> List[Explanation]:
        """Explain the model on `datamodule` (a folder, an image, a text file of paths, a COCO
        folder, a list of files, or a DataLoader; default: the Engine's data_root). checkpoint: weights
        (.pth) of the model, or an exported .xml / .onnx to explain instead. dump=True writes the
        maps and overlays to a new run folder of work_dir (`.latest`). More keyword arguments go
        to `xaifast.explain` (batch_size=, engine=, ...)."""
        data = datamodule if datamodule is not None else self.data_root
        if data is None:
            raise XaifastError("Engine.explain needs data: pass datamodule= (a folder, a file list or a DataLoader) "
                               "or Engine(data_root=...)")
        config = explain_config or ExplainConfig()
        model = self._model(None if checkpoint is None else str(checkpoint))
        options = self._recipe_options(model)
        options.update(kwargs)
        if not dump:
            from .pipeline import explain

            return list(explain(model, data, config, **options))
        from .job import run_explain_job

        collected: List[Explanation] = []
        lock = __import__("threading").Lock()

        def keep(ex):
            with lock:
                collected.append(ex)

        job_keys = ("preprocess", "labels", "target_layer", "batch_size", "engine", "precision", "num_workers",
                    "max_image_pixels")
        job_options = {k: options.pop(k) for k in list(options) if k in job_keys}
        settings = {"recipe": self.recipe.name if self.recipe else None,
                    "model": model if isinstance(model, str) else None,
                    "checkpoint": None if checkpoint is None else str(checkpoint)}
        run_explain_job(model, data, config, work_dir=str(self.work_dir), dump=True, sink=keep, progress=False,
                        out=open(os.devnull, "w"), settings=settings, explain_options=options, **job_options)
        collected.sort(key=lambda ex: ex.index)
        return collected

    # ------------------------------------------------------------------ export
    def export(self, checkpoint: Optional[Union[str, os.PathLike]] = None, export_format: str = "OPENVINO",
               export_precision: str = "FP32", explain: bool = False,
               explain_config: Optional[ExplainConfig] = None) -> Path:
        """Export the model (with its checkpoint's weights) as OpenVINO IR or ONNX to a new run folder
        of work_dir, `exported_model.xml` / `.onnx`; explain=True adds the saliency_map and feature_map
        outputs. export_precision FP32, or FP16 (OpenVINO IR: weights stored in half precision)."""
        from .exporter import export
        from .rundir import new_run_dir, point_latest

        fmt = str(getattr(export_format, "value", export_format)).upper()
        precision = str(getattr(export_precision, "value", export_precision)).upper()
        if fmt not in EXPORT_FORMATS:
            raise XaifastError(f"export_format must be OPENVINO or ONNX, got {export_format}")
        if precision not in EXPORT_PRECISIONS:
            raise XaifastError(f"export_precision must be FP32 or FP16, got {export_precision}")
        if precision == "FP16" and fmt != "OPENVINO":
            raise XaifastError("export_precision FP16 is available for OpenVINO IR; export ONNX in FP32")
        model = self._model(None if checkpoint is None else str(checkpoint))
        if isinstance(model, str):
            raise XaifastError(f"{model} is exported already; export takes a PyTorch model (a recipe or nn.Module)")
        options = self._recipe_options(model)
        run_dir = new_run_dir(self.work_dir)
        path = export(model.cpu().eval(), run_dir / f"exported_model{EXPORT_FORMATS[fmt]}", explain=explain,
                      config=explain_config, target_layer=options.get("target_layer"),
                      preprocess=options.get("preprocess"), labels=options.get("labels"))
        if precision == "FP16":
            import openvino as ov

            ov_model = ov.Core().read_model(str(path))
            tmp = path.with_name("fp16_" + path.name)
            ov.save_model(ov_model, str(tmp), compress_to_fp16=True)
            os.replace(tmp, path)
            os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        point_latest(self.work_dir, run_dir)
        return path
