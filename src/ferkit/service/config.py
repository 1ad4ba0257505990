"""Service settings: defaults, overridden by FERKIT_* environment variables, overridden by command-line flags."""

from __future__ import annotations

import ipaddress
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
    api_key: str | None = None
    graceful_timeout: float = 10.0  # seconds to finish in-flight requests on shutdown
    stream_window: int = 5  # EMA span in frames for the smoothed emotions of /v1/stream tracks (1 = none)

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
        checks = [
            (1 <= self.port <= 65535, f"port {self.port}: must be 1..65535"),
            (self.workers >= 1, f"workers {self.workers}: must be >= 1"),
            (self.queue >= 0, f"queue {self.queue}: must be >= 0"),
            (self.max_upload_mb > 0, f"max upload {self.max_upload_mb} MB: must be > 0"),
            (self.max_batch >= 1, f"max batch {self.max_batch}: must be >= 1"),
            (1 <= self.max_pixels <= MAX_PIXELS, f"max pixels {self.max_pixels}: must be 1..{MAX_PIXELS}"),
            (self.graceful_timeout >= 0, f"graceful timeout {self.graceful_timeout}: must be >= 0"),
            (self.stream_window >= 1, f"stream window {self.stream_window}: must be >= 1"),
            (self.api_key != "", "api key: empty; leave it unset for an open service"),
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
            if raw is not None and raw.strip() != "":
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
            return float(raw)
    except ValueError:
        raise FerkitError(f"{where}={raw!r}: not a number") from None
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw
