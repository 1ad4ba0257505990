"""Micro-batching of the service's classification step (ferkit.service.batcher): the batcher on its own, and the
service with it on against the service with it off."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from helpers import astronaut_bgr

from ferkit.errors import FerkitError
from ferkit.service.batcher import MicroBatcher

# -- the batcher alone ---------------------------------------------------------------------------------------------


def rows(crops) -> np.ndarray:
    """A fake classifier: each crop's row is its mean and its size, so a row in the wrong place shows."""
    return np.array([[float(np.mean(c)), float(np.size(c))] for c in crops], np.float32).reshape(-1, 2)


class Recorder:
    def __init__(self, fail_on: float | None = None):
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, crops) -> np.ndarray:
        with self.lock:
            self.calls.append(len(crops))
        if self.fail_on is not None and any(float(np.mean(c)) == self.fail_on for c in crops):
            raise RuntimeError("bad crop")
        return rows(crops)


def crops_of(value: float, n: int = 1) -> list[np.ndarray]:
    return [np.full((4 + i, 4), value, np.float32) for i in range(n)]


def concurrently(batcher: MicroBatcher, jobs: list[tuple], timeout: float = 20) -> list:
    """Each job (key, crops) from its own producer thread; all are producers before any hands in its crops."""
    ready = threading.Barrier(len(jobs))
    out: list = [None] * len(jobs)

    def one(i: int) -> None:
        key, crops = jobs[i]
        with batcher.producing():
            ready.wait(timeout)
            try:
                out[i] = batcher.classify(key, crops)
            except Exception as e:  # noqa: BLE001 - the test looks at it
                out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a request never got its answer"
    return out


def test_concurrent_requests_go_in_one_call_and_get_their_own_rows():
    fn = Recorder()
    seen: list[tuple] = []
    # A window far longer than the test's timeout: the batch runs because every producer is waiting, not because
    # the window ran out.
    batcher = MicroBatcher({"k": fn}, window=60, max_faces=32, capacity=8, observe=lambda *a: seen.append(a))
    jobs = [("k", crops_of(v, n)) for v, n in ((1, 1), (2, 3), (3, 0), (4, 2))]
    out = concurrently(batcher, jobs)
    for (_, crops), got in zip(jobs, out, strict=True):
        np.testing.assert_array_equal(got, rows(crops))
    assert sorted(fn.calls) == [0, 6]  # the request without faces is answered at once in its own thread
    assert seen[0][:2] == (3, 6) and len(seen[0][2]) == 3
    batcher.close()


def test_a_lone_request_does_not_wait_for_the_window():
    fn = Recorder()
    batcher = MicroBatcher({"k": fn}, window=60, max_faces=32, capacity=8)
    out = concurrently(batcher, [("k", crops_of(5, 2))], timeout=10)
    np.testing.assert_array_equal(out[0], rows(crops_of(5, 2)))
    batcher.close()


def test_the_window_bounds_the_wait_for_a_slow_producer():
    fn = Recorder()
    batcher = MicroBatcher({"k": fn}, window=0.05, max_faces=32, capacity=8)
    release = threading.Event()

    def slow_producer() -> None:
        with batcher.producing():
            release.wait(20)

    slow = threading.Thread(target=slow_producer)
    slow.start()
    try:
        out = concurrently(batcher, [("k", crops_of(1))], timeout=10)  # another producer is busy: the window ends it
        np.testing.assert_array_equal(out[0], rows(crops_of(1)))
    finally:
        release.set()
        slow.join(10)
    batcher.close()


def test_keys_are_never_mixed_and_batches_hold_at_most_max_faces():
    plain, tta = Recorder(), Recorder()
    batcher = MicroBatcher({False: plain, True: tta}, window=60, max_faces=4, capacity=8)
    jobs = [(False, crops_of(1, 2)), (True, crops_of(2, 2)), (False, crops_of(3, 2)), (False, crops_of(4, 2)),
            (True, crops_of(5, 9))]  # more faces than max_faces: classified alone
    out = concurrently(batcher, jobs)
    for (_, crops), got in zip(jobs, out, strict=True):
        np.testing.assert_array_equal(got, rows(crops))
    assert sum(plain.calls) == 6 and max(plain.calls) <= 4
    assert sorted(tta.calls) == [2, 9]
    batcher.close()


