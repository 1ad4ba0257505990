"""The views a network sees of a face, shared by training, evaluation and inference (no train/serve skew).

A face crop of any size and colour is preprocessed (`preprocess`: gray, resized) to `input_size` x `input_size`
(48). A model trained on crops sees a `crop` x `crop` window of it (e.g. 40): random windows while training, the
centre window at test time, and the four corners and centre, each also mirrored, for ten-crop TTA. A model trained
on full frames (crop == input_size) keeps its old TTA views (five crops of 7/8 of the side, resized back). Works on
NumPy arrays and, for training, on torch tensors; torch is never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from ferkit.errors import FerkitError
from ferkit.images import crop_batch

# One vocabulary for test-time augmentation, in the library, the CLI and the service. "ten_crop" is "flip+crops";
# "auto" is the mode a model's card chose on PublicTest (ferkit.inference.classifier.Classifier.mode resolves it).
TTA_MODES = ("none", "flip", "crops", "flip+crops", "ten_crop", "auto")
RUN_MODES = ("none", "flip", "crops", "flip+crops")  # what a network call runs: each mode once, as resolved


def tta_mode(tta: bool | str | None) -> str:
    """A TTA option as one of TTA_MODES, checked (False/None: "none"; True: "flip", the mirror; "ten_crop" is
    "flip+crops"); "auto" stays "auto" until a model resolves it."""
    if tta is True:
        return "flip"
    if tta is False or tta is None:
        return "none"
    if tta not in TTA_MODES:
        raise FerkitError(f"tta {tta!r}: unknown; choose one of {', '.join(TTA_MODES)}")
    return "flip+crops" if tta == "ten_crop" else tta


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA, 8- or 16-bit, float 0..1) as 8-bit gray."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype.kind == "f":
        scale = 255.0 if img.size and float(np.nanmax(img)) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(img.shape[2])
        if code is None:
            raise FerkitError(f"image has {img.shape[2]} channels; expected 1, 3 or 4")
        img = cv2.cvtColor(img, code)
    if img.ndim != 2 or min(img.shape) == 0:
        raise FerkitError(f"image has shape {img.shape}; expected H x W or H x W x C")
    return img


def preprocess(image: np.ndarray, size: int = 48) -> np.ndarray:
    """Gray, resized to size x size, uint8: the model's input (normalisation is inside the model). The one
    preprocessing function that training, evaluation and inference share (no train/serve skew)."""
    gray = to_gray_u8(image)
    if gray.shape == (size, size):
        return gray
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)


def faces_at(crops: object, size: int) -> np.ndarray:
    """Face crops in any form `ferkit.images.crop_batch` takes, as N x size x size uint8 model inputs."""
    crops = crop_batch(crops)
    if isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[1:] == (size, size) and (
            crops.dtype == np.uint8):
        return crops
    return np.stack([preprocess(c, size) for c in crops]) if len(crops) else np.zeros((0, size, size), np.uint8)


def cut(images: Any, ys: Any, xs: Any, crop: int) -> Any:
    """Per-image windows: images N x S x S (NumPy or torch), ys / xs N top-left offsets -> N x crop x crop."""
    if isinstance(images, np.ndarray):
        ar = np.arange
    else:
        import torch

        def ar(n: int) -> Any:
            return torch.arange(n, device=images.device)

    rows = ys[:, None] + ar(crop)[None]
    cols = xs[:, None] + ar(crop)[None]
    return images[ar(len(images))[:, None, None], rows[:, :, None], cols[:, None, :]]


def corner_offsets(size: int, crop: int) -> list[tuple[int, int]]:
    """Top-left offsets of the centre and four corner windows."""
    m = size - crop
    return [(m // 2, m // 2), (0, 0), (0, m), (m, 0), (m, m)]


def _window(images: np.ndarray, y: int, x: int, crop: int) -> np.ndarray:
    return np.ascontiguousarray(images[:, y : y + crop, x : x + crop])


def _resized_five_crops(images: np.ndarray, fraction: float = 0.875) -> list[np.ndarray]:
    s = images.shape[1]
    c = max(1, int(round(s * fraction)))
    return [np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_LINEAR) for im in _window(images, y, x, c)])
            if len(images) else np.zeros((0, s, s), images.dtype)
            for y, x in corner_offsets(s, c)]


def tta_views(images: np.ndarray, tta: str, crop: int | None = None) -> list[np.ndarray]:
    """The views of a batch of N x S x S faces for a TTA mode, each N x crop x crop (crop defaults to S)."""
    tta = tta_mode(tta)
    if tta == "auto":
        raise FerkitError("tta 'auto' names a model's own mode: resolve it with the model first (Classifier.mode)")
    s = images.shape[1]
    crop = crop or s
    if crop > s:
        raise FerkitError(f"crop {crop} is larger than the {s}x{s} face")
    if "crops" in tta:
        views = ([_window(images, y, x, crop) for y, x in corner_offsets(s, crop)] if crop < s
                 else _resized_five_crops(images))
    else:
        y, x = corner_offsets(s, crop)[0]
        views = [_window(images, y, x, crop)]
    if "flip" in tta:
        views = views + [np.ascontiguousarray(v[:, :, ::-1]) for v in views]
    return views


def temperature_for(temperature: float, temperatures: Mapping[str, float], tta: bool | str) -> float:
    """A model's temperature for a TTA: that mode's own (metadata 'temperatures') if fitted, else the plain one."""
    return temperatures.get(tta_mode(tta), temperature)


def apply_temperature(prob: np.ndarray, t: float) -> np.ndarray:
    """softmax(logits / t) from probabilities: log-probabilities differ from logits by a per-row constant."""
    if t == 1.0 or len(prob) == 0:
        return prob.astype(np.float32)
    z = np.log(np.clip(prob, 1e-12, 1.0)) / t
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)
