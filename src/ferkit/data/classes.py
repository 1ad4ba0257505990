"""Class names and how one set maps onto another: the one home of class specs, lookup tables and remapping.

Two ways to say how classes map, both parsed here:
- a dataset's `--classes` spec keeps and/or renames its classes: "happy,sad" (a subset) or "anger=angry,
  happiness=happy" (old=new; several old may merge into one new);
- evaluation's `--map` lines a dataset up with a model: "anger=angry,contempt=-" (dataset class = model class; '-'
  leaves the class out); classes not named keep their name.

Either becomes a lookup table (LUT): for each old class index, the new class index or -1 (left out). `remap_split`
applies one to a split's labels and FER+ vote distributions.
"""

from __future__ import annotations

import re

import numpy as np

from ferkit.data.dataset import Split
from ferkit.errors import FerkitError

DROP = ("-", "")
# Spellings of one emotion (FER2013's folders, FER+'s columns, other sets' words), matched case-insensitively
# wherever a dataset's classes meet a model's: evaluation and fine-tuning alike.
SYNONYMS = {
    "anger": "angry", "angered": "angry", "mad": "angry", "happiness": "happy", "joy": "happy", "smile": "happy",
    "sadness": "sad", "surprised": "surprise", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgusted": "disgust", "neutrality": "neutral", "calm": "neutral", "contemptuous": "contempt",
}


def canonical(name: str) -> str:
    """A class name's emotion: lower case, synonyms folded ('Happiness' -> 'happy')."""
    low = name.strip().lower()
    return SYNONYMS.get(low, low)


def match_classes(data_classes: list[str], model_classes: list[str],
                  mapping: dict[str, str] | None = None) -> dict[str, str]:
    """For each dataset class, the model class it counts as: `--map` first ('-' leaves it out), then the same name,
    then the same emotion in other spelling or case ('Happy' -> 'happy', 'anger' -> 'angry'). Classes without a match
    are absent from the result."""
    mapping = mapping or {}
    by_emotion: dict[str, str] = {}
    for m in model_classes:
        by_emotion.setdefault(canonical(m), m)
    out = {}
    for c in data_classes:
        if c in mapping:
            out[c] = mapping[c]
        elif c in model_classes:
            out[c] = c
        elif canonical(c) in by_emotion:
            out[c] = by_emotion[canonical(c)]
    return out


def matched_note(matches: dict[str, str]) -> str:
    """'Happy=happy, anger=angry': the matches that are not the same name (what the user is told was matched)."""
    return ", ".join(f"{c}={m}" for c, m in matches.items() if c != m and m not in DROP)


def _items(spec: str | list[str]) -> list[str]:
    return spec if isinstance(spec, list) else [s for s in re.split(r"[,\s]+", spec) if s]


def parse_class_spec(spec: str | list[str]) -> list[tuple[str, str]]:
    """'happy,sad' or 'anger=angry,happiness=happy' -> [(old, new), ...] (a bare name keeps its name)."""
    return [tuple(x.split("=", 1)) if "=" in x else (x, x) for x in _items(spec)]  # type: ignore[misc]


def parse_map(spec: str | None) -> dict[str, str]:
    """'anger=angry,contempt=-' -> {'anger': 'angry', 'contempt': '-'} (dataset class -> model class; '-' drops it)."""
    if not spec:
        return {}
    out: dict[str, str] = {}
    for item in _items(spec):
        if "=" not in item:
            raise FerkitError(f"--map {item!r}: expected DATASET_CLASS=MODEL_CLASS (or CLASS=- to leave it out)")
        old, new = (x.strip() for x in item.split("=", 1))
        out[old] = new
    return out


def select_lut(classes: list[str], spec: str | list[str]) -> tuple[list[str], np.ndarray]:
    """A --classes spec on `classes`: the new class list (in the spec's order) and the LUT old -> new (-1: dropped)."""
    pairs = parse_class_spec(spec)
    unknown = [old for old, _ in pairs if old not in classes]
    if unknown:
        raise FerkitError(f"--classes: {', '.join(unknown)} not in the dataset's classes ({', '.join(classes)})")
    new_classes: list[str] = []
    for _, new in pairs:
        if new not in new_classes:
            new_classes.append(new)
    lut = np.full(len(classes), -1, dtype=np.int64)
    for old, new in pairs:
        lut[classes.index(old)] = new_classes.index(new)
    return new_classes, lut


def class_lut(data_classes: list[str], model_classes: list[str], mapping: dict[str, str]) -> np.ndarray:
    """For each dataset class, the model class index it counts as, or -1 to leave its items out (--map)."""
    unknown = [k for k in mapping if k not in data_classes]
    if unknown:
        raise FerkitError(f"--map: {', '.join(unknown)} not among the dataset's classes ({', '.join(data_classes)})")
    bad_target = [v for v in mapping.values() if v not in DROP and v not in model_classes]
    if bad_target:
        raise FerkitError(f"--map: {', '.join(bad_target)} not among the model's classes ({', '.join(model_classes)})")
    lut = np.full(len(data_classes), -1, dtype=np.int64)
    missing = []
    matches = match_classes(data_classes, model_classes, mapping)
    for i, c in enumerate(data_classes):
        target = matches.get(c)
        if target in DROP:
            continue
        if target is None:
            missing.append(c)
            continue
        lut[i] = model_classes.index(target)
    if missing:
        hint = ",".join(f"{c}={guess(c, model_classes)}" for c in missing)
        raise FerkitError(
            f"dataset classes {', '.join(missing)} are not among the model's classes ({', '.join(model_classes)}); "
            f"map them with --map {hint}"
        )
    if (lut < 0).all():
        raise FerkitError("--map leaves no class of the dataset to evaluate")
    return lut


def guess(c: str, classes: list[str]) -> str:
    """The class of `classes` that `c` most likely means (the same emotion, the same first letters), or '-'."""
    for m in classes:
        if canonical(m) == canonical(c):
            return m
    for m in classes:
        if m.lower()[:4] == c.lower()[:4]:
            return m
    return "-"


def remap_labels(labels: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new labels of the items kept, indices of the items kept): items of dropped classes are left out."""
    mapped = lut[labels]
    keep = np.flatnonzero(mapped >= 0)
    return mapped[keep], keep


def remap_votes(soft: np.ndarray, lut: np.ndarray, n_new: int, renormalise: bool) -> np.ndarray:
    """Vote distributions (N x old classes) in the new classes: merged classes add up, dropped ones are left out.
    renormalise: rows sum to 1 again (a dataset's own soft labels); otherwise votes for dropped classes stay lost
    (evaluation: a prediction can never match them)."""
    out = np.zeros((len(soft), n_new), np.float32)
    for old, new in enumerate(lut):
        if new >= 0:
            out[:, new] += soft[:, old]
    if renormalise:
        sums = out.sum(1, keepdims=True)
        out = np.where(sums > 0, out / np.maximum(sums, 1e-12), 0).astype(np.float32)
    return out


def remap_split(split: Split, lut: np.ndarray, n_new: int, renormalise: bool = True) -> tuple[Split, np.ndarray]:
    """The split in the new classes, items of dropped classes left out; and the indices of the items kept."""
    labels, keep = remap_labels(split.labels, lut)
    sub = split.subset(keep)
    sub.labels = labels
    if sub.soft is not None:
        sub.soft = remap_votes(sub.soft, lut, n_new, renormalise)
    return sub, keep
