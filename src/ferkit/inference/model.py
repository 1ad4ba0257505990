"""A ferkit ONNX model under ONNX Runtime: classes and input size from its metadata, batched probabilities."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ferkit.data.preprocess import preprocess
from ferkit.errors import FerkitError
from ferkit.inference.resolve import ModelRef, builtin_file, resolve_model
from ferkit.views import TTA_MODES, apply_temperature, temperature_for, tta_mode, tta_views

MAX_INPUT_SIZE = 1024  # a face is preprocessed to input_size x input_size; larger is a broken or hostile file


def _classes(path: Path, raw: str) -> list[str]:
    try:
        classes = json.loads(raw)
    except (ValueError, RecursionError):
        raise FerkitError(f"{path}: metadata 'classes' is not JSON ({raw[:40]!r})") from None
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise FerkitError(f"{path}: metadata 'classes' must be a JSON list of at least two different names "
                          f"(got {raw[:60]!r})")
    return classes


def _int(path: Path, key: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise FerkitError(f"{path}: metadata {key!r} is {raw[:40]!r}, not an integer") from None
    if not lo <= value <= hi:
        raise FerkitError(f"{path}: metadata {key!r} is {value}; it must be {lo}..{hi}")
    return value


def _positive(path: Path, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise FerkitError(f"{path}: metadata {key!r} is {raw[:40]!r}, not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise FerkitError(f"{path}: metadata {key!r} is {raw[:40]}; it must be a number > 0")
    return value


def _temperatures(path: Path, raw: str | None) -> dict[str, float]:
    """Metadata 'temperatures': JSON {TTA mode: T}. Views averaged over a TTA are less confident than one view, so a
    temperature fitted on single views leaves them under-confident; these override 'temperature' for their mode."""
    if raw is None:
        return {}
    try:
        items = json.loads(raw)
        if not isinstance(items, dict):
            raise ValueError
    except ValueError:
        raise FerkitError(f"{path}: metadata 'temperatures' {raw[:40]!r}: not a JSON object of TTA mode -> T") from None
    try:
        modes = {tta_mode(k): v for k, v in items.items()}
    except FerkitError as e:
        raise FerkitError(f"{path}: metadata 'temperatures': {e}") from None
    return {m: _positive(path, f"temperatures[{m}]", str(v)) for m, v in modes.items()}


def default_model_path() -> Path:
    """The model that ships inside the package."""
    return builtin_file("default")


class OnnxClassifier:
    """Classify face crops: `predict_proba(crops)` for N uint8 crops of any size (gray or colour).

    path: any model spec (ferkit.inference.resolve: a built-in name, a .onnx file, a run folder; None = "default").
    """

    def __init__(self, path: str | Path | ModelRef | None = None, threads: int | None = None):
        import onnxruntime as ort

        ref = path if isinstance(path, ModelRef) else resolve_model(path)
        self.ref = ref
        self.path = ref.onnx()
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
        self.classes: list[str] = _classes(self.path, meta["classes"])
        self.input_size = _int(self.path, "input_size", meta.get("input_size", "48"), 1, MAX_INPUT_SIZE)
        self.crop = _int(self.path, "crop", meta.get("crop", str(self.input_size)), 1, self.input_size)
        self.name = meta.get("name", ref.name)
        self.version = meta.get("version", "")
        self.temperature = _positive(self.path, "temperature", meta.get("temperature", "1.0"))
        self.temperatures = _temperatures(self.path, meta.get("temperatures"))
        if "tta" in meta:
            try:
                tta_mode(meta["tta"])
            except FerkitError:
                raise FerkitError(f"{self.path}: metadata 'tta' {meta['tta'][:40]!r}: not one of "
                                  f"{', '.join(TTA_MODES)}") from None
        self.input_name = self._check_graph()

    def _check_graph(self) -> str:
        """The input's name, once the graph is known to take N x 1 x crop x crop floats and give N x classes."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        c, n = self.crop, len(self.classes)
        if len(inputs) != 1 or not outputs:
            raise FerkitError(f"{self.path}: the graph has {len(inputs)} inputs and {len(outputs)} outputs; "
                              "ferkit models take one input and give probabilities")
        shape, out = inputs[0].shape, outputs[0].shape
        if inputs[0].type != "tensor(float)" or len(shape) != 4 or any(
                isinstance(d, int) and d != want for d, want in zip(shape[1:], (1, c, c), strict=True)):
            raise FerkitError(f"{self.path}: graph input {inputs[0].type} {shape} does not take N x 1 x {c} x {c} "
                              f"floats (metadata 'crop' {c})")
        if len(out) != 2 or (isinstance(out[1], int) and out[1] != n):
            raise FerkitError(f"{self.path}: graph output {out} is not N x {n} for the {n} classes in its metadata")
        try:  # symbolic sizes are only known by running it once
            probe = self.session.run(None, {inputs[0].name: np.zeros((1, 1, c, c), np.float32)})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise FerkitError(f"{self.path}: does not run on a 1 x 1 x {c} x {c} input "
                              f"({str(e).splitlines()[0][:160]})") from None
        if np.shape(probe) != (1, n):
            raise FerkitError(f"{self.path}: gives {np.shape(probe)} for one face; the metadata's {n} classes "
                              f"need (1, {n})")
        return inputs[0].name

    def predict_proba(self, crops: np.ndarray | list[np.ndarray], batch: int = 256, tta: bool | str = False) -> np.ndarray:
        """N x C calibrated probabilities. crops: N x H x W uint8 array, a list of images of any size, or one image.

        tta: False/"none", True/"flip" (mirror), "crops" (centre and four corners) or "flip+crops" / "ten_crop"
        (ten views); the views' probabilities are averaged before the temperature (that TTA's, if fitted) is applied. A model trained on
        crops sees the centre crop without TTA (ferkit.views).
        """
        from ferkit.images import crop_batch

        crops = crop_batch(crops)  # one crop, not H crops of W pixels
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
        return apply_temperature(prob, self.temperature_for(tta))

    def temperature_for(self, tta: bool | str = False) -> float:
        return temperature_for(self.temperature, self.temperatures, tta)

    def run(self, views: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities of N x crop x crop network-ready views (ferkit.views.tta_views)."""
        return self.session.run(None, {self.input_name: views[:, None].astype(np.float32)})[0]
