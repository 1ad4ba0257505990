"""Follow faces across video frames (greedy IoU matching) and smooth each track's probabilities (EMA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: tuple
    prob: np.ndarray
    last_seen: int


class FaceTracker:
    """Give each face a stable track_id and replace its probabilities with the track's running average.

    window: EMA span in processed frames (alpha = 2 / (window + 1)); 1 = no smoothing.
    iou_threshold: minimum overlap with a track's last box to continue it.
    max_age: processed frames a track survives without a match (a missed detection does not start a new track).
    """

    def __init__(self, window: int = 5, iou_threshold: float = 0.3, max_age: int = 10):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.alpha = 2.0 / (window + 1)
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.tracks: list[_Track] = []
        self._next_id = 1
        self._step = 0

    def update(self, faces: list) -> list:
        """Match `faces` (ferkit Face objects) to tracks in place; returns them."""
        self._step += 1
        pairs = sorted(
            ((iou(f.box, t.box), i, j) for i, f in enumerate(faces) for j, t in enumerate(self.tracks)),
            reverse=True,
        )
        used_f: set[int] = set()
        used_t: set[int] = set()
        match: dict[int, _Track] = {}
        for ov, i, j in pairs:
            if ov < self.iou_threshold:
                break
            if i in used_f or j in used_t:
                continue
            used_f.add(i)
            used_t.add(j)
            match[i] = self.tracks[j]
        for i, f in enumerate(faces):
            p = np.array(list(f.probabilities.values()), np.float64)
            t = match.get(i)
            if t is None:
                t = _Track(self._next_id, f.box, p, self._step)
                self._next_id += 1
                self.tracks.append(t)
            else:
                t.prob = self.alpha * p + (1 - self.alpha) * t.prob
                t.box = f.box
                t.last_seen = self._step
            names = list(f.probabilities)
            f.probabilities = {n: float(v) for n, v in zip(names, t.prob, strict=True)}
            k = int(np.argmax(t.prob))
            f.label, f.confidence, f.track_id = names[k], float(t.prob[k]), t.id
        self.tracks = [t for t in self.tracks if self._step - t.last_seen <= self.max_age]
        return faces
