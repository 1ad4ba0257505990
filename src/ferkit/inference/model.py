"""A ferkit ONNX model under ONNX Runtime: classes and input size from its metadata, batched probabilities."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ferkit.data.preprocess import preprocess
from ferkit.errors import FerkitError
from ferkit.views import apply_temperature, tta_mode, tta_views


def default_model_path() -> Path:
    """The model that ships inside the package."""
    return Path(str(resources.files("ferkit") / "assets" / "ferkit_default.onnx"))


class OnnxClassifier:
    """Classify face crops: `predict_proba(crops)` for N uint8 crops of any size (gray or colour)."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise FerkitError(f"{self.path}: no such model file")
        opts = ort.SessionOptions()
        n = threads or int(os.environ.get("FERKIT_THREADS", "0") or 0)
        if n:
            opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            raise FerkitError(f"{self.path}: not an ONNX model ({str(e).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta:
            raise FerkitError(f"{self.path}: ONNX model without ferkit metadata (classes, input_size)")
        self.metadata = dict(meta)
        self.classes: list[str] = json.loads(meta["classes"])
        self.input_size = int(meta.get("input_size", 48))
        self.crop = int(meta.get("crop", self.input_size))
        self.name = meta.get("name", self.path.stem)
        self.version = meta.get("version", "")
        self.temperature = float(meta.get("temperature", "1.0"))
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, crops: np.ndarray | list[np.ndarray], batch: int = 256, tta: bool | str = False) -> np.ndarray:
        """N x C calibrated probabilities. crops: N x H x W uint8 array or a list of images of any size.

        tta: False/"none", True/"flip" (mirror), "crops" (centre and four corners) or "flip+crops" / "ten_crop"
        (ten views); the views' probabilities are averaged before the temperature is applied. A model trained on
        crops sees the centre crop without TTA (ferkit.views).
        """
        s = self.input_size
        if isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[1:] == (s, s) and crops.dtype == np.uint8:
            x = crops
        else:
            x = np.stack([preprocess(c, s) for c in crops]) if len(crops) else np.zeros((0, s, s), np.uint8)
        out = []
        for i in range(0, len(x), batch):
            views = tta_views(x[i : i + batch], tta_mode(tta), self.crop)
            out.append(np.mean([self.run(v) for v in views], axis=0))
        prob = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        return apply_temperature(prob, self.temperature)

    def run(self, views: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities of N x crop x crop network-ready views (ferkit.views.tta_views)."""
        return self.session.run(None, {self.input_name: views[:, None].astype(np.float32)})[0]
