"""Labelled whole photos, for evaluation through the product's pipeline (`ferkit evaluate --detect`).

The dataset loaders (ferkit.data.formats) hand back 48x48 grey faces; the pipeline needs each photo as it is, at its
own resolution, so the detector can find the face. This reader lists the photos with their label and the dataset
they come from, and reads their bytes one at a time through the same guarded Tree (size and inflation limits).

Layouts, in a folder or a .zip:
- `manifest.csv` with columns dataset (optional), path and label, one row per photo (realval.zip): `path` is
  relative to the manifest; a row that is malformed or names no file there is an error naming the row;
- `<class>/<photo>`: one dataset, named after the folder or archive;
- `<split>/<class>/<photo>` (train, val/validation, test): the split asked for;
- `<dataset>/<class>/<photo>`: several datasets.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ferkit.data.archive import SPLIT_ALIASES, Tree, _unsafe_member
from ferkit.data.dataset import Skipped
from ferkit.data.formats import IMAGE_EXTS, _class_order, _read_rows
from ferkit.errors import FerkitError

MANIFEST = "manifest.csv"
# realval's manifest is 200 kB; a text file past this is no manifest of photos one evaluates.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Photo:
    path: str  # relative to the folder or archive (its top folder, if it wraps everything in one)
    label: str
    dataset: str


@dataclass
class PhotoSet:
    source: str
    layout: str  # "manifest", "folders" (<class>/<photo>), "splits" or "datasets"
    split: str | None  # the split read, where the layout has splits
    photos: list[Photo]
    classes: list[str]  # the labels found, in FER2013's order where they are its classes
    datasets: list[str]  # sorted
    skipped: list[Skipped]  # files that are not images (never read)
    tree: Tree

    def read(self, photo: Photo) -> tuple[bytes | None, str]:
        """The photo's bytes, or None and why it cannot be read (over the size limit, a damaged member, ...)."""
        return self.tree.read_or_why(photo.path)


def read_photos(path: str | Path, split: str = "test") -> PhotoSet:
    path = Path(path)
    if not path.exists():
        raise FerkitError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() != ".zip":
        raise FerkitError(f"{path}: --detect reads photos: a folder or a .zip of class folders, or of photos listed "
                          f"in a {MANIFEST}")
    tree = Tree(path)
    name = tree.prefix.rstrip("/") or path.name.removesuffix(".zip") or "photos"
    if MANIFEST in tree.files:
        photos = _from_manifest(tree, name)
        layout, used_split = "manifest", None
        skipped: list[Skipped] = []
    else:
        photos, skipped, layout, used_split = _from_folders(tree, name, split)
    if not photos:
        raise FerkitError(f"{path}: no photos found")
    classes = _class_order({p.label for p in photos})
    return PhotoSet(str(path), layout, used_split, photos, classes, sorted({p.dataset for p in photos}), skipped,
                    tree)


def _from_manifest(tree: Tree, default_dataset: str) -> list[Photo]:
    where = tree._where(MANIFEST)
    try:
        text = tree.read(MANIFEST, MAX_MANIFEST_BYTES)
    except (OSError, KeyError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise FerkitError(f"{where}: cannot read ({type(e).__name__})") from None
    header_row, rows = _read_rows(where, io.TextIOWrapper(io.BytesIO(text), encoding="utf-8-sig", newline=""))
    header = [h.strip().lower() for h in header_row]
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise FerkitError(f"{where}: header must have columns path and label (and dataset); "
                          f"missing {', '.join(missing)}")
    ip, il = header.index("path"), header.index("label")
    idata = header.index("dataset") if "dataset" in header else None
    files = set(tree.files)
    seen: dict[str, int] = {}
    photos = []
    for rowno, row in rows:
        if len(row) < len(header):
            raise FerkitError(f"{where}: row {rowno}: expected {len(header)} columns, got {len(row)}")
        rel, label = row[ip].strip(), row[il].strip()
        dataset = row[idata].strip() if idata is not None else default_dataset
        for field, value in (("path", rel), ("label", label), ("dataset", dataset)):
            if not value:
                raise FerkitError(f"{where}: row {rowno}: empty {field!r}")
        if _unsafe_member(rel):
            raise FerkitError(f"{where}: row {rowno}: path {rel[:120]!r} is not a plain relative path")
        if rel not in files:
            raise FerkitError(f"{where}: row {rowno}: path {rel[:120]!r} is not in {tree.path}")
        if rel in seen:
            raise FerkitError(f"{where}: row {rowno}: path {rel[:120]!r} is listed twice (row {seen[rel]} too)")
        seen[rel] = rowno
        photos.append(Photo(rel, label, dataset))
    return photos


def _from_folders(tree: Tree, name: str, split: str) -> tuple[list[Photo], list[Skipped], str, str | None]:
    imgs = [f for f in tree.files if PurePosixPath(f).suffix.lower() in IMAGE_EXTS]
    skipped = [Skipped(f, "not an image file") for f in tree.files
               if PurePosixPath(f).suffix.lower() not in IMAGE_EXTS and not f.lower().endswith((".txt", ".md"))]
    depth = {f.count("/") for f in imgs}
    if depth == {1}:
        return [Photo(f, f.split("/")[0], name) for f in imgs], skipped, "folders", None
    if depth == {2}:
        tops = {f.split("/")[0] for f in imgs}
        if {t.lower() for t in tops} <= set(SPLIT_ALIASES):
            have = sorted({SPLIT_ALIASES[t.lower()] for t in tops})
            chosen = [f for f in imgs if SPLIT_ALIASES[f.split("/")[0].lower()] == split]
            if not chosen:
                raise FerkitError(f"{tree.path}: no {split!r} split (it has: {', '.join(have)}); choose one with --split")
            return [Photo(f, f.split("/")[1], name) for f in chosen], skipped, "splits", split
        return [Photo(f, f.split("/")[1], f.split("/")[0]) for f in imgs], skipped, "datasets", None
    if not imgs:
        raise FerkitError(f"{tree.path}: no photos found (looked for {', '.join(sorted(IMAGE_EXTS))})")
    raise FerkitError(f"{tree.path}: unknown layout for photos; expected <class>/<photo>, <dataset>/<class>/<photo>, "
                      f"<split>/<class>/<photo> or a {MANIFEST} with columns dataset,path,label")
