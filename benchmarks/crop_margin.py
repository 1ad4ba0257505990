"""How the face crop policy matters: FER2013 test crops pasted into 640x480 frames, detected, re-cropped, classified.

The pasted square is exactly the frame the FER2013 crop had, so the detector box can be compared with it directly
(where the FER2013 frame lies relative to the detector box), and every crop margin can be scored by agreement with
the model's prediction on the original 48x48 crop and by accuracy against the label.

Usage: python benchmarks/crop_margin.py [--n 300] [--model PATH] [--detector auto]
"""

from __future__ import annotations

import argparse
import time
import zipfile

import cv2
import numpy as np
from _common import FER2013_ZIP

from ferkit.inference import Detection, EmotionRecognizer, aligned_crop

MARGINS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.4)
SHIFTS = (0.0, 0.05, 0.1)  # crop centre moved down by this fraction of the box height


def fer_crops(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    with zipfile.ZipFile(FER2013_ZIP) as z:
        names = sorted(x for x in z.namelist() if x.startswith("test/") and "PrivateTest_" in x and x.endswith(".jpg"))
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(names), size=min(n, len(names)), replace=False)
        imgs, labels = [], []
        for i in pick:
            data = np.frombuffer(z.read(names[i]), np.uint8)
            imgs.append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
            labels.append(names[i].split("/")[1])
    return imgs, labels


def background(rng: np.random.Generator) -> np.ndarray:
    # Smooth random texture: something for the detector to reject, not a flat wall.
    small = rng.integers(40, 220, size=(12, 16, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC), (0, 0), 8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--model", default=None)
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--side", type=int, default=144, help="pasted face size in pixels")
    args = ap.parse_args()
    rec = EmotionRecognizer(args.model, detector=args.detector)
    imgs, labels = fer_crops(args.n)
    rng = np.random.default_rng(1)
    ref = rec.predict_proba(imgs).argmax(1)
    names = rec.classes
    known = np.array([lab in names for lab in labels])
    y = np.array([names.index(lab) if lab in names else -1 for lab in labels])
    rel = []
    preds = {(m, s): [] for m in MARGINS for s in SHIFTS}
    found = []
    t0 = time.perf_counter()
    for img in imgs:
        s = args.side
        frame = background(rng)
        x0, y0 = int(rng.integers(0, 640 - s)), int(rng.integers(0, 480 - s))
        face = cv2.resize(img, (s, s), interpolation=cv2.INTER_CUBIC)
        frame[y0 : y0 + s, x0 : x0 + s] = face[..., None]
        dets = [d for d in rec.detect(frame) if _overlap(d.box, (x0, y0, s, s)) > 0.3]
        found.append(bool(dets))
        if not dets:
            for k in preds:
                preds[k].append(-1)
            continue
        d = dets[0]
        bx, by, bw, bh = d.box
        # The FER2013 frame in units of the box: centre offset and side relative to max(w, h).
        side = max(bw, bh)
        rel.append(((x0 + s / 2 - (bx + bw / 2)) / side, (y0 + s / 2 - (by + bh / 2)) / side, s / side))
        for m in MARGINS:
            for sh in SHIFTS:
                dd = Detection((bx, by + sh * bh, bw, bh), d.score)
                crop = aligned_crop(frame, dd, m)
                preds[(m, sh)].append(int(rec.predict_proba([crop])[0].argmax()))
    secs = time.perf_counter() - t0
    found = np.array(found)
    rel = np.array(rel)
    print(f"model {rec.model_names[0]} ({len(names)} classes), detector {rec.detector_name}, {len(imgs)} FER2013 "
          f"PrivateTest crops pasted at {args.side}px into 640x480 frames, {secs:.1f}s")
    print(f"faces found: {found.mean():.1%}")
    if len(rel):
        med = np.median(rel, 0)
        print(f"FER2013 frame relative to the detector box (median): centre dx {med[0]:+.3f}, dy {med[1]:+.3f} "
              f"(x max(w,h)); side {med[2]:.3f} x max(w,h)")
    print(f"reference on the original 48x48 crops: accuracy {np.mean(ref[known] == y[known]):.3f}")
    print("margin  shift  agree_with_48x48  accuracy   (over faces found)")
    for (m, sh), p in preds.items():
        p = np.array(p)
        ok = found
        agree = np.mean(p[ok] == ref[ok])
        acc = np.mean(p[ok & known] == y[ok & known])
        print(f"{m:5.2f}  {sh:5.2f}  {agree:16.3f}  {acc:8.3f}")
    real_photos(rec)


def real_photos(rec: EmotionRecognizer) -> None:
    """scikit-image's photos with a face: the predicted label and its confidence at each margin."""
    from skimage import data

    print("real photos (scikit-image): label and confidence per margin")
    print("photo      " + "".join(f"{m:>16.2f}" for m in MARGINS))
    for name in ("astronaut", "camera"):
        img = getattr(data, name)()
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
        dets = rec.detect(img)
        if not dets:
            print(f"{name:10} no face found")
            continue
        cells = []
        for m in MARGINS:
            p = rec.predict_proba([aligned_crop(img, dets[0], m)])[0]
            cells.append(f"{rec.classes[int(p.argmax())]} {p.max():.2f}")
        print(f"{name:10} " + "".join(f"{c:>16}" for c in cells))


def _overlap(a, b) -> float:
    from ferkit.inference.tracking import iou

    return iou(a, b)


if __name__ == "__main__":
    main()
