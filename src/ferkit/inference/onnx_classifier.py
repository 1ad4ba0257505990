"""A ferkit ONNX model under ONNX Runtime: classes and input size from its metadata, batched probabilities."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ferkit.errors import FerkitError
from ferkit.inference import onnx_check
from ferkit.inference._first_run import describe
from ferkit.inference.classifier import Classifier
from ferkit.inference.resolve import ModelRef, builtin_file, resolve_model
from ferkit.metadata import MAX_INPUT_SIZE, parse_classes, parse_int, parse_json, parse_temperature, parse_text
from ferkit.utils import is_package_asset
from ferkit.views import RUN_MODES, tta_mode

# Each row of probabilities sums to one within this (float32 softmax, float16 weights and int8 layers stay far
# inside it); more is a graph that does not end in a softmax, or a hostile one.
SUM_TOLERANCE = 1e-3
# Files checked and probed in this process (path, device, inode, size, mtime): a model loaded again (an ensemble
# of one file twice, every test of a module) is not run in a child process again.
_PROBED: set[tuple] = set()


def _temperatures(path: Path, raw: str | None) -> dict[str, float]:
    """Metadata 'temperatures': JSON {TTA mode: T}. Views averaged over a TTA are less confident than one view, so a
    temperature fitted on single views leaves them under-confident; these override 'temperature' for their mode."""
    if raw is None:
        return {}
    items = parse_json(path, "temperatures", raw)
    if not isinstance(items, dict):
        raise FerkitError(f"{path}: metadata 'temperatures' {raw[:40]!r}: not a JSON object of TTA mode -> T")
    try:
        modes = {tta_mode(k): v for k, v in items.items()}
        if "auto" in modes:
            raise FerkitError("tta 'auto': a temperature belongs to a concrete mode")
    except FerkitError as e:
        raise FerkitError(f"{path}: metadata 'temperatures': {e}") from None
    return {m: parse_temperature(path, f"temperatures[{m}]", v) for m, v in modes.items()}


def default_model_path() -> Path:
    """The model that ships inside the package."""
    return builtin_file("default")


class OnnxClassifier(Classifier):
    """A ferkit ONNX model as a Classifier (ferkit.inference.classifier): `predict_proba(crops, tta=...)` for N crops
    of any size (gray or colour).

    path: any model spec (ferkit.inference.resolve: a built-in name, a .onnx file, a run folder; None = "default").
    A file that is not a built-in model is checked before it runs (ferkit.inference.onnx_check): its metadata typed
    and ranged, its graph's operators, and its first run bounded in memory and time in a child process.
    """

    kind = "onnx"

    def __init__(self, path: str | Path | ModelRef | None = None, threads: int | None = None):
        import onnxruntime as ort

        ref = path if isinstance(path, ModelRef) else resolve_model(path)
        self.ref = ref
        self.path = ref.onnx()
        self.source = str(self.path)
        self.run_dir = ref.run_dir
        if not self.path.is_file():
            raise FerkitError(f"{self.path}: no such model file")
        facts = onnx_check.read_model(self.path)
        meta = facts.metadata
        if "classes" not in meta:
            raise FerkitError(f"{self.path}: ONNX model without ferkit metadata (classes, input_size)")
        self.metadata = dict(meta)
        self.classes: list[str] = parse_classes(self.path, meta["classes"])
        self.input_size = parse_int(self.path, "input_size", meta.get("input_size", "48"), 1, MAX_INPUT_SIZE)
        self.crop = parse_int(self.path, "crop", meta.get("crop", str(self.input_size)), 1, self.input_size)
        self.name = parse_text(self.path, "name", meta["name"]) if "name" in meta else ref.name
        self.version = parse_text(self.path, "version", meta.get("version", ""))
        self.temperature = parse_temperature(self.path, "temperature", meta.get("temperature", "1.0"))
        self.temperatures = _temperatures(self.path, meta.get("temperatures"))
        if "tta" in meta:
            try:
                self.tta = tta_mode(meta["tta"])
            except FerkitError:
                self.tta = "auto"
            if self.tta == "auto":
                raise FerkitError(f"{self.path}: metadata 'tta' {meta['tta'][:40]!r}: not one of "
                                  f"{', '.join(RUN_MODES)}")
        ours = ref.builtin or is_package_asset(self.path)
        report = None
        if not ours:
            st = self.path.stat()
            key = (str(self.path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in _PROBED:
                onnx_check.check_operators(self.path, facts)
                report = onnx_check.first_run(self.path, self.crop)
                self._check_report(report)  # before this process loads it
                _PROBED.add(key)
        opts = ort.SessionOptions()
        n = threads or int(os.environ.get("FERKIT_THREADS", "0") or 0)
        if n:
            opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            raise FerkitError(f"{self.path}: not an ONNX model ({str(e).splitlines()[0][:200]})") from None
        if report is None:
            report = describe(self.session, self.crop)
            self._check_report(report)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _check_report(self, report: dict) -> None:
        """The graph takes N x 1 x crop x crop floats and gives N x classes probabilities, as its first run on a
        blank face (ferkit.inference._first_run) shows."""
        c, n = self.crop, len(self.classes)
        if "load_error" in report:
            raise FerkitError(f"{self.path}: not an ONNX model ({report['load_error'][:200]})")
        inputs, outputs = report["inputs"], report["outputs"]
        if len(inputs) != 1 or not outputs:
            raise FerkitError(f"{self.path}: the graph has {len(inputs)} inputs and {len(outputs)} outputs; "
                              "ferkit models take one input and give probabilities")
        (_, in_type, shape), (_, out_type, out) = inputs[0], outputs[0]
        if in_type != "tensor(float)" or len(shape) != 4 or any(
                isinstance(d, int) and d != want for d, want in zip(shape[1:], (1, c, c), strict=True)):
            raise FerkitError(f"{self.path}: graph input {in_type} {shape} does not take N x 1 x {c} x {c} "
                              f"floats (metadata 'crop' {c})")
        if out_type != "tensor(float)" or len(out) != 2 or (isinstance(out[1], int) and out[1] != n):
            raise FerkitError(f"{self.path}: graph output {out_type} {out} is not N x {n} for the {n} classes in "
                              "its metadata")
        if "error" in report:
            raise FerkitError(f"{self.path}: does not run on a 1 x 1 x {c} x {c} input ({report['error'][:160]})")
        values = report.get("values")
        if tuple(report["shape"]) != (1, n) or values is None or len(values) != n:
            raise FerkitError(f"{self.path}: gives {tuple(report['shape'])} for one face; the metadata's {n} "
                              f"classes need (1, {n})")
        self._check_probabilities(np.asarray(values, np.float64).reshape(1, n), "a blank face")

    def _check_probabilities(self, prob: np.ndarray, what: str) -> None:
        """Bad outputs are the model's fault, named here, not a NaN that surfaces later in a metric or a JSON."""
        sums = prob.sum(1)
        if not np.isfinite(prob).all():
            raise FerkitError(f"{self.path}: gives NaN or infinite probabilities for {what}; a broken model")
        if (prob < 0).any() or (np.abs(sums - 1) > SUM_TOLERANCE).any():
            worst = float(sums[np.argmax(np.abs(sums - 1))]) if len(sums) else 1.0
            raise FerkitError(f"{self.path}: its outputs for {what} are not probabilities (a row sums to {worst:.4g} "
                              "or has a negative entry); a ferkit model ends in a softmax")

    def run(self, views: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities of N x crop x crop network-ready views (ferkit.views.tta_views)."""
        out = self.session.run([self.output_name], {self.input_name: views[:, None].astype(np.float32)})[0]
        self._check_probabilities(out, f"{len(views)} face(s)")
        return out
