"""Model adapters: how xaifast runs a model's backbone once and its head on masked features."""
from .builtin import ConvHeadCNN, SmallCNN
from .classifier import ClassifierAdapter
from .head_graph import Head, extract_logits, split_model
from .target_layer import TargetLayer

__all__ = ["ClassifierAdapter", "Head", "SmallCNN", "ConvHeadCNN", "TargetLayer", "extract_logits", "split_model"]
