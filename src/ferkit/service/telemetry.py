"""Prometheus telemetry of one app (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Label values are limited to these paths so that scanners probing random URLs cannot blow up cardinality.
KNOWN_PATHS = (
    "/", "/docs", "/openapi.json", "/healthz", "/readyz", "/metrics",
    "/v1/models", "/v1/predict", "/v1/predict/batch", "/v1/stream",
)
# The same for methods: a client can send any token as a method.
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ferkit_http_requests", "HTTP requests by path, method and status", ["path", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "ferkit_http_request_duration_seconds", "HTTP request latency", ["path"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "ferkit_inference_duration_seconds", "Decode + detect + classify time of one image in a worker",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.faces = Histogram(
            "ferkit_faces_per_image", "Faces found per image", buckets=(0, 1, 2, 3, 5, 10, 20, 50), registry=r
        )
        self.images = Counter("ferkit_images", "Images processed, by outcome", ["outcome"], registry=r)
        self.rejected = Counter("ferkit_rejected", "Requests refused with 503 because the pool was full", registry=r)
        self.pending = Gauge("ferkit_pool_pending", "Inference jobs running or queued", registry=r)
        self.streams = Gauge("ferkit_stream_connections", "Open /v1/stream WebSockets", registry=r)
        self.frames = Counter("ferkit_stream_frames", "Frames answered on /v1/stream", registry=r)
        # Micro-batching (ferkit.service.batcher): one observation per batched classification call.
        self.batch_images = Histogram(
            "ferkit_batch_images", "Images (requests) whose faces were classified together in one batched call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), registry=r,
        )
        self.batch_faces = Histogram(
            "ferkit_batch_faces", "Face crops per batched classification call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.batch_wait = Histogram(
            "ferkit_batch_wait_seconds", "Time an image's crops waited for their batch to start",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it, whatever the outcome (errors included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.requests.labels(path, method, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
