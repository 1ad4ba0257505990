"""Write a loaded dataset in another layout: class folders of PNGs, or a fer2013-style CSV (plain or gzipped)."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import cv2

from ferkit.data.dataset import FER2013_CLASSES, SPLITS, Dataset
from ferkit.errors import FerkitError
from ferkit.utils import ProgressFn, atomic_write

TARGETS = ("folders", "csv")
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def convert(ds: Dataset, out: str | Path, to: str, progress: ProgressFn | None = None) -> dict[str, int]:
    """Write `ds` to `out` as `to` ('folders' or 'csv'); returns items written per split.

    The output appears whole or not at all: it is built next to `out` and renamed into place.
    """
    out = Path(out)
    if to not in TARGETS:
        raise FerkitError(f"--to {to!r}: unknown; choose one of {', '.join(TARGETS)}")
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise FerkitError(f"{out}: already exists; choose a new path (ferkit never overwrites)")
    if ds.source and _inside(out, Path(ds.source)):
        raise FerkitError(f"{out}: inside the source dataset; choose a path outside it")
    if to == "folders":
        return write_folders(ds, out, progress)
    return write_csv(ds, out, progress)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return parent.is_dir()
    except ValueError:
        return False


def write_folders(ds: Dataset, out: Path, progress: ProgressFn | None = None) -> dict[str, int]:
    """train/val/test/<class>/<name>.png, lossless, so loading the folders gives back identical arrays."""
    total = sum(len(sp) for sp in ds.splits.values())
    folders = _class_folders(ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    written: dict[str, int] = {}
    done = 0
    try:
        for split in SPLITS:
            if split not in ds.splits:
                continue
            sp = ds.splits[split]
            for c in folders:
                _checked(tmp, split, c).mkdir(parents=True, exist_ok=True)
            used: set[str] = set()
            for i in range(len(sp)):
                cls = folders[int(sp.labels[i])]
                stem = _safe(PurePosixPath(sp.names[i]).stem) or f"item{i}"
                rel = f"{cls}/{stem}"
                if rel in used:  # two sources with one stem (a.jpg and a.png) must not overwrite each other
                    k = 1
                    while f"{rel}_{k}" in used:
                        k += 1
                    rel = f"{rel}_{k}"
                used.add(rel)
                ok, buf = cv2.imencode(".png", sp.images[i])
                if not ok:
                    raise RuntimeError(f"PNG encoding failed for {sp.names[i]}")
                _checked(tmp, split, cls, f"{rel.split('/', 1)[1]}.png").write_bytes(buf.tobytes())
                done += 1
                if progress is not None and (done % 500 == 0 or done == total):
                    progress("convert", done, total)
            written[split] = len(sp)
        if out.exists():
            out.rmdir()  # convert() checked it is empty
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _safe(name: str) -> str:
    """A file-name-safe version of a class or item name: letters, digits, '-', '_' and inner dots only, so never
    '..', '.', a separator or an absolute path ('' when nothing is left)."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".")
    return keep


def _class_folders(ds: Dataset) -> list[str]:
    """One folder name per class; a class whose name leaves nothing usable, or two that would share a folder,
    are refused (loading the folders back would merge them)."""
    folders = [_safe(c) for c in ds.classes]
    for c, f in zip(ds.classes, folders, strict=True):
        if not f:
            raise FerkitError(f"{ds.source}: class {c!r} has no usable folder name; rename it with --classes {c}=NAME")
    if len(set(folders)) < len(folders):
        a, b = next((a, b) for i, a in enumerate(ds.classes) for b in ds.classes[i + 1 :] if _safe(a) == _safe(b))
        raise FerkitError(f"{ds.source}: classes {a!r} and {b!r} would share the folder {_safe(a)!r}; "
                          f"rename one with --classes")
    return folders


def _checked(root: Path, *parts: str) -> Path:
    """root/parts..., refused unless it lies inside root (names are sanitised already; this is the last guard)."""
    path = root.joinpath(*parts)
    if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts) or not path.resolve().is_relative_to(
            root.resolve()):
        raise FerkitError(f"{'/'.join(parts)}: would be written outside {root}; refused")
    return path


def write_csv(ds: Dataset, out: Path, progress: ProgressFn | None = None) -> dict[str, int]:
    """emotion,pixels,Usage rows (Training / PublicTest / PrivateTest); gzipped when `out` ends in .gz.

    emotion is FER2013's integer when the classes are FER2013's seven in challenge order, else the class name.
    """
    as_int = list(ds.classes) == FER2013_CLASSES
    sizes = {sp.images.shape[1:] for sp in ds.splits.values() if len(sp)}
    total = sum(len(sp) for sp in ds.splits.values())
    written: dict[str, int] = {}

    if any(len(s) != 2 or s[0] != s[1] for s in sizes):
        raise FerkitError(f"{ds.source}: images are not square; the CSV format needs square images")
    text = [str(v) for v in range(256)]

    def rows() -> Iterator[str]:
        yield "emotion,pixels,Usage\n"
        done = 0
        for split in SPLITS:
            if split not in ds.splits:
                continue
            sp = ds.splits[split]
            for i in range(len(sp)):
                label = int(sp.labels[i])
                emotion = str(label) if as_int else _csv_field(ds.classes[label])
                yield f"{emotion},{' '.join(map(text.__getitem__, sp.images[i].ravel().tolist()))},{USAGE[split]}\n"
                done += 1
                if progress is not None and (done % 2000 == 0 or done == total):
                    progress("convert", done, total)
            written[split] = len(sp)

    def write(tmp: str) -> None:
        # Level 6: nearly the size of level 9 at a fraction of the time.
        if out.name.lower().endswith(".gz"):
            with gzip.open(tmp, "wt", encoding="utf-8", newline="", compresslevel=6) as f:
                f.writelines(rows())
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.writelines(rows())

    atomic_write(out, write)
    return written


def _csv_field(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text

