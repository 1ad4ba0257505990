"""The blocking part of a request, run in a pool worker: decode, detect, classify, shape the JSON answer."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ferkit import images
from ferkit.errors import FerkitError
from ferkit.service.batcher import BatchedClassifier, MicroBatcher
from ferkit.service.errors import ApiError, from_ferkit_error
from ferkit.service.limits import FORMATS
from ferkit.service.pool import PixelBudget
from ferkit.service.telemetry import Metrics
from ferkit.views import RUN_MODES


class Engine:
    """Wraps an EmotionRecognizer (or anything with its predict/classes/model_names) for the service."""

    def __init__(self, recognizer: Any, metrics: Metrics, max_pixels: int = images.MAX_PIXELS,
                 pixel_budget: int | None = None, detection: dict | None = None, batch_window: float = 0.0,
                 batch_faces: int = 0, batch_capacity: int = 1):
        """batch_window (seconds) and batch_faces: micro-batching of the classification (ferkit.service.batcher);
        off when either is 0 (or batch_faces 1). batch_capacity: requests that may wait for a batch (the workers)."""
        self.rec = recognizer
        self.detection = dict(detection or {})  # the server's detection settings; a request may override them
        self.max_pixels = max_pixels
        self.pixels = PixelBudget(pixel_budget or 2 * max_pixels)
        self.metrics = metrics
        self.classes: list[str] = list(recognizer.classes)
        self.input_size = int(recognizer.input_size)
        models = list(getattr(recognizer, "models", []))
        names = list(getattr(recognizer, "model_names", [m.name for m in models]))
        versions = [getattr(m, "version", "") for m in models]
        self.model_ref = {"name": "+".join(names), "version": "+".join(v for v in versions if v)}
        self.models = models
        try:
            self.detector: str | None = recognizer.detector_name
        except FerkitError:
            self.detector = None  # crops only (detect=false) on this machine
        # OpenCV's CascadeClassifier keeps per-call scratch state in the object: one Haar detection at a time.
        self._lock = threading.Lock() if self.detector == "haar" else contextlib.nullcontext()
        self.batcher: MicroBatcher | None = None
        self.uploads = recognizer  # what classifies an upload: the recognizer, or its twin over the batcher
        if batch_window > 0 and batch_faces > 1 and hasattr(recognizer, "with_classifier"):
            clf = recognizer.classifier
            # One function per TTA mode: requests with different modes are never mixed in one network call.
            self.batcher = MicroBatcher(
                {mode: functools.partial(clf.predict_proba, batch=batch_faces, tta=mode) for mode in RUN_MODES},
                window=batch_window, max_faces=batch_faces, capacity=batch_capacity, observe=self._observe_batch)
            self.uploads = recognizer.with_classifier(BatchedClassifier(clf, self.batcher, self._detector_released))

    @contextlib.contextmanager
    def _detector_released(self) -> Iterator[None]:
        """The Haar lock (held around predict) is let go while a request waits for its batch: the other workers
        must be able to detect meanwhile, or there would never be more than one request to gather."""
        if isinstance(self._lock, contextlib.nullcontext):
            yield
            return
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()

    def _observe_batch(self, requests: int, faces: int, waits: list[float]) -> None:
        self.metrics.batch_images.observe(requests)
        self.metrics.batch_faces.observe(faces)
        for w in waits:
            self.metrics.batch_wait.observe(w)

    def close(self) -> None:
        """After the pool has drained: the batcher classifies what is left and stops."""
        if self.batcher is not None:
            self.batcher.close()

    # -- per image ----------------------------------------------------------------------------------------------
    def predict_bytes(self, data: bytes, name: str, detect: bool | None, tta: str, top_k: int | None,
                      detection: dict | None = None) -> dict:
        start = time.perf_counter()
        try:
            with self.batcher.producing() if self.batcher is not None else contextlib.nullcontext():
                pred = self._decode_and_predict(data, name, detect, tta, {**self.detection, **(detection or {})})
        except FerkitError as e:
            self.metrics.images.labels("bad").inc()
            raise from_ferkit_error(e) from None
        except ApiError:
            self.metrics.images.labels("bad").inc()
            raise
        return self._answer(pred, top_k, start)

    def video(self, window: int, detect: bool | None, tta: str, detection: dict | None = None) -> StreamSession:
        """One WebSocket stream's session: its frames go through the library's own stream (tracking, smoothing)."""
        try:
            return StreamSession(self.rec, window, detect, {**self.detection, **(detection or {}), "tta": tta})
        except FerkitError as e:
            raise ApiError(422, "invalid_parameter", str(e)) from None

    def predict_frame(self, data: bytes, session: StreamSession, top_k: int | None) -> dict:
        """One frame of a stream through its session, under the same decode limits as an upload."""
        start = time.perf_counter()
        try:
            info = images.probe(data, "frame", formats=FORMATS, max_pixels=self.max_pixels)
            with self.pixels.hold(info.pixels):
                decoded = images.load(data, "frame", formats=FORMATS, max_pixels=self.max_pixels)
                if session.detect is not False and self.detector is None:
                    raise ApiError(501, "no_detector", "no face detector is installed on this server; pass "
                                   "detect=false for face crops")
                with self._lock:
                    pred = session.process(decoded.image)
            pred = pred.scaled_to(decoded.width, decoded.height)
        except FerkitError as e:
            raise from_ferkit_error(e) from None
        return self._answer(pred, top_k, start)

    def _decode_and_predict(self, data: bytes, name: str | None, detect: bool | None, tta: str,
                            detection: dict) -> Any:
        """Decoding waits for room in the pixel budget (the header's size, what decoding costs) and holds it until
        the prediction is done."""
        where = name or "frame"
        info = images.probe(data, where, formats=FORMATS, max_pixels=self.max_pixels)
        with self.pixels.hold(info.pixels):
            decoded = images.load(data, where, formats=FORMATS, max_pixels=self.max_pixels)
            return self._predict(decoded, name, detect, tta, detection)

    def _predict(self, decoded: images.Decoded, name: str | None, detect: bool | None, tta: str,
                 detection: dict) -> Any:
        """Boxes in the pixels of the full image, also when a very large one was decoded reduced."""
        image = decoded.image
        h, w = image.shape[:2]
        wants_detection = detect if detect is not None else (h, w) != (self.input_size, self.input_size)
        if wants_detection and self.detector is None:
            raise ApiError(
                501, "no_detector", "no face detector is installed on this server; pass detect=false for face crops"
            )
        with self._lock:
            pred = self.uploads.predict(image, detect=detect, name=name, tta=tta, **detection)
        return pred.scaled_to(decoded.width, decoded.height)

    def _answer(self, pred: Any, top_k: int | None, start: float) -> dict:
        d = pred.to_dict()
        if top_k is not None:
            for face in d["faces"]:
                best = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])[:top_k]
                face["probabilities"] = dict(best)
        seconds = time.perf_counter() - start
        self.metrics.inference.observe(seconds)
        self.metrics.faces.observe(len(d["faces"]))
        self.metrics.images.labels("ok").inc()
        d["model"] = self.model_ref
        d["time_ms"] = round(seconds * 1000, 2)
        return d

    def warm_up(self) -> None:
        """First calls allocate ONNX Runtime buffers; pay that before /readyz says yes."""
        s = self.input_size
        self.rec.predict(np.zeros((s, s), np.uint8), detect=False)
        if self.detector is not None:
            self.rec.predict(np.zeros((2 * s, 2 * s, 3), np.uint8), detect=True)

    # -- model card ---------------------------------------------------------------------------------------------
    def describe(self) -> list[dict]:
        out = []
        for m in self.models or [self.rec]:
            meta = dict(getattr(m, "metadata", {}) or {})
            info: dict[str, Any] = {
                "name": getattr(m, "name", self.model_ref["name"]),
                "version": getattr(m, "version", ""),
                "classes": list(getattr(m, "classes", self.classes)),
                "input_size": int(getattr(m, "input_size", self.input_size)),
            }
            for key in ("arch", "temperature"):
                if key in meta:
                    info[key] = _maybe_number(meta[key])
            metrics = _json_or_none(meta.get("metrics"))
            if isinstance(metrics, dict):
                info["metrics"] = metrics
            out.append(info)
        return out


def _json_or_none(raw: str | None) -> Any:
    import json

    if not raw or len(raw) > 1 << 16:  # a model card's metrics are a few kB; a hostile file's are not parsed
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _maybe_number(raw: str) -> Any:
    try:
        return float(raw)
    except ValueError:
        return raw


class StreamSession:
    """The frames of one WebSocket, handed one at a time to `EmotionRecognizer.stream`, the generator `ferkit predict`
    consumes for a video: the same tracking and smoothing, frame by frame as the client sends them."""

    def __init__(self, rec: Any, window: int, detect: bool | None, detection: dict):
        self._args = (rec, window, detect, detection)
        self.detect = detect
        self._start()

    def _start(self) -> None:
        rec, window, detect, detection = self._args
        self._next: np.ndarray | None = None
        self._results = iter(rec.stream(self._frames(), detect=detect, smooth=window, keep_images=False,
                                        **detection))

    def _frames(self) -> Any:
        while self._next is not None:
            frame, self._next = self._next, None
            yield frame

    def process(self, frame: np.ndarray) -> Any:
        self._next = frame
        try:
            return next(self._results)
        except BaseException:
            self._start()  # a generator that raised is finished: the next frame starts a fresh one (new tracks)
            raise
