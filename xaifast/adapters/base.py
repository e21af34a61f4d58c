"""What every model adapter (PyTorch CNN, ViT, exported IR/ONNX) shares."""
from __future__ import annotations

from typing import List, Optional


class ModelAdapter:
    """Base of the adapters: `labels` (class names or None) and the lookup the pipeline uses."""

    labels: Optional[List[str]] = None

    def label(self, k: int) -> Optional[str]:
        """The name of class k, or None when names are unknown or k is out of range."""
        if self.labels is not None and 0 <= k < len(self.labels):
            return self.labels[k]
        return None
