"""Saliency algorithms and how a name (OTX's or ours) maps to one."""
from __future__ import annotations

from ..config import TargetExplainGroup
from ..errors import XaifastError
from .activation_map import activation_map, explain_activation_map
from .base import SaliencyResult
from .det_class_probability_map import det_class_probability_map, explain_det_class_probability_map
from .eigen_cam import eigen_cam, explain_eigen_cam
from .instseg import explain_instseg, instseg_maps
from .recipro_cam import recipro_cam
from .vit_recipro_cam import vit_recipro_cam

CLASS_AGNOSTIC = ("activationmap", "eigencam")
# Black-box methods: any classifier, seen only through its scores (xaifast.algorithms.rise, .aise).
BLACK_BOX = ("rise", "aise")
CLASS_WISE = ("recipro_cam", "vit_recipro_cam", "det_class_probability_map", "instseg")
# The class-wise method of each model kind (auto / classwisesaliencymap pick it).
CLASS_WISE_BY_KIND = {"cnn_classifier": "recipro_cam", "transformer": "vit_recipro_cam",
                      "detection": "det_class_probability_map", "instance_segmentation": "instseg"}
ALGORITHMS = CLASS_WISE + CLASS_AGNOSTIC + BLACK_BOX
_ALIASES = {
    "auto": "auto",
    "recipro_cam": "recipro_cam", "reciprocam": "recipro_cam", "recipro-cam": "recipro_cam",
    "classwisesaliencymap": "classwise", "classwise_saliency_map": "classwise",
    "vit_recipro_cam": "vit_recipro_cam", "vitreciprocam": "vit_recipro_cam", "vit-recipro-cam": "vit_recipro_cam",
    "activationmap": "activationmap", "activation_map": "activationmap",
    "eigencam": "eigencam", "eigen_cam": "eigencam",
    "det_class_probability_map": "det_class_probability_map", "detclassprobabilitymap": "det_class_probability_map",
    "instseg": "instseg", "instance_segmentation": "instseg", "instsegexplainalgo": "instseg",
    "rise": "rise",
    "aise": "aise", "aiseclassification": "aise",
}


def _key(name: str) -> str:
    return str(name).lower().replace(" ", "")


def check_algorithm_name(name: str) -> str:
    """The algorithm `name` asks for (its canonical name: "auto", "classwise", "recipro_cam", ...,
    "rise", "aise"), or a clear error when no algorithm has that name (whether it fits the model is
    checked when the model's type is known: resolve_algorithm)."""
    if _key(name) not in _ALIASES:
        resolve_algorithm(name, "cnn_classifier", TargetExplainGroup.ALL)  # raises: names the valid ones
    return _ALIASES[_key(name)]


def is_black_box(name: str) -> bool:
    """Whether `name` asks for a black-box method (it runs on the model's scores alone)."""
    return _ALIASES.get(_key(name)) in BLACK_BOX


def requested_model_kind(name: str):
    """The model kind an explicitly named class-wise algorithm needs (None: any / by detection)."""
    algo = _ALIASES.get(_key(name))
    return {v: k for k, v in CLASS_WISE_BY_KIND.items()}.get(algo)


def resolve_algorithm(name: str, model_kind: str, group: TargetExplainGroup) -> str:
    """The algorithm to run for a requested name, model type and target group.

    auto / classwisesaliencymap pick the class-wise method of the model type (CNN classifier:
    recipro_cam, transformer: vit_recipro_cam, single-stage detector: det_class_probability_map,
    instance segmentation: instseg). The IMAGE group asks for one class-agnostic map:
    activationmap unless eigencam is asked, as in OTX.
    """
    key = _key(name)
    if key not in _ALIASES:
        valid = ("auto, classwisesaliencymap, recipro_cam, vit_recipro_cam, det_class_probability_map, instseg, "
                 "activationmap, eigencam, rise, aise")
        raise XaifastError(f"unknown explain algorithm {name!r}; use one of: {valid}")
    algo = _ALIASES[key]
    if algo in BLACK_BOX:
        if model_kind in ("detection", "instance_segmentation"):
            raise XaifastError(f"{algo} explains classifiers; a {model_kind.replace('_', ' ')} model needs "
                               f"{CLASS_WISE_BY_KIND[model_kind]} (or auto)")
        if group is TargetExplainGroup.IMAGE:
            raise XaifastError(f"{algo} gives one map per class; use the ALL, PREDICTIONS or CUSTOM target group "
                               "(IMAGE's class-agnostic maps: activationmap or eigencam)")
        return algo
    if algo in ("auto", "classwise"):
        if model_kind not in CLASS_WISE_BY_KIND:
            raise XaifastError(f"no class-wise saliency method for model type {model_kind!r} yet")
        algo = CLASS_WISE_BY_KIND[model_kind]
    elif algo in CLASS_WISE and CLASS_WISE_BY_KIND.get(model_kind) != algo:
        fits = CLASS_WISE_BY_KIND.get(model_kind)
        raise XaifastError(f"{algo} does not apply to a {model_kind.replace('_', ' ')} model"
                           + (f"; use {fits} (or auto)" if fits else ""))
    if group is TargetExplainGroup.IMAGE and algo not in CLASS_AGNOSTIC:
        algo = "activationmap"
    return algo


__all__ = ["activation_map", "eigen_cam", "recipro_cam", "vit_recipro_cam", "explain_activation_map",
           "det_class_probability_map", "explain_det_class_probability_map", "instseg_maps", "explain_instseg",
           "explain_eigen_cam", "SaliencyResult", "resolve_algorithm", "requested_model_kind", "ALGORITHMS",
           "CLASS_AGNOSTIC", "BLACK_BOX", "is_black_box", "check_algorithm_name"]
