"""API tests of `ferkit serve` with the FastAPI test client and the shipped model."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
from helpers import astronaut_bgr, free_port, start_uvicorn

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.inference import EmotionRecognizer  # noqa: E402
from ferkit.inference.onnx_classifier import default_model_path  # noqa: E402
from ferkit.service import ServiceConfig, create_app  # noqa: E402
from ferkit.service.errors import ApiError  # noqa: E402
from ferkit.service.limits import check_image_bytes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    pytest.importorskip("skimage.data")
    ok, buf = cv2.imencode(".jpg", astronaut_bgr(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def face_png(face_jpeg: bytes) -> bytes:
    img = cv2.imdecode(np.frombuffer(face_jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture(scope="module")
def crop_png() -> bytes:
    rng = np.random.default_rng(0)
    return cv2.imencode(".png", rng.integers(0, 255, (48, 48), dtype=np.uint8))[1].tobytes()


class Client(TestClient):
    """The test client as a local browser or script sees the server: Host 127.0.0.1:8000 (the service bound to
    loopback answers no other Host), for WebSockets too (Starlette's client sends 'testserver' there)."""

    def __init__(self, app, **kw):
        super().__init__(app, base_url="http://127.0.0.1:8000", **kw)

    def websocket_connect(self, url, *args, headers=None, **kw):
        return super().websocket_connect(url, *args, headers={"host": "127.0.0.1:8000", **(headers or {})}, **kw)


def make_client(recognizer, **config) -> TestClient:
    config.setdefault("workers", 1)
    return Client(create_app(ServiceConfig(**config), recognizer=recognizer))


@pytest.fixture(scope="module")
def client(recognizer):
    with make_client(recognizer) as c:
        yield c


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    assert body["error"]["message"] and "Traceback" not in r.text
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def assert_prediction(res: dict, recognizer) -> None:
    assert res["model"]["name"] == recognizer.model_names[0]
    assert res["model"]["version"] == recognizer.models[0].version
    for face in res["faces"]:
        x, y, w, h = face["box"]
        assert w > 0 and h > 0
        assert face["label"] in recognizer.classes
        assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)
        assert abs(sum(face["probabilities"].values()) - 1) < 0.01


# -- health, models, docs, page ---------------------------------------------------------------------------------
def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_not_ready_before_startup(recognizer):
    c = make_client(recognizer)  # no `with`: the lifespan (warm-up) has not run
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert_error(r, 503, "not_ready")
    assert r.headers["retry-after"]


def test_models(client, recognizer):
    info = client.get("/v1/models").json()
    assert info["classes"] == recognizer.classes
    m = info["models"][0]
    assert m["input_size"] == recognizer.input_size and m["version"] == recognizer.models[0].version
    # The shipped model carries its model card's figures; a model without them reports none (test below).
    meta = recognizer.models[0].metadata
    assert m.get("metrics") == (json.loads(meta["metrics"]) if "metrics" in meta else None)


