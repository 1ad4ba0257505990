"""`ferkit evaluate / calibrate / compare` end to end on a tiny dataset and a tiny exported model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ferkit.cli import app

CLASSES = ["happy", "sad", "surprise"]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _face(rng: np.random.Generator, k: int) -> np.ndarray:
    img = rng.integers(0, 60, (48, 48)).astype(np.uint8)
    img[8 + 12 * k : 20 + 12 * k, 10:38] += 150  # a class-dependent bright band
    return img


def _write_dataset(root: Path, classes: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    first_train: dict[str, np.ndarray] = {}
    for split, n in (("train", 6), ("validation", 8), ("test", 10)):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                img = _face(rng, k)
                if split == "train" and i == 0:
                    first_train[c] = img
                if split == "test" and i == 0 and k < 2:
                    img = first_train[c]  # an exact copy of a training image (two in all)
                cv2.imwrite(str(d / f"{i}.png"), img)
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny dataset, an ONNX model, the same weights as safetensors, and a run folder."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from ferkit.models import create_model
    from ferkit.models.export import export_onnx

    root = tmp_path_factory.mktemp("ev")
    data = _write_dataset(root / "data", CLASSES)
    torch.manual_seed(0)
    model = create_model("vgg_s", len(CLASSES)).eval()
    onnx_path = export_onnx(model, root / "tiny.onnx", CLASSES, 48, name="tiny")
    st = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st),
              metadata={"arch": "vgg_s", "classes": json.dumps(CLASSES), "input_size": "48"})
    run = root / "run"
    run.mkdir()
    (run / "model.onnx").write_bytes(onnx_path.read_bytes())
    (run / "log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.3 * e, "val_acc": 0.25 * e,
                    "val_macro_f1": 0.2 * e}) + "\n" for e in (1, 2, 3)))
    torch.manual_seed(1)
    other = export_onnx(create_model("vgg_s", len(CLASSES)).eval(), root / "other.onnx", CLASSES[::-1], 48)
    return {"root": root, "data": data, "onnx": onnx_path, "st": st, "run": run, "other": other}


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_evaluate_writes_a_self_contained_report(env, tmp_path):
    out = tmp_path / "out"
    r = _run("evaluate", env["run"], env["data"], "--out", out, "--saliency", "1", "--bootstrap", "200")
    assert r.exit_code == 0, r.output
    files = {p.name for p in out.iterdir()}
    assert {"metrics.json", "report.html", "confusion.png", "reliability.png", "curves.png", "correct.png",
            "mistakes.png", "saliency.png"} <= files
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["n"] == 30 and m["data"]["split"] == "test"
    assert m["metrics"]["train_copies"]["n_copies"] == 2
    assert sum(sum(row) for row in m["metrics"]["confusion"]) == 30
    lo, hi = m["metrics"]["ci95"]["accuracy"]
    assert lo <= m["metrics"]["accuracy"] <= hi
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Training curves" in page and "Occlusion sensitivity" in page


def test_evaluate_json_and_same_numbers_from_onnx_safetensors_and_ensemble(env, tmp_path):
    res = {}
    for key, model in (("onnx", env["onnx"]), ("st", env["st"]), ("ens", f"{env['onnx']},{env['onnx']}")):
        r = _run("evaluate", model, env["data"], "--out", tmp_path / key, "--json", "--saliency", "0",
                 "--bootstrap", "100")
        assert r.exit_code == 0, r.output
        res[key] = json.loads(r.stdout)
    assert res["st"]["model"]["members"][0]["kind"] == "safetensors"
    assert len(res["ens"]["model"]["members"]) == 2
    for key in ("st", "ens"):
        assert res[key]["metrics"]["accuracy"] == pytest.approx(res["onnx"]["metrics"]["accuracy"])
        assert res[key]["metrics"]["log_loss"] == pytest.approx(res["onnx"]["metrics"]["log_loss"], abs=1e-3)


def test_evaluate_tta_and_val_split(env, tmp_path):
    r = _run("evaluate", env["onnx"], env["data"], "--split", "val", "--tta", "flip+crops", "--out", tmp_path,
             "--json", "--saliency", "0", "--bootstrap", "100")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["tta"] == "flip+crops" and m["data"]["n"] == 24


def test_calibrate_stores_temperature_and_evaluate_reports_both_eces(env, tmp_path):
    from ferkit.inference.onnx_classifier import OnnxClassifier

    copy = tmp_path / "cal.onnx"
    r = _run("calibrate", env["onnx"], env["data"], "--out", copy, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["written_to"] == str(copy) and res["n"] == 24
    assert res["val"]["after"]["nll"] <= res["val"]["before"]["nll"] + 1e-6
    assert OnnxClassifier(copy).temperature == pytest.approx(res["temperature"], rel=1e-3)
    assert OnnxClassifier(env["onnx"]).temperature == 1.0  # the original is untouched
    r = _run("evaluate", copy, env["data"], "--out", tmp_path / "ev", "--json", "--saliency", "0")
    m = json.loads(r.stdout)["metrics"]
    assert "ece_uncalibrated" in m["calibration"]
    base = json.loads(_run("evaluate", env["onnx"], env["data"], "--out", tmp_path / "ev0", "--json",
                           "--saliency", "0").stdout)["metrics"]
    assert m["calibration"]["ece_uncalibrated"] == pytest.approx(base["ece"], abs=1e-3)  # T undone exactly


def test_calibrate_with_tta_stores_a_temperature_for_that_mode_only(env, tmp_path):
    from ferkit.inference.onnx_classifier import OnnxClassifier
    from ferkit.models.export import set_onnx_metadata
    from ferkit.views import apply_temperature

    copy = tmp_path / "cal.onnx"
    r = _run("calibrate", env["onnx"], env["data"], "--out", copy, "--tta", "flip", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    clf = OnnxClassifier(copy)
    assert res["tta"] == "flip" and clf.temperature == 1.0
    assert clf.temperatures == {"flip": pytest.approx(res["temperature"], rel=1e-3)}
    # A far-off T so that applying it (or not) shows: used with its TTA, and only there; evaluate reports it.
    set_onnx_metadata(copy, {"temperatures": json.dumps({"flip": 0.25})})
    clf, raw = OnnxClassifier(copy), OnnxClassifier(env["onnx"])
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    np.testing.assert_allclose(clf.predict_proba(faces, tta="flip"),
                               apply_temperature(raw.predict_proba(faces, tta="flip"), 0.25), atol=1e-5)
    np.testing.assert_allclose(clf.predict_proba(faces), raw.predict_proba(faces), atol=1e-6)
    ev = json.loads(_run("evaluate", copy, env["data"], "--tta", "flip", "--out", tmp_path / "ev", "--json",
                         "--saliency", "0").stdout)
    assert ev["temperature"] == 0.25
    for bad in ('[1]', '{"sideways": 2}', '{"flip": -1}', 'nope'):
        set_onnx_metadata(copy, {"temperatures": bad})
        r = _run("evaluate", copy, env["data"], "--out", tmp_path / "bad")
        assert r.exit_code == 2 and "temperatures" in r.output and "Traceback" not in r.output, (bad, r.output)


def test_compare_writes_table_with_mcnemar(env, tmp_path):
    r = _run("compare", env["onnx"], env["other"], "--data", env["data"], "--out", tmp_path, "--bootstrap", "100")
    assert r.exit_code == 0, r.output
    assert "McNemar" in r.output
    res = json.loads((tmp_path / "compare.json").read_text())
    assert [x["model"] for x in res["models"]] == ["tiny.onnx", "other.onnx"]
    pair = res["mcnemar"][0]
    assert 0 <= pair["p_exact"] <= 1 and pair["a_only"] + pair["b_only"] <= res["n"]
    assert "| tiny.onnx |" in (tmp_path / "compare.md").read_text()


def test_bad_model_files_exit_2(env, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    for model in (junk, tmp_path / "missing.onnx", env["data"] / "train" / "happy" / "0.png", tmp_path):
        r = _run("evaluate", model, env["data"], "--out", tmp_path / "o")
        assert r.exit_code == 2, (model, r.output)
        assert "error:" in r.output and "Traceback" not in r.output
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    r = _run("evaluate", bad_st, env["data"])
    assert r.exit_code == 2 and "safetensors" in r.output


def test_class_mismatch_is_a_clear_error_unless_mapped(env, tmp_path):
    data = _write_dataset(tmp_path / "other", ["happiness", "sadness", "surprise", "contempt"], seed=3)
    # happiness and sadness are the model's happy and sad (matched by emotion); contempt is no class of it.
    r = _run("evaluate", env["onnx"], data, "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "--map" in r.output and "contempt=-" in r.output
    r = _run("evaluate", env["onnx"], data, "--out", tmp_path / "o", "--json", "--saliency", "0",
             "--map", "contempt=-")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["data"]["n"] == 30 and m["data"]["left_out_by_map"] == 10
    assert m["map"] == {"happiness": "happy", "sadness": "sad", "contempt": "-"}  # what was matched, said
    r = _run("evaluate", env["onnx"], env["data"], "--split", "nope")
    assert r.exit_code == 2 and "split" in r.output


def test_ferplus_votes_accuracy(env, tmp_path):
    """A tiny FER+ layout: majority labels plus the share of predictions among the annotators' votes."""
    from ferkit.evaluation import evaluate

    rng = np.random.default_rng(0)
    folder = tmp_path / "fp" / "FER2013Test"
    folder.mkdir(parents=True)
    rows = []
    # FER+ columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    for i in range(12):
        k = i % 3
        votes = [0] * 10
        votes[[1, 3, 2][k]] = 8
        votes[4] = 2
        cv2.imwrite(str(folder / f"fer{i:07d}.png"), _face(rng, k))
        rows.append(f"fer{i:07d}.png,\"(0, 0, 48, 48)\"," + ",".join(map(str, votes)))
    (folder / "label.csv").write_text("\n".join(rows) + "\n")
    ev = evaluate(str(env["onnx"]), tmp_path / "fp", map_spec="happiness=happy,sadness=sad,anger=-,neutral=-,disgust=-,fear=-,contempt=-", report=False,
                  out=tmp_path / "o", n_boot=100)
    v = ev.metrics["metrics"]["votes"]
    assert ev.metrics["data"]["n"] == 12
    # Every image has votes for its label only (anger's votes are dropped), so both figures equal accuracy.
    assert v["in_votes_accuracy"] == pytest.approx(ev.metrics["metrics"]["accuracy"])




