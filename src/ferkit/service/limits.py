"""Cheap checks on uploaded bytes before decoding: size, format (magic bytes), pixel count, truncation."""

from __future__ import annotations

import struct

from ferkit.service.errors import ApiError

# Formats OpenCV decodes everywhere; each one's size can be read from its header (decompression bombs).
FORMATS = ("jpeg", "png", "webp", "bmp")
IMAGE_TYPES = {f"image/{f}" for f in FORMATS} | {"image/jpg", "image/x-ms-bmp", "application/octet-stream"}


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the header is unreadable."""
    try:
        if fmt == "png":
            return struct.unpack(">II", data[16:24])
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L":
                b = int.from_bytes(data[21:25], "little")
                return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            return None
        if fmt == "jpeg":
            return _jpeg_size(data)[0]
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((w, h) or None, offset of the first start-of-scan or -1), walking the top-level segments."""
    size = None
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return size, -1
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (seglen,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF) and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            size = (w, h)
        if marker == 0xDA:
            return size, i
        i += 2 + seglen
    return size, -1


def check_image_bytes(data: bytes, name: str, max_bytes: int, max_pixels: int) -> str:
    """Raise ApiError for bytes the service will not decode; return the format."""
    if not data:
        raise ApiError(400, "empty_body", f"{name}: empty upload")
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"{name}: {len(data):,} bytes, over the limit of {max_bytes:,}")
    fmt = sniff(data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type", f"{name}: not a JPEG, PNG, WebP or BMP image")
    size = header_size(data, fmt)
    if size is None:
        raise ApiError(400, "bad_image", f"{name}: {fmt.upper()} header is unreadable (corrupt or truncated)")
    w, h = size
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels", f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels:,}")
    if w == 0 or h == 0:
        raise ApiError(400, "bad_image", f"{name}: image is {w}x{h} pixels")
    # OpenCV decodes a truncated JPEG into a half-grey image without complaint; the end-of-image marker
    # after the first scan tells a complete file (entropy-coded data never holds FF D9).
    if fmt == "jpeg":
        _, sos = _jpeg_size(data)
        if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
            raise ApiError(400, "bad_image", f"{name}: truncated JPEG (no end-of-image marker)")
    return fmt


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
