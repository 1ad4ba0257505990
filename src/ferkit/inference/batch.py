"""Batch inference that survives crashes and spreads over machines: resumable JSON-lines files and their merge.

`ResultsFile(path)` appends one result per line (the schema of ferkit.inference.results), flushed line by line, so a
killed job loses at most the line it was writing. Opened again, it drops a half-written last line (and the frames of
a video it may not have finished: inputs are processed in order, so only the last one can be incomplete) and tells
which sources are done; `EmotionRecognizer.stream(..., skip=done)` then carries on where the job stopped.
`stream(..., shard=(k, n))` takes the k-th of n shares of a folder, glob or list (ferkit.inference.sources.shard_of);
each share writes its own file, and `merge` joins them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ferkit.errors import FerkitError
from ferkit.utils import atomic_write_text, json_default

SHARD_NAME = re.compile(r"-(\d+)-of-(\d+)\.jsonl$")


def shard_file_name(k: int, n: int, stem: str = "predictions") -> str:
    return f"{stem}-{k}-of-{n}.jsonl"


def _read_records(path: Path) -> tuple[list[str], bool]:
    """Complete lines of a JSON-lines file, and whether anything (a torn last line) was left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FerkitError(f"{path}: not a ferkit JSON-lines file (not UTF-8 text)") from None
    except OSError as e:
        raise FerkitError(f"{path}: cannot read ({e.strerror})") from None
    lines = text.split("\n")
    torn = lines[-1] != ""
    return [ln for ln in lines[:-1] if ln.strip()], torn


def _parse(path: Path, i: int, line: str) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        raise FerkitError(f"{path}: line {i + 1} is not JSON; not a ferkit results file") from None
    if not isinstance(rec, dict) or "source" not in rec:
        raise FerkitError(f"{path}: line {i + 1} has no 'source'; not a ferkit results file")
    return rec


class ResultsFile:
    """Append results to a JSON-lines file, resuming a previous run of the same job (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[str] = set()
        self.resumed = 0
        if self.path.is_dir():
            raise FerkitError(f"{self.path}: is a folder; give a file name for the results")
        if self.path.exists():
            lines, torn = _read_records(self.path)
            recs = [_parse(self.path, i, ln) for i, ln in enumerate(lines)]
            dropped = torn
            if recs and "frame" in recs[-1]:  # the last input was a video: maybe cut short, so it is done again
                last = recs[-1]["source"]
                while recs and "frame" in recs[-1] and recs[-1]["source"] == last:
                    recs.pop()
                    lines.pop()
                    dropped = True
            if dropped:
                atomic_write_text(self.path, "".join(ln + "\n" for ln in lines))
            self.done = {r["source"] for r in recs if r.get("source") is not None}
            self.resumed = len(recs)
        self._f: TextIO | None = None  # opened at the first result: a job that fails to start writes nothing

    def write(self, record: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._f.write(json.dumps(record, default=json_default) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def merge(paths: Sequence[str | Path]) -> tuple[list[dict], list[str]]:
    """The records of several result files in one stable order (by source, then frame), each (source, frame) once;
    and warnings: shares missing from a set of `*-K-of-N.jsonl` files."""
    records: dict[tuple[str, int], dict] = {}
    shares: dict[int, set[int]] = {}
    for p in (Path(x) for x in paths):
        if not p.is_file():
            raise FerkitError(f"{p}: no such results file")
        m = SHARD_NAME.search(p.name)
        if m:
            shares.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
        lines, _torn = _read_records(p)
        for i, line in enumerate(lines):
            rec = _parse(p, i, line)
            records.setdefault((str(rec["source"]), int(rec.get("frame") or 0)), rec)
    warnings = []
    for n, have in sorted(shares.items()):
        missing = sorted(set(range(1, n + 1)) - have)
        if missing:
            warnings.append(f"shares {', '.join(f'{k}-of-{n}' for k in missing)} are missing: the merge covers "
                            f"{len(have)} of {n}")
    return [records[k] for k in sorted(records)], warnings


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=json_default) + "\n" for r in records))