def test_an_error_fails_only_its_own_request():
    fn = Recorder(fail_on=7)
    batcher = MicroBatcher({"k": fn}, window=60, max_faces=32, capacity=8)
    jobs = [("k", crops_of(1)), ("k", crops_of(7)), ("k", crops_of(2, 2))]
    out = concurrently(batcher, jobs)
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "bad crop"
    np.testing.assert_array_equal(out[0], rows(crops_of(1)))
    np.testing.assert_array_equal(out[2], rows(crops_of(2, 2)))
    assert fn.calls[0] == 4  # tried together first, then one by one
    # The batcher lives on after a failed batch.
    np.testing.assert_array_equal(concurrently(batcher, [("k", crops_of(3))])[0], rows(crops_of(3)))
    batcher.close()


def test_close_finishes_queued_requests_then_later_ones_run_in_the_caller():
    gate = threading.Event()

    def slow(crops):
        assert gate.wait(20)
        return rows(crops)

    batcher = MicroBatcher({"k": slow}, window=0, max_faces=1, capacity=1)
    results: list = []
    workers = [threading.Thread(target=lambda v=v: results.append(batcher.classify("k", crops_of(v))))
               for v in (1, 2)]
    for t in workers:
        t.start()
    deadline = time.time() + 10
    while not (batcher._thread and len(batcher._queue) == 1) and time.time() < deadline:  # one running, one queued
        time.sleep(0.01)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(10)
    for t in workers:
        t.join(10)
    assert not closer.is_alive() and not batcher._thread.is_alive()
    assert sorted(float(r[0, 0]) for r in results) == [1.0, 2.0]
    np.testing.assert_array_equal(batcher.classify("k", crops_of(9)), rows(crops_of(9)))  # closed: in the caller


