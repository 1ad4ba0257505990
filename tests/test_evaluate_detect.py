"""`ferkit evaluate/compare --detect`: labelled whole photos through the product's pipeline, per dataset, with the
photos where no face is found counted as wrong and listed. The photos are made here from scikit-image's astronaut."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import astronaut_bgr
from typer.testing import CliRunner

from ferkit.cli import app

pytest.importorskip("skimage")


def _photos() -> dict[str, tuple[str, str, bytes]]:
    """name -> (dataset, label, encoded image). Labels are the tests' own: what matters is the same answer as
    predict's, whatever the model says."""
    astro = astronaut_bgr()
    blank = np.full((200, 260, 3), 128, np.uint8)  # nothing a detector calls a face
    # Two faces: the astronaut, and a small copy of her in the corner; the evaluation scores the larger one.
    two = astro.copy()
    two[380:492, 380:492] = cv2.resize(astro[60:260, 120:320], (112, 112), interpolation=cv2.INTER_AREA)
    # A face crop already at the model's input size (48x48, like CK+'s): predict classifies it whole.
    crop48 = cv2.resize(cv2.cvtColor(astro[40:250, 130:320], cv2.COLOR_BGR2GRAY), (48, 48),
                        interpolation=cv2.INTER_AREA)

    def enc(ext: str, img: np.ndarray) -> bytes:
        return cv2.imencode(ext, img)[1].tobytes()

    return {
        "astronaut.jpg": ("posed", "happy", enc(".jpg", astro)),
        "blank.png": ("posed", "sad", enc(".png", blank)),
        "crop48.png": ("crops", "neutral", enc(".png", crop48)),
        "two.jpg": ("crops", "happy", enc(".jpg", two)),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """The same photos as a class folder (one dataset) and as a realval-like zip (manifest.csv, two datasets)."""
    root = tmp_path_factory.mktemp("photos")
    items = _photos()
    folder = root / "mine"
    for name, (_, label, data) in items.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / name).write_bytes(data)
    archive = root / "realval_like.zip"
    with zipfile.ZipFile(archive, "w") as z:
        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["dataset", "path", "label", "identity", "rated_agrees", "sha1"])
        for name, (dataset, label, data) in items.items():
            w.writerow([dataset, f"{dataset}/{label}/{name}", label, "x", "", ""])
            z.writestr(f"{dataset}/{label}/{name}", data)
        z.writestr("manifest.csv", text.getvalue())
    return {"folder": folder, "zip": archive}


@pytest.fixture(scope="module")
def expected(photos, recognizer) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """What a user gets from EmotionRecognizer().predict(photo) for each file: the largest face's label and box."""
    out = {}
    for path in sorted(photos["folder"].rglob("*.*")):
        pred = recognizer.predict(str(path))
        face = max(pred.faces, key=lambda f: f.box[2] * f.box[3], default=None)
        out[path.name] = ("no face", None) if face is None else (face.label, tuple(face.box))
    return out


