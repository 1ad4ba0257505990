"""Spark adapter (issue 35) on a real local Spark (local[2]): the predict_batch_udf and the pandas UDF give, for a few
hundred FER2013 images, photos with several faces and bad files, the rows that EmotionRecognizer.predict gives."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from test_integrations_core import Inputs, assert_row, make_inputs, reference

from ferkit.inference import EmotionRecognizer, available_detectors, default_model_path

pytest.importorskip("pyspark")
pytest.importorskip("pyarrow")

from pyspark.sql import SparkSession  # noqa: E402 - after the skips
from pyspark.sql import functions as F  # noqa: E402

from ferkit.integrations.spark import pandas_predict_udf, predict_udf, result_type  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_path().is_file() or not available_detectors(),
                       reason="no shipped model or face detector"),
    pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"), reason="Spark needs Java"),
    # PySpark 4.x warns about pandas 3 on every UDF; the conversions these UDFs use are checked below instead.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    # The Python workers must be this interpreter (with ferkit installed), not the first python3 on PATH.
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("ferkit-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("spark"), fer=300)


def rows_of(df: Any) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in df.collect()]


@pytest.mark.parametrize("make", [predict_udf, pandas_predict_udf], ids=["predict_batch_udf", "pandas_udf"])
def test_bytes_with_names_equal_predict(spark: SparkSession, inputs: Inputs, rec: EmotionRecognizer, make) -> None:
    df = spark.createDataFrame(list(zip(inputs.paths, inputs.data, strict=True)), "path string, content binary")
    udf = make(with_source=True)
    out = df.repartition(2).select(udf("content", "path").alias("p")).select("p.*")
    assert out.schema == result_type(rec.classes)
    rows = sorted(rows_of(out), key=lambda r: inputs.paths.index(r["source"]))
    assert [r["source"] for r in rows] == inputs.paths
    for row, data, path in zip(rows, inputs.data, inputs.paths, strict=True):
        assert_row(row, reference(rec, data, path), path)
    assert sum(1 for r in rows if r["error"]) == len(inputs.bad)
    photos = {r["source"]: len(r["faces"]) for r in rows if r["source"] in inputs.faces}
    assert all(photos[p] >= n for p, n in inputs.faces.items()), photos


def test_binary_files_and_paths_and_one_row_per_face(spark: SparkSession, inputs: Inputs,
                                                     rec: EmotionRecognizer) -> None:
    photos = str(inputs.root / "photos")
    udf = predict_udf(batch_size=8)
    # binaryFile: bytes and a file: URI per file; the UDF on the bytes alone has no source, the row keeps its path.
    files = spark.read.format("binaryFile").load(photos)
    by_bytes = {r["path"]: r for r in rows_of(files.select("path", udf("content").alias("p")).select("path", "p.*"))}
    # The same files by path (their URIs): read by the executors through ferkit's decoder.
    by_path = {r["source"]: r for r in rows_of(files.select(udf("path").alias("p")).select("p.*"))}
    assert set(by_bytes) == set(by_path) and len(by_path) == 4
    for uri, row in by_bytes.items():
        expected = rec.predict(uri.removeprefix("file:"))
        assert_row({**row, "source": None}, expected, None)
        assert_row(by_path[uri], expected, uri)
    # One row per face, and one (face null) for the wall without any: posexplode_outer.
    faces = files.select("path", udf("content").alias("p")).select("path", F.posexplode_outer("p.faces"))
    counts: dict[str, int] = {}
    for r in faces.collect():
        counts[r["path"]] = counts.get(r["path"], 0) + (r["col"] is not None)
    assert counts == {uri: len(row["faces"]) for uri, row in by_bytes.items()}
    assert 0 in counts.values() and max(counts.values()) >= 4


def test_nulls_and_missing_files_are_rows(spark: SparkSession, inputs: Inputs) -> None:
    df = spark.createDataFrame([(inputs.paths[0],), ("/no/such.jpg",), (None,)], "path string")
    for make in (predict_udf, pandas_predict_udf):
        rows = rows_of(df.select(make()("path").alias("p")).select("p.*"))
        assert rows[0]["error"] is None and rows[0]["faces"]
        assert rows[1]["error"] == "/no/such.jpg: no such file" and rows[2]["error"] == "image: no image (null)"
