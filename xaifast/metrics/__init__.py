"""Quality metrics of saliency maps, as OpenVINO XAI 1.1 defines them (see the README, "How good is
a map?"), with every perturbed image sent through the model in large batches:

    from xaifast import metrics
    metrics.pointing_game(explanations, gt_boxes)                       # hits / maps with a box
    metrics.insertion_deletion_auc(model, images, explanations)         # insertion, deletion, delta
    metrics.adcc(model, images, explanations, explainer="recipro_cam")  # ADCC, coherency, complexity, drop

`model`: an nn.Module, an xaifast Engine, an .xml / .onnx file, or a Python callable on numpy
batches (`xaifast.engines.scorer.as_scorer`).
"""
from .adcc import adcc
from .explainers import make_explainer
from .insertion_deletion import auc, insertion_deletion_auc
from .pointing_game import boxes_by_class, pointing_game
from ._common import MetricError, black_pixel

__all__ = ["pointing_game", "insertion_deletion_auc", "adcc", "auc", "make_explainer", "boxes_by_class",
           "black_pixel", "MetricError"]
