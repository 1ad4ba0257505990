"""WebSocket /v1/stream: JPEG frames in, one JSON result per frame out, faces tracked and smoothed across frames by
the library's own stream (EmotionRecognizer.stream over the stream's frames, engine.StreamSession), the generator
`ferkit predict clip.mp4` consumes."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ferkit.service.deps import check_key, parse_tta, run
from ferkit.service.errors import ApiError, error_response
from ferkit.service.limits import check_image_bytes

log = logging.getLogger("ferkit.service")
router = APIRouter()


def origin_allowed(ws: WebSocket, origin: str) -> bool:
    """A page may open the stream from this server itself or from a CORS origin; anything else is a foreign page
    driving the visitor's browser (the API key, if any, would not be asked for: the page has it in localStorage)."""
    if origin in ws.app.state.config.cors_origins:
        return True
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    return bool(netloc) and netloc == ws.headers.get("host", "").lower()


@router.websocket("/v1/stream")
async def stream(ws: WebSocket, detect: bool | None = None, tta: str = "none", top_k: int | None = None,
                 window: int | None = None, api_key: str | None = None, detect_size: int | None = None,
                 threshold: float | None = None, max_faces: int | None = None) -> None:
    state, config = ws.app.state, ws.app.state.config
    # Each refusal has its own answer. A foreign page and a wrong key are refused before the handshake completes,
    # as HTTP 403 / 401 with the service's JSON error (a browser's WebSocket sees only an error); a full server
    # accepts and closes at once with 1013 "try again later", which a page and a script both read with its reason.
    origin = ws.headers.get("origin")
    if origin is not None and not origin_allowed(ws, origin):
        log.info("WebSocket from origin %r refused (not this server, not in cors_origins)", origin[:100])
        await _refuse(ws, ApiError(403, "forbidden_origin", "this page's origin may not open the stream "
                                   "(not this server, not in cors_origins)"))
        return
    try:
        check_key(ws, api_key)
    except ApiError as e:
        await _refuse(ws, e)
        return
    if state.streams >= config.max_streams:
        await ws.accept()
        await ws.close(code=1013, reason=f"try again later: {config.max_streams} streams open (the limit)")
        return
    state.streams += 1
    try:
        await ws.accept()
    except BaseException:
        state.streams -= 1
        raise
    try:
        detection = {k: v for k, v in (("detect_size", detect_size), ("threshold", threshold),
                                       ("max_faces", max_faces)) if v is not None}
        await _serve(ws, detect, tta, top_k, window, detection)
    finally:
        state.streams -= 1


async def _refuse(ws: WebSocket, err: ApiError) -> None:
    """An HTTP answer to the handshake where the server offers the ASGI denial-response extension (uvicorn's
    websockets implementations, the test client); elsewhere a close before accept, which the server sends as 403."""
    if "websocket.http.response" in (ws.scope.get("extensions") or {}):
        answer = error_response(err)
        answer.headers["x-content-type-options"] = "nosniff"
        await ws.send_denial_response(answer)
    else:
        await ws.close(code=1008, reason=err.message)


async def _serve(ws: WebSocket, detect: bool | None, tta: str, top_k: int | None, window: int | None,
                 detection: dict) -> None:
    state, config, engine = ws.app.state, ws.app.state.config, ws.app.state.engine
    if (top_k is not None and not 1 <= top_k <= len(engine.classes)) or (window is not None and window < 1):
        await ws.close(code=1008, reason="top_k must be 1..number of classes and window >= 1")
        return
    try:
        tta = parse_tta(tta)
        session = engine.video(window or config.stream_window, detect, tta, detection)
    except ApiError as e:
        await ws.close(code=1008, reason=e.message)
        return
    state.metrics.streams.inc()
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
                    session = engine.video(window or config.stream_window, detect, tta, detection)
                    await ws.send_json({"type": "reset"})
                    continue
                await ws.send_json({"error": {"status": 400, "code": "unknown_message",
                                              "message": "send frames as binary JPEG messages"}})
                continue
            frame += 1
            try:
                check_image_bytes(data, f"frame {frame}", config.max_upload_bytes, config.max_pixels)
                result = await run(ws.app, engine.predict_frame, data, session, top_k)
            except ApiError as e:
                await ws.send_json({"frame": frame, "error": e.to_dict()})
                continue
            result.pop("source", None)
            result.pop("time", None)
            result["frame"] = frame
            state.metrics.frames.inc()
            await ws.send_json(result)
    except WebSocketDisconnect:
        pass
    finally:
        state.metrics.streams.dec()
