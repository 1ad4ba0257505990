"""The `fer` side of benchmarks/peers.py, run by the peer venv's python (benchmarks/peer_env.sh); prints JSON.

It uses fer's default path (Haar cascade + the quantised mini-Xception under TensorFlow Lite) on the crops and
frames that peers.py saved, and times:
- crops through fer's classifier (`FER._classify_emotions`, the step `detect_emotions` runs on each face), with
  fer's own preprocessing (resize to 64x64, scale to -1..1) inside the timing;
- crops through fer's public API: `detect_emotions(crop, face_rectangles=[whole crop])`;
- frames through `detect_emotions(frame)` (Haar detection + classification);
- with --photos, whole labelled photos (realval) once, untimed but for one pass: `detect_emotions(photo)`, and the
  largest face's top emotion is the photo's label (none where no face is found); and where none is found, the
  whole photo as the face (`face_rectangles=[whole photo]`), for the table's second view.
Threads: TensorFlow Lite's interpreter and OpenCV are both held to --threads.

This file must not import ferkit: it runs in another interpreter, with fer's dependencies only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def timed(fn, n_items: int, seconds: float) -> float:
    """Items per second: whole passes of `fn` (each over n_items) until `seconds` have passed (at least one)."""
    fn()  # warm-up
    t0 = time.perf_counter()
    passes = 0
    while True:
        fn()
        passes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return passes * n_items / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", required=True, help=".npy of N x 48 x 48 uint8 gray face crops")
    ap.add_argument("--frames", required=True, nargs="+", help=".npy files of F x 480 x 640 x 3 uint8 BGR frames")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--timed-crops", type=int, default=0, help="time the classifier on the first N crops (0 = all)")
    ap.add_argument("--photos", help="STEM of STEM.bin + STEM.json: photos of varying size (peers.py's save_pack), BGR")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import numpy as np
    import tensorflow as tf

    try:
        from fer import FER
    except ImportError:  # fer 25.10.3's package __init__ does not re-export FER
        from fer.fer import FER
    import fer as fer_pkg

    cv2.setNumThreads(args.threads)
    # fer builds its TF Lite interpreter without a thread count and caches it on the class: seed that cache with
    # the same model file and a fixed thread count, so both sides run with the same threads.
    from importlib import resources

    model = str(resources.files("fer") / "data" / "emotion_model_quantized.tflite")
    interp = tf.lite.Interpreter(model_path=model, num_threads=args.threads)
    interp.allocate_tensors()
    FER._tflite_interpreter_cache = interp
    detector = FER()  # defaults: Haar cascade, TF Lite model

    crops = np.load(args.crops)
    frame_sets = [np.load(f) for f in args.frames]
    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # fer's output order

    def classify(crops=crops) -> np.ndarray:
        x = np.stack([cv2.resize(c, (64, 64)) for c in crops]).astype(np.float32)
        return np.asarray(detector._classify_emotions((x / 255.0 - 0.5) * 2.0))

    bgr = [cv2.cvtColor(c, cv2.COLOR_GRAY2BGR) for c in crops]
    box = [(0, 0, crops.shape[2], crops.shape[1])]

    def api() -> list:
        return [detector.detect_emotions(c, face_rectangles=box) for c in bgr]

    prob = classify()
    nt = args.timed_crops or len(crops)
    api_out = api()
    api_pred = [max(r[0]["emotions"], key=r[0]["emotions"].get) if r else None for r in api_out]
    out = {
        "fer_version": getattr(fer_pkg, "__version__", "?"),
        "tensorflow_version": tf.__version__,
        "model": "fer emotion_model_quantized.tflite (mini-Xception, 64x64)",
        "detector": "haar (fer default: scaleFactor 1.1, minNeighbors 5, min face 50 px, full frame)",
        "threads": args.threads,
        "pred_classifier": [labels[int(k)] for k in prob.argmax(1)],
        "pred_api": api_pred,
        "faces_per_frame": [[len(detector.detect_emotions(f)) for f in frames] for frames in frame_sets],
        "crops_per_s_classifier": timed(lambda: classify(crops[:nt]), len(crops[:nt]), args.seconds),
        "crops_per_s_api": timed(api, len(crops), args.seconds),
        "fps": [timed(lambda fs=frames: [detector.detect_emotions(f) for f in fs], len(frames), args.seconds)
                for frames in frame_sets],
    }
    if args.photos:
        out |= run_photos(detector, load_pack(args.photos))
    json.dump(out, sys.stdout)


def load_pack(stem: str) -> list:
    """The images peers.py's save_pack wrote: uint8 arrays back to back in STEM.bin, their shapes in STEM.json."""
    import numpy as np

    with open(stem + ".json") as f:
        shapes = json.load(f)
    buf = np.fromfile(stem + ".bin", np.uint8)
    out, o = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(buf[o : o + n].reshape(shape))
        o += n
    return out


def run_photos(detector, photos: list) -> dict:
    """fer's default pipeline on each photo: the largest face's top emotion (None: no face found), one pass."""
    labels, faces = [], []
    t0 = time.perf_counter()
    for img in photos:
        found = detector.detect_emotions(img)
        faces.append(len(found))
        if not found:
            labels.append(None)
            continue
        # The largest box; of equal ones the first (fer lists them in the detector's order).
        big = max(found, key=lambda r: r["box"][2] * r["box"][3])
        labels.append(max(big["emotions"], key=big["emotions"].get))
    seconds = time.perf_counter() - t0
    # Where no face was found: the whole photo as the face (fer's own way to be told where the face is).
    whole = {}
    for i, img in enumerate(photos):
        if faces[i] == 0:
            r = detector.detect_emotions(img, face_rectangles=[(0, 0, img.shape[1], img.shape[0])])
            whole[i] = max(r[0]["emotions"], key=r[0]["emotions"].get) if r else None
    return {"photos_pred": labels, "photos_faces": faces, "photos_seconds": seconds,
            "photos_pred_whole": [whole.get(i, p) for i, p in enumerate(labels)]}


if __name__ == "__main__":
    main()