def test_the_queue_holds_at_most_capacity_requests():
    gate = threading.Event()
    most = [0]

    def slow(crops):
        most[0] = max(most[0], len(batcher._queue))
        assert gate.wait(20)
        return rows(crops)

    batcher = MicroBatcher({"k": slow}, window=0, max_faces=1, capacity=2)
    threads = [threading.Thread(target=batcher.classify, args=("k", crops_of(v))) for v in range(6)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while len(batcher._queue) < 2 and time.time() < deadline:  # one running, two queued, three waiting for room
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(batcher._queue) == 2
    gate.set()
    for t in threads:
        t.join(10)
    assert most[0] <= 2 and not any(t.is_alive() for t in threads)
    batcher.close()


# -- the service, batching on against batching off -----------------------------------------------------------------
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from ferkit.inference import Classifier, EmotionRecognizer  # noqa: E402
from ferkit.inference.onnx_classifier import default_model_path  # noqa: E402
from ferkit.service import ServiceConfig, create_app  # noqa: E402
from ferkit.service.pool import PixelBudget  # noqa: E402

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    """Four different uploads, five faces: the astronaut, mirrored, darker, and two astronauts side by side."""
    pytest.importorskip("skimage.data")
    img = astronaut_bgr()
    imgs = [img, img[:, ::-1], (img * 0.6).astype(np.uint8), np.hstack([img, img[:, ::-1]])]
    return [cv2.imencode(".jpg", i, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for i in imgs]


def client(rec, raise_server_exceptions: bool = True, **config) -> TestClient:
    return TestClient(create_app(ServiceConfig(**config), recognizer=rec), base_url="http://127.0.0.1:8000",
                      raise_server_exceptions=raise_server_exceptions)


class HeldBudget(PixelBudget):
    """The engine's pixel budget, which every upload passes before decoding: when armed, each upload waits there
    until `parties` of them have arrived, so that the test knows they are all being worked on at once."""

    def __init__(self, parties: int):
        super().__init__(10**9)
        self.barrier = threading.Barrier(parties)

    def hold(self, pixels: int):
        self.barrier.wait(30)
        return super().hold(pixels)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def post_all(c: TestClient, requests: list[tuple[str, bytes]]) -> list[dict]:
    def post(req: tuple[str, bytes]) -> dict:
        r = c.post(req[0], content=req[1], headers=JPEG)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(len(requests)) as ex:
        return list(ex.map(post, requests))


def assert_same_faces(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for fa, fb in zip(a, b, strict=True):
        assert fa["box"] == fb["box"] and fa["label"] == fb["label"]
        pa, pb = fa["probabilities"], fb["probabilities"]
        assert list(pa) == list(pb)
        np.testing.assert_allclose(list(pa.values()), list(pb.values()), atol=2e-4)  # JSON rounds to 4 places


def test_batched_answers_equal_unbatched_ones_and_the_batches_show_in_metrics(recognizer, bodies):
    plain = [("/v1/predict", b) for b in bodies]
    mixed = [("/v1/predict?tta=true", bodies[0]), ("/v1/predict", bodies[1]), ("/v1/predict?tta=true", bodies[2]),
             ("/v1/predict", bodies[3])]
    with client(recognizer, workers=4, batch_faces=0) as off:
        assert off.app.state.engine.batcher is None and off.get("/v1/models").json()["batch_faces"] == 0
        want_plain = [off.post(u, content=b, headers=JPEG).json() for u, b in plain]
        want_mixed = [off.post(u, content=b, headers=JPEG).json() for u, b in mixed]
    # A window far longer than the test: each batch runs when its four requests wait on it.
    with client(recognizer, workers=4, batch_window_ms=1000, batch_faces=32) as on:
        engine = on.app.state.engine
        assert on.get("/v1/models").json()["batch_window_ms"] == 1000
        engine.pixels = HeldBudget(4)
        got_plain = post_all(on, plain)
        text = on.get("/metrics").text
        assert metric(text, "ferkit_batch_images_count") == 1 and metric(text, "ferkit_batch_images_sum") == 4
        assert metric(text, "ferkit_batch_faces_sum") == 5  # the last upload has two faces
        assert metric(text, "ferkit_batch_wait_seconds_count") == 4
        assert 'ferkit_batch_images_bucket{le="4.0"} 1.0' in text
        assert 'ferkit_batch_images_bucket{le="3.0"} 0.0' in text
        got_mixed = post_all(on, mixed)
        text = on.get("/metrics").text
        # The same round, two calls: the two TTA requests together, the two plain ones together.
        assert metric(text, "ferkit_batch_images_count") == 3 and metric(text, "ferkit_batch_images_sum") == 8
        batcher = engine.batcher
    for want, got in zip(want_plain + want_mixed, got_plain + got_mixed, strict=True):
        assert_same_faces(want["faces"], got["faces"])
    assert [len(r["faces"]) for r in got_plain] == [1, 1, 1, 2]
    assert batcher.closed and not batcher._thread.is_alive()  # shut down with the app


def test_one_request_failing_in_a_batch_leaves_the_others_answered(recognizer, bodies):
    class Picky(Classifier):
        """The shipped model, refusing a face of uniform grey 7 (the warm-up's zeros are fine)."""

        def __init__(self, inner: Classifier):
            for key in ("name", "source", "classes", "input_size", "crop", "tta", "temperature", "temperatures"):
                setattr(self, key, getattr(inner, key))
            self.inner = inner

        def run(self, views):
            if any(np.all(v == 7) for v in views):
                raise RuntimeError("secret internal detail")
            return self.inner.run(views)

    bad = cv2.imencode(".png", np.full((48, 48), 7, np.uint8))[1].tobytes()
    with client(EmotionRecognizer(Picky(recognizer.classifier)), False, workers=3, batch_window_ms=1000) as on:
        on.app.state.engine.pixels = HeldBudget(3)

        def post(body: bytes):
            ctype = "image/png" if body == bad else "image/jpeg"
            return on.post("/v1/predict", content=body, headers={"content-type": ctype})

        with ThreadPoolExecutor(3) as ex:
            answers = list(ex.map(post, [bodies[0], bad, bodies[3]]))
        text = on.get("/metrics").text
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert "secret" not in answers[1].text
    assert [len(a.json()["faces"]) for a in (answers[0], answers[2])] == [1, 2]
    assert metric(text, "ferkit_batch_images_sum") >= 3  # tried together, then one by one


def test_haar_detection_lock_is_let_go_while_waiting_for_the_batch(bodies):
    from ferkit.inference.detect import available_detectors

    if "haar" not in available_detectors() or not default_model_path().is_file():
        pytest.skip("needs OpenCV's Haar cascades and the shipped model")
    rec = EmotionRecognizer(threads=1, detector="haar")
    # Were the lock kept, the first request would hold it through its whole window and the others could not
    # detect: three batches of one, a second apart, instead of one batch of three.
    with client(rec, workers=3, batch_window_ms=1000) as on:
        on.app.state.engine.pixels = HeldBudget(3)
        answers = post_all(on, [("/v1/predict", b) for b in bodies[:3]])
        text = on.get("/metrics").text
    assert all(a["faces"] for a in answers)
    assert metric(text, "ferkit_batch_images_count") == 1 and metric(text, "ferkit_batch_images_sum") == 3


def test_batch_endpoint_and_streams_with_batching_on(recognizer, bodies):
    with client(recognizer, workers=2, batch_faces=0) as off:
        want = off.post("/v1/predict/batch", files=[("f", (f"{i}.jpg", b, "image/jpeg"))
                                                     for i, b in enumerate(bodies)]).json()
    with client(recognizer, workers=2, batch_window_ms=2) as on:
        assert on.app.state.engine.batcher is not None
        got = on.post("/v1/predict/batch", files=[("f", (f"{i}.jpg", b, "image/jpeg"))
                                                  for i, b in enumerate(bodies)]).json()
        with on.websocket_connect("/v1/stream", headers={"host": "127.0.0.1:8000"}) as ws:
            ws.send_bytes(bodies[0])
            assert ws.receive_json()["faces"]
    for a, b in zip(want["results"], got["results"], strict=True):
        assert_same_faces(a["faces"], b["faces"])


def test_batching_settings(monkeypatch):
    default = ServiceConfig()
    assert (default.batch_window_ms, default.batch_faces) == (0.0, 32)  # off until a window is set
    monkeypatch.setenv("FERKIT_BATCH_WINDOW_MS", "5.5")
    monkeypatch.setenv("FERKIT_BATCH_FACES", "64")
    cfg = ServiceConfig.from_env()
    assert (cfg.batch_window_ms, cfg.batch_faces) == (5.5, 64)
    for var, value in (("FERKIT_BATCH_WINDOW_MS", "-1"), ("FERKIT_BATCH_WINDOW_MS", "nan"),
                       ("FERKIT_BATCH_FACES", "-2"), ("FERKIT_BATCH_FACES", "many")):
        monkeypatch.setenv(var, value)
        with pytest.raises(FerkitError, match=var) as e:
            ServiceConfig.from_env()
        assert "\n" not in str(e.value)
        monkeypatch.delenv(var)


@pytest.mark.parametrize("settings", [{"batch_faces": 0}, {"batch_faces": 1}, {"batch_window_ms": 0}])
def test_batching_off(recognizer, bodies, settings):
    with client(recognizer, workers=2, **settings) as off:
        assert off.app.state.engine.batcher is None
        info = off.get("/v1/models").json()
        assert (info["batch_window_ms"], info["batch_faces"]) == (0, 0)
        assert off.post("/v1/predict", content=bodies[0], headers=JPEG).json()["faces"]
        assert metric(off.get("/metrics").text, "ferkit_batch_images_count") == 0
