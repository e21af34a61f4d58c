"""Saliency algorithms and how a name (OTX's or ours) maps to one."""
from __future__ import annotations

from ..config import TargetExplainGroup
from ..errors import XaifastError
from .activation_map import activation_map, explain_activation_map
from .base import SaliencyResult
from .eigen_cam import eigen_cam, explain_eigen_cam
from .recipro_cam import recipro_cam

CLASS_AGNOSTIC = ("activationmap", "eigencam")
CLASS_WISE = ("recipro_cam",)
ALGORITHMS = CLASS_WISE + CLASS_AGNOSTIC
_ALIASES = {
    "auto": "auto",
    "recipro_cam": "recipro_cam", "reciprocam": "recipro_cam", "recipro-cam": "recipro_cam",
    "classwisesaliencymap": "recipro_cam", "classwise_saliency_map": "recipro_cam",
    "activationmap": "activationmap", "activation_map": "activationmap",
    "eigencam": "eigencam", "eigen_cam": "eigencam",
}


def resolve_algorithm(name: str, model_kind: str, group: TargetExplainGroup) -> str:
    """The algorithm to run for a requested name, model type and target group.

    auto / classwisesaliencymap pick the class-wise method of the model type (CNN classifier:
    recipro_cam). The IMAGE group asks for one class-agnostic map: activationmap unless eigencam
    is asked, as in OTX.
    """
    key = str(name).lower().replace(" ", "")
    if key not in _ALIASES:
        valid = "auto, classwisesaliencymap, recipro_cam, activationmap, eigencam"
        raise XaifastError(f"unknown explain algorithm {name!r}; use one of: {valid}")
    algo = _ALIASES[key]
    if algo in ("auto", "recipro_cam"):
        if model_kind != "cnn_classifier":
            raise XaifastError(f"no class-wise saliency method for model type {model_kind!r} yet")
        algo = "recipro_cam"
    if group is TargetExplainGroup.IMAGE and algo not in CLASS_AGNOSTIC:
        algo = "activationmap"
    return algo


__all__ = ["activation_map", "eigen_cam", "recipro_cam", "explain_activation_map", "explain_eigen_cam",
           "SaliencyResult", "resolve_algorithm", "ALGORITHMS", "CLASS_AGNOSTIC"]
