"""ferkit: facial expression recognition you can train, evaluate and run offline.

The top level stays light: importing ferkit never imports PyTorch. Heavy pieces load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ferkit.inference import EmotionRecognizer

__all__ = ["EmotionRecognizer", "FerkitError", "__version__", "load_dataset"]


def __getattr__(name: str) -> Any:
    if name == "EmotionRecognizer":
        from ferkit.inference import EmotionRecognizer

        return EmotionRecognizer
    if name == "load_dataset":
        from ferkit.data import load_dataset

        return load_dataset
    if name == "FerkitError":
        from ferkit.errors import FerkitError

        return FerkitError
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")
