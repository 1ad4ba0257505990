"""The one contract every face classifier meets, and the one ensemble over it.

A classifier turns face crops into class probabilities. Its contract: `name`, `classes` (output order),
`input_size` (the side a face is preprocessed to), `crop` (the window the network sees, ferkit.views), `tta` (the
mode its card chose, which "auto" means), a temperature per TTA mode, and `probabilities(faces, tta)`. What meets it:
an ONNX file under ONNX Runtime (ferkit.inference.onnx_classifier.OnnxClassifier), PyTorch weights in evaluation
(ferkit.evaluation.predictors.TorchClassifier), an `Ensemble` of any of them, and the service's micro-batcher
(ferkit.service.engine). Only `run` differs between the models; views, averaging and temperature are done once here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ferkit.errors import FerkitError
from ferkit.metadata import ensemble_orders
from ferkit.views import apply_temperature, faces_at, temperature_for, tta_mode, tta_views

# Faces per network call: as fast as larger batches on a CPU, and it bounds the memory of a big batch.
RUN_BATCH = 256


class Classifier:
    """Face crops in, probabilities out; subclasses give `run` (one network call) and the fields."""

    name: str
    source: str  # where it was loaded from (a path), for messages and reports
    kind: str = ""  # the file format: "onnx", "safetensors"
    classes: list[str]
    input_size: int
    crop: int
    tta: str = "none"
    temperature: float = 1.0
    temperatures: Mapping[str, float] = MappingProxyType({})  # per TTA mode, overriding `temperature`
    run_dir: Path | None = None

    def run(self, views: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """Uncalibrated N x C probabilities of N x crop x crop network-ready views (ferkit.views.tta_views)."""
        raise NotImplementedError

    def mode(self, tta: bool | str | None) -> str:
        """A TTA option as the concrete mode this classifier runs: "auto" is the mode its card chose."""
        m = tta_mode(tta)
        return tta_mode(self.tta) if m == "auto" else m

    def temperature_for(self, tta: bool | str | None = None) -> float:
        return temperature_for(self.temperature, self.temperatures, self.mode(tta))

    @property
    def calibrated(self) -> bool:
        return self.temperature != 1.0 or any(t != 1.0 for t in self.temperatures.values())

    def probabilities(self, faces: Any, tta: bool | str | None = None,
                      batch: int = RUN_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated, uncalibrated) N x C probabilities of face crops (any form ferkit.images.crop_batch takes):
        each TTA view's probabilities averaged, then the temperature of that TTA applied."""
        mode = self.mode(tta)
        x = faces_at(faces, self.input_size)
        out = [np.mean([self.run(v) for v in tta_views(x[i : i + batch], mode, self.crop)], axis=0)
               for i in range(0, len(x), batch)]
        raw = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        return apply_temperature(raw, self.temperature_for(mode)), raw

    def predict_proba(self, crops: Any, batch: int = RUN_BATCH, tta: bool | str | None = None) -> np.ndarray:
        """N x C calibrated probabilities of face crops (an N x H x W array, a list of images, or one image)."""
        return self.probabilities(crops, tta, batch)[0]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "kind": self.kind, "classes": self.classes,
                "input_size": self.input_size, "crop": self.crop, "temperature": self.temperature}


class Ensemble(Classifier):
    """Several classifiers that know the same classes (in any order) as one: each member's probabilities, in the
    first member's class order and under its own temperature, averaged with `weights` (equal by default). "auto"
    is the first member's card's mode, for every member."""

    def __init__(self, members: Sequence[Classifier], weights: Sequence[float] | None = None):
        if not members:
            raise FerkitError("model: give at least one model")
        w = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(members),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise FerkitError(f"ensemble weights {list(w)}: need one non-negative weight per member, not all 0")
        self.members = list(members)
        self.weights = w / w.sum()
        self.orders = ensemble_orders([(m.source, list(m.classes)) for m in self.members])
        first = self.members[0]
        self.name = "+".join(m.name for m in self.members)
        self.source = ",".join(m.source for m in self.members)
        self.classes = list(first.classes)
        self.input_size, self.crop, self.tta = first.input_size, first.crop, first.tta
        self.run_dir = first.run_dir if len(self.members) == 1 else None

    def temperature_for(self, tta: bool | str | None = None) -> float:
        """The members' temperature when they share one, else NaN (each member applies its own)."""
        ts = {m.temperature_for(self.mode(tta)) for m in self.members}
        return ts.pop() if len(ts) == 1 else float("nan")

    @property
    def temperature(self) -> float:  # type: ignore[override]
        return self.temperature_for("none")

    @property
    def calibrated(self) -> bool:
        return any(m.calibrated for m in self.members)

    def probabilities(self, faces: Any, tta: bool | str | None = None,
                      batch: int = RUN_BATCH) -> tuple[np.ndarray, np.ndarray]:
        mode = self.mode(tta)  # "auto" is the first member's choice, for every member
        cal = raw = None
        for m, order, w in zip(self.members, self.orders, self.weights, strict=True):
            c, r = (w * p[:, order].astype(np.float64) for p in m.probabilities(faces, mode, batch))
            cal, raw = (c, r) if cal is None else (cal + c, raw + r)
        return cal.astype(np.float32), raw.astype(np.float32)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "classes": self.classes, "weights": [round(float(w), 6) for w in self.weights],
                "members": [m.info() for m in self.members]}


def ensemble(members: Sequence[Classifier], weights: Sequence[float] | None = None) -> Classifier:
    """One classifier for several: the member itself when there is one (no averaging to pay for)."""
    return members[0] if len(members) == 1 and weights is None else Ensemble(members, weights)
