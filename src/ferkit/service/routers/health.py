"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ferkit.service.deps import RequireKey
from ferkit.service.schemas import ErrorOut, HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": ErrorOut}},
            summary="Readiness: the model is loaded and warm, and the service is not shutting down")
async def readyz(request: Request) -> Any:
    if not request.app.state.ready or request.app.state.pool.closed:
        return JSONResponse({"error": {"status": 503, "code": "not_ready", "message": "not ready"}},
                            status_code=503, headers={"Retry-After": "1"})
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", dependencies=[RequireKey],
            responses={200: {"content": {"text/plain": {}}}})
async def prometheus(request: Request) -> Response:
    metrics = request.app.state.metrics
    metrics.pending.set(request.app.state.pool.pending)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
