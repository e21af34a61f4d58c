"""Built-in models (small CNNs, a small ViT, the shapes detector and instance segmenter, the
pretrained EfficientNet-Lite0) and the training script of the shapes models. Recipes and tests
use them; nothing in the explain path depends on them."""
from .builtin import ConvHeadCNN, SmallCNN

__all__ = ["ConvHeadCNN", "SmallCNN"]
