"""Inference without PyTorch: ONNX Runtime, OpenCV and NumPy only."""

from ferkit.inference.detect import Detection, available_detectors, create_detector
from ferkit.inference.model import OnnxClassifier, default_model_path
from ferkit.inference.recognizer import DEFAULT_MARGIN, EmotionRecognizer, Face, Prediction, aligned_crop
from ferkit.inference.tracking import FaceTracker

__all__ = [
    "DEFAULT_MARGIN",
    "Detection",
    "EmotionRecognizer",
    "Face",
    "FaceTracker",
    "OnnxClassifier",
    "Prediction",
    "aligned_crop",
    "available_detectors",
    "create_detector",
    "default_model_path",
]
