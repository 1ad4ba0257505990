"""FER+ (Barsoum et al. 2016): the one home of its label.csv parsing, the vote table and the majority rule.

FER+ relabels FER2013 with 10 annotators' votes per image over 10 columns: the 8 emotions, "unknown" and "not a
face" (FERPLUS_COLUMNS). Its majority protocol, which the loader follows and the audit reports: single votes are
dropped as outliers, and an image is kept with its winning emotion only when that emotion has more than half of the
remaining votes; otherwise (no majority, or unknown / not-a-face winning) it is left out.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from array import array
from pathlib import Path

import numpy as np

from ferkit.data.archive import MAX_ROWS, Tree, decode_item
from ferkit.data.dataset import FERPLUS_CLASSES, FERPLUS_COLUMNS, FERPLUS_DIRS, Dataset, Skipped, Split
from ferkit.errors import FerkitError
from ferkit.views import preprocess

DIRS = FERPLUS_DIRS
LABEL_FILE = "label.csv"
# Why an image is left out by the majority rule (audit reasons).
NO_MAJORITY, UNKNOWN, NOT_FACE = "no_majority", "unknown", "not_face"
_BAD_VOTES = "expected a file name, a face box and 10 vote counts"
# FER+'s largest label.csv (train, 28,709 rows) is 2 MB; MAX_ROWS rows of a name, a box and ten counts fit in this.
MAX_LABEL_BYTES = 128 * 1024 * 1024


def majority(votes: np.ndarray) -> np.ndarray:
    """The majority rule on N x 10 votes (or one row of 10): the winning emotion's index into FERPLUS_CLASSES, or -1
    for an image the protocol leaves out (see `left_out_reason`)."""
    v = np.atleast_2d(np.asarray(votes, dtype=np.float64))
    kept = np.where(v <= 1, 0, v)  # single votes are outliers
    total = kept.sum(1)
    win = kept.argmax(1)
    ok = (kept[np.arange(len(v)), win] > total / 2) & (total > 0) & (win < len(FERPLUS_CLASSES))
    out = np.where(ok, win, -1)
    return out if np.ndim(votes) == 2 else out[0]


def left_out_reason(votes: np.ndarray) -> str | None:
    """For one row of 10 votes: None if the majority rule keeps the image, else why not (NO_MAJORITY, UNKNOWN,
    NOT_FACE)."""
    if majority(votes) >= 0:
        return None
    kept = np.where(np.asarray(votes) <= 1, 0, votes)
    win = int(kept.argmax())
    if kept.sum() <= 0 or kept[win] <= kept.sum() / 2:
        return NO_MAJORITY
    return UNKNOWN if FERPLUS_COLUMNS[win] == "unknown" else NOT_FACE


def read_label_csv(tree: Tree, label_file: str, where: str) -> tuple[list[str], np.ndarray]:
    """(file names, N x 10 votes) of every row of a FER+ label.csv; a malformed row is one error naming it.

    Read as a stream, row by row, keeping only the name and the votes of each: a file of MAX_ROWS rows costs tens of
    MB, not the GB that whole rows of Python strings took. The file is refused past MAX_LABEL_BYTES before reading."""
    try:
        f = tree.open(label_file, MAX_LABEL_BYTES)
    except (OSError, KeyError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError) as e:
        raise FerkitError(f"{where}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
    names: list[str] = []
    votes = array("f")
    offset = 0
    width = len(FERPLUS_COLUMNS)

    def lines():
        nonlocal offset
        for raw in f:  # UTF-8 never has a newline byte inside a character: lines decode on their own
            try:
                text = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
            except UnicodeDecodeError as e:
                raise FerkitError(f"{where}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                                  f"{offset + e.start})") from None
            offset += len(raw)
            yield text

    # Votes are parsed a block of rows at a time by NumPy (ten float() calls a row took most of the time).
    rownos: list[int] = []
    texts: list[str] = []

    def flush() -> None:
        try:
            block = np.array(texts, dtype=np.float64).reshape(-1, width)
        except ValueError:  # a vote that is no number: find its row
            for i, rowno in enumerate(rownos):
                try:
                    [float(x) for x in texts[i * width : (i + 1) * width]]
                except ValueError:
                    raise FerkitError(f"{where}: row {rowno}: {_BAD_VOTES}") from None
            raise
        bad = ~((block >= 0) & (block <= 1e6)).all(1)  # nan fails too: nan votes made an all-nan soft label
        if bad.any():
            i = int(np.argmax(bad))
            raise FerkitError(f"{where}: row {rownos[i]}: votes must be counts 0..1e6 (got "
                              f"{', '.join(texts[i * width : (i + 1) * width])[:120]})")
        votes.frombytes(block.astype(np.float32).tobytes())
        rownos.clear()
        texts.clear()

    rowno = 0
    with f:
        try:
            for rowno, row in enumerate(csv.reader(lines()), start=1):
                if not row:
                    continue
                if len(names) >= MAX_ROWS:
                    raise FerkitError(f"{where}: more than {MAX_ROWS:,} rows; refused")
                if len(row) < 2 + width:
                    raise FerkitError(f"{where}: row {rowno}: {_BAD_VOTES}")
                names.append(row[0])
                rownos.append(rowno)
                texts.extend(row[2 : 2 + width])
                if len(rownos) >= 1 << 14:
                    flush()
            flush()
        except csv.Error as e:
            raise FerkitError(f"{where}: row {rowno + 1}: {e}") from None
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            raise FerkitError(f"{where}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
    return names, np.frombuffer(votes, np.float32).reshape(-1, len(FERPLUS_COLUMNS))


def _label_files(tree: Tree) -> list[tuple[str, str, str]]:
    """(folder, split, label file) of each FER+ split present."""
    files = set(tree.files)
    return [(folder, split, f"{folder}/{LABEL_FILE}") for folder, split in DIRS.items()
            if f"{folder}/{LABEL_FILE}" in files]


def is_ferplus(files: list[str]) -> bool:
    return any(Path(f).name == LABEL_FILE and f.split("/")[0] in DIRS for f in files)


def vote_table(path: str | Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Every row of each FER+ label.csv, kept or not: split -> (image paths, N x 10 raw votes).

    The loader drops images the majority rule leaves out; the audit reads them here.
    """
    path = Path(path)
    if not path.exists():
        raise FerkitError(f"{path}: no such file or folder")
    tree = Tree(path)
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for folder, split, label_file in _label_files(tree):
        names, votes = read_label_csv(tree, label_file, f"{path}:{label_file}")
        out[split] = ([f"{folder}/{name}" for name in names], votes)
    if not out:
        raise FerkitError(f"{path}: FER+ layout without any label.csv")
    return out


