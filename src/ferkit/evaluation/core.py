"""Evaluate models on a dataset split: predictions, every metric, the figures and the report folder; calibration."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferkit import __version__, runs
from ferkit.data import load_dataset
from ferkit.data.audit import exact_train_copies
from ferkit.data.classes import class_lut, match_classes, parse_map, remap_split
from ferkit.data.dataset import Dataset, Split
from ferkit.errors import FerkitError
from ferkit.evaluation.metrics import expected_calibration_error, fit_temperature, summarize
from ferkit.evaluation.pipeline import PhotoEvaluation, evaluate_photos
from ferkit.evaluation.predictors import load_classifier, predict
from ferkit.evaluation.report import build_figures, default_out, write_report
from ferkit.inference.classifier import Ensemble
from ferkit.inference.resolve import resolve_models
from ferkit.utils import ProgressFn, atomic_write, is_package_asset, next_free, write_json
from ferkit.views import apply_temperature, tta_mode

log = logging.getLogger("ferkit.evaluation")


@dataclass
class Prepared:
    """A split lined up with a model's classes."""

    split: Split  # labels in the indices of `classes`
    classes: list[str]  # the classes evaluated: the model's, or with restrict only those the dataset has
    data_cols: np.ndarray  # the model's output columns of the dataset's classes
    restricted: bool  # probabilities renormalised over data_cols (and `classes` is that subset)
    mapping: dict[str, str]
    left_out: int  # items of classes dropped by --map
    train_copy: np.ndarray | None = None  # True where the image has an exact pixel copy in train

    def restrict(self, prob: np.ndarray) -> np.ndarray:
        """Model probabilities as evaluated: with restrict, over the dataset's classes only, renormalised."""
        if not self.restricted:
            return prob
        p = prob[:, self.data_cols].astype(np.float64)
        return (p / np.maximum(p.sum(1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Evaluation:
    """Everything one evaluation produced: the metrics JSON and the arrays behind it."""

    metrics: dict[str, Any]
    prepared: Prepared
    ensemble: Ensemble
    prob: np.ndarray
    prob_raw: np.ndarray
    figures: dict[str, bytes] = field(default_factory=dict)
    out: Path | None = None

    @property
    def classes(self) -> list[str]:
        return self.prepared.classes

    def proba(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities over the evaluated classes (for occlusion maps)."""
        return self.prepared.restrict(self.ensemble.predict_proba(images))


def prepare(ds: Dataset, classes: list[str], split: str, map_spec: str | None, copies: bool = True,
            restrict: bool = False) -> Prepared:
    """The split with labels in the model's classes (`--map` applied); with restrict, in the indices of the model's
    classes that the dataset has, whose probabilities Prepared.restrict renormalises."""
    if split not in ds.splits:
        have = ", ".join(ds.splits) or "none"
        raise FerkitError(f"{ds.source}: no {split!r} split (it has: {have}); choose one with --split")
    mapping = parse_map(map_spec)
    lut = class_lut(ds.classes, classes, mapping)
    # What was matched by emotion rather than by name ('Happy' -> 'happy') is reported like a --map.
    mapping = {c: m for c, m in match_classes(ds.classes, classes, mapping).items() if c != m}
    data_cols = np.unique(lut[lut >= 0])
    if restrict:
        lut = np.array([int(np.searchsorted(data_cols, v)) if v >= 0 else -1 for v in lut], dtype=np.int64)
        classes = [classes[c] for c in data_cols]
    sp, keep = remap_split(ds.splits[split], lut, len(classes), renormalise=False)
    if len(sp) == 0:
        raise FerkitError(f"{ds.source}: the {split} split has no items of the model's classes")
    prep = Prepared(sp, list(classes), data_cols, restrict, mapping, len(ds.splits[split]) - len(sp))
    if copies and split != "train" and "train" in ds.splits:
        prep.train_copy = exact_train_copies(ds)[split][keep]
    return prep


def outside_data(pred: np.ndarray, prep: Prepared, model_classes: list[str]) -> dict[str, Any]:
    """Predictions of model classes the dataset doesn't have (always wrong there): how many, and which."""
    if prep.restricted:
        return {"n": 0, "share": 0.0, "classes": {}}
    out = ~np.isin(pred, prep.data_cols)
    counts = np.bincount(pred[out], minlength=len(model_classes))
    return {"n": int(out.sum()), "share": float(out.mean()) if len(out) else 0.0,
            "classes": {model_classes[i]: int(c) for i, c in enumerate(counts) if c}}


def evaluate(
    models: list[str] | str,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    tta: str = "none",
    map_spec: str | None = None,
    format: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    report: bool = True,
    saliency: int = 2,
    restrict: bool = False,
    progress: ProgressFn | None = None,
    detect: bool = False,
) -> Evaluation | PhotoEvaluation:
    """Evaluate one model or an ensemble on a split; write metrics.json, predictions.csv, the PNGs and report.html
    to `out` (default: a new numbered folder runs/eval/<model>-<data>, -2, -3, ...: never an earlier report).

    restrict: renormalise the probabilities over the classes the dataset has (a 7-class model on a 4-class
    dataset then never predicts the 3 others); without it, predictions of classes the data lacks are counted
    and reported (metrics.json: data.predicted_outside_data).

    detect: whole labelled photos through the product's pipeline, as EmotionRecognizer.predict sees a user's photo
    (ferkit.evaluation.pipeline): metrics per dataset and over all, the photos with no face found counted as wrong
    and listed. It returns a PhotoEvaluation (metrics, out, figures, and the run behind them).
    """

    t0 = time.perf_counter()
    if detect:
        for flag, given in (("--format", format is not None), ("--restrict", restrict)):
            if given:
                raise FerkitError(f"{flag}: not used with --detect (it reads labelled photos and scores all the "
                                  "model's classes)")
        return evaluate_photos(models, data, split=split, out=out, tta=tta, map_spec=map_spec, n_boot=n_boot,
                               seed=seed, report=report, progress=progress)
    refs = resolve_models(models)
    ens = Ensemble([load_classifier(r) for r in refs])
    tta = ens.mode(tta) if tta_mode(tta) == "auto" else tta
    log.info("model %s: %d classes (%s), input %d px", ens.name, len(ens.classes), ", ".join(ens.classes),
             ens.input_size)
    ds = load_dataset(data, format=format, size=ens.input_size)
    prep = prepare(ds, ens.classes, split, map_spec, restrict=restrict)
    sp = prep.split
    log.info("data %s: %s split, %d images%s", data, split, len(sp),
             f" ({prep.left_out} left out by --map)" if prep.left_out else "")
    prob, prob_raw = predict(ens, sp.images, tta, progress=progress)
    outside = outside_data(prob.argmax(1), prep, ens.classes)
    prob, prob_raw = prep.restrict(prob), prep.restrict(prob_raw)
    metrics = summarize(sp.labels, prob, prob_raw, prep.classes, ens.calibrated, sp.soft, prep.train_copy,
                        n_boot=n_boot, seed=seed)
    if outside["n"]:
        log.warning("%d of %d predictions are classes %s lacks (%s): they count as mistakes; --restrict "
                    "renormalises over the dataset's classes", outside["n"], len(sp), data,
                    ", ".join(f"{c} {n}" for c, n in outside["classes"].items()))
    result = {
        "ferkit_version": __version__,
        "model": ens.info(),
        "data": {
            "source": str(data), "format": ds.format, "split": split, "classes": ds.classes, "n": len(sp),
            "left_out_by_map": prep.left_out, "skipped_items": len(ds.skipped),
            "restricted_to": prep.classes if restrict else None, "predicted_outside_data": outside,
        },
        "map": prep.mapping,
        "tta": tta,
        "temperature": ens.temperature_for(tta),
        "metrics": metrics,
        "saliency_method": "occlusion",
        "seconds": None,
    }
    ev = Evaluation(result, prep, ens, prob, prob_raw)
    out_dir = Path(out) if out is not None else runs.new_run_dir(default_out([r.spec for r in refs], data, split))
    ev.out = out_dir
    write_predictions(out_dir / PREDICTIONS, sp, sp.labels, prob, prep.classes)
    if report:
        log.info("drawing figures and occlusion maps")
        ev.figures = build_figures(ev, saliency_per_class=saliency, seed=seed)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        write_report(ev, out_dir)
    else:
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["files"] = ["metrics.json", PREDICTIONS]
        write_json(out_dir / "metrics.json", result)
    return ev


PREDICTIONS = "predictions.csv"


def write_predictions(path: Path, sp: Split, y: np.ndarray, prob: np.ndarray, classes: list[str]) -> None:
    """One row per image: its path in the dataset, true and predicted class, confidence, every probability
    (the list to go through when relabelling)."""
    import csv

    pred = prob.argmax(1)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "true", "predicted", "correct", "confidence", *(f"p_{c}" for c in classes)])
            for i in range(len(y)):
                w.writerow([sp.names[i], classes[y[i]], classes[pred[i]], int(pred[i] == y[i]),
                            f"{prob[i, pred[i]]:.4f}", *(f"{p:.4f}" for p in prob[i])])

    atomic_write(path, write)


def calibrated_path(member: Any, out: str | Path | None) -> Path:
    """Where calibration writes: `out`, else the model itself, except that a built-in model (in the package) is
    read-only: its calibrated copy goes to a new file in the current folder."""
    if out is not None:
        if is_package_asset(out):
            raise FerkitError(f"{out}: inside ferkit's package, whose models are read-only; write the calibrated "
                              "model elsewhere with --out")
        return Path(out)
    if not is_package_asset(member.source):
        return Path(member.source)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", member.name) or "model"
    return next_free(Path.cwd() / f"{stem}-calibrated.onnx")


def temperature_metadata(fitted: Mapping[str, float], tta: str, t: float) -> dict[str, str]:
    """The metadata that stores T for a TTA mode: 'temperature' for none, else that mode in 'temperatures'."""
    mode = tta_mode(tta)
    if mode == "none":
        return {"temperature": f"{t:.4f}"}
    return {"temperatures": json.dumps({**fitted, mode: round(t, 4)}, sort_keys=True)}


def calibrate(
    model: str, data: str | Path, split: str = "val", out: str | Path | None = None, write: bool = True,
    map_spec: str | None = None, format: str | None = None, progress: ProgressFn | None = None, tta: str = "none",
) -> dict[str, Any]:
    """Fit a temperature on a split by minimising the NLL; store it in the ONNX model (or a copy at `out`).

    With a `tta` other than none, T is fitted on that TTA's averaged views and stored for that mode only (metadata
    'temperatures'): averaged views are less confident than one, so each mode needs its own.

    A built-in model is never changed: without `out` its calibrated copy is written to a new file in the current
    folder (`default-calibrated.onnx`, numbered if that exists), named in the result's `written_to`.

    Reports ECE and NLL before and after on the fitting split, and on the test split when there is one.
    """

    refs = resolve_models(model)
    if len(refs) != 1:
        raise FerkitError("calibrate: give one model (an ensemble has no single temperature)")
    ens = Ensemble([load_classifier(refs[0])])
    member = ens.members[0]
    tta = member.mode(tta)
    if write and member.kind != "onnx":
        raise FerkitError(f"{member.source}: calibrate stores the temperature in an ONNX model; "
                          "give a .onnx file or a run folder with model.onnx (or use --no-write)")

    ds = load_dataset(data, format=format, size=ens.input_size)
    prep = prepare(ds, ens.classes, split, map_spec, copies=False)
    _, raw = predict(ens, prep.split.images, tta, progress=progress)
    y = prep.split.labels
    t = fit_temperature(y, raw)

    def scores(yy: np.ndarray, p: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import log_loss

        p64 = p.astype(np.float64)
        return {"ece": expected_calibration_error(yy, p),
                "nll": float(log_loss(yy, p64 / p64.sum(1, keepdims=True), labels=list(range(p.shape[1]))))}

    res: dict[str, Any] = {
        "model": member.source, "data": str(data), "split": split, "n": len(y),
        "tta": tta_mode(tta), "temperature_before": member.temperature_for(tta), "temperature": round(t, 4),
        split: {"before": scores(y, raw), "after": scores(y, apply_temperature(raw, t))},
    }
    if split != "test" and "test" in ds.splits:
        tp = prepare(ds, ens.classes, "test", map_spec, copies=False)
        _, traw = predict(ens, tp.split.images, tta)
        res["test"] = {"before": scores(tp.split.labels, traw),
                       "after": scores(tp.split.labels, apply_temperature(traw, t))}
    res["written_to"] = None
    res["copy_of_builtin"] = False
    if write:
        from ferkit.models.export import set_onnx_metadata

        target = calibrated_path(member, out)
        res["copy_of_builtin"] = out is None and is_package_asset(member.source)
        try:
            set_onnx_metadata(member.source, temperature_metadata(member.temperatures, tta, t), out=target)
        except OSError as e:
            raise FerkitError(f"{target}: cannot write the calibrated model ({e.strerror or e}); "
                              "give a writable path with --out") from None
        res["written_to"] = str(target)
    return res
