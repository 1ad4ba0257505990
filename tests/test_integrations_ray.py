"""Ray Data adapter (issue 35) on a real local Ray (2 CPUs): a few hundred FER2013 images, photos with several faces
and bad files give the rows that EmotionRecognizer.predict gives for the same inputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_integrations_core import Inputs, assert_row, make_inputs, reference

from ferkit.errors import FerkitError
from ferkit.inference import EmotionRecognizer, available_detectors, default_model_path

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from ferkit.integrations.ray import EmotionPredictor, predict_to_parquet  # noqa: E402 - after the skips

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_path().is_file() or not available_detectors(),
                       reason="no shipped model or face detector"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # Ray Data's own settings, on every dataset
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        # A small object store: the machine may be busy with other work, and these inputs are a few MB.
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    inputs = make_inputs(tmp_path_factory.mktemp("ray"), fer=300)
    (inputs.root / "notes.txt").write_text("no image")  # listed by the folder helper as an error row
    return inputs


def test_map_batches_on_two_actors_equals_predict(cluster: None, inputs: Inputs, rec: EmotionRecognizer) -> None:
    items = [{"bytes": d, "path": p, "id": i} for i, (d, p) in enumerate(zip(inputs.data, inputs.paths, strict=True))]
    ds = ray.data.from_items(items, override_num_blocks=8)
    out = ds.map_batches(EmotionPredictor, fn_constructor_kwargs={"keep": ["id"]},
                         compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=32)
    rows = sorted(out.take_all(), key=lambda r: r["id"])
    assert len(rows) == len(inputs.paths) > 300
    for row, data, path in zip(rows, inputs.data, inputs.paths, strict=True):
        assert_row(row, reference(rec, data, path), path)
    assert sum(1 for r in rows if r["error"]) == len(inputs.bad)
    photos = {r["source"]: len(r["faces"]) for r in rows if r["source"] in inputs.faces}
    assert all(photos[p] >= n for p, n in inputs.faces.items()), photos


def test_folder_to_parquet_equals_predict_on_the_folder(cluster: None, inputs: Inputs, rec: EmotionRecognizer,
                                                        tmp_path: Path) -> None:
    n = predict_to_parquet(inputs.root, tmp_path / "out", actors=2, batch_size=64)
    rows = pq.read_table(tmp_path / "out").to_pylist()
    expected = {p.source: p for p in rec.predict(str(inputs.root))}
    assert n == len(rows) == len(expected) == len(inputs.paths) + 1
    for row in rows:
        pred = expected[row["source"]]
        assert_row(row, pred.error if pred.error else pred, pred.source)
    assert next(r for r in rows if r["source"].endswith("notes.txt"))["error"].endswith("not an image file (.txt)")
    with pytest.raises(FerkitError, match="not empty"):  # Ray would add every row a second time
        predict_to_parquet(inputs.root, tmp_path / "out")


def test_read_images_arrays_are_rgb(cluster: None, inputs: Inputs, rec: EmotionRecognizer) -> None:
    # ray.data.read_images decodes with Pillow (RGB, or L for gray) and fails its task on a bad file: good ones only.
    photos = list(inputs.faces)
    ds = ray.data.read_images(photos, include_paths=True)
    out = ds.map_batches(EmotionPredictor, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=4)
    rows = {Path(r["source"]).name: r for r in out.take_all()}
    for p in photos:
        row = rows[Path(p).name]
        assert_row(row, rec.predict(p), row["source"])


def test_threads_follow_the_actor_cpus(cluster: None) -> None:
    @ray.remote
    def threads() -> tuple[int | None, int]:
        p = EmotionPredictor()
        return p.threads, p.rec.models[0].session.get_session_options().intra_op_num_threads

    assert ray.get(threads.options(num_cpus=2).remote()) == (2, 2)
    assert ray.get(threads.options(num_cpus=1).remote()) == (1, 1)
