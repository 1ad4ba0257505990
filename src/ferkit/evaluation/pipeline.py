"""Evaluation through the product's own pipeline (`ferkit evaluate --detect`, `ferkit compare --detect`).

Each labelled photo goes through exactly what `EmotionRecognizer(model).predict(photo)` does to a user's photo:
decoding, face detection, alignment, crop, classification (and, as there, an image of exactly the model's input size
is taken as a face crop already: CK+'s 48x48 frames). The largest face found is the photo's prediction; a photo with
no face found counts as wrong, predicted "no face", and is listed. Every metric is given per dataset (a manifest's
`dataset` column, or the folder layout: ferkit.data.photos) and over all, with the unweighted mean over datasets:
posed studio sets are easy and news photos hard, so the pooled figure mostly says which sets are large.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ferkit import __version__, runs
from ferkit.data.classes import class_lut, parse_map
from ferkit.data.dataset import Skipped
from ferkit.data.photos import Photo, PhotoSet, read_photos
from ferkit.errors import FerkitError
from ferkit.evaluation.metrics import mean_over_groups_ci, reliability, summarize, top_k_accuracy
from ferkit.evaluation.report import NO_FACE, build_photo_figures, default_out, write_report
from ferkit.inference.recognizer import EmotionRecognizer
from ferkit.inference.resolve import resolve_models
from ferkit.scoring import log_loss
from ferkit.utils import ProgressFn, atomic_write, write_json
from ferkit.views import tta_mode

if TYPE_CHECKING:
    from ferkit.inference.results import Face, Prediction

log = logging.getLogger("ferkit.evaluation")

THUMB = 96  # pixels a side of the photo and of its face crop in the report's grids


@dataclass
class PhotoRun:
    """One model's results on a photo set: the photos evaluated (readable, of a class --map keeps), in order."""

    model: dict[str, Any]
    pipeline: dict[str, Any]
    classes: list[str]  # the model's; index len(classes) is "no face"
    photos: list[Photo]
    y: np.ndarray
    prob: np.ndarray  # N x C, the largest face's probabilities; zeros where no face was found
    found: np.ndarray  # a face was found
    faces: np.ndarray  # how many faces were found
    boxes: list[tuple[int, int, int, int] | None]  # the largest face's box, in the photo's pixels
    skipped: list[Skipped]
    left_out: int  # photos of classes --map leaves out
    pairs: list[np.ndarray] | None = None  # photo (box drawn) beside its face crop, grey THUMB x (2 THUMB + gap)

    @property
    def pred(self) -> np.ndarray:
        p = self.prob.argmax(1)
        p[~self.found] = len(self.classes)
        return p

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.y

    @property
    def datasets(self) -> np.ndarray:
        return np.array([p.dataset for p in self.photos], dtype=object)


@dataclass
class PhotoEvaluation:
    """What `evaluate(..., detect=True)` returns: the metrics JSON and the run behind it."""

    metrics: dict[str, Any]
    run: PhotoRun
    figures: dict[str, bytes] = field(default_factory=dict)
    out: Path | None = None

    @property
    def classes(self) -> list[str]:
        return self.run.classes


def largest_face(pred: Prediction) -> Face | None:
    """The face the evaluation scores: the largest box (the first, i.e. the most confident, of equal ones)."""
    return max(pred.faces, key=lambda f: f.box[2] * f.box[3], default=None)


def recognizer(models: list[str] | str, tta: str = "none") -> EmotionRecognizer:
    """The recognizer a user gets for these models (an ensemble for several), with the product's default settings."""

    return EmotionRecognizer(models, tta=tta)


def model_info(rec: EmotionRecognizer, tta: str) -> dict[str, Any]:
    return {"name": "+".join(rec.model_names), "classes": list(rec.classes),
            "members": [{**m.info(), "temperature": m.temperature_for(rec.classifier.mode(tta))} for m in rec.models]}


