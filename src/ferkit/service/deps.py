"""What every route shares, as FastAPI dependencies: the API key check, the pool, the limits of a request."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from starlette.requests import HTTPConnection

from ferkit.errors import FerkitError
from ferkit.service.errors import ApiError
from ferkit.views import tta_mode


def check_key(conn: HTTPConnection, query_key: str | None = None) -> None:
    """The API key from X-API-Key, `Authorization: Bearer`, or (WebSockets: browsers cannot set headers) ?api_key=."""
    expected = conn.app.state.config.api_key
    if expected is None:
        return
    given = conn.headers.get("x-api-key")
    auth = conn.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None:
        given = query_key
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong API key (header X-API-Key)",
                       {"WWW-Authenticate": 'Bearer realm="ferkit"'})


def require_key(request: Request) -> None:
    check_key(request)


RequireKey = Depends(require_key)


def refuse_if_full(request: Request) -> None:
    """The pool's answer before the body is read: a full pool never makes the server buffer an upload."""
    pool, metrics = request.app.state.pool, request.app.state.metrics
    if pool.full:
        metrics.rejected.inc()
        if pool.closed:
            raise ApiError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})
        raise ApiError(503, "busy", f"all {pool.workers} workers busy and the queue full; retry later",
                       {"Retry-After": str(pool.retry_after())})


async def run(app: Any, fn: Any, *args: Any) -> Any:
    """`fn(*args)` in the inference pool; a refusal (503) is counted."""
    try:
        return await app.state.pool.run(fn, *args)
    except ApiError as e:
        if e.status == 503:
            app.state.metrics.rejected.inc()
        raise


# Query parameters of the predict routes and the stream (module level: FastAPI reads these names' annotations).
DetectQ = Annotated[
    bool | None,
    Query(description="Detect faces (true), or take the whole image as one face crop (false). "
          "Default: detect unless the image is exactly the model's input size."),
]
TopKQ = Annotated[int | None, Query(ge=1, description="Keep only the k most probable classes per face.")]
# Booleans as FastAPI read them before TTA had modes: true is the mirror, as in the library.
_TTA_BOOLEANS = {"true": "flip", "t": "flip", "1": "flip", "yes": "flip", "y": "flip", "on": "flip",
                 "false": "none", "f": "none", "0": "none", "no": "none", "n": "none", "off": "none"}


def parse_tta(value: str) -> str:
    """A `tta` query value as a TTA mode (ferkit.views.TTA_MODES), or a 422 naming the field."""
    # An unescaped "+" in a query string arrives as a space: ?tta=flip+crops means flip+crops.
    mode = _TTA_BOOLEANS.get(value.lower(), value.replace(" ", "+"))
    try:
        tta_mode(mode)
    except FerkitError as e:
        raise ApiError(422, "invalid_parameter", f"query parameter tta: {e}") from None
    return mode


def tta_option(tta: Annotated[str, Query(
        description="Test-time augmentation: none (default); flip (or true): also the mirrored crop; crops: the "
                    "centre and four corners; flip+crops: all ten; auto: the mode the model's card chose on "
                    "validation data. The views' probabilities are averaged.")] = "none") -> str:
    return parse_tta(tta)


TtaQ = Annotated[str, Depends(tta_option)]
DetectSizeQ = Annotated[int | None, Query(ge=0, le=8192, description="Reduce the image so its long side is at most "
                                          "this for detection (0: full size). Default: the server's --detect-size.")]
ThresholdQ = Annotated[float | None, Query(ge=0, le=1, description="Minimum detector score. Default: the server's "
                                           "--threshold.")]
MaxFacesQ = Annotated[int | None, Query(ge=0, description="Keep the N most confident faces (0: all). Default: the "
                                        "server's --max-faces.")]


def detection(detect_size: DetectSizeQ = None, threshold: ThresholdQ = None, max_faces: MaxFacesQ = None
              ) -> dict[str, Any]:
    """This request's detection settings (only those it gives; the server's defaults fill in the rest)."""
    given = {"detect_size": detect_size, "threshold": threshold, "max_faces": max_faces}
    return {k: v for k, v in given.items() if v is not None}


Detection = Annotated[dict, Depends(detection)]


def check_top_k(request: Request, top_k: TopKQ = None) -> int | None:
    n = len(request.app.state.engine.classes)
    if top_k is not None and top_k > n:
        raise ApiError(422, "invalid_parameter", f"top_k: {top_k} is more than the {n} classes")
    return top_k


TopK = Annotated[int | None, Depends(check_top_k)]
