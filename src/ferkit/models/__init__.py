"""Models: the registry of networks (PyTorch) and their export to the self-describing ONNX format."""

from ferkit.models.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
