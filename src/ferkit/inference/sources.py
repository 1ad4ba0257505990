"""What `EmotionRecognizer.predict/stream(source)` may be given, expanded into a stable list of inputs.

A source is an image array, a Pillow image, encoded bytes, a binary file object (open(p, "rb"), io.BytesIO, an
upload's .file), a path (image or video file), a folder (recursive), a glob, a camera index (an int, or a string of
digits that is no file), an http(s) URL of an image, a list of any of these, or an iterator of video frames (arrays,
e.g. from your own capture loop: tracked like a video's).
Folders and globs list their images (sorted) and every other entry met on the way, which becomes a skipped item
with its reason (ferkit.images.find_images). `Entry.key` is the input's name relative to the folder or glob it came
from: stable across machines, it decides the shard an input belongs to.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferkit import images
from ferkit.errors import FerkitError
from ferkit.images import SUFFIXES, find_images

MAX_CAMERA = 9999  # OpenCV numbers cameras from 0 (a few hundred up name a backend); 10^20 overflows its int
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
KINDS = ("image", "video", "camera", "frames", "url", "array", "bytes", "file", "skip")


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS; "skip": an entry that is no image (`error` says why)
    ref: Any  # a path, a camera index, a URL, an array, bytes or a file object
    name: str | None  # the source shown in results (None for arrays)
    key: str | None = None  # relative path inside a folder or glob (saving, sharding, resuming)
    error: str | None = None


def camera_index(source: int | str) -> int:
    """A camera's number (an int, or a string of ASCII digits) in 0..MAX_CAMERA; FerkitError for anything else."""
    text = str(source)
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_CAMERA)) or int(text) > MAX_CAMERA:
        raise FerkitError(f"camera {text[:40]}: no such camera index; cameras are numbered 0..{MAX_CAMERA}")
    return int(text)


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def expand(source: Any) -> tuple[list[Entry], bool]:
    """(entries, single): single is True for one explicit input, whose failure is an error rather than a skip."""
    # A file object iterates too (its lines): it is an image, not frames.
    if isinstance(source, Iterator) and not isinstance(source, str | bytes) and not hasattr(source, "read"):
        return [Entry("frames", source, None)], True
    if isinstance(source, list | tuple):
        if not source:
            raise FerkitError("source: empty list")
        entries = [e for item in source for e in _expand_one(item, in_list=True)]
        return _keyed(entries), False
    entries = _expand_one(source, in_list=False)
    single = len(entries) == 1 and entries[0].kind != "skip" and not _is_collection(source)
    return entries, single


def _is_collection(source: Any) -> bool:
    if not isinstance(source, str | Path) or is_url(source):
        return False
    p = Path(source)
    return p.is_dir() or (not p.exists() and any(c in str(source) for c in "*?["))


def _expand_one(source: Any, in_list: bool) -> list[Entry]:
    if isinstance(source, np.ndarray):
        return [Entry("array", source, None)]
    if isinstance(source, bytes | bytearray | memoryview):
        return [Entry("bytes", bytes(source), None)]
    if isinstance(source, bool):
        raise FerkitError(f"source {source!r}: not an image, path, folder, glob, video, camera or URL")
    if isinstance(source, int):
        return [Entry("camera", camera_index(source), f"camera {source}")]
    if not isinstance(source, str | Path):
        if isinstance(source, images.Image.Image):
            return [Entry("array", images.from_pil(source), None)]
        if images.is_file_object(source):
            return [Entry("file", source, images.file_object_name(source))]
        raise FerkitError(f"source of type {type(source).__name__}: expected an image array, a Pillow image, bytes, "
                          "a binary file object, a path, a folder, a glob, a video, a camera index or an http(s) URL")
    text = str(source)
    if is_url(text):
        return [Entry("url", text, text)]
    p = Path(text)
    try:
        exists = p.is_file() or (os.path.lexists(p) and not p.is_dir())  # a FIFO or a broken link: load says which
    except OSError as e:  # a name longer than the file system allows, ...
        raise FerkitError(f"{text}: cannot read ({e.strerror or e})") from None
    if exists:
        kind = "video" if p.suffix.lower() in VIDEO_SUFFIXES else "image"
        return [Entry(kind, p, text, p.name)]
    if text.isascii() and text.isdigit() and not in_list:
        return [Entry("camera", camera_index(text), f"camera {text}")]
    if not p.is_dir() and not any(c in text for c in "*?["):
        raise FerkitError(f"{text}: no such file, folder or camera")

    files, skipped = find_images(text)
    if not files and not skipped:
        if p.is_dir():
            raise FerkitError(f"{text}: a folder, but no images in this folder (looked for "
                              f"{', '.join(sorted(SUFFIXES))})")
        raise FerkitError(f"{text}: the pattern matches no files")
    # In a list of sources, a folder's entries are keyed under its name: two folders' 'x.jpg' stay apart.
    prefix = f"{p.name}/" if in_list and p.is_dir() else ""
    out = [Entry("image", f, str(f), prefix + rel.as_posix()) for f, rel in files]
    out += [Entry("skip", s, s, prefix + _rel_of(s, text), why) for s, why in skipped]
    return sorted(out, key=lambda e: e.key or "")


def _rel_of(path: str, root: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix() if Path(root).is_dir() else Path(path).name
    except ValueError:
        return Path(path).name


def _keyed(entries: list[Entry]) -> list[Entry]:
    """Files given one by one (a list) are keyed by their path relative to their common folder, so 'a/x.jpg' and
    'b/x.jpg' stay apart; folder contents keep their own relative paths."""
    files = [e for e in entries if e.kind in ("image", "video") and e.key == Path(str(e.ref)).name]
    if len(files) > 1:
        try:
            root = Path(os.path.commonpath([str(Path(str(e.ref)).resolve().parent) for e in files]))
        except ValueError:  # different drives
            return entries
        rekey = {id(e): (Path(str(e.ref)).resolve().parent.relative_to(root) / Path(str(e.ref)).name).as_posix()
                 for e in files}
        entries = [Entry(e.kind, e.ref, e.name, rekey.get(id(e), e.key), e.error) for e in entries]
    return entries


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise FerkitError(f"--shard {text!r}: expected K/N, e.g. 2/8 (the 2nd of 8 shares)") from None
    if not 1 <= k <= n:
        raise FerkitError(f"--shard {text!r}: K must be 1..N")
    return k, n


def shard_of(key: str, n: int) -> int:
    """The share (1..n) an input belongs to, from its relative name alone: stable whatever else is in the folder,
    and the same on every machine (a hash, not Python's per-process salted hash())."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") % n + 1


def select_shard(entries: Sequence[Entry], shard: tuple[int, int] | None) -> list[Entry]:
    if shard is None:
        return list(entries)
    k, n = shard
    bad = next((e for e in entries if e.key is None), None)
    if bad is not None:
        raise FerkitError(f"--shard: {bad.name or bad.kind} is not a file of a folder, glob or list; only those "
                          "can be shared out")
    return [e for e in entries if shard_of(e.key, n) == k]  # type: ignore[arg-type]
