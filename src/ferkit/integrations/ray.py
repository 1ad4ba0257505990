"""Ray Data: `EmotionPredictor` for `Dataset.map_batches`, and `predict_to_parquet` for a folder or list of paths.

    import ray
    from ferkit.integrations.ray import EmotionPredictor, predict_to_parquet

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)   # columns bytes, path
    out = ds.map_batches(EmotionPredictor, compute=ray.data.ActorPoolStrategy(size=4), num_cpus=2, batch_size=64)
    out.write_parquet("s3://bucket/emotions/")   # keep CPUs free for the reads: see docs/distributed.md

    predict_to_parquet("photos/", "emotions/", actors=4, cpus_per_actor=2)   # the same from a local folder

Each actor builds its recognizer once, in `__init__`, with as many ONNX Runtime (and OpenCV) threads as the CPUs
Ray gave it (`num_cpus`): N actors each running a thread per core of the machine would be slower than one. The
rows are ferkit.integrations.core's: one per image, its faces in a list, a bad input a row with `error`.
Needs the `ray` extra: pip install 'ferkit[ray]'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.errors import FerkitError
from ferkit.integrations.core import (
    cached_recognizer,
    error_rows,
    limit_threads,
    list_images,
    predict_rows,
    recognizer_options,
    to_arrow,
)

# Tried in this order when no column is named: read_binary_files, read_images, a table of paths.
IMAGE_COLUMNS = ("bytes", "image", "path")


def actor_cpus() -> int | None:
    """The CPUs Ray reserved for the calling actor or task (at least 1); None outside Ray."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except AssertionError:  # Ray's answer on the driver, which holds no reservation of its own
        return None
    return max(1, math.floor(cpus))


class EmotionPredictor:
    """A callable class for `ray.data.Dataset.map_batches`: a batch of images in, a pyarrow Table of rows out.

    column: the batch's image column (bytes, paths or arrays); by default the first of "bytes" (read_binary_files),
    "image" (read_images) and "path" found. source_column: where each row's `source` comes from ("path" when the
    batch has it and it is not the image column). keep: other columns to carry into the output (ids, labels).
    threads: ONNX Runtime threads, by default the actor's CPUs. rgb: arrays are RGB (read_images, Pillow); False for
    BGR. detect: as EmotionRecognizer.predict's. Other keywords go to EmotionRecognizer (precision, tta, detector,
    detect_size, threshold, margin, max_faces, adaptive).
    """

    def __init__(self, model: str | Path | Sequence[str | Path] | None = None, *, column: str | None = None,
                 source_column: str | None = "path", keep: Sequence[str] = (), threads: int | None = None,
                 rgb: bool = True, detect: bool | None = None, **options: Any):
        cpus = actor_cpus()
        threads = threads or cpus
        if cpus is not None and threads:
            limit_threads(threads)  # an actor's process is its own; a caller's process (tests, a notebook) is not
        self.rec = cached_recognizer(recognizer_options(model, **options), threads)
        self.threads = threads
        self.column, self.source_column, self.keep = column, source_column, tuple(keep)
        self.rgb, self.detect = rgb, detect

    def __call__(self, batch: Any) -> Any:
        names = _names(batch)
        column = self.column or next((c for c in IMAGE_COLUMNS if c in names), None)
        if column is None or column not in names:
            raise FerkitError(f"no image column {column or ' or '.join(IMAGE_COLUMNS)} in the batch (it has "
                              f"{', '.join(names)}); name it with column=")
        missing = [c for c in self.keep if c not in names]
        if missing:
            raise FerkitError(f"keep: no column {', '.join(missing)} in the batch (it has {', '.join(names)})")
        images = _values(batch, column)
        src = self.source_column
        sources = _values(batch, src) if src and src in names else images if column == "path" else None
        rows = predict_rows(self.rec, images, sources, detect=self.detect, rgb=self.rgb)
        table = to_arrow(rows, self.rec.classes)
        for name in self.keep:
            table = table.append_column(name, _arrow_column(_values(batch, name)))
        return table


def _names(batch: Any) -> list[str]:
    if hasattr(batch, "column_names"):  # pyarrow.Table
        return list(batch.column_names)
    return [str(c) for c in (batch.columns if hasattr(batch, "columns") else batch.keys())]


def _values(batch: Any, name: str) -> list[Any]:
    col = batch[name]
    if hasattr(col, "to_pylist"):
        return col.to_pylist()
    return list(col.to_numpy() if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray) else col)


def _arrow_column(values: list[Any]) -> Any:
    import pyarrow as pa

    return pa.array([v.item() if isinstance(v, np.generic) else v for v in values])


def predict_to_parquet(source: str | Path | Sequence[str | Path], out: str | Path, *,
                       model: str | Path | Sequence[str | Path] | None = None, actors: int = 1,
                       cpus_per_actor: float = 1, batch_size: int = 64, detect: bool | None = None,
                       **options: Any) -> int:
    """Predict a folder (recursive), a glob, a file or a list of paths into Parquet files under `out`; returns the
    number of rows. The files are listed here, as `ferkit predict` lists them (entries that are no images become
    rows with their reason); the actors read them, so they must see the same paths (a shared file system). `out`
    must be new or empty: Ray adds files to a folder, so a second run would add every row again. Starts a local
    Ray when none is running (ray.init() first to join a cluster)."""
    import ray

    recognizer_options(model, **options)  # a wrong option fails here, not in every actor
    if "://" not in str(out) and Path(out).is_dir() and any(Path(out).iterdir()):
        raise FerkitError(f"{out}: not empty; give a new folder for the Parquet files")
    files, skipped = list_images(source)
    ds = None
    if files:
        # Four blocks or more per actor, so the work spreads out; at most ~2,000 rows each, so a block an actor
        # lost costs little to redo and each Parquet file (one per block) stays a reasonable size.
        blocks = min(len(files), max(4 * actors, math.ceil(len(files) / 2000)))
        ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=blocks).map_batches(
            EmotionPredictor, fn_constructor_kwargs={"model": model, "column": "path", "detect": detect, **options},
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, batch_size=batch_size)
    if skipped:
        classes = cached_recognizer(recognizer_options(model, **options), 1).classes
        extra = ray.data.from_arrow(to_arrow(error_rows(skipped), classes))
        ds = extra if ds is None else ds.union(extra)
    if ds is None:
        raise FerkitError(f"{source}: nothing to predict")
    ds.write_parquet(str(out))
    return len(files) + len(skipped)
