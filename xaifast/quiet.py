"""Third-party notices that reach a user who can do nothing about them, silenced where they are raised."""
from __future__ import annotations

import contextlib
import logging
import warnings

#: What torch.export, torch.onnx and openvino.convert_model emit on every export: torch 2.13's pytree
#: `LeafSpec` FutureWarning (raised from copyreg while tree specs are copied), the ONNX exporter's
#: "torchvision is not installed. Skipping torchvision::nms" log lines, deprecations and tracing
#: notices inside torch / transformers / openvino / onnxscript. Warnings from the user's own
#: modules (other module names) still show.
_QUIET_MODULES = r"(torch|openvino|onnx|onnxscript|onnx_ir|transformers|copyreg)(\.|$)"
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes",
                  "onnxscript")


@contextlib.contextmanager
def quiet_exporters():
    """Silence the known third-party warnings and log lines of torch.export, torch.onnx and
    openvino.convert_model for the duration of an export."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=_QUIET_MODULES)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
