"""Inference without PyTorch: ONNX Runtime, OpenCV and NumPy only."""

from ferkit.inference.detect import Detection, available_detectors, create_detector
from ferkit.inference.model import OnnxClassifier, default_model_path
from ferkit.inference.recognizer import DEFAULT_MARGIN, DEFAULT_SMOOTH, EmotionRecognizer, aligned_crop
from ferkit.inference.resolve import ModelRef, builtin_models, resolve_model
from ferkit.inference.results import SCHEMA, Batch, Face, Prediction
from ferkit.inference.tracking import FaceTracker

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_SMOOTH",
    "SCHEMA",
    "Batch",
    "Detection",
    "EmotionRecognizer",
    "Face",
    "FaceTracker",
    "ModelRef",
    "OnnxClassifier",
    "Prediction",
    "aligned_crop",
    "available_detectors",
    "builtin_models",
    "create_detector",
    "default_model_path",
    "resolve_model",
]
