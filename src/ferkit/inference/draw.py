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
    """An annotated BGR copy of `image` (gray, BGRA and 16-bit inputs are converted): each face's box, a label with
    its confidence and a stacked probability bar; labels and bars stay inside the image and clear of one another
    (layout_faces), so a crowded group photo stays readable."""
    img = to_u8(image)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    else:
        img = img.copy()
    h, w = img.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    texts, sizes, bases, scales = [], [], [], []
    for f in faces:
        text = f"{f.label} {f.confidence:.0%}" + (f" #{f.track_id}" if f.track_id is not None else "")
        scale = max(0.4, max(h, w) / 1200)
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        while tw + 4 > w and scale > 0.25:  # a small image (a face crop): a smaller font before a cut label
            scale *= 0.8
            (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
        texts.append(text)
        sizes.append((tw + 4, th + base + 2))
        bases.append(base)
        scales.append(scale)
    boxes = [tuple(int(v) for v in f.box) for f in faces]
    places = layout_faces(boxes, sizes, [max(4, b[3] // 12) for b in boxes], (w, h))
    for f, (x, y, bw, bh) in zip(faces, boxes, strict=True):
        cv2.rectangle(img, (x, y), (x + bw, y + bh), class_colour(f.label), thick, cv2.LINE_AA)
    for f, box, (label, _) in zip(faces, boxes, places, strict=True):
        leader = _leader(label, box)
        if leader is not None:  # a label moved away from its face (a crowd): a line says whose it is
            cv2.line(img, *leader, class_colour(f.label), 1, cv2.LINE_AA)
    for f, (label, bar), text, base, scale in zip(faces, places, texts, bases, scales, strict=True):
        # Stacked bar: each class's share of the width is its probability.
        bx, by, bx1, by1 = bar
        for name, p in f.probabilities.items():
            seg = int(round(p * (bx1 - bar[0])))
            if seg > 0:
                cv2.rectangle(img, (bx, by), (min(bx1, bx + seg), by1), class_colour(name), -1)
            bx += seg
        cv2.rectangle(img, bar[:2], bar[2:], (255, 255, 255), 1)
        cv2.rectangle(img, label[:2], label[2:], class_colour(f.label), -1)
        cv2.putText(img, text, (label[0] + 2, label[3] - base), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


FONT = cv2.FONT_HERSHEY_SIMPLEX
Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)


def hits(a: Rect, b: Rect) -> bool:
    """Whether two inclusive rectangles share a pixel."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def layout_faces(boxes: Sequence[tuple[int, int, int, int]], label_sizes: Sequence[tuple[int, int]],
                 bar_heights: Sequence[int], size: tuple[int, int]) -> list[tuple[Rect, Rect]]:
    """Where each face's label and probability bar go in a width x height image: (label, bar) rectangles, inside
    the image, no label over another label or any bar.

    Bars first, the width of their (visible) box: under it, else inside its bottom, never over an earlier bar where
    there is a choice. Then labels, in order (the detector's best faces first): above the box, else under its bar,
    else inside its top, left-aligned with the box or else right-aligned, shifted left at the image's right edge; in
    a crowd, the nearest free place up or down, then anywhere. A place that covers no other face is preferred."""
    w, h = size
    visible = [_clip(b, w, h) for b in boxes]
    bars: list[Rect] = []
    for (x0, _, x1, y1), bar_h in zip(visible, bar_heights, strict=True):
        bar_h = max(1, min(bar_h, (h - 1) // 4))
        tops = [t for t in (y1 + 2, y1 - 2 - bar_h, h - 1 - bar_h) if t >= 0 and t + bar_h <= h - 1] or [0]
        rects = [(x0, t, x1, t + bar_h) for t in tops]
        bars.append(next((r for r in rects if not any(hits(r, b) for b in bars)), rects[0]))
    labels: list[Rect] = []
    for i, ((x0, y0, x1, y1), (lw, lh)) in enumerate(zip(visible, label_sizes, strict=True)):
        lw, lh = min(lw, w - 1), min(lh, h - 1)
        hard = labels + bars
        soft = [b for j, b in enumerate(visible) if j != i]
        xs = list(dict.fromkeys((min(max(x0, 0), w - 1 - lw), min(max(x1 - lw, 0), w - 1 - lw))))
        near = [y0 - lh, bars[i][3] + 2, y0, y1 + 2]
        step = max(2, lh // 2)
        scan = sorted(range(0, h - lh, step), key=lambda y, y0=y0, lh=lh: abs(y - (y0 - lh)))
        choice = _first_free(_rects(xs, near + scan, lw, lh, w, h), hard, soft)
        if choice is None:  # no free place over or under the face: anywhere in the image
            all_xs = sorted(range(0, w - lw, max(4, lw // 4)), key=lambda x, x0=x0: abs(x - x0))
            choice = _first_free(_rects(all_xs, scan, lw, lh, w, h), hard, [])
        if choice is None:  # nowhere free (labels bigger than the image can hold): above the box, inside the image
            choice = (xs[0], min(max(y0 - lh, 0), h - 1 - lh), xs[0] + lw, min(max(y0 - lh, 0), h - 1 - lh) + lh)
        labels.append(choice)
    return list(zip(labels, bars, strict=True))


def layout(box: tuple[int, int, int, int], label_size: tuple[int, int], bar_h: int, img_h: int,
           img_w: int | None = None) -> tuple[Rect, Rect]:
    """layout_faces for one face (an image `img_w` wide, by default wide enough for the box and its label)."""
    width = img_w if img_w is not None else box[0] + max(box[2], label_size[0]) + 2
    return layout_faces([box], [label_size], [bar_h], (width, img_h))[0]


def _clip(box: tuple[int, int, int, int], w: int, h: int) -> Rect:
    x, y, bw, bh = box
    return (min(max(x, 0), w - 1), min(max(y, 0), h - 1), min(max(x + bw, 0), w - 1), min(max(y + bh, 0), h - 1))


def _rects(xs: Sequence[int], ys: Sequence[int], lw: int, lh: int, w: int, h: int):
    for y in ys:
        if y >= 0 and y + lh <= h - 1:
            for x in xs:
                if x >= 0 and x + lw <= w - 1:
                    yield (x, y, x + lw, y + lh)


def _first_free(rects, hard: list[Rect], soft: list[Rect]) -> Rect | None:
    """The first rectangle clear of `hard` and `soft` ones, else the first clear of `hard` ones."""
    fallback = None
    for r in rects:
        if any(hits(r, o) for o in hard):
            continue
        if not any(hits(r, o) for o in soft):
            return r
        fallback = fallback or r
    return fallback


def _leader(label: Rect, box: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """A line from a label to its face's box when they do not touch."""
    x, y, bw, bh = box
    if hits(label, (x - 1, y - 1, x + bw + 1, y + bh + 1)):
        return None
    lx, ly = (label[0] + label[2]) // 2, (label[1] + label[3]) // 2
    bx, by = min(max(lx, x), x + bw), min(max(ly, y), y + bh)
    return (min(max(bx, label[0]), label[2]), min(max(by, label[1]), label[3])), (bx, by)
