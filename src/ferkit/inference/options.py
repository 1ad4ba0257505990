"""The pipeline's settings between a photo and the network: their defaults and their checks, in one place for the
recognizer, streams, videos, the CLI and the service (each option checked where it enters, not per image)."""

from __future__ import annotations

from typing import Any

from ferkit.errors import FerkitError
from ferkit.views import tta_mode

# Crop side / detector box side. FER2013 faces are cropped tight (brows to chin); 1.0 on the detector's box
# matched them best in benchmarks/crop_margin.py and on real photos in benchmarks/realval_pipeline.py
# (see docs/inference.md).
DEFAULT_MARGIN = 1.0
# Adaptive detection's second look at a large frame: this many times the detection size (320 -> 1280 px).
ADAPTIVE_FACTOR = 4
# EMA window (processed frames) of each track's probabilities in videos and streams: see docs/inference.md
# ("Smoothing") and benchmarks/smoothing.py for the measurement behind it.
DEFAULT_SMOOTH = 5
DETECTION_OPTIONS = ("detect_size", "threshold", "max_faces", "adaptive")


def check_detection(detect_size: int | None = None, threshold: float | None = None, max_faces: int | None = None,
                    adaptive: bool | None = None) -> dict[str, Any]:
    """Per-call detection settings (EmotionRecognizer.detect's keywords), checked; None ones left out."""
    if detect_size is not None and detect_size < 0:
        raise FerkitError(f"detect_size {detect_size}: must be >= 0 (0 = full size)")
    if threshold is not None and not 0 <= threshold <= 1:
        raise FerkitError(f"threshold {threshold}: must be between 0 and 1")
    if max_faces is not None and max_faces < 0:
        raise FerkitError(f"max_faces {max_faces}: must be >= 0 (0 = all)")
    given = {"detect_size": detect_size, "threshold": threshold, "max_faces": max_faces, "adaptive": adaptive}
    return {k: v for k, v in given.items() if v is not None}


def check_tta(tta: bool | str | None) -> bool | str | None:
    """A TTA option as given (None: the recognizer's own), after checking that it is one (ferkit.views.TTA_MODES)."""
    if tta is not None:
        tta_mode(tta)
    return tta


def check_at_least_one(**values: int) -> None:
    for what, v in values.items():
        if v < 1:
            raise FerkitError(f"{what} {v}: must be >= 1")
