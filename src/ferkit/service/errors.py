"""Every failure becomes a small JSON body with a status code; nothing else (no tracebacks) reaches the client."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ferkit.errors import FerkitError
from ferkit.images import EmptyImage, ImageTooLarge, UnknownFormat

log = logging.getLogger("ferkit.service")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    500: "internal_error",
    503: "busy",
}


class ApiError(Exception):
    """A client-facing error: status, a stable machine code and a one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message}


def from_ferkit_error(e: FerkitError) -> ApiError:
    """Map the library's one-line user errors to HTTP by their type: over a limit 413, not an image format 415, no
    bytes at all 400 empty_body, any other 400 bad_image. The message is the library's."""

    msg = str(e)
    if isinstance(e, ImageTooLarge):
        return ApiError(413, "too_large" if e.limit == "bytes" else "too_many_pixels", msg)
    if isinstance(e, UnknownFormat):
        return ApiError(415, "unsupported_media_type", msg)
    if isinstance(e, EmptyImage):
        return ApiError(400, "empty_body", msg)
    return ApiError(400, "bad_image", msg)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.to_dict()}, status_code=err.status, headers=err.headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(FerkitError)
    async def _ferkit_error(_request: Request, exc: FerkitError) -> JSONResponse:
        return error_response(from_ferkit_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
        return error_response(ApiError(422, "invalid_parameter", "; ".join(parts) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _exc: ClientDisconnect) -> JSONResponse:
        # The client hung up mid-upload: nobody reads this answer, and it is no internal error.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return error_response(ApiError(400, "client_disconnected", "the client closed the connection"))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log only.
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal_error", "internal server error (see the server log)"))
