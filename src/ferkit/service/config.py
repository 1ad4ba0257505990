"""Service settings: defaults, overridden by FERKIT_* environment variables, overridden by command-line flags."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ferkit.errors import FerkitError
from ferkit.images import MAX_PIXELS

ENV_PREFIX = "FERKIT_"


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `ferkit serve` can be told; each field has an environment variable FERKIT_<NAME>."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: tuple[str, ...] = ()  # empty: the shipped default model; several paths: an ensemble
    detector: str = "auto"
    workers: int = field(default_factory=_default_workers)  # inference threads
    queue: int = 32  # requests allowed to wait for a worker; beyond that: 503 + Retry-After
    max_upload_mb: float = 10.0  # per image
    max_batch: int = 16  # images per /v1/predict/batch request
    max_pixels: int = MAX_PIXELS  # per image, read from the header before decoding; at most ferkit.images' limit
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # more Host names a loopback-bound server answers (a local reverse proxy's)
    api_key: str | None = None
    graceful_timeout: float = 10.0  # seconds to finish in-flight requests on shutdown
    stream_window: int = 5  # EMA span in frames for the smoothed emotions of /v1/stream tracks (1 = none)
    # Bounds on what clients can make the server hold (docs/service.md: worst-case memory from these).
    max_connections: int = 256  # open connections; kept below the process's file-descriptor limit
    max_streams: int = 8  # open /v1/stream WebSockets
    upload_budget_mb: float = 64.0  # request bodies being received or waiting for a worker, all requests together
    pixel_budget: int = 50_000_000  # image pixels (as their headers declare) being decoded at once, all workers
    header_timeout: float = 10.0  # seconds a new connection has to send its request line and headers
    body_timeout: float = 60.0  # seconds a client has to send a request body

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

    def validate(self) -> ServiceConfig:
        floats = {"max upload MB": self.max_upload_mb, "upload budget MB": self.upload_budget_mb,
                  "graceful timeout": self.graceful_timeout, "header timeout": self.header_timeout,
                  "body timeout": self.body_timeout}
        for what, value in floats.items():
            if not math.isfinite(value):
                raise FerkitError(f"{what} {value}: must be a finite number")
        checks = [
            (1 <= self.port <= 65535, f"port {self.port}: must be 1..65535"),
            (self.workers >= 1, f"workers {self.workers}: must be >= 1"),
            (self.queue >= 0, f"queue {self.queue}: must be >= 0"),
            (self.max_upload_mb > 0, f"max upload {self.max_upload_mb} MB: must be > 0"),
            (self.max_batch >= 1, f"max batch {self.max_batch}: must be >= 1"),
            (1 <= self.max_pixels <= MAX_PIXELS, f"max pixels {self.max_pixels}: must be 1..{MAX_PIXELS}"),
            (self.graceful_timeout >= 0, f"graceful timeout {self.graceful_timeout}: must be >= 0"),
            (self.stream_window >= 1, f"stream window {self.stream_window}: must be >= 1"),
            (self.api_key is None or self.api_key.strip() != "",
             "api key: empty or blank; leave it unset (no FERKIT_API_KEY at all) for an open service"),
            (self.max_connections >= 1, f"max connections {self.max_connections}: must be >= 1"),
            (self.max_streams >= 0, f"max streams {self.max_streams}: must be >= 0"),
            (self.upload_budget_bytes >= self.request_limit,
             f"upload budget {self.upload_budget_mb} MB: must hold one upload ({self.request_limit / 2**20:.1f} MB "
             f"for max upload {self.max_upload_mb} MB)"),
            (self.pixel_budget >= 1, f"pixel budget {self.pixel_budget}: must be >= 1"),
            (self.header_timeout > 0 and self.body_timeout > 0, "header and body timeouts: must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise FerkitError(message)
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        """Defaults < FERKIT_* variables < `overrides` (flags; None means "not given")."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and f.name == "api_key":
                values[f.name] = raw  # a blank key is refused by validate(), never taken for "no key"
            elif raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.name, raw.strip(), ENV_PREFIX + f.name.upper())
        for name, value in overrides.items():
            if value is not None:
                values[name] = tuple(value) if isinstance(value, list) else value
        return replace(cls(), **values).validate()


def _parse(name: str, raw: str, where: str) -> Any:
    kind = {f.name: f.type for f in fields(ServiceConfig)}[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise FerkitError(f"{where}={raw[:40]!r}: not a (finite) number") from None
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw
