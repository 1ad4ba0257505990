"""Cheap checks on uploaded bytes before decoding (size, format, pixel count from the header) and on request bodies."""

from __future__ import annotations

from ferkit.errors import FerkitError
from ferkit.images import ImageInfo, probe
from ferkit.service.errors import ApiError, from_ferkit_error

# Pillow's names of what the service decodes (ferkit.images): the common web formats only, the smallest surface.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/jpg", "image/x-ms-bmp",
               "application/octet-stream"}


def check_image_bytes(data: bytes, name: str, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Raise ApiError for bytes the service will not decode (read from the header only); return format and size."""
    if not data:
        raise ApiError(400, "empty_body", f"{name}: empty upload")
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"{name}: {len(data):,} bytes, over the limit of {max_bytes:,}")
    try:
        return probe(data, name, formats=FORMATS, max_pixels=max_pixels, max_bytes=max_bytes)
    except FerkitError as e:
        raise from_ferkit_error(e) from None


class BodyLimitMiddleware:
    """Refuse request bodies over a per-path limit with 413, from Content-Length or while streaming.

    It runs before any parsing, so a multipart form or a JSON document over the limit is never buffered whole.
    """

    def __init__(self, app, limit_for):  # limit_for(path) -> bytes
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_413(send, limit)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_413(send, limit)
        except BaseExceptionGroup as group:  # raised through an anyio task group
            if not group.subgroup(_TooLarge) or group.subgroup(lambda e: not isinstance(e, _TooLarge)):
                raise
            if not started:
                await _send_413(send, limit)


class _TooLarge(Exception):
    pass


async def _send_413(send, limit: int) -> None:
    import json

    body = json.dumps(
        {"error": {"status": 413, "code": "too_large", "message": f"request body over the limit of {limit:,} bytes"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
