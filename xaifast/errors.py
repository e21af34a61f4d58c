"""Errors raised by xaifast. Each message names the problem and the fix."""


class XaifastError(Exception):
    """Base class for every error xaifast raises on purpose."""


class ModelSplitError(XaifastError, ValueError):
    """The model could not be split into a backbone and a head at the target layer."""


class TargetLayerError(XaifastError, ValueError):
    """The target layer is unknown or its output is not a usable feature map."""


class ClassIndexError(XaifastError, IndexError):
    """A requested class index or label name does not exist in the model."""


class DataError(XaifastError, ValueError):
    """The data argument names nothing explainable (missing path, empty folder, bad tensor)."""


class ImageReadError(XaifastError, OSError):
    """One image file could not be read or decoded; the run skips it and reports it at the end."""
