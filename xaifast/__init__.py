"""xaifast: fast, exact saliency maps (Recipro-CAM and friends) for computer-vision models.

    import xaifast
    cfg = xaifast.ExplainConfig(target_explain_group="PREDICTIONS")
    for ex in xaifast.explain(model, "images/", config=cfg):
        ex.saliency_map  # {class index or "image": uint8 map}
"""
from . import functional
from .config import ExplainConfig, TargetExplainGroup
from .data import Preprocess, read_image
from .errors import (ClassIndexError, DataError, ImageReadError, ModelSplitError, TargetLayerError,
                     XaifastError)
from .explanation import Explanation
from .adapters.detection import DetectorSpec, InstanceSegmentationSpec
from .pipeline import AlgorithmOptions, ExplainRun, ModelOptions, RunOptions, explain, saliency_maps
from .exporter import export
from .otx_engine import Engine
from .reader import Run, open_run
from .evaluation import EvaluateResult, evaluate
from . import metrics
from .postprocess import postprocess

__version__ = "0.1.0"

__all__ = ["evaluate", "EvaluateResult", "metrics", "Engine", "open_run", "Run", "explain", "saliency_maps", "postprocess", "export", "functional", "ExplainConfig", "TargetExplainGroup",
           "Explanation", "ExplainRun", "ModelOptions", "RunOptions", "AlgorithmOptions", "DetectorSpec", "InstanceSegmentationSpec", "Preprocess", "read_image",
           "XaifastError", "ClassIndexError",
           "DataError", "ImageReadError", "ModelSplitError", "TargetLayerError", "__version__"]
