"""The FastAPI application: routes, request parsing, API key, CORS, limits, metrics and the browser page."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile

from ferkit import __version__
from ferkit.inference.results import SCHEMA
from ferkit.service.config import ServiceConfig
from ferkit.service.engine import Engine
from ferkit.service.errors import ApiError, install_handlers
from ferkit.service.limits import (
    IMAGE_TYPES,
    BodyLimitMiddleware,
    HostCheck,
    SecurityHeaders,
    UploadBudget,
    check_image_bytes,
)
from ferkit.service.metrics import Metrics, MetricsMiddleware
from ferkit.service.pool import InferencePool
from ferkit.service.schemas import (
    BATCH_BODY,
    IMAGE_BODY,
    BatchOut,
    ErrorOut,
    HealthOut,
    ModelsOut,
    PredictionOut,
)

log = logging.getLogger("ferkit.service")

DESCRIPTION = """\
Facial expression recognition over HTTP. Every answer is JSON; every error is
`{"error": {"status", "code", "message"}}` with a 4xx/5xx status and never a traceback.

* `POST /v1/predict`: one image (multipart field `file`, a raw body with an image content type,
  or JSON `{"image": "<base64>"}`), answered with every face: box, label, probabilities, model name and version.
* `POST /v1/predict/batch`: several images (multipart, any number of file fields, or JSON
  `{"images": [{"name": ..., "image": "<base64>"}]}`), answered in order; a bad item gets its own `error`.
* `WebSocket /v1/stream`: send JPEG frames as binary messages, get one JSON message per frame with each face's
  `track_id` and emotions smoothed over the track (EMA over `window` frames). A frame that cannot be read gets
  `{"frame": n, "error": {...}}` and the stream goes on. Send the text `{"type": "reset"}` to forget the tracks.
  With an API key, pass it as `?api_key=` (browsers cannot set WebSocket headers).
