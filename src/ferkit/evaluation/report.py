"""The report folder: metrics.json, one PNG per figure, and report.html with everything embedded (no server, no
outside assets: it opens from a file, offline)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferkit import runs
from ferkit.utils import atomic_write, atomic_write_text, write_json

if TYPE_CHECKING:
    from ferkit.evaluation.core import Evaluation
    from ferkit.evaluation.pipeline import PhotoEvaluation

GRID_COLS = 8
# The label of a photo where no face was found (evaluation through the pipeline).
NO_FACE = "no face"


def build_figures(ev: Evaluation, saliency_per_class: int = 2, seed: int = 0) -> dict[str, bytes]:
    from ferkit.evaluation import plots
    from ferkit.evaluation.saliency import occlusion_map

    m = ev.metrics["metrics"]
    classes = ev.classes
    sp = ev.prepared.split
    y, prob = sp.labels, ev.prob
    pred, conf = prob.argmax(1), prob.max(1)
    rng = np.random.default_rng(seed)
    present = [c for c in range(len(classes)) if (y == c).any()]
    figs: dict[str, bytes] = {}
    figs["confusion"] = plots.confusion_png(m["confusion"], m["confusion_normalized"], classes)
    cal = m["calibration"]
    figs["reliability"] = plots.reliability_png(cal["reliability"], cal.get("reliability_uncalibrated"))
    run = ev.ensemble.run_dir
    rows = runs.read_log(run) if run is not None else []
    if rows:
        figs["curves"] = runs.curves_png(rows)

    correct_rows, mistake_rows = [], []
    picks: list[int] = []
    for c in present:
        ok = np.flatnonzero((y == c) & (pred == c))
        sample = rng.choice(ok, size=min(GRID_COLS, len(ok)), replace=False) if len(ok) else ok
        sample = sample[np.argsort(-conf[sample])]
        correct_rows.append((classes[c], [(sp.images[i], f"{conf[i]:.0%}") for i in sample]))
        wrong = np.flatnonzero((y == c) & (pred != c))
        worst = wrong[np.argsort(-conf[wrong])][:GRID_COLS]
        # The file name under each mistake: the image to look at (and perhaps relabel); predictions.csv has them all.
        mistake_rows.append((classes[c], [(sp.images[i], f"→{classes[pred[i]]} {conf[i]:.0%}\n{_short(sp.names[i])}")
                                          for i in worst]))
        # Saliency sample: a correct face and the most confident mistake of each class.
        picks += list(sample[:1]) + list(worst[:1])
        if saliency_per_class > 2:
            picks += list(sample[1 : saliency_per_class - 1])
    figs["correct"] = plots.face_grid_png(correct_rows, "Correctly classified (random sample; caption: probability)",
                                          GRID_COLS)
    figs["mistakes"] = plots.face_grid_png(
        mistake_rows, "Most confident mistakes (row: true class; caption: predicted class, its probability, the file)",
        GRID_COLS)
    if saliency_per_class > 0 and picks:
        items = []
        for i in picks:
            heat = occlusion_map(ev.proba, sp.images[i], int(pred[i]))
            items.append((sp.images[i], heat, f"{classes[y[i]]} → {classes[pred[i]]} {conf[i]:.0%}"))
        figs["saliency"] = plots.saliency_png(items)
    return figs


PAIR_COLS = 5  # a photo beside its face crop takes two faces' width


def build_photo_figures(ev: PhotoEvaluation, seed: int = 0) -> dict[str, bytes]:
    """evaluate --detect's figures: the confusion matrix with its "no face" column, reliability over the photos with
    a face, and grids of each photo (the scored face's box drawn) beside the crop the model saw."""
    from ferkit.evaluation import plots

    run, m = ev.run, ev.metrics["metrics"]
    classes = [*run.classes, NO_FACE]
    y, pred, pairs = run.y, run.pred, run.pairs or []
    conf = np.where(run.found, run.prob.max(1), 0.0)
    rng = np.random.default_rng(seed)
    # No photo's true class is "no face": its row is left out, its column kept.
    figs = {"confusion": plots.confusion_png(m["confusion"][:-1], m["confusion_normalized"][:-1], classes)}
    if m["calibration"]["reliability"] is not None:
        figs["reliability"] = plots.reliability_png(m["calibration"]["reliability"])
    if not pairs:
        return figs
    correct_rows, mistake_rows = [], []
    for c in [c for c in range(len(run.classes)) if (y == c).any()]:
        ok = np.flatnonzero((y == c) & (pred == c))
        sample = rng.choice(ok, size=min(PAIR_COLS, len(ok)), replace=False) if len(ok) else ok
        sample = sample[np.argsort(-conf[sample])]
        correct_rows.append((run.classes[c], [(pairs[i], f"{conf[i]:.0%} {run.photos[i].dataset}\n"
                                                          f"{_short(run.photos[i].path, 30)}") for i in sample]))
        wrong = np.flatnonzero((y == c) & (pred != c))
        # The most confident mistakes first; photos with no face (confidence 0) fill what is left of the row.
        worst = wrong[np.argsort(-conf[wrong], kind="stable")][:PAIR_COLS]
        mistake_rows.append((run.classes[c], [
            (pairs[i], (f"→{classes[pred[i]]} {conf[i]:.0%}" if run.found[i] else f"→{NO_FACE}")
             + f" {run.photos[i].dataset}\n{_short(run.photos[i].path, 30)}") for i in worst]))
    figs["correct"] = plots.face_grid_png(
        correct_rows, "Correctly classified (random sample): the photo, the face scored, the crop the model saw",
        PAIR_COLS)
    figs["mistakes"] = plots.face_grid_png(
        mistake_rows, "Most confident mistakes (row: true class; caption: predicted class, its probability, dataset, "
        "file)", PAIR_COLS)
    return figs


def write_report(ev: Evaluation | PhotoEvaluation, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, png in ev.figures.items():
        atomic_write(out / f"{name}.png", lambda p, b=png: Path(p).write_bytes(b))
        files.append(f"{name}.png")
    ev.metrics["files"] = ["metrics.json", "report.html", "predictions.csv", *files]
    write_json(out / "metrics.json", ev.metrics)
    atomic_write_text(out / "report.html", render_html(ev.metrics, ev.figures))


def _short(name: str, width: int = 18) -> str:
    """A file's name, cut from the left to fit under a face (the end tells files apart)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base if len(base) <= width else "…" + base[-(width - 1):]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def per_class_rows(m: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(class, precision, recall, F1, support) in percent, then macro and weighted averages (as scikit-learn's
    classification report) over the classes present in the data; shared by the HTML report and the terminal."""
    pcs = m["per_class"]
    rows = [(c, _pct(v["precision"]), _pct(v["recall"]), _pct(v["f1"]), str(v["support"])) for c, v in pcs.items()]
    present = [v for v in pcs.values() if v["support"] > 0]
    n = sum(v["support"] for v in present)
    for name, w in (("macro avg", [1.0] * len(present)), ("weighted avg", [v["support"] for v in present])):
        total = sum(w)
        avg = [sum(wi * v[k] for wi, v in zip(w, present, strict=True)) / total for k in ("precision", "recall", "f1")]
        rows.append((name, *(_pct(a) for a in avg), str(n)))
    return rows


def _ci(ci: list[float]) -> str:
    return f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, note) rows shared by the HTML report and the terminal table."""
    m = r["metrics"]
    ci = m["ci95"]
    cal = m["calibration"]
    rows = [
        ("Accuracy", _pct(m["accuracy"]), f"95% CI {_ci(ci['accuracy'])} (bootstrap, {ci['n_boot']} resamples)"),
        ("Macro-F1", _pct(m["macro_f1"]), f"95% CI {_ci(ci['macro_f1'])}"),
        ("Balanced accuracy", _pct(m["balanced_accuracy"]), "mean recall over classes"),
        ("Weighted F1", _pct(m["weighted_f1"]), ""),
        ("Top-2 accuracy", _pct(m["top2_accuracy"]), "true class among the two most probable"),
        ("Log-loss", "–" if m["log_loss"] is None else f"{m['log_loss']:.4f}", "lower is better"),
    ]
    t = r.get("temperature", 1.0)
    if r.get("detect"):
        rows.append(("ECE", _pct(m["ece"]), f"expected calibration error, 15 bins, photos with a face; temperature "
                                            f"{t:.3g}"))
    elif "ece_uncalibrated" in cal:
        rows.append(("ECE", _pct(m["ece"]), f"with temperature {t:.3g}; {_pct(cal['ece_uncalibrated'])} without"))
    else:
        rows.append(("ECE", _pct(m["ece"]), "expected calibration error, 15 bins; not calibrated (T = 1)"))
    if "no_face" in m:
        over = m["probability_metrics_over"]
        rows += [("No face found", _pct(m["no_face"]["share"]),
                  f"{m['no_face']['n']} photos: predicted 'no face', counted as wrong"),
                 ("Log-loss and ECE over", str(over), "photos with a face found (top-2: no face counts as wrong)")]
    if "mean_over_datasets" in r:
        g = r["mean_over_datasets"]
        rows += [("Accuracy, mean over datasets", _pct(g["accuracy"]),
                  f"95% CI {_ci(g['accuracy_ci95'])}; unweighted mean of {g['groups']} datasets' accuracies"),
                 ("Macro-F1, mean over datasets", _pct(g["macro_f1"]), f"95% CI {_ci(g['macro_f1_ci95'])}")]
    data = r["data"]
    outside = data.get("predicted_outside_data") or {}
    if outside.get("n"):
        which = ", ".join(f"{c} {n}" for c, n in outside["classes"].items())
        rows.append(("Predictions of classes the data lacks", _pct(outside["share"]),
                     f"{outside['n']} images predicted as {which}: all counted as mistakes; --restrict "
                     "renormalises over the data's classes"))
    if data.get("restricted_to"):
        rows.append(("Restricted to the data's classes", str(len(data["restricted_to"])),
                     f"probabilities renormalised over {', '.join(data['restricted_to'])}"))
    if m.get("votes"):
        v = m["votes"]
        rows.append(("Prediction among annotators' votes", _pct(v["in_votes_accuracy"]),
                     f"mean vote share of the prediction {_pct(v['mean_vote_share'])}"))
    tc = m.get("train_copies")
    if tc:
        rows.append(("Accuracy without train copies", _pct(tc.get("accuracy_without")),
                     f"{tc['n_copies']} of {tc['n_copies'] + tc['n_without']} images have an exact pixel copy in "
                     f"train; accuracy on those {_pct(tc.get('accuracy_on_copies'))}"))
    return rows


def dataset_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """evaluate --detect: (dataset, photos, accuracy, its CI, macro-F1, its CI, no face, classes) per dataset, then
    the mean over datasets and all photos together; shared by the HTML report and the terminal."""
    rows = []
    for name, d in r["datasets"].items():
        rows.append((name, str(d["n"]), _pct(d["accuracy"]), _ci(d["accuracy_ci95"]), _pct(d["macro_f1"]),
                     _ci(d["macro_f1_ci95"]), str(d["no_face"]["n"]), ", ".join(d["classes"])))
    g, m = r["mean_over_datasets"], r["metrics"]
    rows.append(("mean over datasets", "", _pct(g["accuracy"]), _ci(g["accuracy_ci95"]), _pct(g["macro_f1"]),
                 _ci(g["macro_f1_ci95"]), "", ""))
    rows.append(("all photos", str(m["n"]), _pct(m["accuracy"]), _ci(m["ci95"]["accuracy"]), _pct(m["macro_f1"]),
                 _ci(m["ci95"]["macro_f1"]), str(m["no_face"]["n"]), ", ".join(r["data"]["classes"])))
    return rows


def _photo_sections(r: dict[str, Any]) -> list[str]:
    """evaluate --detect's HTML: the pipeline, the per-dataset table and the photos where no face was found."""
    if not r.get("detect"):
        return []
    e = html.escape
    p = r["pipeline"]
    head = ("dataset", "photos", "accuracy", "95% CI", "macro-F1", "95% CI", "no face", "classes")
    rows = dataset_rows(r)
    table = "".join(
        "<tr>" + "".join(f"<{t}>{e(v)}</{t}>" for v in row) + "</tr>"
        for row, t in ((row, "th" if k >= len(rows) - 2 else "td") for k, row in enumerate(rows)))
    out = [
        "<h2>Per dataset</h2>",
        f'<p class="note">Whole photos through the pipeline of EmotionRecognizer.predict: detector {e(p["detector"])} '
        f"(long side {p['detect_size']} px, score ≥ {p['threshold']}), aligned crop, margin {p['margin']}; the "
        f"largest face is scored; {e(p['crop_as_is'])}. A photo with no face found counts as wrong. Macro-F1 over "
        "the classes each dataset has; the mean over datasets weighs each dataset once (its interval: bootstrap "
        "within each dataset).</p>",
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{table}</table>",
    ]
    nf = r["no_face"]
    out.append(f"<h2>No face found ({nf['n']} photos)</h2>")
    if nf["photos"]:
        items = "".join(f"<tr><td>{e(x['path'])}</td><td>{e(x['dataset'])}</td><td>{e(x['true'])}</td></tr>"
                        for x in nf["photos"])
        out.append(f"<table><tr><th>photo</th><th>dataset</th><th>true class</th></tr>{items}</table>")
    skipped = r["data"].get("skipped") or []
    if skipped:
        items = "".join(f"<tr><td>{e(x['path'])}</td><td style='text-align:left'>{e(x['why'])}</td></tr>"
                        for x in skipped)
        out += [f"<h2>Unreadable, left out ({len(skipped)})</h2>",
                f"<table><tr><th>file</th><th>why</th></tr>{items}</table>"]
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:32px 0 10px;border-bottom:2px solid #dde1e8;padding-bottom:4px}
.meta{color:#5b6475;font-size:14px;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 16px;min-width:150px}
.card .v{font-size:26px;font-weight:600} .card .l{color:#5b6475;font-size:13px} .card .n{color:#5b6475;font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:14px} th,td{border:1px solid #dde1e8;padding:5px 10px;text-align:right}
th{background:#eef1f5} td:first-child,th:first-child{text-align:left}
img{max-width:100%;background:#fff;border:1px solid #dde1e8;border-radius:6px}
.note{color:#5b6475;font-size:13px;max-width:900px}
"""


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return ""
    data = base64.b64encode(figs[name]).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(r: dict[str, Any], figs: dict[str, bytes]) -> str:
    e = html.escape
    m = r["metrics"]
    model, data = r["model"], r["data"]
    members = ", ".join(f"{x['name']} ({x['kind']}, {x['source']})" for x in model["members"])
    meta = (f"Model <b>{e(model['name'])}</b>: {e(members)}<br>Data <b>{e(str(data['source']))}</b> "
            f"({e(data['format'])}), split <b>{e(data['split'])}</b>, {data['n']} images"
            + (f", {data['left_out_by_map']} left out by --map" if data["left_out_by_map"] else "")
            + (f", {data['skipped_items']} unreadable items skipped when loading" if data["skipped_items"] else "")
            + f"<br>Test-time augmentation: {e(r['tta'])}"
            + (f"; class map: {e(', '.join(f'{k}={v}' for k, v in r['map'].items()))}" if r["map"] else "")
            + f"<br>ferkit {e(r['ferkit_version'])}, {r['seconds']} s")
    ci = m["ci95"]
    cards = "".join(
        f'<div class="card"><div class="l">{lab}</div><div class="v">{val}</div><div class="n">{note}</div></div>'
        for lab, val, note in [
            ("Accuracy", _pct(m["accuracy"]), f"95% CI {_ci(ci['accuracy'])}"),
            ("Macro-F1", _pct(m["macro_f1"]), f"95% CI {_ci(ci['macro_f1'])}"),
            ("Balanced accuracy", _pct(m["balanced_accuracy"]), ""),
            ("Top-2 accuracy", _pct(m["top2_accuracy"]), ""),
            ("ECE", _pct(m["ece"]), "calibration error"),
        ]
    )
    summary = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td style='text-align:left'>{e(c)}</td></tr>"
                      for a, b, c in summary_rows(r))
    per_class = "".join(
        ("<tr>" + "".join(f"<{tag}>{e(v)}</{tag}>" for v in row) + "</tr>")
        for row, tag in ((row, "th" if row[0].endswith(" avg") else "td") for row in per_class_rows(m))
    )
    sections = [
        f"<h1>ferkit evaluation: {e(model['name'])} on {e(Path(str(data['source'])).name)} ({e(data['split'])})</h1>",
        f'<div class="meta">{meta}</div>',
        f'<div class="cards">{cards}</div>',
        "<h2>Summary</h2>",
        f"<table><tr><th>metric</th><th>value</th><th>note</th></tr>{summary}</table>",
        '<p class="note">Confidence intervals: percentile bootstrap over the evaluated images '
        f"({ci['n_boot']} resamples, seed {ci['seed']}). Macro-F1 and balanced accuracy average over the classes "
        "present in the data.</p>",
        *_photo_sections(r),
        "<h2>Per class</h2>",
        f"<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per_class}"
        "</table>",
        "<h2>Confusion matrix</h2>", _img(figs, "confusion", "confusion matrix"),
        "<h2>Calibration</h2>", _img(figs, "reliability", "reliability diagram"),
    ]
    if "curves" in figs:
        sections += ["<h2>Training curves</h2>", _img(figs, "curves", "training curves")]
    sections += [
        "<h2>Correctly classified examples</h2>", _img(figs, "correct", "correct examples"),
        "<h2>Most confident mistakes</h2>", _img(figs, "mistakes", "mistakes"),
    ]
    if "saliency" in figs:
        sections += [
            "<h2>Where the model looks</h2>",
            '<p class="note">Occlusion sensitivity (works for any model): a grey square slides over the face and the '
            "drop in the predicted class's probability is drawn as heat. One correct face and the most confident "
            "mistake per class; caption: true → predicted, probability.</p>",
            _img(figs, "saliency", "occlusion saliency"),
        ]
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>ferkit evaluation: {e(model['name'])}</title><style>{CSS}</style></head>"
            f"<body><main>\n{body}\n</main></body></html>\n")


def default_out(models: list[str], data: str | Path, split: str) -> Path:
    def label(s: str) -> str:
        p = Path(s.rstrip("/"))
        name = p.name
        for suf in (".gz", ".zip", ".csv", ".json", ".onnx", ".safetensors"):
            name = name.removesuffix(suf)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"

    model = "+".join(label(m) for m in models)
    tail = "" if split == "test" else f"-{split}"
    return Path("runs") / "eval" / f"{model}-{label(str(data))}{tail}"
