"""Occlusion sensitivity: where a model looks, for any model that gives probabilities (ONNX or torch, or ensembles).

A grey square slides over the face; the drop in the predicted class's probability at each position, spread
over the pixels the square covered, is the heat map. It needs only forward passes (Zeiler & Fergus, 2014).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def occlusion_map(
    proba: Callable[[np.ndarray], np.ndarray], image: np.ndarray, target: int, patch: int | None = None,
    stride: int | None = None, fill: float | None = None,
) -> np.ndarray:
    """H x W map in 0..1 of how much hiding each area lowers P(target); one batch of occluded copies."""
    h, w = image.shape
    patch = patch or max(2, h // 6)
    stride = stride or max(1, patch // 2)
    fill = float(image.mean()) if fill is None else fill
    ys = list(range(0, max(1, h - patch) + 1, stride))
    xs = list(range(0, max(1, w - patch) + 1, stride))
    copies = np.repeat(image[None], len(ys) * len(xs), axis=0)
    boxes = [(y, x) for y in ys for x in xs]
    for k, (y, x) in enumerate(boxes):
        copies[k, y : y + patch, x : x + patch] = fill
    base = float(proba(image[None])[0, target])
    drop = base - proba(copies)[:, target]
    heat = np.zeros((h, w), np.float64)
    cover = np.zeros((h, w), np.float64)
    for (y, x), d in zip(boxes, drop, strict=True):
        heat[y : y + patch, x : x + patch] += d
        cover[y : y + patch, x : x + patch] += 1
    heat = np.divide(heat, cover, out=np.zeros_like(heat), where=cover > 0)
    heat = np.clip(heat, 0, None)
    top = heat.max()
    return heat / top if top > 0 else heat
