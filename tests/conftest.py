"""Shared fixtures: tiny datasets written by the tests themselves, the location of the real archives, the astronaut
photo, and the shipped model's recognizer. Plain functions the tests call themselves are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import astronaut_bgr

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never touch the user's cache; the real archives share one session cache so they decode once.
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "ferkit-cache"))


def make_class_folders(root: Path, classes: list[str], per_class: int = 12, size: int = 48, seed: int = 0,
                       splits: tuple[str, ...] = ("train", "validation", "test")) -> Path:
    """Write a small, learnable dataset: each class is a different bright blob position plus noise."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (size, size), dtype=np.uint8)
                cx = int((ci + 0.5) * size / len(classes))
                cv2.circle(img, (cx, size // 2), size // 6, 230, -1)
                cv2.imwrite(str(d / f"{cls}_{i}.png"), img)
    return root


@pytest.fixture
def tiny_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "tiny", ["happy", "sad", "neutral"], per_class=24)


@pytest.fixture(scope="module")
def recognizer():
    """The shipped default model, one thread (the service tests' recognizer)."""
    from ferkit.inference import EmotionRecognizer
    from ferkit.inference.onnx_classifier import default_model_path

    if not default_model_path().is_file():
        pytest.skip("no shipped model at src/ferkit/assets/ferkit_default.onnx")
    return EmotionRecognizer(threads=1)


@pytest.fixture(scope="module")
def rec(recognizer):
    """`recognizer` under the short name the inference, integration and hostile-input tests use."""
    return recognizer


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo, BGR: one per test module."""
    return astronaut_bgr()
