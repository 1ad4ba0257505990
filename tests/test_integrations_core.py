"""Ray and Spark adapters (issue 35), the part that needs no cluster: one row per image built through
EmotionRecognizer.predict, bad inputs as rows, one schema for both engines. The inputs built here (FER2013 crops,
photos with several faces, bad files) are also the Ray and Spark tests' (test_integrations_ray/spark.py)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import SHARED
from helpers import astronaut_bgr

from ferkit.errors import FerkitError
from ferkit.inference import EmotionRecognizer, available_detectors, default_model_path
from ferkit.inference.results import Prediction
from ferkit.integrations import core

pytestmark = pytest.mark.skipif(not default_model_path().is_file() or not available_detectors(),
                                reason="no shipped model or face detector")
FER2013 = SHARED / "fer2013.zip"


@dataclass
class Inputs:
    """Files on disk and their bytes, in one order; `bad` names the inputs that cannot be read."""

    root: Path
    paths: list[str] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)
    faces: dict[str, int] = field(default_factory=dict)  # photos: how many faces the test expects at least

    def add(self, name: str, data: bytes, bad: bool = False, faces: int = 0) -> None:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.paths.append(str(p))
        self.data.append(data)
        if bad:
            self.bad.add(str(p))
        if faces:
            self.faces[str(p)] = faces


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def add_photos(inputs: Inputs) -> None:
    """Photos with 0 to 4 faces (the astronaut tiled and mirrored), and inputs that are no readable image."""
    a = astronaut_bgr()
    m = a[:, ::-1]
    inputs.add("photos/one.jpg", jpeg(a), faces=1)
    inputs.add("photos/four.jpg", jpeg(np.vstack([np.hstack([a, m]), np.hstack([m, a])])), faces=4)
    inputs.add("photos/three_gray.png", cv2.imencode(".png", cv2.cvtColor(np.hstack([a, m, a]), cv2.COLOR_BGR2GRAY))[1]
               .tobytes(), faces=3)
    inputs.add("photos/wall.png", cv2.imencode(".png", np.full((240, 320, 3), 180, np.uint8))[1].tobytes())
    inputs.add("bad/garbage.jpg", b"this is no image", bad=True)
    inputs.add("bad/empty.png", b"", bad=True)
    inputs.add("bad/truncated.jpg", jpeg(a)[:300], bad=True)


def make_inputs(root: Path, fer: int = 0) -> Inputs:
    """The photos and bad files of add_photos, after `fer` FER2013 test images (all classes) when the archive is
    there."""
    inputs = Inputs(root)
    if fer:
        if not FER2013.is_file():
            pytest.skip(f"{FER2013} is absent")
        with zipfile.ZipFile(FER2013) as z:
            names = sorted(n for n in z.namelist() if n.startswith("test/") and n.endswith(".jpg"))
            for n in names[:: max(1, len(names) // fer)][:fer]:
                inputs.add(f"fer/{n}", z.read(n))
    add_photos(inputs)
    return inputs


def assert_row(row: dict[str, Any], expected: Prediction | str, source: str | None) -> None:
    """A row equals what EmotionRecognizer.predict gave for the same input: its Prediction, or its error."""
    assert row["source"] == source
    if isinstance(expected, str):
        assert row["error"] == expected and row["faces"] == [] and row["width"] is None
        return
    assert row["error"] is None
    assert (row["width"], row["height"]) == (expected.width, expected.height)
    assert len(row["faces"]) == len(expected.faces)
    for k, (got, face) in enumerate(zip(row["faces"], expected.faces, strict=True)):
        assert got["face"] == k
        assert list(got["box"]) == list(face.box)
        assert got["label"] == face.label
        assert got["score"] == face.score and got["confidence"] == face.confidence
        assert dict(got["probabilities"]) == face.probabilities


def reference(rec: EmotionRecognizer, item: Any, name: str | None) -> Prediction | str:
    try:
        return rec.predict(item, name=name)
    except FerkitError as e:
        return str(e)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("integrations"))


def test_rows_equal_predict_for_bytes_paths_and_arrays(rec: EmotionRecognizer, inputs: Inputs) -> None:
    by_bytes = core.predict_rows(rec, inputs.data, inputs.paths)
    by_path = core.predict_rows(rec, inputs.paths)
    for row_b, row_p, data, path in zip(by_bytes, by_path, inputs.data, inputs.paths, strict=True):
        expected = reference(rec, data, path)
        assert isinstance(expected, str) == (path in inputs.bad), path
        assert_row(row_b, expected, path)
        assert_row(row_p, expected, path)  # a file's errors name it, as the bytes' did with their source
        if path in inputs.faces:
            assert len(row_b["faces"]) >= inputs.faces[path], path
    assert [len(r["faces"]) for r in by_bytes if r["source"].endswith("wall.png")] == [0]
    # Unnamed bytes: no source, and errors say "image", as predict() says them.
    row = core.predict_rows(rec, [b"nope"])[0]
    assert row["source"] is None and row["error"] == reference(rec, b"nope", None)


def test_arrays_are_rgb_unless_told(rec: EmotionRecognizer) -> None:
    bgr = astronaut_bgr()
    expected = rec.predict(bgr)
    assert_row(core.predict_rows(rec, [np.ascontiguousarray(bgr[:, :, ::-1])])[0], expected, None)
    assert_row(core.predict_rows(rec, [bgr], rgb=False)[0], expected, None)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert_row(core.predict_rows(rec, [gray])[0], rec.predict(gray), None)
    # Ray Data hands a gray image that shares a batch with colour ones over as 1 x H x W.
    assert_row(core.predict_rows(rec, [gray[None]])[0], rec.predict(gray), None)


def test_what_is_not_one_image_is_an_error_row_never_an_exception(rec: EmotionRecognizer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    (tmp_path / "0").mkdir()
    items = [None, float("nan"), 42, str(tmp_path), str(tmp_path / "clip.mp4"), str(tmp_path / "*.jpg"), "0",
             np.zeros((0, 0, 3), np.uint8), np.array(["x"], dtype=object)]
    rows = core.predict_rows(rec, items)
    assert all(r["error"] and r["faces"] == [] for r in rows), rows
    assert "folder" in rows[3]["error"] and "video" in rows[4]["error"] and "no such file" in rows[5]["error"]
    assert "folder" in rows[6]["error"]  # a folder named 0 here; elsewhere "0" is no file, never camera 0
    assert "no such file" in core.predict_rows(rec, ["7"])[0]["error"]
    # Spark's binaryFile paths are file: URIs.
    one = astronaut_bgr()
    cv2.imwrite(str(tmp_path / "a b.jpg"), one)
    uri = (tmp_path / "a b.jpg").as_uri()
    row = core.predict_rows(rec, [uri])[0]
    assert row["source"] == uri and row["error"] is None and len(row["faces"]) == 1


def test_options_are_checked_where_the_job_is_built() -> None:
    with pytest.raises(FerkitError, match="unknown option detect_sise"):
        core.recognizer_options(None, detect_sise=640)
    opts = core.recognizer_options(Path("x.onnx"), tta="flip")
    assert opts == {"model": "x.onnx", "tta": "flip"}
    assert core.cached_recognizer(core.recognizer_options(None), 1) is core.cached_recognizer(
        core.recognizer_options(None), 1)


def test_list_images_as_ferkit_predict_lists_them(inputs: Inputs, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(inputs.data[0])
    (tmp_path / "photos" / "notes.txt").write_text("no image")
    files, skipped = core.list_images(tmp_path / "photos")
    assert files == [str(tmp_path / "photos" / "a.jpg")]
    assert [s for s, _ in skipped] == [str(tmp_path / "photos" / "notes.txt")]
    assert core.list_images(["x.jpg", Path("y.png")]) == (["x.jpg", "y.png"], [])
    with pytest.raises(FerkitError):
        core.list_images(tmp_path / "nothing")


def test_arrow_rows_and_the_ray_callable_without_a_cluster(rec: EmotionRecognizer, inputs: Inputs) -> None:
    pytest.importorskip("pyarrow")
    from ferkit.integrations.ray import EmotionPredictor

    pred = EmotionPredictor(threads=1, keep=["label"])
    batch = {"bytes": np.array(inputs.data, dtype=object), "path": np.array(inputs.paths, dtype=object),
             "label": np.arange(len(inputs.paths))}
    table = pred(batch)
    assert table.schema.names == [*core.COLUMNS, "label"]
    assert table.schema.remove(len(core.COLUMNS)) == core.arrow_schema(rec.classes)
    for row, data, path in zip(table.to_pylist(), inputs.data, inputs.paths, strict=True):
        assert_row(row, reference(rec, data, path), path)
    assert table.column("label").to_pylist() == list(range(len(inputs.paths)))
    # A table of paths: they are the source too; a batch without an image column says what it has.
    plain = EmotionPredictor(threads=1)
    paths_only = plain({"path": np.array(inputs.paths[:2], dtype=object)}).to_pylist()
    assert [r["source"] for r in paths_only] == inputs.paths[:2]
    with pytest.raises(FerkitError, match="no image column"):
        plain({"id": np.arange(2)})
    with pytest.raises(FerkitError, match="keep: no column label"):
        pred({"path": np.array(inputs.paths[:2], dtype=object)})


def test_spark_struct_is_the_arrow_schema() -> None:
    pytest.importorskip("pyspark")
    pa = pytest.importorskip("pyarrow")
    from pyspark.sql.pandas.types import to_arrow_schema

    from ferkit.integrations.spark import result_type

    classes = ["angry", "happy", "neutral"]
    spark = to_arrow_schema(result_type(classes))
    ours = core.arrow_schema(classes)

    def plain(t: Any) -> Any:  # list item names differ ("element" / "item"); the types must not
        if pa.types.is_list(t):
            return ("list", plain(t.value_type))
        if pa.types.is_struct(t):
            return tuple((f.name, plain(f.type)) for f in t)
        return str(t)

    assert [(f.name, plain(f.type)) for f in spark] == [(f.name, plain(f.type)) for f in ours]
