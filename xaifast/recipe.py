"""Recipes: YAML files naming a model architecture, its weights, input size, mean/std and
label names (the `--config` of `xaifast explain`). Built-in recipes ship in xaifast/recipes/.

    model: {class_path: package.module.ClassOrFunction, init_args: {...}}
    checkpoint: optional path to a state_dict (or a checkpoint dict holding one)
    target_layer: optional module name (detected when omitted)
    input_size: [H, W]; mean / std: per RGB channel in 0..255 units
    labels: a list, a path to a text file (one name per line), or "imagenet"
    score: softmax | sigmoid | none
    task: classification (default) | detection | instance_segmentation
    spec: detectors / instance segmentation, when the model has no xaifast_spec(): the fields of
          xaifast.DetectorSpec (cls_outputs, num_anchors, num_classes, features, score_threshold)
          or xaifast.InstanceSegmentationSpec (num_classes, score_threshold, features)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from .data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .errors import XaifastError

DEFAULT_RECIPE = "efficientnet_lite0"
_KEYS = {"task", "model", "checkpoint", "target_layer", "input_size", "mean", "std", "labels", "score", "spec"}
TASKS = ("classification", "detection", "instance_segmentation")


class RecipeError(XaifastError, ValueError):
    """A recipe or checkpoint that cannot be used."""


def builtin_recipes() -> List[str]:
    return sorted(p.name[:-5] for p in resources.files("xaifast").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


@dataclass
class Recipe:
    name: str
    model: Dict[str, Any]
    checkpoint: Optional[str] = None
    target_layer: Optional[str] = None
    input_size: tuple = (224, 224)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    labels: Optional[List[str]] = None
    score: str = "auto"
    task: str = "classification"
    spec: Optional[Dict[str, Any]] = None
    source: str = field(default="", repr=False)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(tuple(self.input_size), tuple(self.mean), tuple(self.std))

    def build(self, checkpoint: Optional[str] = None) -> torch.nn.Module:
        """The model, with the checkpoint's weights (argument first, then the recipe's)."""
        target = self.model.get("class_path")
        if not isinstance(target, str) or "." not in target:
            raise RecipeError(f"recipe {self.source}: model.class_path must name a class or function, "
                              f"e.g. xaifast.zoo.builtin.SmallCNN (got {target!r})")
        module_name, _, attr = target.rpartition(".")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RecipeError(f"recipe {self.source}: cannot import {target} ({exc})") from None
        try:
            model = factory(**(self.model.get("init_args") or {}))
        except TypeError as exc:
            raise RecipeError(f"recipe {self.source}: {target}(...) rejected init_args: {exc}") from None
        if not isinstance(model, torch.nn.Module):
            raise RecipeError(f"recipe {self.source}: {target} returned a {type(model).__name__}, not a torch.nn.Module")
        path = checkpoint or self.checkpoint
        if path:
            load_checkpoint(model, path)
        return model.eval()


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RecipeError(f"checkpoint {path}: not a PyTorch checkpoint that can be loaded safely "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RecipeError(f"checkpoint {path}: expected a state_dict (name -> tensor), "
                          f"got {type(state).__name__}")
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise RecipeError(f"checkpoint {path} does not fit the recipe's model: {first}") from None


def _labels(value, base: Optional[Path]) -> Optional[List[str]]:
    if value is None:
        return None
    if value == "imagenet":
        from .zoo.efficientnet import imagenet_labels

        return imagenet_labels()
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise RecipeError(f"labels file {value}: no such file")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise RecipeError(f"labels must be a list, a file path or 'imagenet', got {type(value).__name__}")


def load_recipe(name_or_path: Optional[str] = None) -> Recipe:
    """A built-in recipe by name (see builtin_recipes()) or a YAML file path."""
    name_or_path = name_or_path or DEFAULT_RECIPE
    path = Path(name_or_path)
    if path.is_file():
        text, base, name = path.read_text(encoding="utf-8"), path.parent, path.stem
    elif name_or_path in builtin_recipes():
        text = resources.files("xaifast").joinpath(f"recipes/{name_or_path}.yaml").read_text(encoding="utf-8")
        base, name = None, name_or_path
    else:
        raise RecipeError(f"recipe {name_or_path}: no such file, and not a built-in recipe "
                          f"({', '.join(builtin_recipes())})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {name_or_path}: invalid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise RecipeError(f"recipe {name_or_path}: expected a mapping with at least 'model: {{class_path: ...}}'")
    unknown = set(data) - _KEYS
    if unknown:
        raise RecipeError(f"recipe {name_or_path}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    task = data.get("task", "classification")
    if task not in TASKS:
        raise RecipeError(f"recipe {name_or_path}: unknown task {task!r}; use one of {', '.join(TASKS)}")
    spec = data.get("spec")
    if spec is not None:
        if not isinstance(spec, dict):
            raise RecipeError(f"recipe {name_or_path}: spec must be a mapping (e.g. cls_outputs: head.cls, "
                              "num_anchors: 9)")
        if task == "classification":
            raise RecipeError(f"recipe {name_or_path}: spec is for detection / instance_segmentation; set task")
        spec = dict(spec, task=task)
    model = data["model"] if isinstance(data["model"], dict) else {"class_path": data["model"]}
    size = data.get("input_size", (224, 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Recipe(name=name, model=model, checkpoint=data.get("checkpoint"), target_layer=data.get("target_layer"),
                  input_size=size, mean=tuple(data.get("mean", IMAGENET_MEAN)),
                  std=tuple(data.get("std", IMAGENET_STD)), labels=_labels(data.get("labels"), base),
                  score=data.get("score", "auto"), task=task, spec=spec, source=str(name_or_path))
