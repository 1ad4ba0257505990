"""Model registry: `create_model(name, num_classes)` builds any registered network (PyTorch).

Each registered model is a function named like the model (`@register_model def vgg_s(...)`, as timm does); the
built-in ones live in ferkit.models.architectures, which ferkit.models imports so they are registered before any
caller can reach this module. A network declares its output layer as `classifier_layer` (read by
ferkit.models.export.classifier_name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ferkit.errors import FerkitError

if TYPE_CHECKING:
    from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model under its function's name."""
    name = fn.__name__
    if name in _REGISTRY:
        # A second definition would silently replace the first, and runs saved with that name would rebuild another
        # network than the one they trained.
        old = _REGISTRY[name]
        raise ValueError(f"model {name!r} is already registered (by {old.__module__}.{old.__qualname__}); "
                         "give the new model another name")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 7, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise FerkitError(f"model {name!r}: unknown; choose one of {', '.join(list_models())}")
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.arch = name  # type: ignore[assignment]
    return model
