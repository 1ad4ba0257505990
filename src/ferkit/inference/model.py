"""A ferkit ONNX model under ONNX Runtime: classes and input size from its metadata, batched probabilities."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from ferkit.data.preprocess import preprocess
from ferkit.errors import FerkitError


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
        self.name = meta.get("name", self.path.stem)
        self.version = meta.get("version", "")
        self.temperature = float(meta.get("temperature", "1.0"))
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, crops: np.ndarray | list[np.ndarray], batch: int = 256, tta: bool | str = False) -> np.ndarray:
        """N x C calibrated probabilities. crops: N x H x W uint8 array or a list of images of any size.

        tta: False/"none", True/"flip" (mirror), "crops" (centre and four corners) or "flip+crops" (ten views);
        the views' probabilities are averaged before the temperature is applied.
        """
        s = self.input_size
        if isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[1:] == (s, s) and crops.dtype == np.uint8:
            x = crops
        else:
            x = np.stack([preprocess(c, s) for c in crops]) if len(crops) else np.zeros((0, s, s), np.uint8)
        out = []
        for i in range(0, len(x), batch):
            views = tta_views(x[i : i + batch], tta_mode(tta))
            out.append(np.mean([self.session.run(None, {self.input_name: v[:, None].astype(np.float32)})[0]
                                for v in views], axis=0))
        prob = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        return apply_temperature(prob, self.temperature)


TTA_MODES = ("none", "flip", "crops", "flip+crops")


def tta_mode(tta: bool | str | None) -> str:
    """A TTA option as one of TTA_MODES (True means "flip")."""
    if tta is True:
        return "flip"
    if tta is False or tta is None:
        return "none"
    if tta not in TTA_MODES:
        raise FerkitError(f"tta {tta!r}: unknown; choose one of {', '.join(TTA_MODES)}")
    return tta


def five_crops(images: np.ndarray, fraction: float = 0.875) -> list[np.ndarray]:
    """Centre and four corner crops of `fraction` of the side, each resized back to the full side."""
    s = images.shape[1]
    c = max(1, int(round(s * fraction)))
    offsets = [((s - c) // 2, (s - c) // 2), (0, 0), (0, s - c), (s - c, 0), (s - c, s - c)]
    out = []
    for y, x in offsets:
        crop = images[:, y : y + c, x : x + c]
        out.append(np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_LINEAR) for im in crop]))
    return out


def tta_views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """The augmented views of a batch of N x S x S faces for a TTA mode."""
    views = five_crops(images) if "crops" in tta else [images]
    if "flip" in tta:
        views = views + [np.ascontiguousarray(v[:, :, ::-1]) for v in views]
    return views


def apply_temperature(prob: np.ndarray, t: float) -> np.ndarray:
    """softmax(logits / t) from probabilities: log-probabilities differ from logits by a per-row constant."""
    if t == 1.0 or len(prob) == 0:
        return prob.astype(np.float32)
    z = np.log(np.clip(prob, 1e-12, 1.0)) / t
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)
