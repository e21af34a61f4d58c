"""Engines: HOW a model runs (PyTorch classifiers, transformers and detectors; the OpenVINO CPU engine; exported IR / ONNX models), behind one protocol the pipeline calls."""
