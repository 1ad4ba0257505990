"""Video files and cameras: read frames, recognise with tracking and smoothing, write annotated video and timelines."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ferkit.errors import FerkitError
from ferkit.images import MAX_PIXELS, ImageTooLarge
from ferkit.inference.detect import Detection
from ferkit.inference.draw import class_colour
from ferkit.inference.results import Face, Prediction
from ferkit.inference.sources import (
    VIDEO_SUFFIXES,  # noqa: F401 - re-exported: where callers found it
    camera_index,
)
from ferkit.inference.tracking import FaceTracker
from ferkit.utils import atomic_write, atomic_write_text


class FaceSteps(Protocol):
    """What a frame needs of an EmotionRecognizer: its public pipeline steps."""

    detector_name: str

    def detect(self, image: np.ndarray, **detection: Any) -> list[Detection]: ...

    def faces(self, image: np.ndarray, detections: list[Detection] | None, *, tta: bool | str | None = None,
              keep_crops: bool = False) -> list[Face]: ...


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """OpenCV's and FFmpeg's C++ logging of a failed open goes to fd 2; our one-line error says it better."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        sys.stderr.flush()
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


class FrameSource:
    """Frames of a video file or a camera (an integer index), every `stride`-th one."""

    def __init__(self, source: str | int, stride: int = 1):
        self.source = source
        self.is_camera = isinstance(source, int) or (str(source).isascii() and str(source).isdigit())
        self.stride = max(1, stride)
        if not self.is_camera and not Path(str(source)).is_file():
            raise FerkitError(f"{source}: no such video file")
        with _quiet_stderr():
            if self.is_camera:
                self.cap = cv2.VideoCapture(camera_index(source))
            else:
                # FFmpeg first: the catch-all backend also tries to read a broken video as an image sequence.
                self.cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
                if not self.cap.isOpened():
                    self.cap = cv2.VideoCapture(str(source))
            # The same pixel limit as for images, from the container's header, before a frame is decoded.
            w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            if w * h > MAX_PIXELS:
                self.cap.release()
                raise ImageTooLarge(f"{source}: frames are {w}x{h} pixels, over the limit of {MAX_PIXELS:,}")
            ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not self.cap.isOpened():
            what = "camera" if self.is_camera else "video"
            raise FerkitError(f"{source}: cannot open {what}" + (" (no such camera?)" if self.is_camera else ""))
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else 30.0
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if n > 0 and not self.is_camera else None
        if not ok or first is None:
            self.cap.release()
            raise FerkitError(f"{source}: no frames could be read (corrupt video or camera not available)")
        self._first = first

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        index, frame = 0, self._first
        try:
            while frame is not None:
                if index % self.stride == 0:
                    yield index, index / self.fps, frame
                ok, frame = self.cap.read()
                if not ok:
                    break
                index += 1
        finally:
            self.cap.release()

    def __len__(self) -> int:
        return 0 if self.frame_count is None else (self.frame_count + self.stride - 1) // self.stride

    def release(self) -> None:
        self.cap.release()


class IterFrames:
    """FrameSource's interface over any iterator of frames (arrays, or (index, time, frame) tuples): the frames of a
    caller's own capture loop, or of the service's WebSocket stream."""

    def __init__(self, frames: Iterator, fps: float = 30.0):
        self.frames, self.fps, self.stride, self.is_camera = frames, fps, 1, True

    def __iter__(self) -> Iterator[tuple[int, float | None, np.ndarray]]:
        for i, item in enumerate(self.frames):
            yield item if isinstance(item, tuple) else (i, None, item)

    def __len__(self) -> int:
        return 0

    def release(self) -> None:
        pass


@dataclass
class VideoPipeline:
    """Per frame: detect (every `detect_every`-th processed frame, reusing boxes in between), classify, track and
    smooth. The one video loop body: `EmotionRecognizer.stream` and the service's /v1/stream both run frames
    through it. detect=False takes each whole frame as one face crop."""

    recognizer: FaceSteps
    tracker: FaceTracker = field(default_factory=FaceTracker)
    detect_every: int = 1
    detect: bool | None = None
    keep_crops: bool = False
    tta: bool | str | None = None  # None: the recognizer's own
    detection: dict = field(default_factory=dict)  # EmotionRecognizer.detect's keywords
    _count: int = 0
    _last: list[Detection] = field(default_factory=list)

    def process(self, frame: np.ndarray, index: int | None = None, time: float | None = None) -> Prediction:
        rec = self.recognizer
        index = self._count if index is None else index
        if self.detect is not False and self._count % max(1, self.detect_every) == 0:
            self._last = rec.detect(frame, **self.detection)
        faces = rec.faces(frame, None if self.detect is False else self._last, tta=self.tta,
                          keep_crops=self.keep_crops)
        self._count += 1
        self.tracker.update(faces)
        h, w = frame.shape[:2]
        return Prediction(faces, w, h, detector=None if self.detect is False else rec.detector_name, frame=index,
                          time=time, image=frame)


