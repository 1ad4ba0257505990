"""Spark: UDFs that map a column of image bytes or paths to a struct of ferkit.integrations.core's row.

    from pyspark.sql import functions as F
    from ferkit.integrations.spark import predict_udf

    emotions = predict_udf()                          # pyspark.ml.functions.predict_batch_udf (Spark >= 3.4)
    df = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load("/data/photos")
    out = df.select("path", emotions("content").alias("pred")).select("path", "pred.*")
    faces = out.select("path", F.posexplode_outer("faces"))   # one row per face, or one for an image without

`pandas_predict_udf()` is the same as a pandas UDF (Spark >= 3.0). Either takes one column (bytes, or paths the
executors can read) or, built with with_source=True, two: the image and a name for `source`. Each Python worker
builds its recognizer once (an ONNX Runtime session cannot be pickled) with `spark.task.cpus` threads, and keeps it
for the tasks that follow. A bad input is a row with `error`, never a failed task.
Needs the `spark` extra: pip install 'ferkit[spark]'; the executors need ferkit installed too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferkit.integrations.core import COLUMNS, cached_recognizer, limit_threads, predict_rows, recognizer_options

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql.types import StructType


def result_type(classes: Sequence[str]) -> StructType:
    """The UDFs' struct for a model with these classes: core.arrow_schema in Spark's types."""
    from pyspark.sql import types as T

    face = T.StructType([
        T.StructField("face", T.IntegerType()),
        T.StructField("box", T.ArrayType(T.IntegerType())),
        T.StructField("score", T.DoubleType()),
        T.StructField("label", T.StringType()),
        T.StructField("confidence", T.DoubleType()),
        T.StructField("probabilities", T.StructType([T.StructField(c, T.DoubleType()) for c in classes])),
    ])
    return T.StructType([
        T.StructField("source", T.StringType()),
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("error", T.StringType()),
        T.StructField("faces", T.ArrayType(face)),
    ])


def task_cpus() -> int | None:
    """spark.task.cpus of the running task (Spark >= 3.3); None outside a task."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None or not hasattr(ctx, "cpus"):
        return None
    return max(1, int(ctx.cpus()))


def _recognizer(options: Mapping[str, Any]):
    threads = task_cpus()
    if threads:
        limit_threads(threads)
    return cached_recognizer(options, threads)


def _classes(options: Mapping[str, Any]) -> list[str]:
    # Loading the model on the driver too: the struct needs its classes, and a wrong option fails here, once.
    return list(cached_recognizer(options, 1).classes)


def predict_udf(model: str | Path | Sequence[str | Path] | None = None, *, batch_size: int = 64,
                with_source: bool = False, detect: bool | None = None, **options: Any):
    """A `pyspark.ml.functions.predict_batch_udf` (Spark >= 3.4): udf(images) or, with with_source, udf(images,
    names) -> struct (result_type). Keywords as EmotionRecognizer's (precision, tta, detector, ...); detect as its
    predict's."""
    from pyspark.ml.functions import predict_batch_udf

    opts = recognizer_options(model, **options)
    rtype = result_type(_classes(opts))

    def make_predict_fn():
        rec = _recognizer(opts)

        def columns(images: np.ndarray, sources: np.ndarray | None) -> dict[str, Any]:
            rows = predict_rows(rec, list(images), None if sources is None else list(sources), detect=detect)
            cols: dict[str, Any] = {c: _objects([r[c] for r in rows]) for c in COLUMNS if c != "faces"}
            cols["faces"] = _Ragged([r["faces"] for r in rows])
            return cols

        if with_source:
            def predict(images: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
                return columns(images, sources)
        else:
            def predict(images: np.ndarray) -> dict[str, Any]:
                return columns(images, None)
        return predict

    return predict_batch_udf(make_predict_fn, return_type=rtype, batch_size=batch_size)


class _Ragged(list):
    """A list of faces per row handed to predict_batch_udf, which takes array fields only as 2-D arrays (it reads
    .shape and then iterates the rows): faces per image differ in number, so the shape reports 2-D and the rows
    keep their own lengths."""

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), -1)


def _objects(values: list[Any]) -> pd.Series:
    import pandas as pd

    # Object dtype, not pandas 3's inferred string or float columns: PySpark 4.x converts an all-null float
    # column to a string field wrongly (a ChunkedArray where it wants an Array).
    return pd.Series(values, dtype=object)


def pandas_predict_udf(model: str | Path | Sequence[str | Path] | None = None, *, with_source: bool = False,
                       detect: bool | None = None, **options: Any):
    """The same as predict_udf as an iterator pandas UDF (Spark >= 3.0): udf(images) or udf(images, names)."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    opts = recognizer_options(model, **options)
    rtype = result_type(_classes(opts))

    def frame(images: pd.Series, sources: pd.Series | None, rec) -> pd.DataFrame:
        rows = predict_rows(rec, list(images), None if sources is None else list(sources), detect=detect)
        return pd.DataFrame({c: _objects([r[c] for r in rows]) for c in COLUMNS})

    # The type hints tell Spark the UDF's kind (iterator of series -> iterator of frames); they must be real
    # objects at decoration, so these are written out rather than left to `from __future__ import annotations`.
    if with_source:
        def predict_pairs(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
            rec = _recognizer(opts)
            for images, sources in batches:
                yield frame(images, sources, rec)

        predict_pairs.__annotations__ = {"batches": Iterator[tuple[pd.Series, pd.Series]],
                                         "return": Iterator[pd.DataFrame]}
        return pandas_udf(predict_pairs, returnType=rtype)

    def predict(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        rec = _recognizer(opts)
        for images in batches:
            yield frame(images, None, rec)

    predict.__annotations__ = {"batches": Iterator[pd.Series], "return": Iterator[pd.DataFrame]}
    return pandas_udf(predict, returnType=rtype)
