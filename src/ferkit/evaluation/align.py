"""Line the data up with the model: dataset classes -> model classes (with --map), and train-copy detection."""

from __future__ import annotations

import re

import numpy as np

from ferkit.data.dataset import Split
from ferkit.errors import FerkitError

DROP = ("-", "")
# Common spellings of the same emotion; only used to suggest a --map in an error message.
SYNONYMS = {
    "anger": "angry", "angry": "anger", "happiness": "happy", "happy": "happiness", "sadness": "sad",
    "sad": "sadness", "surprised": "surprise", "surprise": "surprised", "fearful": "fear", "fear": "fearful",
    "disgusted": "disgust", "disgust": "disgusted", "neutrality": "neutral", "contempt": "contempt",
}


def parse_map(spec: str | None) -> dict[str, str]:
    """'anger=angry,contempt=-' -> {'anger': 'angry', 'contempt': '-'} (dataset class -> model class; '-' drops it)."""
    if not spec:
        return {}
    out: dict[str, str] = {}
    for item in (s for s in re.split(r"[,\s]+", spec) if s):
        if "=" not in item:
            raise FerkitError(f"--map {item!r}: expected DATASET_CLASS=MODEL_CLASS (or CLASS=- to leave it out)")
        old, new = (x.strip() for x in item.split("=", 1))
        out[old] = new
    return out


def class_lut(data_classes: list[str], model_classes: list[str], mapping: dict[str, str]) -> np.ndarray:
    """For each dataset class, the model class index it counts as, or -1 to leave its items out."""
    unknown = [k for k in mapping if k not in data_classes]
    if unknown:
        raise FerkitError(f"--map: {', '.join(unknown)} not among the dataset's classes ({', '.join(data_classes)})")
    bad_target = [v for v in mapping.values() if v not in DROP and v not in model_classes]
    if bad_target:
        raise FerkitError(f"--map: {', '.join(bad_target)} not among the model's classes ({', '.join(model_classes)})")
    lut = np.full(len(data_classes), -1, dtype=np.int64)
    missing = []
    for i, c in enumerate(data_classes):
        target = mapping.get(c, c)
        if target in DROP:
            continue
        if target not in model_classes:
            missing.append(c)
            continue
        lut[i] = model_classes.index(target)
    if missing:
        hint = ",".join(f"{c}={_guess(c, model_classes)}" for c in missing)
        raise FerkitError(
            f"dataset classes {', '.join(missing)} are not among the model's classes ({', '.join(model_classes)}); "
            f"map them with --map {hint}"
        )
    if (lut < 0).all():
        raise FerkitError("--map leaves no class of the dataset to evaluate")
    return lut


def _guess(c: str, model_classes: list[str]) -> str:
    low = {m.lower(): m for m in model_classes}
    for cand in (c.lower(), SYNONYMS.get(c.lower(), "")):
        if cand in low:
            return low[cand]
    for m in model_classes:
        if m.lower()[:4] == c.lower()[:4]:
            return m
    return "-"


def align_split(split: Split, lut: np.ndarray, n_model: int) -> tuple[Split, np.ndarray]:
    """The split with labels (and vote distributions) in the model's classes; items of dropped classes left out.

    Returns the new split and the indices of the kept items in the original split.
    """
    mapped = lut[split.labels]
    keep = np.flatnonzero(mapped >= 0)
    sub = split.subset(keep)
    sub.labels = mapped[keep]
    if sub.soft is not None:
        soft = np.zeros((len(sub), n_model), np.float32)
        for old, new in enumerate(lut):
            if new >= 0:
                soft[:, new] += sub.soft[:, old]
        sub.soft = soft  # votes for dropped classes stay out: a prediction can never match them
    return sub, keep
