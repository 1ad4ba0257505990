"""POST /v1/predict (one image) and /v1/predict/batch (several, answered in order): request bodies to results."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from ferkit.inference.results import SCHEMA
from ferkit.service.deps import Detection, DetectQ, RequireKey, TopK, TtaQ, refuse_if_full, run
from ferkit.service.errors import ApiError
from ferkit.service.limits import IMAGE_TYPES, check_image_bytes
from ferkit.service.schemas import BATCH_BODY, IMAGE_BODY, BatchOut, ErrorOut, PredictionOut

# The key first, then the pool's room: both before the body is read.
router = APIRouter(tags=["predict"], dependencies=[RequireKey])
ERRORS = {400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.post("/v1/predict", response_model=PredictionOut, response_model_exclude_none=True,
             summary="Emotions of every face in one image", openapi_extra=IMAGE_BODY, responses=ERRORS,
             dependencies=[Depends(refuse_if_full)])
async def predict(request: Request, detection: Detection, tta: TtaQ, top_k: TopK = None,
                  detect: DetectQ = None) -> Any:
    config, engine = request.app.state.config, request.app.state.engine
    name, data = (await read_images(request, single=True))[0]
    if isinstance(data, ApiError):
        raise data
    check_image_bytes(data, name, config.max_upload_bytes, config.max_pixels)
    return await run(request.app, engine.predict_bytes, data, name, detect, tta, top_k, detection)


@router.post("/v1/predict/batch", response_model=BatchOut, response_model_exclude_none=True,
             summary="Several images in one request, answered in order", openapi_extra=BATCH_BODY, responses=ERRORS,
             dependencies=[Depends(refuse_if_full)])
async def predict_batch(request: Request, detection: Detection, tta: TtaQ, top_k: TopK = None,
                        detect: DetectQ = None) -> Any:
    config, engine = request.app.state.config, request.app.state.engine
    items = await read_images(request, single=False)
    if not items:
        raise ApiError(400, "no_file", "no images in the request")
    if len(items) > config.max_batch:
        raise ApiError(413, "too_many_images", f"{len(items)} images; the limit is {config.max_batch} per request")
    jobs: list[tuple[int, str, bytes]] = []
    results: list[dict | None] = [None] * len(items)
    for i, (name, data) in enumerate(items):
        try:
            if isinstance(data, ApiError):
                raise data
            check_image_bytes(data, name, config.max_upload_bytes, config.max_pixels)
            jobs.append((i, name, data))
        except ApiError as e:
            results[i] = {"schema": SCHEMA, "index": i, "source": name, "error": e.to_dict()}

    def work() -> list[tuple[int, dict]]:
        out = []
        for i, name, data in jobs:
            try:
                out.append((i, {"index": i, **engine.predict_bytes(data, name, detect, tta, top_k, detection)}))
            except ApiError as e:
                out.append((i, {"schema": SCHEMA, "index": i, "source": name, "error": e.to_dict()}))
        return out

    if jobs:  # the whole batch takes one pool slot: a batch never starves single requests of more than one
        for i, res in await run(request.app, work):
            res.pop("model", None)
            results[i] = res
    return {"model": engine.model_ref, "results": results}


async def read_images(request: Request, single: bool) -> list[tuple[str, bytes | ApiError]]:
    """(name, bytes) of each image in the body: multipart files, a raw image body, or base64 in JSON."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1000 if not single else 1, max_fields=1000)
        files = [(v.filename or k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ApiError(400, "no_file", "multipart form without a file (send the image in field 'file')")
        out: list[tuple[str, bytes | ApiError]] = [(name, await f.read()) for name, f in files]
        await form.close()
        return out
    if ctype == "application/json":
        return parse_json_images(await request.body(), single)
    if ctype in IMAGE_TYPES or (ctype.startswith("image/") and single):
        body = await request.body()
        if not body:
            raise ApiError(400, "empty_body", "empty request body")
        return [(request.headers.get("x-filename", "image"), body)]
    what = f"content type {ctype!r}" if ctype else "no content type"
    raise ApiError(415, "unsupported_media_type",
                   f"{what}; send multipart/form-data, an image (image/jpeg, image/png, ...) or application/json")


def parse_json_images(body: bytes, single: bool) -> list[tuple[str, bytes | ApiError]]:
    if not body:
        raise ApiError(400, "empty_body", "empty request body")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "malformed_json", f"malformed JSON: {str(e).splitlines()[0][:120]}") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "malformed JSON: nested too deeply") from None
    key = "image" if single else "images"
    if not isinstance(doc, dict) or key not in doc:
        raise ApiError(400, "malformed_json", f"JSON body needs a field {key!r}")
    entries = [doc] if single else doc[key]
    if not isinstance(entries, list):
        raise ApiError(400, "malformed_json", "'images' must be a list")
    out: list[tuple[str, bytes | ApiError]] = []
    for i, entry in enumerate(entries):
        raw = entry.get("image") if isinstance(entry, dict) else entry
        name = str(entry.get("name") or f"image {i}") if isinstance(entry, dict) else f"image {i}"
        if not isinstance(raw, str):
            out.append((name, ApiError(400, "malformed_json", f"{name}: 'image' must be a base64 string")))
            continue
        if raw.startswith("data:") and "," in raw:  # a data: URL straight from a browser
            raw = raw.split(",", 1)[1]
        try:
            out.append((name, base64.b64decode(raw, validate=True)))
        except (binascii.Error, ValueError):
            out.append((name, ApiError(400, "bad_base64", f"{name}: 'image' is not valid base64")))
    if single and isinstance(out[0][1], ApiError):
        raise out[0][1]
    return out