def _run(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def test_the_test_photos_are_what_they_claim(expected):
    # Without this the tests below could pass on photos where nothing is found or everything is found.
    assert expected["blank.png"] == ("no face", None)
    assert expected["astronaut.jpg"][1] is not None and expected["two.jpg"][1] is not None
    assert expected["crop48.png"][1] == (0, 0, 48, 48)  # predict took the 48x48 image as a crop, not detected


def test_folder_results_are_predicts_largest_face(photos, expected, tmp_path, recognizer):
    from ferkit.evaluation import evaluate

    ev = evaluate("default", photos["folder"], out=tmp_path / "ev", detect=True, report=False, n_boot=200)
    rows = _rows(tmp_path / "ev")
    assert set(rows) == set(expected)
    for name, (label, box) in expected.items():
        r = rows[name]
        assert r["predicted"] == label, name
        assert (None if box is None else tuple(int(r[k]) for k in "xywh")) == box, name
        assert r["correct"] == str(int(label == r["true"]))
    two = recognizer.predict(str(photos["folder"] / "happy" / "two.jpg"))
    assert len(two.faces) >= 2 and int(rows["two.jpg"]["faces"]) == len(two.faces)
    m = ev.metrics
    truth = {n: r["true"] for n, r in rows.items()}
    want = np.mean([expected[n][0] == truth[n] for n in expected])
    assert m["metrics"]["accuracy"] == pytest.approx(want) and m["metrics"]["n"] == 4
    assert m["no_face"]["n"] == 1 and m["metrics"]["no_face"]["n"] == 1
    assert [p["path"] for p in m["no_face"]["photos"]] == ["sad/blank.png"]
    assert rows["blank.png"]["correct"] == "0" and rows["blank.png"]["p_happy"] == ""
    assert list(m["datasets"]) == ["mine"] and m["data"]["format"] == "photos (folders)"
    # Every confusion row holds its photos, "no face" being the last column.
    cm = np.array(m["metrics"]["confusion"])
    assert cm.sum() == 4 and cm[ev.run.classes.index("sad"), -1] == 1


def test_manifest_zip_per_dataset_and_mean(photos, expected, tmp_path):
    from ferkit.evaluation import evaluate

    m = evaluate(["default"], photos["zip"], out=tmp_path / "ev", detect=True, report=False, n_boot=200).metrics
    assert m["data"]["format"] == "photos (manifest)" and m["data"]["datasets"] == ["crops", "posed"]
    ds = m["datasets"]
    assert {k: v["n"] for k, v in ds.items()} == {"crops": 2, "posed": 2}
    assert ds["posed"]["no_face"]["n"] == 1 and ds["crops"]["no_face"]["n"] == 0
    assert ds["crops"]["classes"] == ["happy", "neutral"] and ds["posed"]["classes"] == ["happy", "sad"]
    for name, files in (("posed", ("astronaut.jpg", "blank.png")), ("crops", ("crop48.png", "two.jpg"))):
        truth = {"astronaut.jpg": "happy", "blank.png": "sad", "crop48.png": "neutral", "two.jpg": "happy"}
        assert ds[name]["accuracy"] == pytest.approx(np.mean([expected[f][0] == truth[f] for f in files]))
        lo, hi = ds[name]["accuracy_ci95"]
        assert lo <= ds[name]["accuracy"] <= hi
    mean = m["mean_over_datasets"]
    assert mean["groups"] == 2
    assert mean["accuracy"] == pytest.approx((ds["crops"]["accuracy"] + ds["posed"]["accuracy"]) / 2)
    assert mean["macro_f1"] == pytest.approx((ds["crops"]["macro_f1"] + ds["posed"]["macro_f1"]) / 2)
    assert m["no_face"]["photos"] == [{"path": "posed/sad/blank.png", "dataset": "posed", "true": "sad"}]


def test_cli_json_and_report(photos, tmp_path):
    r = _run("evaluate", "default", photos["zip"], "--detect", "--json", "--out", tmp_path / "ev",
             "--bootstrap", "200")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    for block in (m["metrics"], *m["datasets"].values(), m["mean_over_datasets"]):
        assert 0 <= block["accuracy"] <= 1 and 0 <= block["macro_f1"] <= 1
    assert set(m["datasets"]) == {"crops", "posed"} and m["no_face"]["n"] == 1
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["datasets"] == m["datasets"]
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "Per dataset" in page and "No face found (1 photos)" in page and "posed/sad/blank.png" in page
    for png in ("mistakes.png", "correct.png", "confusion.png"):
        assert (tmp_path / "ev" / png).stat().st_size > 1000
    # Without --detect the same archive is no dataset the 48x48 loaders read: nothing changed there.
    r = _run("evaluate", "default", photos["zip"], "--out", tmp_path / "plain")
    assert r.exit_code == 2 and "unknown folder layout" in r.output


def test_unreadable_photo_is_skipped_and_listed(photos, tmp_path):
    import shutil

    from ferkit.evaluation import evaluate

    folder = tmp_path / "mine"
    shutil.copytree(photos["folder"], folder)
    (folder / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    m = evaluate("default", folder, out=tmp_path / "ev", detect=True, report=False, n_boot=200).metrics
    assert m["metrics"]["n"] == 4 and m["data"]["skipped_items"] == 1
    assert m["data"]["skipped"][0]["path"] == "happy/broken.jpg"


def _zip_with(tmp_path: Path, manifest: str, members: dict[str, bytes]) -> Path:
    p = tmp_path / "bad.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("manifest.csv", manifest)
        for name, data in members.items():
            z.writestr(name, data)
    return p


@pytest.mark.parametrize("manifest, expect", [
    ("dataset,path,label\na,a/happy/x.jpg,happy\na,a/happy/missing.jpg,happy\n", "row 3: path 'a/happy/missing.jpg'"),
    ("dataset,path,label\na,a/happy/x.jpg,\n", "row 2: empty 'label'"),
    ("dataset,path,label\na,a/happy/x.jpg\n", "row 2: expected 3 columns"),
    ("dataset,path,label\na,../x.jpg,happy\n", "row 2: path '../x.jpg' is not a plain relative path"),
    ("dataset,path,label\na,a/happy/x.jpg,happy\na,a/happy/x.jpg,happy\n", "row 3: path 'a/happy/x.jpg' is listed twice"),
    ("dataset,file,label\na,a/happy/x.jpg,happy\n", "missing path"),
    ("dataset,path,label\na,a/happy/x.jpg,glee\n", "dataset classes glee are not among the model's classes"),
])
def test_bad_manifest_is_one_line_exit_2(tmp_path, manifest, expect):
    img = cv2.imencode(".jpg", np.zeros((60, 60, 3), np.uint8))[1].tobytes()
    r = _run("evaluate", "default", _zip_with(tmp_path, manifest, {"a/happy/x.jpg": img}), "--detect",
             "--out", tmp_path / "ev")
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0] and "Traceback" not in r.output
    assert "bad.zip" in errors[0]  # names the file


@pytest.mark.parametrize("args, expect", [
    (["nothing_here.zip"], "nothing_here.zip: no such file or folder"),
    (["{csv}"], "--detect reads photos"),
    (["{folder}", "--restrict"], "--restrict: not used with --detect"),
    (["{folder}", "--split", "val", "--format", "folders"], "--format: not used with --detect"),
])
def test_bad_input_exit_2(photos, tmp_path, args, expect):
    (tmp_path / "x.csv").write_text("emotion,pixels\n")
    args = [a.format(csv=tmp_path / "x.csv", folder=photos["folder"]) for a in args]
    r = _run("evaluate", "default", args[0], "--detect", "--out", tmp_path / "ev", *args[1:])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and expect in r.output and len(r.output.strip().splitlines()) == 1


def test_split_layout_reads_the_split_asked(photos, tmp_path):
    import shutil

    from ferkit.evaluation import evaluate

    shutil.copytree(photos["folder"], tmp_path / "d" / "test")
    shutil.copytree(photos["folder"] / "happy", tmp_path / "d" / "train" / "happy")
    m = evaluate("default", tmp_path / "d", out=tmp_path / "ev", detect=True, report=False, n_boot=200).metrics
    assert m["data"]["split"] == "test" and m["metrics"]["n"] == 4
    m = evaluate("default", tmp_path / "d", split="train", out=tmp_path / "ev2", detect=True, report=False,
                 n_boot=200).metrics
    assert m["metrics"]["n"] == 2
    r = _run("evaluate", "default", tmp_path / "d", "--detect", "--split", "val", "--out", tmp_path / "ev3")
    assert r.exit_code == 2 and "no 'val' split" in r.output


def test_compare_detect_pairs_on_the_same_photos(photos, tmp_path):
    r = _run("compare", "default", "default", "--data", photos["zip"], "--detect", "--out", tmp_path / "cmp",
             "--bootstrap", "200")
    assert r.exit_code == 0, r.output
    assert "mean over datasets" in r.output and "Paired bootstrap" in r.output
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["detect"] and res["n"] == 4 and [m["no_face"] for m in res["models"]] == [1, 1]
    pair = res["mcnemar"][0]
    assert (pair["a_only"], pair["b_only"]) == (0, 0)
    assert pair["accuracy_difference"]["difference"] == 0 and not pair["mean_over_datasets_difference"]["significant"]


def test_mean_over_groups_and_paired_difference():
    from ferkit.evaluation.metrics import mean_over_groups_ci, paired_difference_ci

    # Group A: 3 of 4 right; group B: 1 of 2 right. Pooled 4/6; the mean over groups weighs each once: 0.625.
    ya, pa = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    yb, pb = np.array([0, 1]), np.array([0, 0])
    g = mean_over_groups_ci([(ya, pa), (yb, pb)], n_classes=3, n_boot=500, seed=1)
    assert g["accuracy"] == pytest.approx(0.625)
    f1a = (4 / 5 + 2 / 3) / 2  # F1 = 2tp / (2tp + fp + fn); class 0: tp 2, fp 1; class 1: tp 1, fn 1
    f1b = (2 / 3 + 0) / 2  # class 0: tp 1, fp 1; class 1: never right
    assert g["macro_f1"] == pytest.approx((f1a + f1b) / 2)
    assert g["accuracy_ci95"][0] <= g["accuracy"] <= g["accuracy_ci95"][1]
    a = np.array([1, 1, 1, 1, 0, 0], bool)
    b = np.array([1, 1, 1, 1, 1, 1], bool)
    d = paired_difference_ci(a, b, n_boot=500)
    assert d["difference"] == pytest.approx(2 / 6) and d["ci95"][0] >= 0
    dg = paired_difference_ci(a, b, groups=np.array(["x", "x", "x", "x", "y", "y"]), n_boot=500)
    assert dg["difference"] == pytest.approx(0.5) and dg["significant"]


def test_model_card_takes_the_peers_realval_figures_of_one_run(tmp_path: Path) -> None:
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("ship_model", Path(__file__).parents[1] / "scripts" / "ship_model.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)

    def photos(acc: float) -> dict:
        return {"datasets": {d: {"n": 5, "accuracy": acc, "ci": [acc - 0.1, acc + 0.1], "no_face": 0}
                             for d in ("wild", "jaffe")}, "mean": acc, "mean_ci": [acc - 0.05, acc + 0.05]}

    run = tmp_path / "peers.json"
    run.write_text(json.dumps({"machine": "m", "ferkit": [{"model": "ferkit-default", "photos": photos(0.6)}],
                               "fer": {"photos": photos(0.3)}}))
    peers = ship.peer_figures(run, "ferkit-default")
    assert list(peers["systems"]) == ["this model", "fer"]
    table = ship.peers_table(peers)
    assert "| wild | 60.00% (50.00% to 70.00%) | 30.00% (20.00% to 40.00%) |" in table
    assert "| **mean over datasets** | 60.00% (55.00% to 65.00%) | 30.00% (25.00% to 35.00%) |" in table
    with pytest.raises(SystemExit, match="no realval figures of ferkit-fast"):
        ship.peer_figures(run, "ferkit-fast")
