"""Models: the registry of networks (PyTorch) and their export to the self-describing ONNX format."""

# Imported for its side effect: it registers the built-in networks, so create_model finds them whichever
# ferkit.models module a caller imports first.
from ferkit.models import architectures  # noqa: F401
from ferkit.models.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
