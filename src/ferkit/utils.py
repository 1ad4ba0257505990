"""Small helpers shared by every layer (no heavy imports here)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

# Progress of a long job, reported by the library and drawn by the caller (ferkit.cli.progress on the command line):
# (what is being done, units done, units in all); the library never draws anything itself.
ProgressFn = Callable[[str, int, int], None]


def walk(top: str | Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk(top) (top-down, links to folders listed in dirs but not followed, unreadable folders left out) with a
    stack instead of recursion: Python 3.11's os.walk, Path.rglob and os.makedirs recurse once per level and raise
    RecursionError on folders nested about a thousand deep. Sorting `dirs` in place orders and prunes the walk."""
    stack = [Path(top)]
    while stack:
        folder = stack.pop()
        dirs, files = [], []
        try:
            with os.scandir(folder) as it:
                for e in it:
                    try:
                        is_dir = e.is_dir()
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(e.name)
        except OSError:
            continue
        yield folder, dirs, files
        stack.extend(reversed([folder / d for d in dirs if not (folder / d).is_symlink()]))


def make_dirs(path: str | Path) -> None:
    """path.mkdir(parents=True, exist_ok=True) without recursion (one level per missing ancestor), see `walk`."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise


def shorten(text: str, limit: int = 160) -> str:
    """`text` in at most about `limit` characters, its middle elided: a path too long to show keeps both ends."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-(limit // 2 - 3):]}"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for NumPy scalars and arrays (anything else becomes its string)."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON (NumPy values included), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def assets_dir() -> Path:
    """The package's folder of built-in models (read-only: nothing ferkit does writes into it)."""
    return Path(str(resources.files("ferkit") / "assets"))


def is_package_asset(path: str | Path) -> bool:
    """True for a path that resolves into the package's assets folder (a built-in model or its weights)."""
    try:
        return Path(path).resolve().is_relative_to(assets_dir().resolve())
    except OSError:
        return False


def next_free(path: str | Path) -> Path:
    """`path` if it does not exist yet, else the first free of path2, path3, ... (path-2, ... after a digit; a
    file's number goes before its suffix), as Ultralytics numbers its runs: a new output never lands in an old one."""
    path = Path(path)
    if not path.exists():
        return path
    stem, suffix = (path.stem, path.suffix) if path.suffix and not path.is_dir() else (path.name, "")
    sep = "-" if re.search(r"\d$", stem) else ""
    k = 2
    while (candidate := path.with_name(f"{stem}{sep}{k}{suffix}")).exists():
        k += 1
    return candidate


def format_duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
