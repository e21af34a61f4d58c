"""What to explain and how to present it: `ExplainConfig` and `TargetExplainGroup` (as in OTX)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence, Union

from .errors import XaifastError

ClassRef = Union[int, str]


class TargetExplainGroup(str, Enum):
    """Which saliency maps each image gets.

    IMAGE: one class-agnostic map per image; ALL: one map per class (OTX's default);
    PREDICTIONS: the predicted classes only; CUSTOM: the classes listed in `target_classes`.
    """

    IMAGE = "image"
    ALL = "all"
    PREDICTIONS = "predictions"
    CUSTOM = "custom"

    @classmethod
    def parse(cls, value: "TargetExplainGroup | str") -> "TargetExplainGroup":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.strip().split(".")[-1]  # accepts "TargetExplainGroup.ALL" too
            for member in cls:
                if name.lower() in (member.value, member.name.lower()):
                    return member
        valid = ", ".join(m.name for m in cls)
        raise XaifastError(f"unknown target_explain_group {value!r}; use one of {valid}, "
                           "or pass a list of class indices / label names")


SCORES = ("auto", "softmax", "sigmoid", "none")
MASKS = ("1x1", "gaussian")


@dataclass
class ExplainConfig:
    """Settings of one explain run.

    target_explain_group: IMAGE / ALL / PREDICTIONS / CUSTOM, or directly a list of class
        indices or label names (then CUSTOM is implied).
    postprocess: False -> low-resolution uint8 maps; True -> maps resized to the image, JET
        colormapped (RGB), plus an overlay on the image.
    target_classes: the classes for CUSTOM.
    algorithm: "auto" (by model type), "recipro_cam" / "classwisesaliencymap", "activationmap",
        "eigencam".
    mask: Recipro-CAM spatial mask, "1x1" or "gaussian" (3x3); "auto" (default) picks OTX's choice
        for the model type: 1x1 for CNNs, gaussian for transformers (ViT Recipro-CAM).
    score: how the class maps score the masked inputs: "auto" (default: raw logits, "none", for
        Recipro-CAM and ViT Recipro-CAM as OTX 2.x and OpenVINO XAI; softmax over classes for
        DetClassProbabilityMap), "softmax", "sigmoid" (multilabel models: also makes PREDICTIONS
        the classes with sigmoid >= 0.5) or "none". Predictions are scored with softmax (sigmoid
        for multilabel) whatever the maps use.
    alpha: overlay weight of the heat map.
    """

    target_explain_group: TargetExplainGroup | str | Sequence[ClassRef] = TargetExplainGroup.ALL
    postprocess: bool = False
    target_classes: Sequence[ClassRef] | None = None
    algorithm: str = "auto"
    mask: str = "auto"
    score: str = "auto"
    alpha: float = 0.5
    extras: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        group = self.target_explain_group
        if isinstance(group, (list, tuple)):
            self.target_classes = list(group)
            group = TargetExplainGroup.CUSTOM
        self.target_explain_group = TargetExplainGroup.parse(group)
        if self.target_explain_group is TargetExplainGroup.CUSTOM and not self.target_classes:
            raise XaifastError("target_explain_group CUSTOM needs target_classes, e.g. "
                               "ExplainConfig(target_explain_group=[967, 'tabby'])")
        self.mask = "auto" if str(self.mask).lower() == "auto" else normalize_mask_name(self.mask)
        if self.score not in SCORES:
            raise XaifastError(f"unknown score {self.score!r}; use one of {', '.join(SCORES)}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise XaifastError(f"alpha must be within [0, 1], got {self.alpha}")
        self.postprocess = bool(self.postprocess)

    @property
    def multilabel(self) -> bool:
        return self.score == "sigmoid"


def resolve_score(score: str, algorithm: str) -> str:
    """The score an algorithm uses for "auto": softmax for DetClassProbabilityMap (its softmax over
    classes) and the black-box RISE and AISE (probabilities, as OpenVINO XAI), raw logits ("none") for
    Recipro-CAM and ViT Recipro-CAM (OTX 2.x, OpenVINO XAI 1.1)."""
    if score != "auto":
        return score
    return "softmax" if algorithm in ("det_class_probability_map", "rise", "aise") else "none"


def normalize_mask_name(mask: str) -> str:
    aliases = {"1x1": "1x1", "gaussian": "gaussian", "3x3": "gaussian", "gauss": "gaussian"}
    try:
        return aliases[str(mask).lower()]
    except KeyError:
        raise XaifastError(f"unknown Recipro-CAM mask {mask!r}; use '1x1' or 'gaussian'") from None
