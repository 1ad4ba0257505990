"""Plain functions several test files call (fixtures live in conftest.py): a free port, the astronaut photo, and the
benchmarks as modules."""

from __future__ import annotations

import importlib
import socket
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_uvicorn(app, timeout: float = 20):
    """Serve a ferkit app (create_app) with uvicorn in a daemon thread, on its config's port, as `ferkit serve` does;
    wait up to `timeout` s for it to start. Returns the server (`started` says whether it did; set `should_exit` to
    stop it) and its thread."""
    import uvicorn

    from ferkit.cli.serve import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, app.state.config, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    return server, thread


def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut photo (512x512, one face), BGR as OpenCV reads files; a new array each call."""
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module. The benchmarks are scripts that import their neighbours (_common, peer_worker)
    by name, from the script's folder that Python puts first on sys.path; here that folder is on it while NAME loads."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        return importlib.import_module(name)
