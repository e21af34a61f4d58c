"""Model adapters: WHERE a model is cut (target layer, head graph, ViT blocks, detector specs)."""
from .classifier import ClassifierAdapter
from .head_graph import Head, extract_logits, split_model
from .target_layer import TargetLayer

__all__ = ["ClassifierAdapter", "Head", "TargetLayer", "extract_logits", "split_model"]