def load(path: Path, size: int) -> Dataset:
    """The FER+ dataset: majority labels, and the 8 emotions' vote shares as soft labels."""
    tree = Tree(path)
    files = set(tree.files)
    splits: dict[str, Split] = {}
    skipped: list[Skipped] = []
    for folder, split, label_file in _label_files(tree):
        listed, all_votes = read_label_csv(tree, label_file, f"{path}:{label_file}")
        labels = majority(all_votes)
        imgs, kept, soft, names = [], [], [], []
        for name, votes, label in zip(listed, all_votes, labels, strict=True):
            rel = f"{folder}/{name}"
            if label < 0:
                continue  # no majority, or unknown / not-a-face: the paper's protocol leaves it out
            if rel not in files:
                skipped.append(Skipped(rel, "listed in label.csv but missing"))
                continue
            img, why = decode_item(tree, rel)
            if img is None:
                skipped.append(Skipped(rel, why))
                continue
            emo = votes[: len(FERPLUS_CLASSES)]
            imgs.append(preprocess(img, size))
            kept.append(int(label))
            soft.append(emo / emo.sum())
            names.append(rel)
        if imgs:
            splits[split] = Split(np.stack(imgs), np.array(kept, dtype=np.int64), names,
                                  np.stack(soft).astype(np.float32))
    if not splits:
        raise FerkitError(f"{path}: FER+ layout without any readable label.csv")
    return Dataset(list(FERPLUS_CLASSES), splits, skipped=skipped)
