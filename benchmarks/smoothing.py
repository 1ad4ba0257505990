"""How much to smooth a face's emotions over video frames: label latency against flicker, per EMA window.

`ferkit predict clip.mp4` and the service's /v1/stream replace each tracked face's probabilities by their running
average (FaceTracker: an EMA over `window` processed frames). A long window hides one-frame misreadings (flicker) but
shows a new expression late, and a short expression maybe never. This measures both on clips made here:

- faces: FER2013 PrivateTest crops (../shared/datasets/fer2013.zip, read in place) that the model reads as their
  own label with probability >= 0.5 on the still image, so that what is measured is the smoothing, not the
  classifier's mistakes;
- clips: neutral for 1.2 s, then an expression (happy, surprise, sad, angry or fear) for 0.3, 0.5, 0.8 or 1.5 s,
  then neutral for 1.2 s, at 30 frames per second; each segment one face, changing over 3 frames (a cross-fade);
  every frame jittered as a camera would (shifted up to 2 px, brightness +-6, sensor noise sigma 3);
- each frame classified by the model (as ferkit predict does with a detected face), then smoothed by FaceTracker.

For each window and frame rate (30 fps, and 15 fps as with --vid-stride 2) it prints: the median time until the
expression shows (onset) and until neutral shows again (offset), the share of the 0.3 s and 0.5 s expressions that
show at all, the share of the clips whose final neutral shows, and the label changes per minute that no change in
the clip explains (flicker).

    python benchmarks/smoothing.py [--clips 8] [--data ../shared/datasets/fer2013.zip] [--model default]
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import cv2
import numpy as np
from _common import FER2013_ZIP, machine

EXPRESSIONS = ("happy", "surprise", "sad", "angry", "fear")
LENGTHS = (0.3, 0.5, 0.8, 1.5)
CALM = 1.2  # seconds of neutral before and after
FPS = 30
BLEND = 3  # frames of cross-fade between faces
WINDOWS = (1, 2, 3, 4, 5, 6, 8, 10, 15)


def clear_faces(rec, data: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    with zipfile.ZipFile(data) as z:
        names = sorted(n for n in z.namelist() if n.startswith("test/") and "PrivateTest" in n and n.endswith(".jpg"))
        out: dict[str, list[np.ndarray]] = {}
        for cls in ("neutral", *EXPRESSIONS):
            pool = [n for n in names if n.split("/")[1] == cls]
            pick = [pool[i] for i in rng.permutation(len(pool))[: 8 * per_class]]
            imgs = [cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_GRAYSCALE) for n in pick]
            p = rec.predict_proba(np.stack(imgs))
            k = rec.classes.index(cls)
            out[cls] = [im for im, row in zip(imgs, p, strict=True) if row.argmax() == k and row[k] >= 0.5][:per_class]
    return out


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out = cv2.warpAffine(img.astype(np.float32), m, img.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
    out += rng.normal(0, 6) + rng.normal(0, 3, img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_clip(faces: dict[str, list[np.ndarray]], expression: str, length: float, rng: np.random.Generator):
    """Frames (48x48) and the true label of each frame."""
    segments = [("neutral", CALM), (expression, length), ("neutral", CALM)]
    pick = {c: faces[c][int(rng.integers(len(faces[c])))] for c in {"neutral", expression}}
    second_neutral = faces["neutral"][int(rng.integers(len(faces["neutral"])))]
    frames, truth, prev = [], [], None
    for i, (cls, seconds) in enumerate(segments):
        img = second_neutral if i == 2 else pick[cls]
        for t in range(round(seconds * FPS)):
            a = min(1.0, (t + 1) / (BLEND + 1)) if prev is not None else 1.0
            base = img if a >= 1.0 else cv2.addWeighted(img, a, prev, 1 - a, 0)
            frames.append(jitter(base, rng))
            truth.append(cls)
        prev = img
    return np.stack(frames), truth


def smoothed_labels(rec, probs: np.ndarray, window: int) -> list[str]:
    from ferkit.inference import Face, FaceTracker

    tracker = FaceTracker(window=window)
    labels = []
    for p in probs:
        face = Face((10, 10, 100, 100), 0.9, "", 0.0, dict(zip(rec.classes, map(float, p), strict=True)))
        tracker.update([face])
        labels.append(face.label)
    return labels


def score(labels: list[str], truth: list[str], fps: float) -> dict[str, float]:
    """onset/offset latency (s, nan when never), shown flags, and unexplained label changes."""
    starts = [i for i in range(1, len(truth)) if truth[i] != truth[i - 1]]
    on, off = starts
    shown = [i for i in range(on, off) if labels[i] == truth[on]]
    back = [i for i in range(off, len(truth)) if labels[i] == "neutral"]
    changes = sum(labels[i] != labels[i - 1] for i in range(1, len(labels)))
    explained = bool(shown) + bool(back and shown)
    return {"onset": (shown[0] - on) / fps if shown else np.nan, "shown": bool(shown),
            "offset": (back[0] - off) / fps if back else np.nan, "back": bool(back),
            "flicker": max(0, changes - explained), "seconds": len(truth) / fps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8, help="clips per expression and length")
    ap.add_argument("--data", type=Path, default=FER2013_ZIP)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from ferkit.inference import EmotionRecognizer

    rec = EmotionRecognizer(args.model, threads=1)
    rng = np.random.default_rng(args.seed)
    faces = clear_faces(rec, args.data, per_class=20, rng=rng)
    runs = []
    for expression in EXPRESSIONS:
        for length in LENGTHS:
            for _ in range(args.clips):
                frames, truth = make_clip(faces, expression, length, rng)
                runs.append((length, rec.predict_proba(frames), truth))
    print(f"machine: {machine()}; model "
          f"{rec.model_names[0]}; {len(runs)} clips, {sum(len(t) for *_, t in runs):,} frames at {FPS} fps; "
          f"faces read as their label (p >= 0.5) on the still image: "
          f"{', '.join(f'{c} {len(v)}' for c, v in faces.items())}")
    print(f"\n{'fps':>4} {'window':>6} {'onset s':>8} {'offset s':>9} {'0.3 s shown':>12} {'0.5 s shown':>12} "
          f"{'neutral back':>13} {'flicker/min':>12}")
    for stride in (1, 2):
        fps = FPS / stride
        for w in WINDOWS:
            res = [(length, score(smoothed_labels(rec, p[::stride], w), t[::stride], fps)) for length, p, t in runs]
            onset = np.nanmedian([r["onset"] for _, r in res])
            offset = np.nanmedian([r["offset"] for _, r in res])
            short = {L: np.mean([r["shown"] for length, r in res if length == L]) for L in (0.3, 0.5)}
            back = np.mean([r["back"] for _, r in res])
            flicker = 60 * sum(r["flicker"] for _, r in res) / sum(r["seconds"] for _, r in res)
            print(f"{fps:4.0f} {w:6d} {onset:8.2f} {offset:9.2f} {short[0.3]:12.0%} {short[0.5]:12.0%} "
                  f"{back:13.0%} {flicker:12.1f}")


if __name__ == "__main__":
    main()
