"""Inference without PyTorch: ONNX Runtime, OpenCV and NumPy only."""

from ferkit.inference.classifier import Classifier, Ensemble
from ferkit.inference.detect import Detection, aligned_crop, available_detectors, create_detector
from ferkit.inference.onnx_classifier import OnnxClassifier, default_model_path
from ferkit.inference.options import DEFAULT_MARGIN, DEFAULT_SMOOTH
from ferkit.inference.recognizer import EmotionRecognizer
from ferkit.inference.resolve import ModelRef, builtin_models, resolve_model
from ferkit.inference.results import SCHEMA, Batch, Face, Prediction
from ferkit.inference.tracking import FaceTracker

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_SMOOTH",
    "SCHEMA",
    "Batch",
    "Classifier",
    "Detection",
    "EmotionRecognizer",
    "Ensemble",
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