def test_calibrate_never_changes_a_builtin_model(env, tmp_path, monkeypatch):
    """`ferkit calibrate default DATA` writes a new file in the current folder and says where (issue 13.1)."""
    import hashlib

    from ferkit.inference.onnx_classifier import OnnxClassifier, default_model_path

    shipped = default_model_path()
    before = shipped.read_bytes()
    monkeypatch.chdir(tmp_path)
    try:
        r = _run("calibrate", "default", env["data"])
        after = shipped.read_bytes()
    finally:
        if shipped.read_bytes() != before:  # a failing run must not leave the package changed
            shipped.write_bytes(before)
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(after).digest() == hashlib.sha256(before).digest()
    copy = tmp_path / "default-calibrated.onnx"
    assert copy.is_file() and str(copy) in r.output.replace("\n", "")
    assert OnnxClassifier(copy).classes == OnnxClassifier().classes
    # A second calibration does not overwrite the first copy; --out into the package is refused.
    r = _run("calibrate", "default", env["data"], "--json")
    assert json.loads(r.stdout)["written_to"] == str(tmp_path / "default-calibrated2.onnx")
    r = _run("calibrate", "default", env["data"], "--out", shipped)
    assert r.exit_code == 2 and "read-only" in r.output
    assert shipped.read_bytes() == before


