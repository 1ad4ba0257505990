"""The FastAPI application: settings, middleware, the routers (ferkit.service.routers) and the lifespan."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ferkit import __version__
from ferkit.inference import EmotionRecognizer
from ferkit.service.config import ServiceConfig
from ferkit.service.engine import Engine
from ferkit.service.errors import install_handlers
from ferkit.service.limits import BodyLimitMiddleware, HostCheck, SecurityHeaders, UploadBudget
from ferkit.service.pool import InferencePool
from ferkit.service.routers import health, models, pages, predict, stream
from ferkit.service.schemas import ErrorOut
from ferkit.service.telemetry import Metrics, MetricsMiddleware

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

Results follow ferkit's one result schema (field `schema`, docs/inference.md), as the library's
`Prediction.to_dict()` and `ferkit predict --json` do. `detect_size`, `threshold` and `max_faces` override the
server's face-detection settings for one request (or one stream).

With an API key configured, `/v1/*` and `/metrics` need the header `X-API-Key: KEY` (or `Authorization: Bearer KEY`).
When all workers are busy and the queue is full the answer is 503 with `Retry-After`.
"""


def loopback_hosts(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Host headers a loopback-bound server answers: its own address, the loopback names and `extra`."""
    own = f"[{host}]" if ":" in host else host
    return sorted({"127.0.0.1", "localhost", "[::1]", own.lower(), *(h.lower() for h in extra)})


def build_recognizer(config: ServiceConfig) -> Any:
    # One ONNX Runtime thread per worker by default: several workers each using every core only thrash.
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    return EmotionRecognizer(list(config.model) or None, precision=config.precision, detector=config.detector,
                             detect_size=config.detect_size, threshold=config.threshold,
                             max_faces=config.max_faces or None, threads=threads)


def create_app(config: ServiceConfig | None = None, recognizer: Any = None) -> FastAPI:
    """The service as an ASGI app. `recognizer`: an EmotionRecognizer to use (default: built from `config`)."""
    config = config or ServiceConfig()
    engine = Engine(recognizer or build_recognizer(config), Metrics(), max_pixels=config.max_pixels,
                    pixel_budget=config.pixel_budget, detection={"detect_size": config.detect_size,
                                                                 "threshold": config.threshold,
                                                                 "max_faces": config.max_faces},
                    batch_window=config.batch_window_ms / 1000, batch_faces=config.batch_faces,
                    batch_capacity=config.workers)
    pool = InferencePool(config.workers, config.queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(None, engine.warm_up)
        app.state.ready = True
        batching = (f"batches of up to {config.batch_faces} faces within {config.batch_window_ms:g} ms"
                    if engine.batcher is not None else "no batching")
        log.info("ferkit service ready: model %s, detector %s, %d workers, %s", engine.model_ref["name"],
                 engine.detector, config.workers, batching)
        yield
        # uvicorn has stopped accepting and waited for open requests (timeout_graceful_shutdown); drain the pool.
        app.state.ready = False
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        await asyncio.get_running_loop().run_in_executor(None, engine.close)  # the drained pool's last batch ran

    app = FastAPI(title="ferkit", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # Swagger UI loads its JS from a CDN; /docs is an offline page
                  responses={401: {"model": ErrorOut}, 503: {"model": ErrorOut}})
    app.state.config, app.state.engine, app.state.pool, app.state.metrics = config, engine, pool, engine.metrics
    app.state.ready, app.state.streams = False, 0
    install_handlers(app)
    for router in (pages.router, health.router, models.router, predict.router, stream.router):
        app.include_router(router)
    _middleware(app, config, engine.metrics)
    return app


def _middleware(app: FastAPI, config: ServiceConfig, metrics: Metrics) -> None:
    """Added innermost first: CORS is outermost so that even 401/413 answers carry its headers; the Host check comes
    before everything else the app does."""
    limits = {"/v1/predict": config.request_limit, "/v1/predict/batch": config.batch_limit}
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: limits.get(path, 64 * 1024),
                       budget=UploadBudget(config.upload_budget_bytes), timeout=config.body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    if config.is_loopback:
        app.add_middleware(HostCheck, allowed_hosts=loopback_hosts(config.host, config.allowed_hosts))
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"],
                           expose_headers=["Retry-After"], max_age=600)
