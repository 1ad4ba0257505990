"""Draw faces on an image: box, label with confidence, and a stacked probability bar (one colour per class)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ferkit.images import to_u8

# BGR colours, fixed per class name so a label looks the same in every image and video.
_COLOURS = {
    "angry": (40, 40, 220),
    "disgust": (40, 140, 60),
    "fear": (160, 60, 160),
    "happy": (40, 200, 250),
    "sad": (200, 120, 40),
    "surprise": (0, 140, 255),
    "neutral": (170, 170, 170),
    "contempt": (100, 100, 160),
}


def class_colour(name: str) -> tuple[int, int, int]:
    if name in _COLOURS:
        return _COLOURS[name]
    h = sum(ord(c) * 31**i for i, c in enumerate(name)) % 180
    hsv = np.uint8([[[h, 200, 230]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_faces(image: np.ndarray, faces: Sequence) -> np.ndarray:
    """An annotated BGR copy of `image` (gray, BGRA and 16-bit inputs are converted)."""
    img = to_u8(image)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    else:
        img = img.copy()
    h, w = img.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    font_scale = max(0.4, max(h, w) / 1200)
    for f in faces:
        x, y, bw, bh = (int(v) for v in f.box)
        colour = class_colour(f.label)
        cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, thick, cv2.LINE_AA)
        text = f"{f.label} {f.confidence:.0%}" + (f" #{f.track_id}" if f.track_id is not None else "")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        label, bar = layout((x, y, bw, bh), (tw + 4, th + base + 2), max(4, bh // 12), h)
        cv2.rectangle(img, label[:2], label[2:], colour, -1)
        cv2.putText(img, text, (label[0] + 2, label[3] - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
        # Stacked bar: each class's share of the width is its probability.
        bx, by, _, by1 = bar
        for name, p in f.probabilities.items():
            seg = int(round(p * bw))
            if seg > 0:
                cv2.rectangle(img, (bx, by), (min(x + bw, bx + seg), by1), class_colour(name), -1)
            bx += seg
        cv2.rectangle(img, bar[:2], bar[2:], (255, 255, 255), 1)
    return img


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)


def layout(box: tuple[int, int, int, int], label_size: tuple[int, int], bar_h: int, img_h: int) -> tuple[Rect, Rect]:
    """Where a face's label and probability bar go: the label above the box, or inside its top when the box touches
    the image's top; the bar under the box, or inside its bottom when the box reaches the image's bottom, and never
    over the label (a box too short for both gets the bar right under the label)."""
    x, y, bw, bh = box
    lw, lh = label_size
    label_top = y - lh if y - lh >= 0 else y
    label = (x, label_top, x + lw, label_top + lh)
    bar_top = y + bh + 2 if y + bh + 2 + bar_h <= img_h - 1 else y + bh - 2 - bar_h
    bar_top = max(bar_top, label[3] + 2)  # the label starts at the same x: the bar stays below it
    return label, (x, bar_top, x + bw, bar_top + bar_h)