def test_evaluate_output_folders_are_numbered_never_overwritten(env, tmp_path, monkeypatch):
    """The built-in `default` and a run folder called `default` both label their report `default-...` (13.3)."""
    run = tmp_path / "runs" / "default"
    run.mkdir(parents=True)
    (run / "model.onnx").write_bytes(env["onnx"].read_bytes())
    monkeypatch.chdir(tmp_path)
    outs = []
    for model in ("default", run):
        r = _run("evaluate", model, env["data"], "--json", "--saliency", "0", "--bootstrap", "100")
        assert r.exit_code == 0, r.output
        outs.append(Path(json.loads(r.stdout)["model"]["name"]))
    eval_dirs = sorted(p.name for p in (tmp_path / "runs" / "eval").iterdir())
    assert eval_dirs == ["default-data", "default-data2"]
    sources = {json.loads((tmp_path / "runs" / "eval" / d / "metrics.json").read_text())["model"]["members"][0]["source"]
               for d in eval_dirs}
    assert len(sources) == 2  # two reports, one per model


def test_predictions_file_per_class_averages_and_percent(env, tmp_path):
    """predictions.csv lists every image; the terminal table has macro and weighted rows, in percent (13.13)."""
    import csv

    out = tmp_path / "o"
    r = _run("evaluate", env["onnx"], env["data"], "--out", out, "--saliency", "0", "--bootstrap", "100")
    assert r.exit_code == 0, r.output
    assert "macro avg" in r.output and "weighted avg" in r.output
    assert not re.search(r"\b0\.\d{3}\b", r.output)  # no 0.123-style figures beside the percentages
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    m = json.loads((out / "metrics.json").read_text())
    assert len(rows) == m["data"]["n"] == 30
    assert {row["path"] for row in rows} == {f"test/{c}/{i}.png" for c in CLASSES for i in range(10)}
    assert sum(int(row["correct"]) for row in rows) == round(m["metrics"]["accuracy"] * 30)
    for row in rows:
        probs = {c: float(row[f"p_{c}"]) for c in CLASSES}
        assert row["predicted"] == max(probs, key=probs.get) and row["true"] == row["path"].split("/")[1]
        assert abs(sum(probs.values()) - 1) < 2e-3
    assert "predictions.csv" in m["files"]


