"""The fields a ferkit model file carries (ONNX metadata, safetensors metadata), typed and ranged before anything is
allocated from them: one rule for every route a model file comes in by, each fault one line naming file and field;
and the one rule for lining up the classes of several models (`ensemble_orders`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ferkit.errors import FerkitError

MAX_INPUT_SIZE = 1024  # a face is preprocessed to input_size x input_size; larger is a broken or hostile file
MAX_CLASSES = 1000  # more names than any expression label set; a hostile file lists millions
MAX_CLASS_NAME = 200
TEMPERATURE_RANGE = (1e-2, 1e2)  # outside it the probabilities collapse to one-hot or to uniform


def parse_classes(path: str | Path, raw: object) -> list[str]:
    """Metadata 'classes': a JSON list of 2..MAX_CLASSES different non-empty names."""
    if not isinstance(raw, str) or len(raw) > MAX_CLASSES * (MAX_CLASS_NAME + 4):
        raise FerkitError(f"{path}: metadata 'classes' is not a JSON list of at most {MAX_CLASSES} names")
    try:
        classes = json.loads(raw)
    except (ValueError, RecursionError):
        raise FerkitError(f"{path}: metadata 'classes' is not JSON ({raw[:40]!r})") from None
    if (not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES
            or not all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME for c in classes)
            or len(set(classes)) != len(classes)):
        raise FerkitError(f"{path}: metadata 'classes' must be a JSON list of 2 to {MAX_CLASSES} different names "
                          f"of at most {MAX_CLASS_NAME} characters (got {raw[:60]!r})")
    return classes


def parse_int(path: str | Path, key: str, raw: object, lo: int, hi: int) -> int:
    try:
        value = int(str(raw)) if len(str(raw)) <= 20 else None
    except ValueError:
        value = None
    if value is None:
        raise FerkitError(f"{path}: metadata {key!r} is {str(raw)[:40]!r}, not an integer")
    if not lo <= value <= hi:
        raise FerkitError(f"{path}: metadata {key!r} is {value}; it must be {lo}..{hi}")
    return value


def parse_temperature(path: str | Path, key: str, raw: object) -> float:
    lo, hi = TEMPERATURE_RANGE
    try:
        value = float(str(raw)[:40])
    except ValueError:
        raise FerkitError(f"{path}: metadata {key!r} is {str(raw)[:40]!r}, not a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise FerkitError(f"{path}: metadata {key!r} is {str(raw)[:40]}; a temperature lies in {lo:g}..{hi:g}")
    return value


def parse_text(path: str | Path, key: str, raw: object, max_len: int = MAX_CLASS_NAME) -> str:
    """A short free-text field (name, version): shown in results and on the terminal, so bounded in length."""
    text = str(raw)
    if len(text) > max_len:
        raise FerkitError(f"{path}: metadata {key!r} is {len(text):,} characters long; at most {max_len} are allowed")
    return text


def parse_json(path: str | Path, key: str, raw: object, max_len: int = 1 << 16) -> object:
    """A JSON field (temperatures, metrics): bounded in length before it is parsed, nesting errors included."""
    text = str(raw)
    if len(text) > max_len:
        raise FerkitError(f"{path}: metadata {key!r} is {len(text):,} characters long; at most {max_len:,} are allowed")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise FerkitError(f"{path}: metadata {key!r} is not JSON ({text[:40]!r})") from None


def ensemble_orders(members: list[tuple[str, list[str]]]) -> list[np.ndarray]:
    """The one ensemble rule (inference, evaluation, export): members (name, classes) know the same classes in any
    order; for each, the column order that puts its probabilities in the first member's class order."""
    first_name, first = members[0]
    out = []
    for name, classes in members:
        if sorted(classes) != sorted(first):
            raise FerkitError(f"{name}: classes {', '.join(classes)} differ from {first_name}'s ({', '.join(first)}); "
                              "an ensemble needs one class set (in any order)")
        out.append(np.array([list(classes).index(c) for c in first]))
    return out
