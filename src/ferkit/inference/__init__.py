"""Inference without PyTorch: ONNX Runtime, OpenCV and NumPy only."""

from ferkit.inference.model import OnnxClassifier, default_model_path

__all__ = ["OnnxClassifier", "default_model_path"]
