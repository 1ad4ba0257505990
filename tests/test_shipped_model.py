"""The shipped default model: self-describing, and as accurate on PrivateTest as its model card says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ferkit.inference.model import OnnxClassifier, default_model_path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
CARD = ROOT / "docs" / "model_card.md"


def test_shipped_model_describes_itself() -> None:
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 25e6
    m = OnnxClassifier()
    assert m.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert m.input_size == 48 and m.name == "ferkit-default" and m.version
    assert 0.2 < m.temperature < 5
    p = m.predict_proba(np.zeros((2, 48, 48), np.uint8))
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert "test_accuracy" in json.loads(m.metadata["metrics"])


def card_figure(label: str) -> float:
    text = CARD.read_text()
    row = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+)%", text, re.M)
    assert row, f"model card has no row {label!r}"
    return float(row.group(1))


@pytest.mark.slow  # predicts FER2013's 3,589 PrivateTest faces twice
@pytest.mark.skipif(not (SHARED / "fer2013.zip").exists(), reason="needs ../shared/datasets/fer2013.zip")
def test_privatetest_accuracy_matches_model_card() -> None:
    from ferkit.data import load_dataset

    test = load_dataset(SHARED / "fer2013.zip")["test"]
    assert len(test) == 3589
    m = OnnxClassifier()
    acc = 100 * float((m.predict_proba(test.images).argmax(1) == test.labels).mean())
    assert abs(acc - card_figure("PrivateTest accuracy, no TTA")) <= 0.2
    # The TTA the model's metadata chose has its own row in the card (the no-TTA row when it chose none).
    tta = m.metadata.get("tta", "none")
    label = ("PrivateTest accuracy, no TTA" if tta == "none"
             else f"PrivateTest accuracy, TTA `{tta}` (chosen on PublicTest)")
    acc_tta = 100 * float((m.predict_proba(test.images, tta=tta).argmax(1) == test.labels).mean())
    assert abs(acc_tta - card_figure(label)) <= 0.2
