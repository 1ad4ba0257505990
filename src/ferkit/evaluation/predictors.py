"""Turn a MODEL argument into something that gives class probabilities: the shipped default, a run folder,
an ONNX file (ONNX Runtime, no torch), a safetensors file (torch, imported only then), or an ensemble of them;
with optional test-time augmentation (horizontal flip, five crops).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ferkit.data.classes import ensemble_orders
from ferkit.errors import FerkitError
from ferkit.utils import ProgressFn
from ferkit.views import apply_temperature, temperature_for, tta_mode, tta_views


class Predictor:
    """One model: `raw_proba(views)` gives uncalibrated N x C probabilities for N x crop x crop network-ready views
    of faces preprocessed to input_size (ferkit.views)."""

    name: str
    source: str
    kind: str
    classes: list[str]
    input_size: int
    crop: int
    temperature: float = 1.0
    temperatures: Mapping[str, float] = MappingProxyType({})  # per TTA mode, overriding `temperature`
    run_dir: Path | None = None

    def temperature_for(self, tta: str) -> float:
        return temperature_for(self.temperature, self.temperatures, tta)

    def raw_proba(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "kind": self.kind, "classes": self.classes,
                "input_size": self.input_size, "crop": self.crop, "temperature": self.temperature}


class OnnxPredictor(Predictor):
    kind = "onnx"

    def __init__(self, path: Path | None, name: str | None = None):
        from ferkit.inference.model import OnnxClassifier

        self.clf = OnnxClassifier(path)
        self.source = str(self.clf.path)
        self.name = name or self.clf.name
        self.classes = list(self.clf.classes)
        self.input_size = self.clf.input_size
        self.crop = self.clf.crop
        self.temperature, self.temperatures = self.clf.temperature, self.clf.temperatures
        # Evaluation works on uncalibrated outputs and applies T itself, after averaging augmented views.
        self.clf.temperature, self.clf.temperatures = 1.0, {}

    def raw_proba(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.clf.run(images[i : i + 256]) for i in range(0, len(images), 256)]
                              or [np.zeros((0, len(self.classes)), np.float32)])


class TorchPredictor(Predictor):
    kind = "safetensors"

    def __init__(self, path: Path, name: str | None = None):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise FerkitError(f"{path}: evaluating a safetensors file needs PyTorch; export it to ONNX "
                              "or install ferkit's training extras") from None
        from ferkit.models.export import load_weights

        self.model, meta = load_weights(path)
        self.source = str(path)
        self.name = name or path.stem
        self.classes = list(meta["classes"])
        self.input_size = int(meta["input_size"])
        self.crop = int(meta["crop"])

    def raw_proba(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), 256):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + 256, None], dtype=np.float32))
                out.append(torch.softmax(self.model(x).float(), 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def load_predictor(spec: str) -> Predictor:
    """Any model spec the one resolver (ferkit.inference.resolve) reads; safetensors weights run under PyTorch."""
    from ferkit.inference.resolve import resolve_model

    ref = resolve_model(spec)
    pred: Predictor = (OnnxPredictor(ref.path, name=ref.name) if ref.kind == "onnx"
                       else TorchPredictor(ref.path, name=ref.name))
    pred.run_dir = ref.run_dir
    return pred


def parse_model_specs(specs: list[str] | str) -> list[str]:
    """MODEL given several times and/or comma separated."""
    items = [specs] if isinstance(specs, str) else specs
    out = [s.strip() for item in items for s in item.split(",") if s.strip()]
    if not out:
        raise FerkitError("MODEL: give at least one model")
    return out


class Ensemble:
    """Several models (same class set, any order): averaged probabilities, each model with its own temperature."""

    def __init__(self, members: list[Predictor]):
        if not members:
            raise FerkitError("MODEL: give at least one model")
        self.members = members
        self.classes = list(members[0].classes)
        self.orders = ensemble_orders([(m.source, m.classes) for m in members])
        self.input_size = members[0].input_size

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.members)

    @property
    def temperature(self) -> float:
        return self.temperature_for("none")

    def temperature_for(self, tta: str) -> float:
        ts = {m.temperature_for(tta) for m in self.members}
        return ts.pop() if len(ts) == 1 else float("nan")

    @property
    def calibrated(self) -> bool:
        return any(m.temperature != 1.0 or any(t != 1.0 for t in m.temperatures.values()) for m in self.members)

    @property
    def run_dir(self) -> Path | None:
        return self.members[0].run_dir if len(self.members) == 1 else None

    def predict(self, images: np.ndarray, tta: str = "none", batch: int = 1024, progress: ProgressFn | None = None,
                what: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
        """(calibrated, uncalibrated) N x C probabilities, averaged over models and augmented views."""

        n = len(images)
        cal = np.zeros((n, len(self.classes)), np.float64)
        raw = np.zeros_like(cal)
        for i in range(0, n, batch):
            chunk = images[i : i + batch]
            for m, order in zip(self.members, self.orders, strict=True):
                views = tta_views(_resize(chunk, m.input_size), tta_mode(tta), m.crop)
                p = np.mean([m.raw_proba(v) for v in views], axis=0)[:, order]
                raw[i : i + len(chunk)] += p
                cal[i : i + len(chunk)] += apply_temperature(p, m.temperature_for(tta))
            if progress:
                progress(what, i + len(chunk), n)
        k = len(self.members)
        return (cal / k).astype(np.float32), (raw / k).astype(np.float32)

    def proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        return self.predict(images, tta)[0]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "classes": self.classes, "members": [m.info() for m in self.members]}


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:] == (size, size):
        return images
    from ferkit.data.preprocess import preprocess

    return np.stack([preprocess(im, size) for im in images]) if len(images) else np.zeros((0, size, size), np.uint8)


def load_ensemble(specs: list[str] | str) -> Ensemble:
    return Ensemble([load_predictor(s) for s in parse_model_specs(specs)])
