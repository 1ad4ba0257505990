"""In-memory datasets: every split as one uint8 array, plus the load report and the on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferkit.utils import atomic_write, walk

SPLITS = ("train", "val", "test")

# The original challenge's label order; FER2013 in any layout loads in this order.
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FERPLUS_COLUMNS = [
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
]
FERPLUS_CLASSES = FERPLUS_COLUMNS[:8]
# FER+'s folders and the splits they hold (ferkit.data.ferplus reads them).
FERPLUS_DIRS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}


@dataclass
class Split:
    """One split: images (N x H x W uint8), hard labels (N,), optional vote distributions (N x C)."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> Split:
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Split(
            self.images[idx],
            self.labels[idx],
            [self.names[i] for i in idx],
            None if self.soft is None else self.soft[idx],
        )


@dataclass
class Skipped:
    """An item that could not be loaded, and why."""

    name: str
    reason: str


@dataclass
class Dataset:
    """A loaded dataset: class names in label order and up to three splits (train / val / test)."""

    classes: list[str]
    splits: dict[str, Split]
    source: str = ""
    format: str = ""
    skipped: list[Skipped] = field(default_factory=list)
    from_cache: bool = False

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]

    def counts(self) -> dict[str, list[int]]:
        n = len(self.classes)
        return {s: np.bincount(sp.labels, minlength=n).tolist() for s, sp in self.splits.items()}


def cache_dir() -> Path:
    return Path(os.environ.get("FERKIT_CACHE", Path.home() / ".cache" / "ferkit"))


def source_key(path: Path, extra: str) -> str:
    """A key for the cache: content hash of a file; for a folder, its files' paths, sizes and mtimes."""
    h = hashlib.sha256(extra.encode())
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    else:
        for p in sorted(folder / name for folder, dirs, files in walk(path) for name in dirs + files):
            if p.is_symlink():  # a linked class folder is read (archive.Tree): adding or changing one is a change
                h.update(f"{p.relative_to(path)}\0->{os.readlink(p)}\n".encode())
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def save_cache(ds: Dataset, key: str) -> None:
    """Write the decoded dataset as one .npz, atomically (a torn write never becomes a cache hit)."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "classes": ds.classes,
        "format": ds.format,
        "splits": list(ds.splits),
        "skipped": [[s.name, s.reason] for s in ds.skipped],
    }
    for name, sp in ds.splits.items():
        arrays[f"{name}_images"] = sp.images
        arrays[f"{name}_labels"] = sp.labels
        arrays[f"{name}_names"] = np.array(sp.names)
        if sp.soft is not None:
            arrays[f"{name}_soft"] = sp.soft
    arrays["meta"] = np.array(json.dumps(meta))
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)

    atomic_write(d / f"{key}.npz", write)


def load_cache(key: str, source: str) -> Dataset | None:
    p = cache_dir() / f"{key}.npz"
    if not p.exists():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            splits = {
                s: Split(
                    z[f"{s}_images"],
                    z[f"{s}_labels"],
                    z[f"{s}_names"].tolist(),
                    z[f"{s}_soft"] if f"{s}_soft" in z.files else None,
                )
                for s in meta["splits"]
            }
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is rebuilt, never trusted
    return Dataset(
        meta["classes"],
        splits,
        source,
        meta["format"],
        [Skipped(n, r) for n, r in meta["skipped"]],
        from_cache=True,
    )
