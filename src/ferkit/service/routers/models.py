"""The loaded model(s) and the server's settings that shape answers."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ferkit.service.deps import RequireKey
from ferkit.service.schemas import ModelsOut

router = APIRouter(tags=["models"], dependencies=[RequireKey])


@router.get("/v1/models", response_model=ModelsOut, response_model_exclude_none=True,
            summary="The loaded model(s): classes, input size, version and model-card metrics")
async def models(request: Request) -> dict:
    engine, config = request.app.state.engine, request.app.state.config
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
        "detect_size": config.detect_size,
        "threshold": config.threshold,
        "max_faces": config.max_faces,
        "batch_window_ms": config.batch_window_ms if engine.batcher is not None else 0.0,
        "batch_faces": config.batch_faces if engine.batcher is not None else 0,
    }