def test_models_reports_model_card_metrics(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "carded.onnx"
    shutil.copy(default_model_path(), path)
    m = onnx.load(str(path))
    m.metadata_props.add(key="metrics", value=json.dumps({"test_accuracy": 0.71, "test_macro_f1": 0.66}))
    onnx.save(m, str(path))
    with make_client(EmotionRecognizer(path, threads=1)) as c:
        info = c.get("/v1/models").json()
    assert info["models"][0]["metrics"] == {"test_accuracy": 0.71, "test_macro_f1": 0.66}


def test_page_and_docs_are_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "getUserMedia" in page.text and "/v1/stream" in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    for html in (page.text, docs.text):
        # No script, style, font or image from anywhere else.
        assert not [s for s in ('src="http', "src='http", 'href="http', "@import", "url(http") if s in html]
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/json"} <= set(body)
    assert spec["components"]["schemas"]["PredictionOut"]["examples"]


# -- predict ----------------------------------------------------------------------------------------------------
def test_predict_multipart(client, recognizer, face_jpeg):
    r = client.post("/v1/predict", files={"file": ("astronaut.jpg", face_jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["source"] == "astronaut.jpg" and (res["width"], res["height"]) == (512, 512)
    assert len(res["faces"]) >= 1
    x, y, w, h = res["faces"][0]["box"]
    assert 120 < x + w / 2 < 330 and 40 < y + h / 2 < 220  # the astronaut's face
    assert_prediction(res, recognizer)


def test_one_result_schema_for_api_library_and_cli(client, recognizer, face_jpeg, tmp_path):
    # Before: `ferkit predict --json` gave flat rows (x, y, w, h, classes as keys, `track`) unlike these two.
    from typer.testing import CliRunner

    from ferkit.cli import app

    api = client.post("/v1/predict", content=face_jpeg, headers={"content-type": "image/jpeg",
                                                                 "x-filename": "face.jpg"}).json()
    lib = recognizer.predict(face_jpeg, name="face.jpg").to_dict()
    (tmp_path / "face.jpg").write_bytes(face_jpeg)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "face.jpg"), "--json"])
    cli = json.loads(r.stdout)
    assert api["schema"] == lib["schema"] == cli["schema"] == 1
    assert set(api) - {"model", "time_ms"} == set(lib) == set(cli)
    assert api["faces"] == lib["faces"] == cli["faces"] and api["faces"]
    assert api["source"] == lib["source"] == "face.jpg" and cli["source"].endswith("face.jpg")
    item = client.post("/v1/predict/batch", files=[("f", ("face.jpg", face_jpeg, "image/jpeg"))]).json()["results"][0]
    assert item["schema"] == 1 and item["faces"] == lib["faces"]


def test_predict_raw_png_json_and_data_url(client, recognizer, face_png, face_jpeg):
    a = client.post("/v1/predict", content=face_png, headers={"content-type": "image/png"}).json()
    b = client.post("/v1/predict", json={"image": base64.b64encode(face_png).decode(), "name": "p.png"}).json()
    url = "data:image/jpeg;base64," + base64.b64encode(face_jpeg).decode()
    c = client.post("/v1/predict", json={"image": url})
    assert c.status_code == 200, c.text
    assert a["faces"] == b["faces"] and b["source"] == "p.png"
    assert_prediction(c.json(), recognizer)


def test_predict_options(client, recognizer, face_jpeg, crop_png):
    crop = client.post("/v1/predict?detect=false", content=crop_png, headers={"content-type": "image/png"}).json()
    assert len(crop["faces"]) == 1 and crop["faces"][0]["box"] == [0, 0, 48, 48] and crop.get("detector") is None
    top = client.post("/v1/predict?top_k=2", content=face_jpeg, headers={"content-type": "image/jpeg"}).json()
    probs = list(top["faces"][0]["probabilities"].values())
    assert len(probs) == 2 and probs[0] >= probs[1]
    assert list(top["faces"][0]["probabilities"])[0] == top["faces"][0]["label"]
    tta = client.post("/v1/predict?tta=true", content=face_jpeg, headers={"content-type": "image/jpeg"})
    assert tta.status_code == 200
    assert_prediction(tta.json(), recognizer)
    assert_error(client.post("/v1/predict?top_k=0", content=face_jpeg, headers={"content-type": "image/jpeg"}), 422)
    assert_error(client.post("/v1/predict?top_k=99", content=face_jpeg, headers={"content-type": "image/jpeg"}), 422)
    assert_error(client.post("/v1/predict?detect=maybe", content=face_jpeg, headers={"content-type": "image/jpeg"}), 422)


def test_batch_in_order_with_bad_items(client, recognizer, face_jpeg, crop_png):
    files = [
        ("files", ("a.jpg", face_jpeg, "image/jpeg")),
        ("files", ("notes.txt", b"not an image at all", "text/plain")),
        ("files", ("cut.jpg", face_jpeg[: len(face_jpeg) // 2], "image/jpeg")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("crop.png", crop_png, "image/png")),
    ]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3, 4]
    assert [x["source"] for x in res] == ["a.jpg", "notes.txt", "cut.jpg", "empty.png", "crop.png"]
    assert res[0]["faces"] and "error" not in res[0]
    assert res[1]["error"]["status"] == 415
    assert res[2]["error"]["code"] == "bad_image" and "truncated" in res[2]["error"]["message"]
    assert res[3]["error"]["code"] == "empty_body"
    assert len(res[4]["faces"]) == 1  # 48 x 48: taken as a crop
    assert r.json()["model"]["name"] == recognizer.model_names[0]


def test_batch_json_and_limits(recognizer, face_jpeg):
    with make_client(recognizer, max_batch=2) as c:
        ok = c.post("/v1/predict/batch", json={"images": [
            {"name": "a.jpg", "image": base64.b64encode(face_jpeg).decode()}, {"name": "b", "image": "%%%"}]})
        assert ok.status_code == 200
        res = ok.json()["results"]
        assert res[0]["faces"] and res[1]["error"]["code"] == "bad_base64"
        three = [("files", (f"{i}.jpg", face_jpeg, "image/jpeg")) for i in range(3)]
        assert_error(c.post("/v1/predict/batch", files=three), 413, "too_many_images")
        assert_error(c.post("/v1/predict/batch", data={"note": "x"}, files={}), 415)
        assert_error(c.post("/v1/predict/batch", json={"nothing": []}), 400, "malformed_json")
        assert_error(c.post("/v1/predict/batch", json={"images": []}), 400, "no_file")


# -- bad input --------------------------------------------------------------------------------------------------
def _png_header(w: int, h: int) -> bytes:
    """A well-formed PNG that claims w x h pixels and holds (almost) none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code"),
    [
        (b"hello, not an image", "image/jpeg", 415, "unsupported_media_type"),
        (b"", "image/jpeg", 400, "empty_body"),
        (b"GIF89a....", "image/gif", 415, "unsupported_media_type"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 40, "image/jpeg", 400, "bad_image"),  # header only
        (_png_header(60000, 60000), "image/png", 413, "too_many_pixels"),  # decompression bomb
        (_png_header(64, 64), "image/png", 400, "bad_image"),  # header fine, no pixel data
        (b"abc", "text/plain", 415, "unsupported_media_type"),
        (b"abc", "", 415, "unsupported_media_type"),
        (b"{not json", "application/json", 400, "malformed_json"),
        (b'{"image": 5}', "application/json", 400, "malformed_json"),
        (b'{"image": "@@notbase64"}', "application/json", 400, "bad_base64"),
    ],
)
def test_bad_input_is_a_clear_4xx(client, body, ctype, status, code):
    headers = {"content-type": ctype} if ctype else {}
    assert_error(client.post("/v1/predict", content=body, headers=headers), status, code)


def test_truncated_jpeg(client, face_jpeg):
    for cut in (len(face_jpeg) // 3, len(face_jpeg) - 10):
        err = assert_error(
            client.post("/v1/predict", content=face_jpeg[:cut], headers={"content-type": "image/jpeg"}), 400
        )
        assert "truncated" in err["message"]


def test_bomb_refused_by_the_decoder_too(recognizer):
    # The worker's decode holds the same limit as the header check before it (one guarded path, ferkit.images).
    from ferkit.service.engine import Engine
    from ferkit.service.telemetry import Metrics

    engine = Engine(recognizer, Metrics(), max_pixels=1000)
    img = cv2.imencode(".png", np.zeros((100, 100), np.uint8))[1].tobytes()
    with pytest.raises(ApiError) as e:
        engine.predict_bytes(img, "big.png", None, False, None)
    assert (e.value.status, e.value.code) == (413, "too_many_pixels") and "big.png" in e.value.message
    with pytest.raises(FerkitError, match="--max-pixels"):  # the setting may lower ferkit's one limit, not raise it
        ServiceConfig(max_pixels=10**8)


def test_upload_over_size_limit(recognizer, face_jpeg):
    assert len(face_jpeg) > 20_000
    with make_client(recognizer, max_upload_mb=0.01) as c:  # 10 KiB
        raw = c.post("/v1/predict", content=face_jpeg, headers={"content-type": "image/jpeg"})
        assert_error(raw, 413)
        form = c.post("/v1/predict", files={"file": ("a.jpg", face_jpeg * 3, "image/jpeg")})
        assert_error(form, 413, "too_large")

        # A chunked body without Content-Length is cut off while streaming.
        def chunks():
            for _ in range(10):
                yield face_jpeg

        assert_error(c.post("/v1/predict", content=chunks(), headers={"content-type": "image/jpeg"}), 413, "too_large")


def test_multipart_without_file_and_unknown_route(client):
    assert_error(client.post("/v1/predict", data={"x": "1"}, files={"dummy": ("", b"", "")}), 400)
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405)


def test_internal_error_has_no_traceback(recognizer, face_jpeg):
    class Broken:
        tta = False

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(recognizer, name)

        def predict(self, image, **kw):
            if image.shape[0] > 100:
                raise RuntimeError("secret internal detail")
            return recognizer.predict(image, **kw)

    with Client(create_app(ServiceConfig(workers=1), recognizer=Broken()), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", content=face_jpeg, headers={"content-type": "image/jpeg"})
    assert_error(r, 500, "internal_error")
    assert "secret" not in r.text


def test_check_image_bytes_units(face_jpeg):
    assert check_image_bytes(face_jpeg, "a", 10**7, 10**7).format == "JPEG"
    with pytest.raises(ApiError) as e:
        check_image_bytes(face_jpeg, "a", 10**7, 1000)
    assert e.value.status == 413
    webp = cv2.imencode(".webp", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    bmp = cv2.imencode(".bmp", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    assert check_image_bytes(webp, "w", 10**7, 10**7).format == "WEBP"
    info = check_image_bytes(bmp, "b", 10**7, 10**7)
    assert (info.format, info.width, info.height) == ("BMP", 40, 30)
    with pytest.raises(ApiError):
        check_image_bytes(webp, "w", 10**7, 1199)
    with pytest.raises(ApiError):
        check_image_bytes(bmp, "b", 10**7, 1199)


# -- auth, CORS, metrics -----------------------------------------------------------------------------------------
def test_api_key(recognizer, face_jpeg):
    with make_client(recognizer, api_key="s3cret") as c:
        jpeg = {"content-type": "image/jpeg"}
        r = c.post("/v1/predict", content=face_jpeg, headers=jpeg)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_error(c.post("/v1/predict", content=face_jpeg, headers={**jpeg, "X-API-Key": "wrong"}), 401)
        assert_error(c.get("/v1/models"), 401)
        assert_error(c.get("/metrics"), 401)
        assert c.post("/v1/predict", content=face_jpeg, headers={**jpeg, "X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200
        from starlette.testclient import WebSocketDenialResponse

        with pytest.raises(WebSocketDenialResponse) as e, c.websocket_connect("/v1/stream") as ws:
            ws.receive_json()
        assert_error(e.value, 401, "unauthorized")  # refused before the handshake, not with the origin's 403
        with c.websocket_connect("/v1/stream?api_key=s3cret") as ws:
            ws.send_bytes(face_jpeg)
            assert ws.receive_json()["faces"]


def test_cors(recognizer):
    with make_client(recognizer, cors_origins=("http://app.example",)) as c:
        r = c.get("/v1/models", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        pre = c.options("/v1/predict", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "X-API-Key"})
        assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]
        other = c.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with make_client(recognizer) as c:  # no origins configured: no CORS headers at all
        assert "access-control-allow-origin" not in c.get("/v1/models", headers={"Origin": "http://app.example"}).headers


def test_metrics(recognizer, face_jpeg):
    with make_client(recognizer) as c:
        c.post("/v1/predict", content=face_jpeg, headers={"content-type": "image/jpeg"})
        c.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
        c.get("/some/scanner/path")
        text = c.get("/metrics").text
    assert 'ferkit_http_requests_total{method="POST",path="/v1/predict",status="200"} 1.0' in text
    assert 'ferkit_http_requests_total{method="POST",path="/v1/predict",status="415"} 1.0' in text
    assert 'path="other"' in text and "/some/scanner" not in text
    assert "ferkit_faces_per_image_count 1.0" in text
    assert 'ferkit_http_request_duration_seconds_count{path="/v1/predict"} 2.0' in text
    assert "ferkit_inference_duration_seconds_bucket" in text


def test_concurrent_requests_agree(recognizer, face_jpeg):
    """Several workers share one recognizer (ONNX sessions, detector): concurrent answers equal serial ones."""
    from concurrent.futures import ThreadPoolExecutor

    img = cv2.imdecode(np.frombuffer(face_jpeg, np.uint8), cv2.IMREAD_COLOR)
    bodies = [face_jpeg, cv2.imencode(".jpg", img[:, ::-1])[1].tobytes()] * 4
    with make_client(recognizer, workers=3) as c:
        def post(body: bytes) -> list:
            r = c.post("/v1/predict", content=body, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200
            return r.json()["faces"]

        serial = [post(b) for b in bodies[:2]]
        with ThreadPoolExecutor(8) as ex:
            parallel = list(ex.map(post, bodies))
    assert all(serial), serial  # faces found in the photo and in its mirror image
    for i, faces in enumerate(parallel):
        assert faces == serial[i % 2]


# -- pool saturation -----------------------------------------------------------------------------------------------
class Gated:
    """The real recognizer behind a gate: predict waits until the test opens it."""

    def __init__(self, rec):
        self._rec = rec
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.tta = False

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._rec, name)

    def predict(self, image, **kw):
        self.entered.set()
        assert self.gate.wait(20)
        return self._rec.predict(image, **kw)


def test_busy_pool_answers_503_with_retry_after(recognizer, face_jpeg):
    gated = Gated(recognizer)
    with make_client(gated, workers=1, queue=1) as c:
        gated.gate.clear()
        gated.entered.clear()  # set by the warm-up
        jpeg = {"content-type": "image/jpeg"}
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(c.post("/v1/predict", content=face_jpeg, headers=jpeg)
                                                           .status_code))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        assert gated.entered.wait(10)
        deadline = time.time() + 10
        while c.app.state.pool.pending < 2 and time.time() < deadline:  # one running, one queued
            time.sleep(0.02)
        r = c.post("/v1/predict", content=face_jpeg, headers=jpeg)
        err = assert_error(r, 503, "busy")
        assert int(r.headers["retry-after"]) >= 1 and "busy" in err["message"]
        with c.websocket_connect("/v1/stream") as ws:  # a stream frame is refused the same way, the stream lives on
            ws.send_bytes(face_jpeg)
            assert ws.receive_json()["error"]["status"] == 503
            gated.gate.set()
            for t in threads:
                t.join(20)
            ws.send_bytes(face_jpeg)
            assert ws.receive_json()["faces"]
        assert results == [200, 200]
        assert "ferkit_rejected_total 2.0" in c.get("/metrics").text


# -- WebSocket stream ----------------------------------------------------------------------------------------------
def test_stream_tracks_and_smooths(client, recognizer, face_jpeg):
    with client.websocket_connect("/v1/stream?window=3&top_k=3") as ws:
        answers = []
        for _ in range(3):
            ws.send_bytes(face_jpeg)
            answers.append(ws.receive_json())
        assert [a["frame"] for a in answers] == [1, 2, 3]
        ids = {a["faces"][0]["track_id"] for a in answers}
        assert len(ids) == 1  # the same face keeps its track
        assert len(answers[0]["faces"][0]["probabilities"]) == 3
        ws.send_bytes(b"garbage")
        bad = ws.receive_json()
        assert bad["frame"] == 4 and bad["error"]["status"] == 415
        ws.send_bytes(face_jpeg[: len(face_jpeg) // 2])
        assert ws.receive_json()["error"]["code"] == "bad_image"
        ws.send_text("{oops")
        assert ws.receive_json()["error"]["code"] == "malformed_json"
        ws.send_text(json.dumps({"type": "reset"}))
        assert ws.receive_json() == {"type": "reset"}
        ws.send_bytes(face_jpeg)
        after = ws.receive_json()
        assert after["frame"] == 6 and after["faces"][0]["track_id"] == 1  # a fresh tracker


def test_stream_endpoint_and_library_stream_agree(client, recognizer, face_jpeg):
    # The service's stream runs the frames through the library's own generator: the same tracks and smoothing.
    from ferkit import images

    img = cv2.imdecode(np.frombuffer(face_jpeg, np.uint8), cv2.IMREAD_COLOR)[0:240, 103:343]
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in (img, img[:, ::-1], img, cv2.GaussianBlur(img, (9, 9), 3))]
    frames = [images.load(j).image for j in jpegs]
    lib = [p.to_dict()["faces"] for p in recognizer.stream(iter(frames), smooth=3)]
    with client.websocket_connect("/v1/stream?window=3") as ws:
        api = []
        for j in jpegs:
            ws.send_bytes(j)
            api.append(ws.receive_json()["faces"])
    assert api == lib and len(lib) == 4 and all(lib)


def test_stream_smoothing_moves_towards_new_frames(client, face_jpeg):
    # A mirrored face gives other probabilities; with smoothing, the answer lies between the two raw ones.
    # Cut the frame around the face so that its mirror image stays in place (one track across both frames).
    img = cv2.imdecode(np.frombuffer(face_jpeg, np.uint8), cv2.IMREAD_COLOR)[0:240, 103:343]
    face_jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    flipped = cv2.imencode(".jpg", img[:, ::-1])[1].tobytes()
    jpeg = {"content-type": "image/jpeg"}
    raw_a = client.post("/v1/predict", content=face_jpeg, headers=jpeg).json()["faces"][0]["probabilities"]
    raw_b = client.post("/v1/predict", content=flipped, headers=jpeg).json()["faces"][0]["probabilities"]
    with client.websocket_connect("/v1/stream?window=3") as ws:
        ws.send_bytes(face_jpeg)
        first = ws.receive_json()["faces"][0]["probabilities"]
        ws.send_bytes(flipped)
        second = ws.receive_json()["faces"][0]
    assert first == pytest.approx(raw_a, abs=2e-4)
    k = max(raw_a, key=lambda c: abs(raw_a[c] - raw_b[c]))
    if abs(raw_a[k] - raw_b[k]) > 0.01:  # only meaningful when mirroring changes the answer
        lo, hi = sorted((raw_a[k], raw_b[k]))
        assert lo - 1e-3 <= second["probabilities"][k] <= hi + 1e-3
        assert second["probabilities"][k] == pytest.approx(0.5 * raw_b[k] + 0.5 * raw_a[k], abs=2e-3)


# -- configuration and command line ----------------------------------------------------------------------------
def test_config_env_and_flags(monkeypatch):
    env = {"FERKIT_HOST": "0.0.0.0", "FERKIT_PORT": "9001", "FERKIT_WORKERS": "3", "FERKIT_MAX_UPLOAD_MB": "2.5",
           "FERKIT_CORS_ORIGINS": "http://a.example, http://b.example", "FERKIT_API_KEY": "k", "FERKIT_MODEL": "a.onnx",
           "FERKIT_DETECT_SIZE": "640", "FERKIT_THRESHOLD": "0.7", "FERKIT_MAX_FACES": "3", "FERKIT_ACCESS_LOG": "1",
           "FERKIT_PRECISION": "int8"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = ServiceConfig.from_env()
    assert (cfg.host, cfg.port, cfg.workers, cfg.max_upload_mb, cfg.api_key) == ("0.0.0.0", 9001, 3, 2.5, "k")
    assert cfg.cors_origins == ("http://a.example", "http://b.example") and cfg.model == ("a.onnx",)
    assert (cfg.detect_size, cfg.threshold, cfg.max_faces, cfg.access_log, cfg.precision) == (640, 0.7, 3, True, "int8")
    assert cfg.max_upload_bytes == int(2.5 * 1024 * 1024) and not cfg.is_loopback
    flags = ServiceConfig.from_env(port=8123, workers=None)  # None: flag not given
    assert (flags.port, flags.workers) == (8123, 3)
    for k in env:
        monkeypatch.delenv(k)
    default = ServiceConfig.from_env()
    assert default.host == "127.0.0.1" and default.is_loopback and default.api_key is None and not default.access_log
    for var, value, expect in (("FERKIT_PORT", "abc", "FERKIT_PORT='abc'"), ("FERKIT_PORT", "70000", "FERKIT_PORT"),
                               ("FERKIT_WORKERS", "0", "FERKIT_WORKERS='0'"),
                               ("FERKIT_MAX_UPLOAD_MB", "-1", "FERKIT_MAX_UPLOAD_MB"),
                               ("FERKIT_MAX_UPLOAD_MB", "nan", "FERKIT_MAX_UPLOAD_MB"),
                               ("FERKIT_THRESHOLD", "1.5", "FERKIT_THRESHOLD"), ("FERKIT_PRECISION", "int4", "int4")):
        monkeypatch.setenv(var, value)
        with pytest.raises(FerkitError, match=expect) as e:
            ServiceConfig.from_env()
        assert "\n" not in str(e.value)
        monkeypatch.delenv(var)
    with pytest.raises(FerkitError, match="--port 0: Input should be greater than or equal to 1"):
        ServiceConfig.from_env(port=0)  # a flag is named as a flag


def test_cli_serve(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ferkit.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0 and "Example: ferkit serve" in r.output and "FERKIT_API_KEY" in r.output
    assert "<" not in r.output and "--detect-size" in r.output and "--access-log" in r.output
    assert "--batch-window-ms" in r.output and "--batch-faces" in r.output
    port = str(free_port())
    r = runner.invoke(app, ["serve", "--port", port, "--model", str(tmp_path / "missing.onnx")])
    assert r.exit_code == 2 and "missing.onnx" in r.stderr
    r = runner.invoke(app, ["serve", "--port", port, "--batch-window-ms", "-1"])
    assert r.exit_code == 2 and "--batch-window-ms" in r.stderr
    monkeypatch.setenv("FERKIT_WORKERS", "zero")
    r = runner.invoke(app, ["serve", "--port", port])
    assert r.exit_code == 2 and "FERKIT_WORKERS='zero'" in r.stderr


def test_cli_serve_port_in_use_exits_2_before_loading_the_model(monkeypatch):
    # Before: the model loaded, then uvicorn failed to bind and the command exited 3.
    import socket

    from typer.testing import CliRunner

    import ferkit.service
    from ferkit.cli import app

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(ferkit.service, "create_app", no_model)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"error: port {port} on 127.0.0.1 is in use (another server?); choose another with " \
                               "--port or FERKIT_PORT"


def test_access_log_flag():
    from ferkit.cli.serve import uvicorn_config

    assert uvicorn_config(None, ServiceConfig(access_log=True)).access_log is True
    assert uvicorn_config(None, ServiceConfig()).access_log is False


def test_detection_settings_per_server_and_per_request(recognizer, face_jpeg):
    # Two astronauts side by side: the server's max_faces and each request's own settings.
    img = cv2.imdecode(np.frombuffer(face_jpeg, np.uint8), cv2.IMREAD_COLOR)
    two = cv2.imencode(".jpg", np.hstack([img, img[:, ::-1]]))[1].tobytes()
    jpeg = {"content-type": "image/jpeg"}
    with make_client(recognizer) as c:
        assert len(c.post("/v1/predict", content=two, headers=jpeg).json()["faces"]) == 2
        assert len(c.post("/v1/predict?max_faces=1", content=two, headers=jpeg).json()["faces"]) == 1
        assert c.post("/v1/predict?threshold=1", content=two, headers=jpeg).json()["faces"] == []
        assert len(c.post("/v1/predict?detect_size=0", content=two, headers=jpeg).json()["faces"]) == 2
        for bad in ("detect_size=-1", "threshold=2", "max_faces=-3"):
            assert_error(c.post(f"/v1/predict?{bad}", content=two, headers=jpeg), 422, "invalid_parameter")
        batch = c.post("/v1/predict/batch?max_faces=1", files=[("f", ("two.jpg", two, "image/jpeg"))]).json()
        assert len(batch["results"][0]["faces"]) == 1
        with c.websocket_connect("/v1/stream?max_faces=1") as ws:
            ws.send_bytes(two)
            assert len(ws.receive_json()["faces"]) == 1
        info = c.get("/v1/models").json()
        assert (info["detect_size"], info["threshold"], info["max_faces"]) == (320, 0.5, 0)
    with make_client(recognizer, max_faces=1) as c:
        assert len(c.post("/v1/predict", content=two, headers=jpeg).json()["faces"]) == 1
        assert len(c.post("/v1/predict?max_faces=0", content=two, headers=jpeg).json()["faces"]) == 2


def test_library_errors_map_to_statuses_by_type_not_text():
    from ferkit import images
    from ferkit.service.errors import from_ferkit_error

    assert from_ferkit_error(images.EmptyImage("x: empty file")).code == "empty_body"
    assert from_ferkit_error(FerkitError("my: empty file")).code == "bad_image"  # the words alone decide nothing
    assert from_ferkit_error(images.ImageTooLarge("x", "bytes")).status == 413
    assert from_ferkit_error(images.UnknownFormat("x")).status == 415


def test_graceful_shutdown_finishes_in_flight_request(recognizer, face_jpeg):
    """A real uvicorn server: a request still running when shutdown starts gets its 200."""
    import httpx

    port = free_port()
    gated = Gated(recognizer)
    app = create_app(ServiceConfig(port=port, workers=1, graceful_timeout=10), recognizer=gated)
    server, thread = start_uvicorn(app)
    base = f"http://127.0.0.1:{port}"
    assert server.started
    gated.gate.clear()
    gated.entered.clear()  # set by the warm-up
    out: dict = {}

    def call() -> None:
        out["r"] = httpx.post(base + "/v1/predict", content=face_jpeg, headers={"content-type": "image/jpeg"},
                              timeout=30)

    t = threading.Thread(target=call)
    t.start()
    assert gated.entered.wait(10)
    server.should_exit = True  # what SIGTERM does
    time.sleep(0.3)
    gated.gate.set()
    t.join(20)
    thread.join(20)
    assert out["r"].status_code == 200 and out["r"].json()["faces"]
    assert app.state.pool.closed and not thread.is_alive()


def test_cli_imports_no_server_stack():
    """The inference-only install has no FastAPI/uvicorn: `ferkit` must not import them until `ferkit serve` runs."""
    import subprocess
    import sys

    code = (
        "import sys, ferkit.cli; "
        "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'multipart') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# -- hostile clients (more kinds in test_hostile.py) -----------------------------------------------------------------
def test_blank_api_key_is_refused_like_an_empty_flag(monkeypatch):
    for value in ("", "   "):
        monkeypatch.setenv("FERKIT_API_KEY", value)
        with pytest.raises(FerkitError, match="api key: empty or blank"):
            ServiceConfig.from_env()
    monkeypatch.delenv("FERKIT_API_KEY")
    with pytest.raises(FerkitError, match="api key"):
        ServiceConfig.from_env(api_key=" ")
    assert ServiceConfig.from_env().api_key is None


def test_loopback_server_answers_only_loopback_hosts(recognizer):
    with make_client(recognizer) as c:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.", ""):
            err = assert_error(c.get("/v1/models", headers={"host": host}), 400, "bad_host")
            assert "not this server's address" in err["message"]
        from starlette.testclient import WebSocketDenialResponse

        with pytest.raises(WebSocketDenialResponse), c.websocket_connect("/v1/stream", headers={"host": "evil.example"}):
            pass
    with Client(create_app(ServiceConfig(host="0.0.0.0", workers=1), recognizer=recognizer)) as c:
        assert c.get("/healthz", headers={"host": "anything.example"}).status_code == 200  # bound for the network
    cfg = ServiceConfig(allowed_hosts="faces.example, Proxy.Local", workers=1)
    with Client(create_app(cfg, recognizer=recognizer)) as c:
        assert c.get("/healthz", headers={"host": "proxy.local:443"}).status_code == 200
        assert_error(c.get("/healthz", headers={"host": "other.example"}), 400, "bad_host")


def test_websocket_origin_must_be_this_server_or_a_cors_origin(recognizer, face_jpeg):
    from starlette.testclient import WebSocketDenialResponse

    with make_client(recognizer, cors_origins=("https://app.example",)) as c:
        for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", "https://app.example.evil"):
            with pytest.raises(WebSocketDenialResponse) as e, c.websocket_connect("/v1/stream",
                                                                                  headers={"origin": origin}) as ws:
                ws.receive_json()
            assert_error(e.value, 403, "forbidden_origin")  # before the handshake
        for origin in ("http://127.0.0.1:8000", "https://app.example", None):
            with c.websocket_connect("/v1/stream", headers={"origin": origin} if origin else {}) as ws:
                ws.send_bytes(face_jpeg)
                assert ws.receive_json()["faces"], origin


def test_security_headers(client):
    for r in (client.get("/healthz"), client.get("/v1/nope"), client.post("/v1/predict", content=b"x"),
              client.post("/v1/predict", headers={"content-type": "image/png", "content-length": "999999999"})):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split(
        "style-src")[0]
    import base64 as b64
    import hashlib
    import re

    script = re.search(r"<script>(.*?)</script>", page.text, flags=re.S).group(1)
    assert f"'sha256-{b64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" in csp
    assert "content-security-policy" in client.get("/docs").headers


async def asgi_post(app, path: str, parts: list, headers: dict | None = None) -> tuple[int, dict]:
    """POST straight to the ASGI app, the body in `parts`: bytes are sent as chunks, a number is a pause in
    seconds, an asyncio.Event is waited for (the test client would read a body whole before the app sees it)."""
    import asyncio

    queue = list(parts)
    sent: list[dict] = []

    async def receive():
        while queue:
            item = queue.pop(0)
            if isinstance(item, int | float):
                await asyncio.sleep(item)
            elif isinstance(item, asyncio.Event):
                await item.wait()
            else:
                return {"type": "http.request", "body": item, "more_body": any(isinstance(q, bytes) for q in queue)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    hdrs = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": hdrs, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5), "root_path": "", "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def test_upload_budget_refuses_past_it_with_503(recognizer):
    import asyncio

    cfg = ServiceConfig(workers=1, max_upload_mb=0.05, upload_budget_mb=0.2)  # one upload is 0.13 MB
    app = create_app(cfg, recognizer=recognizer)
    assert cfg.batch_limit == int(0.2 * 2**20)  # a batch body never exceeds the whole budget

    async def scenario():
        gate = asyncio.Event()
        slow = asyncio.create_task(asgi_post(app, "/v1/predict", [b"{" + b" " * 100_000, gate, b"}"]))
        await asyncio.sleep(0.2)  # it holds 0.1 MB of the 0.2 MB budget while its body trickles in
        second = await asgi_post(app, "/v1/predict", [b" " * 60_000, b" " * 60_000])
        declared = await asgi_post(app, "/v1/predict", [b"{}"], {"content-length": "130000"})
        gate.set()
        return second, declared, await slow

    (s2, b2), (s3, b3), (s1, b1) = asyncio.run(scenario())
    assert (s2, b2["error"]["code"]) == (503, "busy") and (s3, b3["error"]["code"]) == (503, "busy")
    assert (s1, b1["error"]["code"]) == (400, "malformed_json")  # read in full, then found wanting
    status, body = asyncio.run(asgi_post(app, "/v1/predict", [b"{}"], {"content-length": "130000"}))
    assert status == 400  # the budget was given back


def test_slow_body_times_out_with_408(recognizer):
    import asyncio

    app = create_app(ServiceConfig(workers=1, body_timeout=0.3), recognizer=recognizer)
    status, body = asyncio.run(asgi_post(app, "/v1/predict", [b"{", 1.0, b"}"]))
    assert (status, body["error"]["code"]) == (408, "timeout")


def test_full_pool_refuses_before_reading_the_body(recognizer, face_jpeg):
    gated = Gated(recognizer)
    with make_client(gated, workers=1, queue=0) as c:
        gated.gate.clear()
        gated.entered.clear()
        t = threading.Thread(target=lambda: c.post("/v1/predict", content=face_jpeg,
                                                   headers={"content-type": "image/jpeg"}))
        t.start()
        assert gated.entered.wait(10)
        received = []

        def body():
            received.append(1)
            yield face_jpeg

        r = c.post("/v1/predict", content=body(), headers={"content-type": "image/jpeg"})
        gated.gate.set()
        t.join(20)
        assert_error(r, 503, "busy")


def test_pixel_budget_serialises_large_decodes():
    from ferkit.service.pool import PixelBudget

    budget = PixelBudget(100)
    inside, peak = [0], [0]
    lock = threading.Lock()

    def job(n):
        with budget.hold(n):
            with lock:
                inside[0] += min(n, 100)  # an image over the whole budget is charged the whole budget
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= min(n, 100)

    threads = [threading.Thread(target=job, args=(n,)) for n in (60, 60, 30, 500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert 60 <= peak[0] <= 100 and budget.used == 0 and inside[0] == 0


def test_client_disconnect_mid_upload_is_not_an_internal_error(recognizer, caplog):
    import asyncio

    app = create_app(ServiceConfig(workers=1), recognizer=recognizer)
    sent = []
    messages = [{"type": "http.request", "body": b"\xff\xd8" + b"\0" * 1000, "more_body": True},
                {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
             "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"image/jpeg")],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5),
             "root_path": "", "asgi": {"version": "3.0"}}
    with caplog.at_level("ERROR", logger="ferkit.service"):
        asyncio.run(app(scope, receive, send))
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400


def test_metrics_labels_stay_bounded(recognizer):
    with make_client(recognizer) as c:
        for i in range(50):
            c.request(f"M{i}X", "/v1/models")
            c.get(f"/scan/{i}")
        text = c.get("/metrics").text
    assert 'method="other"' in text and "M1X" not in text and "/scan/" not in text
    assert text.count("ferkit_http_requests_total{") < 20


def test_stream_count_is_capped(recognizer, face_jpeg):
    from starlette.websockets import WebSocketDisconnect

    with make_client(recognizer, max_streams=1) as c, c.websocket_connect("/v1/stream") as first:
        with pytest.raises(WebSocketDisconnect) as e, c.websocket_connect("/v1/stream") as second:
            second.receive_json()
        # Accepted and closed at once: a page reads the code and the reason (a refused handshake shows neither).
        assert e.value.code == 1013 and e.value.reason.startswith("try again later")
        first.send_bytes(face_jpeg)
        assert first.receive_json()["faces"]
    with make_client(recognizer, max_streams=1) as c:  # the slot is free again once a stream ends
        for _ in range(2):
            with c.websocket_connect("/v1/stream") as ws:
                ws.send_text('{"type": "reset"}')
                assert ws.receive_json() == {"type": "reset"}


def test_repeat_filter_rate_limits_a_flood():
    import logging

    from ferkit.service.limits import RepeatFilter

    f = RepeatFilter(burst=3, window=60)
    records = [logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                                 None, None) for _ in range(1000)]
    assert sum(f.filter(r) for r in records) == 3
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "something else", None, None)
    assert f.filter(other)


def test_real_server_caps_connections_and_drops_idle_ones(recognizer):
    """A real uvicorn server: idle sockets past max_connections get 503 and are closed at once; idle ones are
    closed after header_timeout, and /healthz answers throughout."""
    import socket

    import httpx

    port = free_port()
    app = create_app(ServiceConfig(port=port, workers=1, max_connections=4, header_timeout=1.0), recognizer=recognizer)
    server, thread = start_uvicorn(app)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", port))
    extra.settimeout(5)
    answer = extra.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    assert extra.recv(10) == b""  # closed
    time.sleep(1.5)  # the idle ones are closed by now
    for sock in idle:
        sock.settimeout(2)
        assert sock.recv(10) == b""
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    for sock in idle + [extra]:
        sock.close()
    server.should_exit = True
    thread.join(20)


def test_real_server_refuses_websockets_each_in_its_own_way(recognizer, face_jpeg):
    """What docs/service.md says a browser or client sees: at the handshake HTTP 401 for a wrong key, 403 for a
    foreign Origin, 400 for a foreign Host, each with its JSON error; a stream past max_streams is accepted and
    closed with 1013 "try again later" (before: the same empty 403 as a foreign Origin); the right key works."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    port = free_port()
    app = create_app(ServiceConfig(port=port, workers=1, api_key="s3cret", max_streams=1), recognizer=recognizer)
    server, thread = start_uvicorn(app)
    url = f"ws://127.0.0.1:{port}/v1/stream"
    try:
        for target, headers, status, code in (
                (url + "?api_key=wrong", {}, 401, "unauthorized"),
                (url + "?api_key=s3cret", {"Origin": "http://evil.example"}, 403, "forbidden_origin"),
                (url + "?api_key=s3cret", {"Host": "evil.example"}, 400, None)):
            with pytest.raises(InvalidStatus) as e:
                connect(target, additional_headers=headers, open_timeout=10)
            assert e.value.response.status_code == status, (target, headers)
            if status != 400:  # the Host check answers before the app, in uvicorn's words
                assert json.loads(e.value.response.body)["error"]["code"] == code
        with connect(url + "?api_key=s3cret", additional_headers={"Origin": f"http://127.0.0.1:{port}"}) as ws:
            ws.send(face_jpeg)
            assert json.loads(ws.recv(timeout=30))["faces"]
            with connect(url + "?api_key=s3cret") as second, pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=10)
            assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason.startswith("try again later")
    finally:
        server.should_exit = True
        thread.join(20)