def test_mistakes_grid_names_the_files(env, tmp_path, monkeypatch):
    from ferkit.evaluation import evaluate, plots

    grids = {}
    real = plots.face_grid_png

    def spy(rows, title, cols):
        grids[title] = rows
        return real(rows, title, cols)

    monkeypatch.setattr(plots, "face_grid_png", spy)
    ev = evaluate(str(env["onnx"]), env["data"], out=tmp_path / "o", saliency=0, n_boot=100)
    mistakes = next(rows for title, rows in grids.items() if title.startswith("Most confident mistakes"))
    captions = [cap for _, items in mistakes for _, cap in items]
    assert captions
    names = {n.rsplit("/", 1)[-1] for n in ev.prepared.split.names}
    assert all(cap.split("\n")[1] in names for cap in captions)


def test_restrict_renormalises_over_the_data_classes_and_outside_predictions_are_reported(env, tmp_path):
    """The 7-class built-in model on a 3-class dataset (13.12)."""
    import csv

    from ferkit.evaluation import evaluate

    plain = evaluate("default", env["data"], out=tmp_path / "plain", report=False, n_boot=100)
    outside = plain.metrics["data"]["predicted_outside_data"]
    rows = list(csv.DictReader((tmp_path / "plain" / "predictions.csv").open()))
    assert outside["n"] == sum(row["predicted"] not in CLASSES for row in rows) > 0
    assert sum(outside["classes"].values()) == outside["n"]
    r = _run("evaluate", "default", env["data"], "--out", tmp_path / "p2", "--saliency", "0", "--bootstrap", "100")
    assert f"{outside['n']} of 30 predictions are classes" in r.output  # said on the terminal too
    restricted = evaluate("default", env["data"], out=tmp_path / "r", report=False, n_boot=100, restrict=True)
    assert restricted.classes == ["happy", "sad", "surprise"]
    assert restricted.metrics["data"]["predicted_outside_data"]["n"] == 0
    np.testing.assert_allclose(restricted.prob.sum(1), 1, atol=1e-5)
    # Every image right without --restrict is still right with it; those predicted outside may now be right.
    assert restricted.metrics["metrics"]["accuracy"] >= plain.metrics["metrics"]["accuracy"]
    assert set(restricted.metrics["metrics"]["per_class"]) == set(CLASSES)


def test_compare_checks_every_model_before_predicting(env, tmp_path):
    torch = pytest.importorskip("torch")
    from ferkit.models import create_model
    from ferkit.models.export import export_onnx

    torch.manual_seed(2)
    odd = export_onnx(create_model("vgg_s", 3).eval(), tmp_path / "odd.onnx", ["cat", "dog", "bird"], 48)
    r = _run("compare", env["onnx"], odd, "--data", env["data"], "--out", tmp_path / "c")
    assert r.exit_code == 2 and f"model {odd}" in r.output
    assert "predicting" not in r.output  # nothing was predicted before the check
    r = _run("compare", "default", env["onnx"], "--data", env["data"], "--out", tmp_path / "c2", "--restrict",
             "--json", "--bootstrap", "100")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["restrict"] and all(m["predicted_outside_data"]["n"] == 0 for m in res["models"])
