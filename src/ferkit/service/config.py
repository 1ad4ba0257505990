"""Service settings (pydantic-settings): defaults, overridden by FERKIT_* environment variables, overridden by the
values given when it is built (the command line's flags). Every setting is checked when it is built; a bad one is one
FerkitError line naming the variable or flag."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ferkit.errors import FerkitError
from ferkit.images import MAX_PIXELS

ENV_PREFIX = "FERKIT_"


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# Lists come as comma-separated text in the environment ("a.onnx,b.onnx"), not JSON.
CommaList = Annotated[tuple[str, ...], NoDecode]


class ServiceConfig(BaseSettings):
    """Everything `ferkit serve` can be told; each field has an environment variable FERKIT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model: CommaList = ()  # model specs (ferkit.inference.resolve); empty: the built-in default; several: an ensemble
    precision: str | None = None  # "int8": the int8 variant of the model(s)
    detector: str = "auto"
    # Face detection defaults for every request (each request may override them, see the API's query parameters).
    detect_size: int = Field(320, ge=0)  # long side the frame is reduced to for detection (0 = full size)
    threshold: float = Field(0.5, ge=0, le=1)  # minimum detector score
    max_faces: int = Field(0, ge=0)  # most faces per image (0 = all)
    workers: int = Field(default_factory=_default_workers, ge=1)  # inference threads
    # Micro-batching of the classification (ferkit.service.batcher): the faces of requests that arrive together are
    # classified in one call. 0 (either): each request classifies its own faces.
    # Off by default: on 2 cores with 2 workers, batches held 1.1-1.6 uploads and cost 0-28% of req/s
    # (benchmarks/serve_load.py, docs/service.md); it can pay with many workers and a large model.
    batch_window_ms: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)  # longest wait for other requests' faces
    batch_faces: int = Field(32, ge=0, le=4096)  # most face crops per batched call (0 or 1: no batching)
    queue: int = Field(32, ge=0)  # requests allowed to wait for a worker; beyond that: 503 + Retry-After
    max_upload_mb: float = Field(10.0, gt=0, allow_inf_nan=False)  # per image
    max_batch: int = Field(16, ge=1)  # images per /v1/predict/batch request
    max_pixels: int = Field(MAX_PIXELS, ge=1, le=MAX_PIXELS)  # per image, from the header; at most ferkit.images'
    cors_origins: CommaList = ()
    allowed_hosts: CommaList = ()  # more Host names a loopback-bound server answers (a local reverse proxy's)
    api_key: str | None = None
    access_log: bool = False  # one log line per request (uvicorn's access log)
    graceful_timeout: float = Field(10.0, ge=0, allow_inf_nan=False)  # seconds to finish requests on shutdown
    stream_window: int = Field(5, ge=1)  # EMA span in frames for the smoothed emotions of /v1/stream tracks
    # Bounds on what clients can make the server hold (docs/service.md: worst-case memory from these).
    max_connections: int = Field(256, ge=1)  # open connections; kept below the process's file-descriptor limit
    max_streams: int = Field(8, ge=0)  # open /v1/stream WebSockets
    upload_budget_mb: float = Field(64.0, gt=0, allow_inf_nan=False)  # request bodies held, all requests together
    pixel_budget: int = Field(50_000_000, ge=1)  # image pixels (as their headers declare) being decoded at once
    header_timeout: float = Field(10.0, gt=0, allow_inf_nan=False)  # seconds to send the request line and headers
    body_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)  # seconds a client has to send a request body

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise FerkitError(_one_line(e, values)) from None

    @classmethod
    def from_env(cls, **flags: Any) -> ServiceConfig:
        """The environment's settings with `flags` over them (None: the flag was not given)."""
        return cls(**{k: v for k, v in flags.items() if v is not None})

    @field_validator("model", "cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return tuple(v) if isinstance(v, list) else v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        if v in ("", "fp32"):
            return None
        if v not in (None, "int8"):
            raise ValueError("choose fp32 or int8")
        return v

    @model_validator(mode="after")
    def _together(self) -> ServiceConfig:
        if self.api_key is not None and self.api_key.strip() == "":
            raise ValueError("api key: empty or blank; leave it unset (no FERKIT_API_KEY at all) for an open service")
        if self.upload_budget_bytes < self.request_limit:
            raise ValueError(f"upload budget {self.upload_budget_mb} MB: must hold one upload "
                             f"({self.request_limit / 2**20:.1f} MB for max upload {self.max_upload_mb} MB)")
        return self

    @property
    def upload_budget_bytes(self) -> int:
        return int(self.upload_budget_mb * 1024 * 1024)

    @property
    def request_limit(self) -> int:
        """Largest body of a one-image request: base64 in JSON is 4/3 of the bytes, plus room for the rest."""
        return self.max_upload_bytes * 4 // 3 + 65536

    @property
    def batch_limit(self) -> int:
        """Largest body of a batch request: max_batch images, but never more than the whole upload budget."""
        return min(self.request_limit * self.max_batch, self.upload_budget_bytes)

    @property
    def connection_limit(self) -> int:
        """max_connections, lowered to stay well below the file-descriptor limit (accept() must never fail)."""
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            return self.max_connections
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - 128))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _one_line(e: ValidationError, given: dict[str, Any]) -> str:
    """The first problem, naming the flag when the value was given and the environment variable otherwise."""
    err = e.errors()[0]
    field = str(err["loc"][0]) if err.get("loc") else ""
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not field:  # a check across settings: its message names them
        return msg
    if field in given:
        return f"--{field.replace('_', '-')} {str(given[field])[:40]}: {msg}"
    var = f"{ENV_PREFIX}{field.upper()}"
    return f"{var}={str(os.environ.get(var, err.get('input')))[:40]!r}: {msg}"