def pipeline_info(rec: EmotionRecognizer) -> dict[str, Any]:
    det = rec.detector
    return {"detector": det.name, "detect_size": det.detect_size, "threshold": det.threshold, "margin": rec.margin,
            "adaptive": rec.adaptive, "face": "largest",
            "crop_as_is": f"images of exactly {rec.input_size}x{rec.input_size} px are classified whole, as "
                          "predict() does"}


def run_photos(rec: EmotionRecognizer, ps: PhotoSet, map_spec: str | None = None, pairs: bool = False,
               progress: ProgressFn | None = None, what: str = "detecting and classifying", tta: str = "none",
               ) -> PhotoRun:
    """Every photo of `ps` through `rec.predict`; unreadable ones are skipped and listed, the rest go on."""

    try:
        lut = class_lut(ps.classes, rec.classes, parse_map(map_spec))
    except FerkitError as e:
        raise FerkitError(f"{ps.source}: {e}") from None
    target = {c: int(lut[i]) for i, c in enumerate(ps.classes)}
    kept, ys, probs, found, counts, boxes, thumbs = [], [], [], [], [], [], []
    skipped: list[Skipped] = []
    left_out = 0
    n_cls = len(rec.classes)
    for i, photo in enumerate(ps.photos):
        if progress is not None:
            progress(what, i, len(ps.photos))
        if target[photo.label] < 0:
            left_out += 1
            continue
        data, why = ps.read(photo)
        if data is None:
            skipped.append(Skipped(photo.path, why))
            continue
        try:
            pred = rec.predict(data, name=photo.path, keep_crops=pairs)
        except Exception as e:  # noqa: BLE001 - one bad photo never ends the evaluation: it is listed instead
            why = str(e) if isinstance(e, FerkitError) else f"internal error ({type(e).__name__}: {e})"
            skipped.append(Skipped(photo.path, why.removeprefix(f"{photo.path}: ").splitlines()[0]))
            continue
        face = largest_face(pred)
        kept.append(photo)
        ys.append(target[photo.label])
        found.append(face is not None)
        counts.append(len(pred.faces))
        boxes.append(None if face is None else face.box)
        probs.append(np.zeros(n_cls, np.float32) if face is None else
                     np.array([face.probabilities[c] for c in rec.classes], np.float32))
        if pairs:
            thumbs.append(photo_pair(pred, face))
    if progress is not None:
        progress(what, len(ps.photos), len(ps.photos))
    if not kept:
        raise FerkitError(f"{ps.source}: no photo could be evaluated ({len(skipped)} unreadable, {left_out} left "
                          "out by --map)")
    return PhotoRun(model_info(rec, tta), pipeline_info(rec), list(rec.classes), kept, np.array(ys, np.int64),
                    np.stack(probs), np.array(found, bool), np.array(counts, np.int64), boxes, skipped, left_out,
                    thumbs if pairs else None)


