"""Several models on the same images: one table side by side, and McNemar's test for every pair."""

from __future__ import annotations

import time
from itertools import combinations
from pathlib import Path
from typing import Any

from ferkit.data import load_dataset
from ferkit.data.photos import read_photos
from ferkit.errors import FerkitError
from ferkit.evaluation.core import outside_data, prepare
from ferkit.evaluation.metrics import mcnemar, paired_difference_ci, summarize
from ferkit.evaluation.pipeline import recognizer, run_photos, summarize_run
from ferkit.evaluation.predictors import load_ensemble, predict
from ferkit.utils import ProgressFn, atomic_write_text, write_json


def compare(
    models: list[str], data: str | Path, split: str = "test", tta: str = "none", map_spec: str | None = None,
    format: str | None = None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, restrict: bool = False,
    progress: ProgressFn | None = None, detect: bool = False,
) -> dict[str, Any]:
    """Each MODEL argument is one entry (a comma inside it makes that entry an ensemble).

    Every model's classes are checked against the data before anything is predicted. restrict: as in evaluate,
    each model's probabilities renormalised over the dataset's classes, so that a bigger model is not charged for
    classes the data lacks.

    detect: labelled photos through the product's pipeline (compare_photos, below).
    """
    if len(models) < 2:
        raise FerkitError("compare: give at least two models")
    if detect:
        for flag, given in (("--format", format is not None), ("--restrict", restrict)):
            if given:
                raise FerkitError(f"{flag}: not used with --detect")
        return compare_photos(models, data, split=split, tta=tta, map_spec=map_spec, n_boot=n_boot, seed=seed,
                              alpha=alpha, progress=progress)
    t0 = time.perf_counter()
    ensembles = [load_ensemble(m) for m in models]
    ds = load_dataset(data, format=format, size=max(e.input_size for e in ensembles))
    preps = []
    for spec, ens in zip(models, ensembles, strict=True):
        try:
            prep = prepare(ds, ens.classes, split, map_spec, restrict=restrict)
        except FerkitError as e:
            raise FerkitError(f"model {spec}: {e}") from None
        if preps and len(prep.split) != len(preps[0].split):
            raise FerkitError(f"model {spec}: its class set keeps {len(prep.split)} images, {models[0]}'s "
                              f"{len(preps[0].split)}; compare needs the same images for every model")
        preps.append(prep)
    rows, correct, names = [], [], []
    n_items = len(preps[0].split)
    for spec, ens, prep in zip(models, ensembles, preps, strict=True):
        sp = prep.split
        prob, raw = predict(ens, sp.images, tta, progress=progress, what=f"predicting {spec}")
        outside = outside_data(prob.argmax(1), prep, ens.classes)
        prob, raw = prep.restrict(prob), prep.restrict(raw)
        m = summarize(sp.labels, prob, raw, prep.classes, ens.calibrated, sp.soft, prep.train_copy, n_boot, seed)
        correct.append(prob.argmax(1) == sp.labels)
        names.append(_unique(spec, names))
        rows.append({
            "model": names[-1], "spec": spec, "accuracy": m["accuracy"], "accuracy_ci95": m["ci95"]["accuracy"],
            "macro_f1": m["macro_f1"], "macro_f1_ci95": m["ci95"]["macro_f1"],
            "balanced_accuracy": m["balanced_accuracy"], "top2_accuracy": m["top2_accuracy"],
            "log_loss": m["log_loss"], "ece": m["ece"], "temperature": ens.temperature_for(tta), "tta": ens.mode(tta),
            "accuracy_without_train_copies": (m["train_copies"] or {}).get("accuracy_without"),
            "in_votes_accuracy": (m["votes"] or {}).get("in_votes_accuracy"),
            "predicted_outside_data": outside,
        })
    pairs = []
    for i, j in combinations(range(len(rows)), 2):
        t = mcnemar(correct[i], correct[j])
        pairs.append({"a": names[i], "b": names[j], **t, "significant": t["p_exact"] < alpha})
    return {"data": str(data), "split": split, "n": n_items, "tta": tta, "alpha": alpha, "restrict": restrict,
            "models": rows,
            "mcnemar": pairs, "seconds": round(time.perf_counter() - t0, 2)}


