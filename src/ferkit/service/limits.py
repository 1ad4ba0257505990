"""Cheap checks on uploaded bytes before decoding (size, format, pixel count from the header) and on request bodies."""

from __future__ import annotations

import asyncio
import json
import logging
import time

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


class UploadBudget:
    """Bytes of request bodies the server holds at once, all requests together (one event loop: no lock)."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class BodyLimitMiddleware:
    """Bodies are counted while they arrive, before any parsing: over the path's limit 413; past the shared
    upload budget 503 (busy, retry later); slower than `timeout` seconds 408. A body is held until its request ends,
    so the budget also bounds the bodies waiting for a worker."""

    def __init__(self, app, limit_for, budget: UploadBudget, timeout: float):  # limit_for(path) -> bytes
        self.app = app
        self.limit_for = limit_for
        self.budget = budget
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope.get("headers") or []).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > limit:
            await _send_error(send, 413, "too_large", f"request body over the limit of {limit:,} bytes")
            return
        held = 0
        if declared and not self.budget.take(declared):
            await _send_busy(send)
            return
        held = declared or 0
        received = 0
        complete = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        started = False

        async def limited_receive():
            nonlocal received, held, complete
            if complete:  # the body is in; what follows is the wait for a disconnect, which has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    raise _TooLarge
                if received > held:
                    if not self.budget.take(received - held):
                        raise _Busy
                    held = received
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (_TooLarge, _Busy, _TooSlow) as e:
            if not started:
                await _answer(send, e, limit)
        except BaseExceptionGroup as group:  # raised through an anyio task group
            ours = group.subgroup((_TooLarge, _Busy, _TooSlow))
            if ours is None or group.subgroup(lambda e: not isinstance(e, _TooLarge | _Busy | _TooSlow)):
                raise
            if not started:
                await _answer(send, ours.exceptions[0], limit)
        finally:
            self.budget.give(held)


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    pass


class _TooSlow(Exception):
    pass


async def _answer(send, e: BaseException, limit: int) -> None:
    if isinstance(e, _TooLarge):
        await _send_error(send, 413, "too_large", f"request body over the limit of {limit:,} bytes")
    elif isinstance(e, _Busy):
        await _send_busy(send)
    else:
        await _send_error(send, 408, "timeout", "the request body arrived too slowly")


async def _send_busy(send) -> None:
    await _send_error(send, 503, "busy", "too many uploads in progress; retry later", [(b"retry-after", b"1")])


async def _send_error(send, status: int, code: str, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"x-content-type-options", b"nosniff"), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """Starlette's TrustedHostMiddleware (DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends
    'Host: evil.example'), answering in the service's JSON error format."""

    def __init__(self, app, allowed_hosts: list[str]):
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app = app

        async def admitted(scope, receive, send) -> None:
            scope["ferkit.host_ok"] = True
            await app(scope, receive, send)

        self.check = TrustedHostMiddleware(admitted, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.check(scope, receive, send)  # a WebSocket with a foreign Host is refused at the handshake
            return

        async def json_send(message) -> None:
            if scope.get("ferkit.host_ok"):
                await send(message)
            elif message["type"] == "http.response.start":
                host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")[:100]
                await _send_error(send, 400, "bad_host", f"Host header {host!r} is not this server's address")

        await self.check(scope, receive, json_send)


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` on every answer (a browser never runs an error body as a script)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, with_headers)


def guarded_protocol(max_connections: int, header_timeout: float) -> type:
    """uvicorn's HTTP protocol, refusing connections past `max_connections` at once (answered 503 and closed, so the
    process never runs out of file descriptors) and closing a connection that sends no request in `header_timeout`
    seconds (idle sockets would otherwise hold their slot forever)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # uvicorn's own choice when httptools is not installed
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    body = json.dumps({"error": {"status": 503, "code": "busy", "message": "too many connections"}}).encode()
    full = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    class Guarded(Base):  # type: ignore[misc, valid-type]
        admitted = False
        timer = None

        def connection_made(self, transport) -> None:
            if len(self.server_state.connections) >= max_connections:
                _refused.warning("connection refused: %d connections open (the limit)", max_connections)
                transport.write(full)
                transport.close()
                return
            self.admitted = True
            super().connection_made(transport)
            self.timer = self.loop.call_later(header_timeout, self._idle)

        def _idle(self) -> None:
            if self.scope is None and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.admitted:
                super().data_received(data)

        def connection_lost(self, exc) -> None:
            if self.timer is not None:
                self.timer.cancel()
            if self.admitted:
                super().connection_lost(exc)

        def eof_received(self) -> None:
            if self.admitted:
                super().eof_received()

    return Guarded


_refused = logging.getLogger("ferkit.service.connections")


class RepeatFilter(logging.Filter):
    """At most `burst` records of one message per `window` seconds, then one line saying how many were dropped:
    a flood of identical errors (accept() failing, refused connections) must not fill the disk."""

    def __init__(self, burst: int = 5, window: float = 10.0):
        super().__init__()
        self.burst, self.window = burst, window
        self.seen: dict[tuple[str, str], list[float]] = {}  # (logger, message template) -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        start, count = self.seen.get(key, (now, 0))
        if now - start > self.window:
            if count > self.burst:
                record.msg = f"{record.msg} (and {count - self.burst} more like it in {self.window:g} s)"
            start, count = now, 0
        self.seen[key] = [start, count + 1]
        if len(self.seen) > 1000:
            self.seen.clear()
        return count < self.burst


def install_log_limits() -> None:
    """Attach one RepeatFilter to the loggers a connection flood writes to (uvicorn, asyncio, ferkit's)."""
    shared = RepeatFilter()
    for name in ("uvicorn.error", "asyncio", "ferkit.service", "ferkit.service.connections"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(shared)
