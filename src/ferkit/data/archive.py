"""The guarded reader of a dataset's files: a folder or a .zip seen as one tree of '/'-separated paths, each file read
under a size cap, each archive member and gzip stream under an inflation cap, unsafe member names refused.

Every dataset loader (ferkit.data.formats, ferkit.data.ferplus, ferkit.data.photos) reads through it, so the limits
are set in one place.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ferkit import images
from ferkit.data.dataset import FERPLUS_DIRS
from ferkit.errors import FerkitError

# Text files (a CSV, a label.csv) uncompressed: fer2013.csv is 287 MB. Archives that inflate past the ratio are bombs:
# a CSV deflates about 3x, a PNG or JPEG not at all.
MAX_TEXT_BYTES = 512 * 1024 * 1024
MAX_ROWS = 1_000_000
MAX_RATIO = 50
RATIO_FLOOR = 8 * 1024 * 1024  # small files may compress as well as they like

# Folder and Usage names of each split: a top folder named like one belongs to the dataset, so Tree does not look
# through it as through a wrapper (the loaders read the same names).
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val", "dev": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}


class Tree:
    """Read-only view of a folder or of a .zip archive, with '/'-separated relative paths."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise FerkitError(f"{path}: not a folder or a readable .zip archive ({e})") from None
        if self.zip is not None:
            files = [n for n in self.zip.namelist() if not n.endswith("/") and "__MACOSX" not in n]
            bad = next((n for n in files if _unsafe_member(n)), None)
            if bad is not None:
                raise FerkitError(f"{path}: member {bad!r} has an unsafe path (absolute, '..', '.', empty or '\\' "
                                  "parts); refusing the archive")
        else:
            files = _folder_files(path)
        files = [f for f in files if not PurePosixPath(f).name.startswith(".")]
        # Archives often wrap everything in one top folder; look through it.
        self.prefix = ""
        while files and all("/" in f for f in files):
            top = {f.split("/", 1)[0] for f in files}
            if len(top) != 1:
                break
            t = top.pop()
            if t.lower() in SPLIT_ALIASES or t in FERPLUS_DIRS:
                break
            self.prefix += t + "/"
            files = [f.split("/", 1)[1] for f in files]
        self.files = sorted(files)

    def open(self, rel: str, limit: int) -> io.BufferedIOBase:
        """A file or member as a binary stream; refused before reading when it is over `limit` bytes, or (a zip
        member) inflates more than MAX_RATIO times. zipfile never gives more than a member's declared size."""
        full = self.prefix + rel
        where = self._where(rel)
        if self.zip is not None:
            info = self.zip.getinfo(full)
            _check_inflation(where, info.file_size, info.compress_size, limit)
            return self.zip.open(info)
        f = open(self.path / full, "rb")  # noqa: SIM115 - the caller closes it
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            f.close()
            raise FerkitError(f"{where}: {size:,} bytes, over the limit of {limit:,}")
        return f

    def read(self, rel: str, limit: int = images.MAX_BYTES) -> bytes:
        with self.open(rel, limit) as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # a file that grew since it was measured
            raise FerkitError(f"{self._where(rel)}: over the limit of {limit:,} bytes")
        return data

    def _where(self, rel: str) -> str:
        full = self.prefix + rel
        return f"{self.path}:{full}" if self.zip is not None else str(self.path / full)

    def try_read(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it cannot be read (a damaged archive member, a vanished file, a bomb)."""
        return self.read_or_why(rel)[0]

    def read_or_why(self, rel: str) -> tuple[bytes | None, str]:
        """(bytes, "") or (None, why it cannot be read)."""
        try:
            return self.read(rel), ""
        except FerkitError as e:
            return None, str(e).removeprefix(f"{self._where(rel)}: ")
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError):
            # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile does not know.
            return None, "cannot read the file (damaged archive member or unreadable file)"


def _folder_files(root: Path) -> list[str]:
    """Files under `root`, '/'-separated and relative to it. Links to files are read wherever they lead, as before;
    links to folders are followed when they lead inside `root` (class folders linked to a store within the dataset)
    and refused, naming the link, when they lead out of it: a walk that leaves the dataset's folder could take in a
    whole disk."""
    top = root.resolve()
    out: list[str] = []
    # A stack, not recursion: folders nested a thousand deep are legal (and a RecursionError was not an answer).
    # Each entry carries its folder's real path, so only links need resolving.
    stack: list[tuple[Path, Path, str, frozenset[Path]]] = [(root, top, "", frozenset({top}))]
    while stack:
        folder, real_folder, rel, seen = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise FerkitError(f"{folder}: cannot list the folder ({e.strerror})") from None
        for e in entries:
            p, name = Path(e.path), f"{rel}{e.name}"
            is_dir, is_file = e.is_dir(), e.is_file()  # both follow links; a broken link is neither
            real = (p.resolve() if e.is_symlink() else real_folder / e.name) if is_dir else None
            if real is not None and e.is_symlink() and not real.is_relative_to(top):
                raise FerkitError(f"{p}: a link to the folder {real}, outside {root}; links to folders are "
                                  "followed only inside the dataset's folder (move or copy the folder in, or give "
                                  "a folder that holds both)")
            if real is not None:
                if real not in seen:  # a link back to a folder above it would loop
                    stack.append((p, real, name + "/", seen | {real}))
            elif is_file:
                out.append(name)
    return out




def _check_inflation(where: str, size: int, packed: int, limit: int) -> None:
    if size > limit:
        raise FerkitError(f"{where}: inflates to {size:,} bytes, over the limit of {limit:,}")
    if size > RATIO_FLOOR and size > MAX_RATIO * max(packed, 1):
        raise FerkitError(f"{where}: inflates {size / max(packed, 1):,.0f} times ({packed:,} to {size:,} bytes), "
                          f"over the limit of {MAX_RATIO} (a decompression bomb?)")


class _Capped(io.RawIOBase):
    """A decompressing stream that fails (FerkitError) once it has given more than `limit` bytes, or more than
    MAX_RATIO times the compressed bytes read so far (`under`'s position; else the whole `packed` size): gzip has
    no trustworthy uncompressed size to check first, and a bomb is caught after a few MB, not at its end."""

    def __init__(self, raw: io.BufferedIOBase, where: str, packed: int, limit: int = MAX_TEXT_BYTES,
                 under: io.IOBase | None = None):
        self.raw, self.where, self.packed, self.limit, self.count = raw, where, packed, limit, 0
        self.under = under  # what `raw` reads from, when closing raw does not close it (gzip over a file)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self.raw.readinto(b)
        self.count += n or 0
        if self.count > self.limit:
            raise FerkitError(f"{self.where}: inflates to more than {self.limit:,} bytes; refused")
        if self.count > RATIO_FLOOR and self.count > MAX_RATIO * max(self._consumed(), 1):
            raise FerkitError(f"{self.where}: inflates more than {MAX_RATIO} times ({self._consumed():,} bytes to "
                              f"over {self.count:,}); refused (a decompression bomb?)")
        return n

    def _consumed(self) -> int:
        try:
            return self.under.tell() if self.under is not None else self.packed
        except (OSError, ValueError, io.UnsupportedOperation):
            return self.packed

    def close(self) -> None:
        self.raw.close()
        if self.under is not None:
            self.under.close()
        super().close()


def _unsafe_member(name: str) -> bool:
    """A zip member name that could point outside a folder it is unpacked or converted into."""
    parts = name.split("/")
    return (name.startswith("/") or "\\" in name or "\0" in name or re.match(r"[A-Za-z]:", name) is not None
            or any(p in ("", ".", "..") for p in parts))


def decode_item(tree: Tree, rel: str) -> tuple[np.ndarray | None, str]:
    """One dataset image as gray, or None and why (the caller skips it and lists it in the load report)."""
    data, why = tree.read_or_why(rel)
    if data is None:
        return None, why
    try:
        return images.decode_image(data, rel, gray=True), ""
    except FerkitError as e:
        why = str(e)
        return None, why[len(rel) + 2 :] if why.startswith(f"{rel}: ") else why