def _unique(spec: str, taken: list[str]) -> str:
    base = Path(spec.rstrip("/")).name or spec
    name, k = base, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    return name


def _p(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _outside_note(res: dict[str, Any]) -> list[str]:
    notes = []
    for r in res["models"]:
        o = r.get("predicted_outside_data") or {}
        if o.get("n"):
            which = ", ".join(f"{c} {n}" for c, n in o["classes"].items())
            notes.append(f"- {r['model']}: {o['n']} predictions ({_p(o['share'])}%) are classes the data lacks "
                         f"({which}), all counted as mistakes; `--restrict` renormalises over the data's classes.")
    return ["", *notes] if notes else []


def _ci(ci: list[float]) -> str:
    return f"{_p(ci[0])} to {_p(ci[1])}"


def _photo_tables(res: dict[str, Any]) -> list[str]:
    """compare --detect: no faces found, accuracy per dataset and their mean, paired bootstrap differences."""
    sets = res["datasets"]
    lines = ["", f"Through the pipeline ({res['pipeline']['detector']} detector, largest face); a photo with no face "
             "found counts as wrong. Accuracy % per dataset (95% CI), and the unweighted mean over datasets:", "",
             "| model | no face | " + " | ".join(sets) + " | mean over datasets |",
             "|---|---|" + "---|" * (len(sets) + 1)]
    for r in res["models"]:
        cells = [f"{_p(d['accuracy'])} ({_ci(d['accuracy_ci95'])})" for d in r["datasets"].values()]
        mean = r["mean_over_datasets"]
        lines.append(f"| {r['model']} | {r['no_face']} | " + " | ".join(cells)
                     + f" | {_p(mean['accuracy'])} ({_ci(mean['accuracy_ci95'])}) |")
    lines += ["", "Paired bootstrap on the same photos: B's accuracy minus A's, points (95% CI):", "",
              "| A | B | over all | mean over datasets |", "|---|---|---|---|"]
    for p in res["mcnemar"]:
        d, g = p["accuracy_difference"], p["mean_over_datasets_difference"]
        lines.append(f"| {p['a']} | {p['b']} | {_p(d['difference'])} ({_ci(d['ci95'])}) | "
                     f"{_p(g['difference'])} ({_ci(g['ci95'])}) |")
    return lines


def _cell(text: object) -> str:
    """A name inside a Markdown line: a newline or carriage return in it would end the line (or fake another)."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n").replace("|", "\\|")


def markdown(res: dict[str, Any]) -> str:
    """The comparison as Markdown: metrics per model, then McNemar's test per pair."""
    lines = [
        f"Data: `{_cell(res['data'])}`, split {res['split']}, {res['n']} images, TTA {res['tta']}"
        + (", probabilities restricted to the data's classes." if res.get("restrict") else "."),
        "",
        "| model | accuracy % | 95% CI | macro-F1 % | 95% CI | balanced acc. % | top-2 % | log-loss | ECE % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["models"]:
        a, f = r["accuracy_ci95"], r["macro_f1_ci95"]
        loss = "–" if r["log_loss"] is None else f"{r['log_loss']:.4f}"
        lines.append(
            f"| {_cell(r['model'])} | {_p(r['accuracy'])} | {_p(a[0])}–{_p(a[1])} | {_p(r['macro_f1'])} | "
            f"{_p(f[0])}–{_p(f[1])} | {_p(r['balanced_accuracy'])} | {_p(r['top2_accuracy'])} | "
            f"{loss} | {_p(r['ece'])} |"
        )
    lines += _outside_note(res)
    if res.get("detect"):
        lines += _photo_tables(res)
    lines += [
        "",
        f"McNemar's test (exact binomial; significant when p < {res['alpha']}):",
        "",
        "| A | B | only A right | only B right | p (exact) | chi² (cont. corr.) | p (chi²) | significant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in res["mcnemar"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['a_only']} | {p['b_only']} | {p['p_exact']:.4g} | "
                     f"{p['chi2']:.3f} | {p['p_chi2']:.4g} | {'yes' if p['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_compare(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", res)
    atomic_write_text(out / "compare.md", markdown(res))


def compare_photos(
    models: list[str], data: str | Path, split: str = "test", tta: str = "none", map_spec: str | None = None,
    n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """`compare(..., detect=True)`: every model through the pipeline on the same photos; McNemar's test and a paired
    bootstrap of the accuracy difference (over all, and of the mean over datasets) for every pair."""

    t0 = time.perf_counter()
    ps = read_photos(data, split)
    recs = []
    for spec in models:
        try:
            recs.append(recognizer(spec, tta))
        except FerkitError as e:
            raise FerkitError(f"model {spec}: {e}") from None
    runs_ = []
    for spec, rec in zip(models, recs, strict=True):
        try:
            run = run_photos(rec, ps, map_spec, progress=progress, what=f"predicting {spec}", tta=tta)
        except FerkitError as e:
            raise FerkitError(f"model {spec}: {e}") from None
        if runs_ and [p.path for p in run.photos] != [p.path for p in runs_[0].photos]:
            raise FerkitError(f"model {spec}: evaluates {len(run.photos)} photos, {models[0]} {len(runs_[0].photos)};"
                              " compare needs the same photos for every model")
        runs_.append(run)
    rows, names = [], []
    for spec, run, rec in zip(models, runs_, recs, strict=True):
        s = summarize_run(run, n_boot, seed)
        m = s["metrics"]
        names.append(_unique(spec, names))
        rows.append({
            "model": names[-1], "spec": spec, "accuracy": m["accuracy"], "accuracy_ci95": m["ci95"]["accuracy"],
            "macro_f1": m["macro_f1"], "macro_f1_ci95": m["ci95"]["macro_f1"],
            "balanced_accuracy": m["balanced_accuracy"], "top2_accuracy": m["top2_accuracy"],
            "log_loss": m["log_loss"], "ece": m["ece"], "temperature": run.model["members"][0]["temperature"],
            "tta": rec.classifier.mode(tta), "accuracy_without_train_copies": None, "in_votes_accuracy": None,
            "predicted_outside_data": None,
            "no_face": s["no_face"]["n"], "mean_over_datasets": s["mean_over_datasets"],
            "datasets": {k: {"n": v["n"], "accuracy": v["accuracy"], "accuracy_ci95": v["accuracy_ci95"],
                             "macro_f1": v["macro_f1"], "macro_f1_ci95": v["macro_f1_ci95"]}
                         for k, v in s["datasets"].items()},
        })
    groups = runs_[0].datasets
    pairs = []
    for i, j in combinations(range(len(rows)), 2):
        a, b = runs_[i].correct, runs_[j].correct
        t = mcnemar(a, b)
        pairs.append({"a": names[i], "b": names[j], **t, "significant": t["p_exact"] < alpha,
                      "accuracy_difference": paired_difference_ci(a, b, n_boot=n_boot, seed=seed),
                      "mean_over_datasets_difference": paired_difference_ci(a, b, groups, n_boot=n_boot, seed=seed)})
    return {"data": str(data), "split": ps.split or "all", "n": len(runs_[0].y), "tta": tta, "alpha": alpha,
            "restrict": False, "detect": True, "pipeline": runs_[0].pipeline, "datasets": ps.datasets,
            "models": rows, "mcnemar": pairs, "seconds": round(time.perf_counter() - t0, 2)}