* `GET /v1/models`, `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus).

With an API key configured, `/v1/*` and `/metrics` need the header `X-API-Key: KEY` (or `Authorization: Bearer KEY`).
When all workers are busy and the queue is full the answer is 503 with `Retry-After`.
"""


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
DetectQ = Annotated[
    bool | None,
    Query(description="Detect faces (true), or take the whole image as one face crop (false). "
          "Default: detect unless the image is exactly the model's input size."),
]
TopKQ = Annotated[int | None, Query(ge=1, description="Keep only the k most probable classes per face.")]
TtaQ = Annotated[bool, Query(description="Test-time augmentation: also classify the mirrored crop and average.")]


def _static(name: str) -> str:
    return (resources.files("ferkit.service") / "static" / name).read_text(encoding="utf-8")


def loopback_hosts(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Host headers a loopback-bound server answers: its own address, the loopback names and `extra`."""
    own = f"[{host}]" if ":" in host else host
    return sorted({"127.0.0.1", "localhost", "[::1]", own.lower(), *(h.lower() for h in extra)})


def page_headers(html: str) -> dict[str, str]:
    """Content-Security-Policy of a page: its own inline script (by hash) and this server only; no framing."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
           "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def create_app(config: ServiceConfig | None = None, recognizer: Any = None) -> FastAPI:
    """The service as an ASGI app. `recognizer`: an EmotionRecognizer to use (default: built from `config`)."""
    config = (config or ServiceConfig()).validate()
    if recognizer is None:
        from ferkit.inference import EmotionRecognizer

        # One ONNX Runtime thread per worker by default: several workers each using every core only thrash.
        threads = max(1, (os.cpu_count() or 1) // config.workers)
        model: Any = list(config.model) if len(config.model) > 1 else (config.model[0] if config.model else None)
        recognizer = EmotionRecognizer(model, detector=config.detector, threads=threads)
    metrics = Metrics()
    engine = Engine(recognizer, metrics, max_pixels=config.max_pixels, pixel_budget=config.pixel_budget)
    pool = InferencePool(config.workers, config.queue)
    state: dict[str, Any] = {"ready": False, "streams": 0}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(None, engine.warm_up)
        state["ready"] = True
        log.info("ferkit service ready: model %s, detector %s, %d workers", engine.model_ref["name"],
                 engine.detector, config.workers)
        yield
        # uvicorn has stopped accepting and waited for open requests (timeout_graceful_shutdown); drain the pool.
        state["ready"] = False
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    app = FastAPI(
        title="ferkit",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its JS from a CDN; /docs is an offline page instead
        redoc_url=None,
        responses={401: {"model": ErrorOut}, 503: {"model": ErrorOut}},
    )
    app.state.config = config
    app.state.engine = engine
    app.state.pool = pool
    app.state.metrics = metrics
    install_handlers(app)

    def limit_for(path: str) -> int:
        if path == "/v1/predict":
            return config.request_limit
        if path == "/v1/predict/batch":
            return config.batch_limit
        return 64 * 1024

    # Added innermost first: CORS is outermost so that even 401/413 answers carry its headers; the Host check
    # comes before everything else the app does.
    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for, budget=UploadBudget(config.upload_budget_bytes),
                       timeout=config.body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    if config.is_loopback:
        app.add_middleware(HostCheck, allowed_hosts=loopback_hosts(config.host, config.allowed_hosts))
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
            expose_headers=["Retry-After"],
            max_age=600,
        )

    def check_key(headers: Any, query_key: str | None = None) -> None:
        if config.api_key is None:
            return
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None:
            given = query_key
        if given is None or not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key (header X-API-Key)",
                           {"WWW-Authenticate": 'Bearer realm="ferkit"'})

    async def run(fn: Any, *args: Any) -> Any:
        try:
            return await pool.run(fn, *args)
        except ApiError as e:
            if e.status == 503:
                metrics.rejected.inc()
            raise

    def refuse_if_full() -> None:
        """The pool's answer before the body is read: a full pool never makes the server buffer an upload."""
        if pool.full:
            metrics.rejected.inc()
            if pool.closed:
                raise ApiError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})
            raise ApiError(503, "busy", f"all {pool.workers} workers busy and the queue full; retry later",
                           {"Retry-After": str(pool.retry_after())})

    def check_top_k(top_k: int | None) -> None:
        if top_k is not None and top_k > len(engine.classes):
            raise ApiError(422, "invalid_parameter", f"top_k: {top_k} is more than the {len(engine.classes)} classes")

    # -- pages ---------------------------------------------------------------------------------------------------
    index_html = _static("index.html")
    docs_html = _static("docs.html")
    index_headers, docs_headers = page_headers(index_html), page_headers(docs_html)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(index_html, headers=index_headers)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html, headers=docs_headers)

    # -- health --------------------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=HealthOut, tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=HealthOut, tags=["health"], responses={503: {"model": ErrorOut}},
             summary="Readiness: the model is loaded and warm, and the service is not shutting down")
    async def readyz() -> Any:
        if not state["ready"] or pool.closed:
            return JSONResponse({"error": {"status": 503, "code": "not_ready", "message": "not ready"}},
                                status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus(request: Request) -> Response:
        check_key(request.headers)
        metrics.pending.set(pool.pending)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- API -----------------------------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelsOut, response_model_exclude_none=True, tags=["models"],
             summary="The loaded model(s): classes, input size, version and model-card metrics")
    async def models(request: Request) -> dict:
        check_key(request.headers)
        return {
            "models": engine.describe(),
            "classes": engine.classes,
            "detector": engine.detector,
            "workers": config.workers,
            "queue": config.queue,
            "max_upload_mb": config.max_upload_mb,
            "max_batch": config.max_batch,
            "max_pixels": config.max_pixels,
            "stream_window": config.stream_window,
        }

    @app.post("/v1/predict", response_model=PredictionOut, response_model_exclude_none=True, tags=["predict"],
              summary="Emotions of every face in one image", openapi_extra=IMAGE_BODY,
              responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut},
                         422: {"model": ErrorOut}})
    async def predict(request: Request, detect: DetectQ = None, top_k: TopKQ = None, tta: TtaQ = False) -> Any:
        check_key(request.headers)
        check_top_k(top_k)
        refuse_if_full()
        items = await read_images(request, single=True)
        name, data = items[0]
        if isinstance(data, ApiError):
            raise data
        check_image_bytes(data, name, config.max_upload_bytes, config.max_pixels)
        return await run(engine.predict_bytes, data, name, detect, tta, top_k)

    @app.post("/v1/predict/batch", response_model=BatchOut, response_model_exclude_none=True, tags=["predict"],
              summary="Several images in one request, answered in order", openapi_extra=BATCH_BODY,
              responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}})
    async def predict_batch(request: Request, detect: DetectQ = None, top_k: TopKQ = None, tta: TtaQ = False) -> Any:
        check_key(request.headers)
        check_top_k(top_k)
        refuse_if_full()
        items = await read_images(request, single=False)
        if not items:
            raise ApiError(400, "no_file", "no images in the request")
        if len(items) > config.max_batch:
            raise ApiError(413, "too_many_images", f"{len(items)} images; the limit is {config.max_batch} per request")
        jobs: list[tuple[int, str, bytes]] = []
        results: list[dict | None] = [None] * len(items)
        for i, (name, data) in enumerate(items):
            try:
                if isinstance(data, ApiError):
                    raise data
                check_image_bytes(data, name, config.max_upload_bytes, config.max_pixels)
                jobs.append((i, name, data))
            except ApiError as e:
                results[i] = {"schema": SCHEMA, "index": i, "source": name, "error": e.to_dict()}

        def work() -> list[tuple[int, dict]]:
            out = []
            for i, name, data in jobs:
                try:
                    out.append((i, {"index": i, **engine.predict_bytes(data, name, detect, tta, top_k)}))
                except ApiError as e:
                    out.append((i, {"schema": SCHEMA, "index": i, "source": name, "error": e.to_dict()}))
            return out

        if jobs:  # the whole batch takes one pool slot: a batch never starves single requests of more than one
            for i, res in await run(work):
                res.pop("model", None)
                results[i] = res
        return {"model": engine.model_ref, "results": results}

    async def read_images(request: Request, single: bool) -> list[tuple[str, bytes | ApiError]]:
        """(name, bytes) of each image in the body: multipart files, a raw image body, or base64 in JSON."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=1000 if not single else 1, max_fields=1000)
            files = [(v.filename or k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise ApiError(400, "no_file", "multipart form without a file (send the image in field 'file')")
            out: list[tuple[str, bytes | ApiError]] = [(name, await f.read()) for name, f in files]
            await form.close()
            return out
        if ctype == "application/json":
            return parse_json_images(await request.body(), single)
        if ctype in IMAGE_TYPES or (ctype.startswith("image/") and single):
            body = await request.body()
            if not body:
                raise ApiError(400, "empty_body", "empty request body")
            return [(request.headers.get("x-filename", "image"), body)]
        what = f"content type {ctype!r}" if ctype else "no content type"
        raise ApiError(415, "unsupported_media_type",
                       f"{what}; send multipart/form-data, an image (image/jpeg, image/png, ...) or application/json")

    def parse_json_images(body: bytes, single: bool) -> list[tuple[str, bytes | ApiError]]:
        if not body:
            raise ApiError(400, "empty_body", "empty request body")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "malformed_json", f"malformed JSON: {str(e).splitlines()[0][:120]}") from None
        except RecursionError:
            raise ApiError(400, "malformed_json", "malformed JSON: nested too deeply") from None
        key = "image" if single else "images"
        if not isinstance(doc, dict) or key not in doc:
            raise ApiError(400, "malformed_json", f"JSON body needs a field {key!r}")
        entries = [doc] if single else doc[key]
        if not isinstance(entries, list):
            raise ApiError(400, "malformed_json", "'images' must be a list")
        out: list[tuple[str, bytes | ApiError]] = []
        for i, entry in enumerate(entries):
            raw = entry.get("image") if isinstance(entry, dict) else entry
            name = str(entry.get("name") or f"image {i}") if isinstance(entry, dict) else f"image {i}"
            if not isinstance(raw, str):
                out.append((name, ApiError(400, "malformed_json", f"{name}: 'image' must be a base64 string")))
                continue
            if raw.startswith("data:") and "," in raw:  # a data: URL straight from a browser
                raw = raw.split(",", 1)[1]
            try:
                out.append((name, base64.b64decode(raw, validate=True)))
            except (binascii.Error, ValueError):
                out.append((name, ApiError(400, "bad_base64", f"{name}: 'image' is not valid base64")))
        if single and isinstance(out[0][1], ApiError):
            raise out[0][1]
        return out

    # -- live video ----------------------------------------------------------------------------------------------
    @app.websocket("/v1/stream")
    async def stream(
        ws: WebSocket,
        detect: bool | None = None,
        tta: bool = False,
        top_k: int | None = None,
        window: int | None = None,
        api_key: str | None = None,
    ) -> None:

        # Refused before the handshake completes: the client sees HTTP 403 (a browser's WebSocket only an error).
        origin = ws.headers.get("origin")
        if origin is not None and not origin_allowed(origin, ws.headers.get("host", "")):
            log.info("WebSocket from origin %r refused (not this server, not in cors_origins)", origin[:100])
            await ws.close(code=1008, reason="origin not allowed")
            return
        try:
            check_key(ws.headers, api_key)
        except ApiError as e:
            await ws.close(code=1008, reason=e.message)
            return
        if state["streams"] >= config.max_streams:
            await ws.close(code=1013, reason=f"{config.max_streams} streams open (the limit); retry later")
            return
        state["streams"] += 1
        try:
            await ws.accept()
        except BaseException:
            state["streams"] -= 1
            raise
        try:
            await serve_stream(ws, detect, tta, top_k, window)
        finally:
            state["streams"] -= 1

    def origin_allowed(origin: str, host: str) -> bool:
        """A page may open the stream from this server itself or from a CORS origin; anything else is a foreign page
        driving the visitor's browser (the API key, if any, would not be asked for: the page has it in localStorage)."""
        from urllib.parse import urlsplit

        if origin in config.cors_origins:
            return True
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            return False
        return bool(netloc) and netloc == host.lower()

    async def serve_stream(ws: WebSocket, detect: bool | None, tta: bool, top_k: int | None,
                           window: int | None) -> None:
        if (top_k is not None and not 1 <= top_k <= len(engine.classes)) or (window is not None and window < 1):
            await ws.close(code=1008, reason="top_k must be 1..number of classes and window >= 1")
            return
        pipeline = engine.video(window or config.stream_window, detect, tta)
        metrics.streams.inc()
        frame = 0
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    text = message.get("text") or ""
                    try:
                        doc = json.loads(text)
                    except (ValueError, RecursionError):
                        await ws.send_json({"error": {"status": 400, "code": "malformed_json",
                                                      "message": "text messages must be JSON, e.g. {\"type\": \"reset\"}"}})
                        continue
                    if isinstance(doc, dict) and doc.get("type") == "reset":
                        pipeline = engine.video(window or config.stream_window, detect, tta)
                        await ws.send_json({"type": "reset"})
                        continue
                    await ws.send_json({"error": {"status": 400, "code": "unknown_message",
                                                  "message": "send frames as binary JPEG messages"}})
                    continue
                frame += 1
                try:
                    check_image_bytes(data, f"frame {frame}", config.max_upload_bytes, config.max_pixels)
                    result = await run(engine.predict_frame, data, pipeline, top_k)
                except ApiError as e:
                    await ws.send_json({"frame": frame, "error": e.to_dict()})
                    continue
                result.pop("source", None)
                result["frame"] = frame
                result.pop("time", None)
                metrics.frames.inc()
                await ws.send_json(result)
        except WebSocketDisconnect:
            pass
        finally:
            metrics.streams.dec()

    return app
