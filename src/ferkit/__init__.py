"""ferkit: facial expression recognition you can train, evaluate and run offline.

The top level stays light: importing ferkit never imports PyTorch. Heavy pieces load on first use.

    from ferkit import EmotionRecognizer
    pred = EmotionRecognizer().predict("photo.jpg")
"""

from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ferkit.data import load_dataset
    from ferkit.errors import FerkitError
    from ferkit.inference import EmotionRecognizer

__all__ = ["EmotionRecognizer", "FerkitError", "__version__", "load_dataset"]


def __getattr__(name: str) -> object:
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


def __dir__() -> list[str]:
    # What ferkit offers (loaded on first use) and its submodules imported so far, not the helpers this module needs
    # to offer them.
    return sorted({*__all__, *(k for k, v in globals().items() if isinstance(v, _ModuleType) and not k.startswith("_"))})


del TYPE_CHECKING