class Timeline:
    """Per-track rows of (time, frame, track, smoothed probabilities): a CSV and a PNG plot per track."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.rows: list[tuple[float, int, int, list[float]]] = []

    def add(self, pred: Prediction) -> None:
        for f in pred.faces:
            if f.track_id is not None:
                self.rows.append((pred.time or 0.0, pred.frame or 0, f.track_id, list(f.probabilities.values())))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["time", "frame", "track_id", *self.classes])
        for t, fr, tr, p in self.rows:
            w.writerow([f"{t:.3f}", fr, tr, *(f"{v:.4f}" for v in p)])
        return buf.getvalue()

    def write(self, folder: Path, stem: str) -> list[Path]:
        """timeline CSV, plus one PNG per track when matplotlib is installed. Returns the files written."""
        folder.mkdir(parents=True, exist_ok=True)
        csv_path = folder / f"{stem}_timeline.csv"
        atomic_write_text(csv_path, self.to_csv())
        out = [csv_path]
        if not self.rows:
            return out
        try:
            # A Figure with its own Agg canvas: pyplot (and matplotlib.use) would touch the caller's backend.
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            import logging

            logging.getLogger("ferkit").warning(
                "timeline plot skipped: matplotlib is not installed (pip install matplotlib); the CSV has the data"
            )
            return out

        tracks = sorted({r[2] for r in self.rows})
        for tr in tracks:
            rows = [r for r in self.rows if r[2] == tr]
            t = np.array([r[0] for r in rows])
            p = np.array([r[3] for r in rows])
            fig = Figure(figsize=(8, 3.2), dpi=100)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            for k, name in enumerate(self.classes):
                b, g, r_ = class_colour(name)
                ax.plot(t, p[:, k], label=name, color=(r_ / 255, g / 255, b / 255), lw=1.6)
            ax.set_ylim(0, 1)
            ax.set_xlabel("time (s)")
            ax.set_ylabel("probability (smoothed)")
            ax.set_title(f"{stem}: track {tr}")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
            fig.tight_layout()
            png = folder / f"{stem}_track{tr}.png"
            atomic_write(png, lambda p_, fig=fig: fig.savefig(p_, format="png"))
            out.append(png)
        return out


# Browser-playable codecs first (H.264 in MP4, then VP8 and VP9 in WebM), then MPEG-4 Part 2, which every OpenCV build
# with FFmpeg writes but browsers do not play. VP8 before VP9: both play wherever WebM does, and libvpx's VP9 encoder
# is several times slower at its default settings (`python benchmarks/video_codecs.py` prints ms per frame).
VIDEO_CODECS = (("avc1", ".mp4"), ("vp80", ".webm"), ("vp09", ".webm"), ("mp4v", ".mp4"))


class VideoSink:
    """An annotated video, written to a temporary file and renamed into place when closed, in the first codec of
    `codecs` this OpenCV build can write (checked by opening the writer); `path` has the suffix it chose."""

    def __init__(self, folder: str | Path, stem: str, fps: float, size: tuple[int, int],
                 codecs: tuple[tuple[str, str], ...] = VIDEO_CODECS):
        import tempfile

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.writer = None
        for fourcc, suffix in codecs:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=suffix)
            os.close(fd)
            with _quiet_stderr():  # FFmpeg explains on stderr why a tag does not fit a container
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if writer.isOpened():
                self.writer, self.tmp, self.codec = writer, tmp, fourcc
                self.path = folder / f"{stem}{suffix}"
                break
            writer.release()
            Path(tmp).unlink(missing_ok=True)
        if self.writer is None:
            raise FerkitError(f"{folder / stem}: cannot write video (none of the codecs "
                              f"{', '.join(c for c, _ in codecs)} is available in this OpenCV)")

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)

    def close(self, keep: bool = True) -> None:
        self.writer.release()
        if keep:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; a video is shared like any output
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)
