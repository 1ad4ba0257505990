"""What several benchmarks share: the datasets' folder, a free port, the astronaut photo, the machine's name, memory.

The benchmarks are scripts (`python benchmarks/NAME.py`); Python puts a script's folder first on sys.path, so they
import this module, and each other, by name (`from _common import free_port`).
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"  # beside the repository, as in tests/
FER2013_ZIP = DATASETS / "fer2013.zip"
REALVAL_ZIP = DATASETS / "realval.zip"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (512x512, one face), BGR as OpenCV reads files."""
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def astronaut_face() -> np.ndarray:
    """The astronaut's face with hair and collar (240x210 BGR): the Haar cascade wants some around the face."""
    return astronaut()[20:260, 120:330]


def cpu_name() -> str:
    return platform.processor() or platform.machine()


def machine() -> str:
    """The processor and how many CPUs this machine has, as the reports print it."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs"


def status_kb(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...); -1 when it has none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def rss_mb(pid: int) -> float:
    """The process's resident memory in MB; NaN when /proc does not say."""
    kb = status_kb(pid, "VmRSS")
    return kb / 1024 if kb >= 0 else float("nan")