def photo_pair(pred: Prediction, face: Face | None) -> np.ndarray:
    """The photo shrunk into a square, the scored face's box drawn on it, and beside it the crop the model saw."""
    img = pred.image
    gap = THUMB // 12
    out = np.full((THUMB, 2 * THUMB + gap), 255, np.uint8)
    if img is None:
        return out
    grey = img if img.ndim == 2 else cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    s = THUMB / max(h, w)
    th, tw = max(1, round(h * s)), max(1, round(w * s))
    y0, x0 = (THUMB - th) // 2, (THUMB - tw) // 2
    out[y0 : y0 + th, x0 : x0 + tw] = cv2.resize(grey, (tw, th), interpolation=cv2.INTER_AREA)
    if face is None:
        out[:, THUMB + gap :] = 230
        return out
    # Boxes are in the photo's full-size pixels; a very large photo was decoded reduced.
    k = s * w / max(pred.width, 1)
    bx, by, bw, bh = (v * k for v in face.box)
    p1, p2 = (int(x0 + bx), int(y0 + by)), (int(x0 + bx + bw), int(y0 + by + bh))
    cv2.rectangle(out[:, :THUMB], p1, p2, 0, 2)  # black under white: visible on dark and light photos
    cv2.rectangle(out[:, :THUMB], p1, p2, 255, 1)
    if face.crop is not None:
        crop = face.crop if face.crop.ndim == 2 else cv2.cvtColor(face.crop[..., :3], cv2.COLOR_BGR2GRAY)
        out[:, THUMB + gap :] = cv2.resize(crop, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return out


# -- metrics ------------------------------------------------------------------------------------------------------
def photo_metrics(y: np.ndarray, prob: np.ndarray, found: np.ndarray, classes: list[str], n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """evaluate's metrics block, with "no face" as one more predicted class (always wrong): accuracy, F1s, the
    confusion matrix and their intervals count those photos; log-loss and ECE are over the photos with a face
    (a missing face has no probability to score), top-2 over all (no face: wrong)."""

    c = len(classes)
    ext = np.zeros((len(y), c + 1), np.float32)
    ext[:, :c] = prob
    ext[~found, c] = 1.0
    m = summarize(y, ext, ext, [*classes, NO_FACE], calibrated=False, n_boot=n_boot, seed=seed)
    m["per_class"].pop(NO_FACE)
    n_found = int(found.sum())
    m["no_face"] = {"n": len(y) - n_found, "share": 1 - n_found / len(y)}
    m["probability_metrics_over"] = n_found
    if n_found:
        yf, pf = y[found], prob[found]
        m["log_loss"] = log_loss(yf, pf)
        m["top2_accuracy"] = top_k_accuracy(yf, pf, 2) * n_found / len(y)
        rel = reliability(yf, pf)
        m["ece"], m["calibration"] = rel["ece"], {"reliability": rel}
    else:
        m["log_loss"], m["top2_accuracy"], m["ece"], m["calibration"] = None, 0.0, None, {"reliability": None}
    return m


def dataset_block(m: dict[str, Any]) -> dict[str, Any]:
    """A dataset's part of metrics.json: the headline figures, its classes' rows and its confusion matrix."""
    present = [k for k, v in m["per_class"].items() if v["support"]]
    return {
        "n": m["n"], "accuracy": m["accuracy"], "accuracy_ci95": m["ci95"]["accuracy"],
        "macro_f1": m["macro_f1"], "macro_f1_ci95": m["ci95"]["macro_f1"],
        "balanced_accuracy": m["balanced_accuracy"], "top2_accuracy": m["top2_accuracy"],
        "log_loss": m["log_loss"], "ece": m["ece"], "no_face": m["no_face"], "classes": present,
        "per_class": {k: m["per_class"][k] for k in present},
        "confusion": m["confusion"],  # rows and columns: the model's classes, then "no face"
    }


def summarize_run(run: PhotoRun, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """metrics (over all), datasets (each one's block), mean_over_datasets and the no-face list."""

    overall = photo_metrics(run.y, run.prob, run.found, run.classes, n_boot, seed)
    ds = run.datasets
    names = sorted(set(ds))
    blocks, groups = {}, []
    for name in names:
        k = ds == name
        blocks[name] = dataset_block(photo_metrics(run.y[k], run.prob[k], run.found[k], run.classes, n_boot, seed))
        groups.append((run.y[k], run.pred[k]))
    mean = mean_over_groups_ci(groups, len(run.classes) + 1, n_boot=n_boot, seed=seed)
    missing = [{"path": p.path, "dataset": p.dataset, "true": run.classes[y]}
               for p, y, f in zip(run.photos, run.y, run.found, strict=True) if not f]
    return {"metrics": overall, "datasets": blocks, "mean_over_datasets": mean,
            "no_face": {"n": len(missing), "share": len(missing) / len(run.y), "photos": missing}}


# -- evaluate -----------------------------------------------------------------------------------------------------
def evaluate_photos(
    models: list[str], data: str | Path, split: str = "test", out: str | Path | None = None, tta: str = "none",
    map_spec: str | None = None, n_boot: int = 1000, seed: int = 0, report: bool = True,
    progress: ProgressFn | None = None,
) -> PhotoEvaluation:
    """`evaluate(..., detect=True)`: see the module docstring; writes metrics.json, predictions.csv and the report."""

    t0 = time.perf_counter()
    specs = [ref.spec for ref in resolve_models(models)]
    ps = read_photos(data, split)
    rec = recognizer(specs, tta)
    tta = rec.classifier.mode(tta) if tta_mode(tta) == "auto" else tta
    log.info("model %s, detector %s; data %s: %d photos in %d dataset(s) (%s)", "+".join(rec.model_names),
             rec.detector_name, data, len(ps.photos), len(ps.datasets), ", ".join(ps.datasets))
    run = run_photos(rec, ps, map_spec, pairs=report, progress=progress, tta=tta)
    if run.skipped:
        log.warning("%d photos could not be read and are left out (metrics.json: data.skipped)", len(run.skipped))
    summary = summarize_run(run, n_boot, seed)
    if summary["no_face"]["n"]:
        log.warning("no face found in %d of %d photos: counted as wrong (metrics.json: no_face)",
                    summary["no_face"]["n"], len(run.y))
    result: dict[str, Any] = {
        "ferkit_version": __version__,
        "model": run.model,
        "pipeline": run.pipeline,
        "data": {
            "source": str(data), "format": f"photos ({ps.layout})", "split": ps.split or "all",
            "classes": ps.classes, "datasets": ps.datasets, "n": len(run.y), "left_out_by_map": run.left_out,
            "skipped_items": len(ps.skipped) + len(run.skipped),
            "skipped": [{"path": s.name, "why": s.reason} for s in [*ps.skipped, *run.skipped]],
            "restricted_to": None, "predicted_outside_data": None,
        },
        "map": parse_map(map_spec),
        "tta": tta,
        "temperature": run.model["members"][0]["temperature"],
        "detect": True,
        **summary,
        "seconds": None,
    }
    ev = PhotoEvaluation(result, run)
    name = [Path(m.rstrip("/")).name or m for m in specs]
    ev.out = Path(out) if out is not None else runs.new_run_dir(default_out(name, data, ps.split or "test"))
    ev.out.mkdir(parents=True, exist_ok=True)
    write_photo_predictions(ev.out / "predictions.csv", run)
    if report:
        ev.figures = build_photo_figures(ev, seed=seed)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        write_report(ev, ev.out)  # type: ignore[arg-type]
    else:
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["files"] = ["metrics.json", "predictions.csv"]
        write_json(ev.out / "metrics.json", result)
    return ev


def write_photo_predictions(path: Path, run: PhotoRun) -> None:
    """evaluate's predictions.csv with the dataset, the number of faces found and the scored face's box; a photo
    with no face has predicted "no face" and empty probabilities."""
    import csv

    classes = run.classes
    pred = run.pred

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "true", "predicted", "correct", "confidence", "dataset", "faces", "x", "y", "w", "h",
                        *(f"p_{c}" for c in classes)])
            for i, photo in enumerate(run.photos):
                box = run.boxes[i]
                if box is None:
                    w.writerow([photo.path, classes[run.y[i]], NO_FACE, 0, "", photo.dataset, 0, "", "", "", "",
                                *([""] * len(classes))])
                    continue
                p = run.prob[i]
                w.writerow([photo.path, classes[run.y[i]], classes[pred[i]], int(pred[i] == run.y[i]),
                            f"{p[pred[i]]:.4f}", photo.dataset, int(run.faces[i]), *box, *(f"{v:.4f}" for v in p)])

    atomic_write(path, write)


