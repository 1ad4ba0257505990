"""Turn a MODEL argument into a Classifier for evaluation (ferkit.inference.classifier): ONNX files run under ONNX
Runtime as in inference, safetensors weights under PyTorch (imported only then), several models as one Ensemble;
and `predict`, which gives calibrated and uncalibrated probabilities of a whole split with progress.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferkit.errors import FerkitError
from ferkit.inference.classifier import Classifier, Ensemble
from ferkit.inference.onnx_classifier import OnnxClassifier
from ferkit.inference.resolve import ModelRef, resolve_models
from ferkit.utils import ProgressFn


class TorchClassifier(Classifier):
    """A ferkit safetensors file under PyTorch (uncalibrated: temperature 1)."""

    kind = "safetensors"

    def __init__(self, path: Path):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise FerkitError(f"{path}: evaluating a safetensors file needs PyTorch; export it to ONNX "
                              "or install ferkit's training extras") from None
        from ferkit.models.export import load_weights

        self.model, meta = load_weights(path)
        self.source = str(path)
        self.name = path.stem
        self.classes = list(meta["classes"])
        self.input_size = int(meta["input_size"])
        self.crop = int(meta["crop"])

    def run(self, views: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(views[:, None], dtype=np.float32))
            return torch.softmax(self.model(x).float(), 1).numpy()


def load_classifier(ref: ModelRef) -> Classifier:
    """The model a resolved spec names: ONNX under ONNX Runtime, safetensors weights under PyTorch."""

    clf = OnnxClassifier(ref) if ref.kind == "onnx" else TorchClassifier(ref.path)
    clf.name = ref.name  # reports name a model as the user did (a run folder by its folder), not by its metadata
    clf.run_dir = ref.run_dir  # PyTorch weights in a run folder: its reports go beside them
    return clf


def load_ensemble(specs: list[str] | str) -> Ensemble:
    """MODEL given once or several times, comma separated or not (ferkit.inference.resolve.resolve_models)."""
    return Ensemble([load_classifier(ref) for ref in resolve_models(specs)])


def predict(clf: Classifier, images: np.ndarray, tta: str = "none", batch: int = 1024,
            progress: ProgressFn | None = None, what: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
    """(calibrated, uncalibrated) N x C probabilities of N faces, a chunk at a time so that progress shows."""
    n = len(images)
    out = []
    for i in range(0, n, batch):
        out.append(clf.probabilities(images[i : i + batch], tta))
        if progress:
            progress(what, min(i + batch, n), n)
    if not out:
        empty = np.zeros((0, len(clf.classes)), np.float32)
        return empty, empty
    return np.concatenate([c for c, _ in out]), np.concatenate([r for _, r in out])
