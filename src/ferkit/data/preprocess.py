"""The one preprocessing function that training, evaluation and inference share (no train/serve skew)."""

from __future__ import annotations

import cv2
import numpy as np

from ferkit.errors import FerkitError
from ferkit.images import MAX_PIXELS, decode_image, read_image

__all__ = ["MAX_PIXELS", "decode_image", "preprocess", "read_image", "to_gray_u8"]


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
    """Gray, resized to size x size, uint8: the model's input (normalisation is inside the model)."""
    gray = to_gray_u8(image)
    if gray.shape == (size, size):
        return gray
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)
