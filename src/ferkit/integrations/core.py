"""What the Ray and Spark adapters share: one row per input image, built with `EmotionRecognizer.predict`.

Row shape (the same in Ray Datasets, Spark DataFrames and the Parquet files either writes)::

    source  string        the path (or the name given with the bytes; null for unnamed bytes and arrays)
    width   int32         the image's size in pixels (null when it could not be read)
    height  int32
    error   string        null, or why this input could not be read (then faces is empty)
    faces   list<struct>  one per face found, best first; empty when there is none
        face           int32         index in the list (0 = the detector's most confident)
        box            list<int32>   [x, y, w, h] in the image's pixels
        score          float64       detector confidence (1.0 for an image taken whole as a crop)
        label          string        the most probable class
        confidence     float64       its probability
        probabilities  struct<float64, one field per class, in model order>

One row per input, never more or fewer: Spark's UDFs must return exactly one value per input row, and a list of
faces per image is what both engines store and explode well (Spark `posexplode_outer`, Ray `flat_map`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np

from ferkit.errors import FerkitError
from ferkit.images import find_images
from ferkit.inference import EmotionRecognizer
from ferkit.inference.sources import VIDEO_SUFFIXES, is_url

if TYPE_CHECKING:
    import pyarrow as pa


COLUMNS = ("source", "width", "height", "error", "faces")
FACE_FIELDS = ("face", "box", "score", "label", "confidence", "probabilities")
# EmotionRecognizer's keyword arguments that an adapter passes on (threads is the adapter's own business).
RECOGNIZER_OPTIONS = ("precision", "tta", "detector", "detect_size", "threshold", "margin", "max_faces", "adaptive")

_recognizers: dict[tuple, EmotionRecognizer] = {}


def recognizer_options(model: Any = None, **options: Any) -> dict[str, Any]:
    """The options, checked by name: a typo fails on the driver, not in every task of a job."""
    unknown = sorted(set(options) - set(RECOGNIZER_OPTIONS))
    if unknown:
        raise FerkitError(f"unknown option {', '.join(unknown)}; expected some of {', '.join(RECOGNIZER_OPTIONS)}")
    model = [str(m) for m in model] if isinstance(model, list | tuple) else None if model is None else str(model)
    return {"model": model, **options}


def cached_recognizer(options: Mapping[str, Any], threads: int | None) -> EmotionRecognizer:
    """One recognizer per worker process and settings: an ONNX Runtime session cannot be pickled, so each worker
    builds its own, once, and keeps it for the tasks that follow (Spark reuses its Python workers)."""

    key = (repr(sorted(options.items())), threads)
    if key not in _recognizers:
        opts = dict(options)
        _recognizers[key] = EmotionRecognizer(opts.pop("model"), threads=threads, **opts)
    return _recognizers[key]


def limit_threads(threads: int) -> None:
    """OpenCV's pool, like ONNX Runtime's, defaults to every core of the machine in every process: N workers on
    one machine would each start one."""
    import cv2

    cv2.setNumThreads(threads)


def predict_rows(rec: EmotionRecognizer, images: Sequence[Any], sources: Sequence[Any] | None = None, *,
                 detect: bool | None = None, rgb: bool = True) -> list[dict[str, Any]]:
    """A row (COLUMNS) per image: encoded bytes, a path (or file: URI) or an array. A bad input is a row with its
    error; nothing raises. Arrays are RGB(A) or gray, as Pillow and ray.data.read_images give them, unless
    rgb=False (OpenCV's BGR)."""
    if sources is not None and len(sources) != len(images):
        raise ValueError(f"{len(images)} images but {len(sources)} sources")
    rows = []
    for i, item in enumerate(images):
        source = sources[i] if sources is not None else None
        rows.append(predict_row(rec, item, None if _missing(source) else str(source), detect=detect, rgb=rgb))
    return rows


def predict_row(rec: EmotionRecognizer, item: Any, source: str | None = None, *, detect: bool | None = None,
                rgb: bool = True) -> dict[str, Any]:
    """One image's row; see predict_rows."""
    name = source
    try:
        if isinstance(item, str | Path):
            path = local_path(str(item))
            name = source or str(item)
            item = _checked_path(path, name)
        elif isinstance(item, bytearray | memoryview):
            item = bytes(item)
        elif isinstance(item, np.ndarray) and item.dtype != object:
            if item.ndim == 3 and item.shape[0] == 1 and item.shape[2] not in (1, 3, 4):
                item = item[0]  # Ray Data keeps a gray image among colour ones as 1 x H x W
            item = _bgr(item) if rgb else item
        elif _missing(item):
            raise FerkitError(f"{name or 'image'}: no image (null)")
        elif not isinstance(item, bytes):
            raise FerkitError(f"{name or 'image'}: a {type(item).__name__}; expected image bytes, a path or an array")
        pred = rec.predict(item, detect=detect, name=name)
    except Exception as err:  # noqa: BLE001 - one bad input is a row with its reason, never a failed task
        # Worded as a batch of EmotionRecognizer.predict words it (PredictionStream), first line only.
        why = str(err) if isinstance(err, FerkitError) else f"{name or 'image'}: internal error ({type(err).__name__}: {err})"
        return {"source": name, "width": None, "height": None, "error": (why.splitlines() or [why])[0], "faces": []}
    faces = [{"face": k, "box": [int(v) for v in f.box], "score": float(f.score), "label": f.label,
              "confidence": float(f.confidence), "probabilities": {c: float(p) for c, p in f.probabilities.items()}}
             for k, f in enumerate(pred.faces)]
    return {"source": name, "width": int(pred.width), "height": int(pred.height), "error": None, "faces": faces}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def local_path(text: str) -> str:
    """A file: URI (Spark's binaryFile `path` column) as a local path; anything else as it is."""
    if text.startswith("file:"):
        return unquote(urlparse(text).path)
    return text


def _checked_path(path: str, name: str) -> str:
    """predict() also takes folders, globs, videos and camera indexes; a column holds one image per row, so those
    are errors here rather than many results (or a camera opened by a worker)."""

    if is_url(path):
        return path
    if not os.path.lexists(path):
        raise FerkitError(f"{name}: no such file")
    if os.path.isdir(path):
        raise FerkitError(f"{name}: is a folder, not an image")
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        raise FerkitError(f"{name}: a video; give its frames, or use `ferkit predict` for videos")
    return path


def _bgr(image: np.ndarray) -> np.ndarray:
    import cv2

    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    return image


def arrow_schema(classes: Sequence[str]) -> pa.Schema:
    """The rows' Arrow schema for a model with these classes (what Ray and the Parquet files hold)."""
    import pyarrow as pa

    face = pa.struct([
        ("face", pa.int32()),
        ("box", pa.list_(pa.int32())),
        ("score", pa.float64()),
        ("label", pa.string()),
        ("confidence", pa.float64()),
        ("probabilities", pa.struct([(c, pa.float64()) for c in classes])),
    ])
    return pa.schema([("source", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                      ("error", pa.string()), ("faces", pa.list_(face))])


def to_arrow(rows: list[dict[str, Any]], classes: Sequence[str]) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=arrow_schema(classes))


def error_rows(skipped: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Rows for entries of a folder that are no images (ferkit.images.find_images' skipped list)."""
    return [{"source": s, "width": None, "height": None, "error": why, "faces": []} for s, why in skipped]


def list_images(source: str | Path | Sequence[str | Path]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image paths, [(path, reason)] of other entries) of a folder (recursive), a glob, one file or a list of paths,
    as `ferkit predict` lists them; a list is taken as given (a bad entry becomes an error row later)."""

    if isinstance(source, list | tuple):
        return [str(p) for p in source], []
    text = str(source)
    if Path(text).is_file():
        return [text], []
    files, skipped = find_images(text)
    if not files and not skipped:
        raise FerkitError(f"{text}: no images found")
    return [str(f) for f, _ in files], skipped
