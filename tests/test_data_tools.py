"""`ferkit data info / audit / convert`: the library functions and the CLI, on tiny datasets made here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.data import FER2013_CLASSES, Dataset, Split, load_dataset
from ferkit.data.audit import audit, exact_train_copies, near_pairs, phash, write_outputs
from ferkit.data.convert import convert
from ferkit.data.info import dataset_info, write_figures
from ferkit.errors import FerkitError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


def face(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random image (real photos are smooth; pure noise would make every pHash unstable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8)).astype(np.float32)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def kaggle(root: Path, per_class: int = 3) -> Path:
    seed = 0
    for c in FER2013_CLASSES:
        for i in range(per_class):
            for rel in (f"train/{c}/Training_{seed}_{i}.png", f"test/{c}/PublicTest_{seed}_{i}.png",
                        f"test/{c}/PrivateTest_{seed}_{i}.png"):
                seed += 1
                write_png(root / rel, face(seed))
    return root


def same_items(a: Dataset, b: Dataset) -> None:
    """Identical classes, and per split identical images and labels item by item (matched by file stem)."""
    assert a.classes == b.classes and set(a.splits) == set(b.splits)
    for s in a.splits:
        ia = np.argsort([Path(n).stem for n in a[s].names])
        ib = np.argsort([Path(n).stem for n in b[s].names])
        np.testing.assert_array_equal(a[s].images[ia], b[s].images[ib])
        np.testing.assert_array_equal(a[s].labels[ia], b[s].labels[ib])


# ---------------------------------------------------------------- convert


def test_convert_round_trips(tmp_path):
    ds = load_dataset(kaggle(tmp_path / "fer"))
    convert(ds, tmp_path / "folders", "folders")
    assert (tmp_path / "folders" / "val" / "happy").is_dir()
    same_items(ds, load_dataset(tmp_path / "folders"))

    convert(ds, tmp_path / "fer2013.csv", "csv")
    rows = list(csv.reader((tmp_path / "fer2013.csv").open()))
    assert rows[0] == ["emotion", "pixels", "Usage"]
    assert {r[2] for r in rows[1:]} == {"Training", "PublicTest", "PrivateTest"}
    assert {r[0] for r in rows[1:]} == {str(i) for i in range(7)}  # FER2013 integers
    back = load_dataset(tmp_path / "fer2013.csv")
    for s in ds.splits:  # the CSV keeps the order
        np.testing.assert_array_equal(back[s].images, ds[s].images)
        np.testing.assert_array_equal(back[s].labels, ds[s].labels)

    four = load_dataset(tmp_path / "fer", classes="happy,sad,surprise,neutral")
    convert(four, tmp_path / "four.csv.gz", "csv")
    back4 = load_dataset(tmp_path / "four.csv.gz")
    assert back4.classes == four.classes
    for s in four.splits:
        np.testing.assert_array_equal(back4[s].images, four[s].images)
        np.testing.assert_array_equal(back4[s].labels, four[s].labels)
    convert(back4, tmp_path / "four", "folders")
    same_items(load_dataset(tmp_path / "four"), load_dataset(tmp_path / "four", use_cache=False))
    assert load_dataset(tmp_path / "four").classes == four.classes


def test_convert_refuses_to_overwrite_and_unknown_target(tmp_path):
    ds = load_dataset(kaggle(tmp_path / "fer", per_class=1))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(FerkitError, match="already exists"):
        convert(ds, tmp_path / "taken", "folders")
    with pytest.raises(FerkitError, match="--to"):
        convert(ds, tmp_path / "new", "parquet")
    with pytest.raises(FerkitError, match="inside the source"):
        convert(ds, tmp_path / "fer" / "out", "folders")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("bad", ["..", ".", "", "...."])
def test_convert_refuses_class_names_that_leave_no_folder(tmp_path, bad):
    # Before: a class named '..', '.' or '' wrote its PNGs into '/' (the class folder vanished from the path).
    ds = Dataset([bad, "happy"], {"train": Split(np.stack([face(1), face(2)]), np.array([0, 1]), ["a", "b"])},
                 source="labels.csv")
    with pytest.raises(FerkitError, match="no usable folder name"):
        convert(ds, tmp_path / "out", "folders")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_convert_sanitises_names_and_keeps_every_file_inside(tmp_path):
    names = ["../../escape", "/abs/olute", "a/../../b", "..", "", "x\\..\\y"]
    ds = Dataset(["../up", "/root", "ok"],
                 {"train": Split(np.stack([face(i) for i in range(6)]), np.array([0, 1, 2, 0, 1, 2]), names)},
                 source="weird.csv")
    convert(ds, tmp_path / "out", "folders")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 6 and all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in written)
    assert sorted({p.parent.name for p in written}) == ["_root", "_up", "ok"]
    back = load_dataset(tmp_path / "out")
    assert sorted(back.classes) == ["_root", "_up", "ok"] and len(back["train"]) == 6


def test_convert_refuses_two_classes_sharing_a_folder(tmp_path):
    ds = Dataset(["a/b", "a_b"], {"train": Split(np.stack([face(1), face(2)]), np.array([0, 1]), ["x", "y"])})
    with pytest.raises(FerkitError, match="'a/b' and 'a_b' would share the folder 'a_b'"):
        convert(ds, tmp_path / "out", "folders")


@pytest.mark.parametrize("member", ["train/../x.png", "../x.png", "/x.png", "train/happy/../../../x.png",
                                    "train/./happy/x.png", "C:x.png", "train\\..\\x.png"])
def test_zip_with_traversal_names_is_refused(tmp_path, member):
    import zipfile

    z = tmp_path / "evil.zip"
    png = cv2.imencode(".png", face(3))[1].tobytes()
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("train/happy/ok.png", png)
        f.writestr("train/sad/ok.png", png)
        f.writestr(zipfile.ZipInfo(member), png)  # ZipInfo keeps the name as given (writestr(name) would too)
    with pytest.raises(FerkitError, match="unsafe path") as e:
        load_dataset(z)
    assert "evil.zip" in str(e.value) and "\n" not in str(e.value)
    r = runner.invoke(app, ["data", "convert", str(z), str(tmp_path / "out"), "--to", "folders"])
    assert r.exit_code == 2 and "unsafe path" in r.output and not (tmp_path / "out").exists()
    assert not (tmp_path / "x.png").exists() and not Path("/x.png").exists()


# ---------------------------------------------------------------- info


def test_info_counts_imbalance_pixels_and_figures(tmp_path):
    root = tmp_path / "flat"
    for k, (c, n) in enumerate({"a": 30, "b": 10, "c": 5}.items()):
        for i in range(n):
            write_png(root / c / f"{i}.png", face(100 * k + i))
    (root / "c" / "bad.png").write_bytes(b"junk")
    ds = load_dataset(root, val_fraction=0.2, test_fraction=0.2)
    info = dataset_info(ds)
    assert info["counts"]["train"] == {"a": 18, "b": 6, "c": 3}
    assert info["imbalance_ratio"] == pytest.approx(6.0)
    all_train = ds["train"].images.astype(np.float64)
    assert info["pixels"]["train"]["mean"] == pytest.approx(all_train.mean(), abs=1e-3)
    assert info["skipped"] == [{"name": "c/bad.png", "reason": ds.skipped[0].reason}]
    figs = write_figures(ds, tmp_path / "figs")
    for p in figs.values():
        img = cv2.imread(p)
        assert img is not None and img.shape[0] > 100 and img.std() > 5


# ---------------------------------------------------------------- audit


def dirty() -> Dataset:
    """A dataset with one of every problem, at known positions."""
    tr = [face(i) for i in range(20)]
    tr_labels = [i % 4 for i in range(20)]
    tr[5] = np.full((48, 48), 3, np.uint8)  # blank
    tr[6] = tr[7].copy()  # exact duplicate, same label
    tr_labels[6] = tr_labels[7]
    tr[8] = tr[9].copy()  # exact duplicate, labels disagree
    tr_labels[8], tr_labels[9] = 0, 1
    tr[10] = np.clip(tr[11].astype(int) + 6, 0, 255).astype(np.uint8)  # near duplicate (brighter)
    va = [face(100 + i) for i in range(6)]
    va[0] = tr[0].copy()  # leaked into val
    te = [face(200 + i) for i in range(6)]
    te[0] = tr[1].copy()  # leaked into test
    te[1] = va[1].copy()  # test copy of a val item
    te[2] = np.clip(tr[2].astype(int) - 5, 0, 255).astype(np.uint8)  # near leak

    def split(imgs, labels, prefix):
        return Split(np.stack(imgs), np.array(labels), [f"{prefix}{i}" for i in range(len(imgs))])

    return Dataset(["a", "b", "c", "d"], {
        "train": split(tr, tr_labels, "tr"),
        "val": split(va, [i % 4 for i in range(6)], "va"),
        "test": split(te, [1, 1, 2, 3, 0, 1], "te"),
    }, source="dirty", format="folders")


def test_audit_finds_every_problem(tmp_path):
    ds = dirty()
    res = audit(ds)
    got = {(f.split, f.name, f.reason, f.other) for f in res.flags}
    assert ("train", "tr5", "blank", "") in got
    assert ("train", "tr7", "duplicate", "train:tr6") in got
    assert {("train", "tr8", "label_conflict", "train:tr9"), ("train", "tr9", "label_conflict", "train:tr8")} <= got
    assert ("val", "va0", "leak", "train:tr0") in got
    assert ("test", "te0", "leak", "train:tr1") in got
    assert ("test", "te1", "leak", "val:va1") in got
    assert ("train", "tr11", "near_duplicate", "train:tr10") in got
    assert ("test", "te2", "near_leak", "train:tr2") in got
    assert len(got) == 9, got  # nothing else: distinct random images are not near duplicates
    masks = exact_train_copies(ds)
    assert masks["val"].tolist() == [True] + [False] * 5
    assert masks["test"].tolist() == [True] + [False] * 5

    paths = write_outputs(res, ds, tmp_path / "audit", write_clean=True)
    rows = list(csv.DictReader(Path(paths["flagged"]).read_text().splitlines()))
    assert rows[0].keys() == {"split", "name", "label", "reason", "other"} and len(rows) == 9
    summary = json.loads(Path(paths["summary"]).read_text())
    assert summary["counts"]["leak"] == {"val": 1, "test": 2}
    manifest = json.loads(Path(paths["manifest"]).read_text())
    assert manifest["format"] == "folders"
    assert set(ds["train"].names) - set(manifest["keep"]["train"]) == {"tr5", "tr7", "tr8", "tr9"}
    assert "va0" not in manifest["keep"]["val"] and "tr11" in manifest["keep"]["train"]
    assert cv2.imread(paths["contact_sheet"]) is not None


def test_near_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    flips = rng.integers(0, 64, (300, 3))
    near = base.copy()
    for k in range(300):  # neighbours 0..3 bits away
        for b in flips[k][: k % 4]:
            near[k] ^= np.uint64(1) << np.uint64(b)
    h = np.concatenate([base, near])
    i, j, d = near_pairs(h, 3)
    x = np.bitwise_count(h[:, None] ^ h[None, :])
    bi, bj = np.nonzero(np.triu(x <= 3, k=1))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(zip(bi.tolist(), bj.tolist(), strict=True))
    assert (d == x[i, j]).all()


def test_phash_is_stable_under_brightness_and_differs_between_images():
    a = face(1)
    h = phash(np.stack([a, np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8), face(2)]))
    assert np.bitwise_count(h[0] ^ h[1]) <= 2 and np.bitwise_count(h[0] ^ h[2]) > 8


def test_audit_ferplus_votes(tmp_path):
    root = tmp_path / "fp"
    votes = {"a.png": [9, 1, 0, 0, 0, 0, 0, 0, 0, 0], "nf.png": [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],
             "unk.png": [1, 0, 0, 0, 0, 0, 0, 0, 9, 0], "mix.png": [4, 4, 0, 0, 0, 0, 0, 0, 2, 0]}
    for k, name in enumerate(votes):
        write_png(root / "FER2013Train" / name, face(k))
    (root / "FER2013Train" / "label.csv").write_text(
        "".join(f'{n},"(0, 0, 48, 48)",{",".join(map(str, v))}\n' for n, v in votes.items()))
    r = runner.invoke(app, ["data", "audit", str(root), "--json", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    counts = json.loads(r.stdout)["counts"]
    assert counts == {"not_face": {"train": 1}, "unknown": {"train": 1}, "no_majority": {"train": 1}}
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 1000


# ---------------------------------------------------------------- CLI


def test_cli_info_json_and_table(tmp_path):
    root = kaggle(tmp_path / "fer", per_class=2)
    r = runner.invoke(app, ["data", "info", str(root), "--json", "--out", str(tmp_path / "figs")])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["totals"] == {"train": 14, "val": 14, "test": 14} and info["imbalance_ratio"] == 1.0
    assert Path(info["figures"]["distribution"]).exists() and Path(info["figures"]["samples"]).exists()
    r = runner.invoke(app, ["data", "info", str(root), "--classes", "happy,sad"])
    assert r.exit_code == 0 and "happy" in r.stdout and "angry" not in r.stdout


def test_cli_audit_and_clean_manifest(tmp_path):
    root = kaggle(tmp_path / "fer", per_class=2)
    leaked = (root / "train" / "happy").glob("*.png").__next__().read_bytes()
    (root / "test" / "happy" / "PrivateTest_leak.png").write_bytes(leaked)
    out = tmp_path / "audit"
    r = runner.invoke(app, ["data", "audit", str(root), "--out", str(out), "--write-clean", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["counts"]["leak"] == {"test": 1} and summary["train_copies"]["test"] == 1
    clean = load_dataset(out / "manifest.json")
    assert len(clean["test"]) == 14 and "test/happy/PrivateTest_leak.png" not in clean["test"].names
    r = runner.invoke(app, ["data", "audit", str(root)])
    assert r.exit_code == 0 and "leak" in r.stdout


def test_cli_convert(tmp_path):
    root = kaggle(tmp_path / "fer", per_class=1)
    r = runner.invoke(app, ["data", "convert", str(root), str(tmp_path / "out.csv"), "--to", "csv", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["written"] == {"train": 7, "val": 7, "test": 7}
    r = runner.invoke(app, ["data", "convert", str(root), str(tmp_path / "out.csv"), "--to", "csv"])
    assert r.exit_code == 2 and "already exists" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "info", "{tmp}/missing"], "missing: no such file or folder"),
        (["data", "info", "{tmp}/fer", "--format", "xml"], "--format 'xml'"),
        (["data", "info", "{tmp}/fer", "--classes", "joy"], "--classes: joy"),
        (["data", "audit", "{tmp}/fer", "--write-clean"], "--write-clean needs --out"),
        (["data", "convert", "{tmp}/fer", "{tmp}/o", "--to", "xml"], "--to 'xml'"),
        (["data", "info", "{tmp}/empty"], "empty"),
    ],
)
def test_cli_user_mistakes_exit_2_with_one_line(tmp_path, args, message):
    kaggle(tmp_path / "fer", per_class=1)
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_cli_help_has_examples():
    for cmd in ("info", "audit", "convert"):
        r = runner.invoke(app, ["data", cmd, "--help"])
        assert r.exit_code == 0 and "Example: ferkit data" in r.stdout


@pytest.mark.parametrize("label", ["[/x]", "[red]angry[/red]", "[bold", ":smile:", "[link=file:///etc]x[/link]"])
def test_cli_prints_user_text_as_plain_text(tmp_path, label):
    # Rich markup in a label or a path is shown as written: before, '[/x]' raised a MarkupError traceback.
    root = tmp_path / "data[x]"
    root.mkdir()
    csv_path = root / "labels.csv"
    px = " ".join(["7"] * 16)
    csv_path.write_text(f"emotion,pixels\n{label},{px}\n{label},{px}\nplain,{px}\nplain,{px}\n")
    r = runner.invoke(app, ["data", "info", str(csv_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert label in r.stdout and "data[x]" in r.stdout + r.stderr
    r = runner.invoke(app, ["data", "audit", str(csv_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    bad = root / "[bad]" / "x.csv"
    r = runner.invoke(app, ["data", "info", str(bad)], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == f"error: {bad}: no such file or folder"


def test_figures_leave_the_callers_matplotlib_alone(tmp_path, tiny_folders):
    # Before: data info, audit and the video timeline called matplotlib.use("Agg"), switching the caller's backend.
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    code = f"""
import sys, matplotlib
matplotlib.use("svg")
from ferkit.data import load_dataset
from ferkit.data.info import write_figures
from ferkit.data import audit as A
from ferkit.inference.video import Timeline
from ferkit.inference import Face, Prediction
ds = load_dataset({str(tiny_folders)!r}, use_cache=False)
write_figures(ds, __import__("pathlib").Path({str(tmp_path / "fig")!r}))
res = A.audit(ds)
A.write_outputs(res, ds, __import__("pathlib").Path({str(tmp_path / "audit")!r}))
t = Timeline(["a", "b"])
for i in range(3):
    t.add(Prediction([Face((0, 0, 9, 9), 1.0, "a", 0.6, {{"a": 0.6, "b": 0.4}}, track_id=1)], 9, 9, frame=i, time=i / 10))
t.write(__import__("pathlib").Path({str(tmp_path / "tl")!r}), "clip")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["svg", "False"]
    assert (tmp_path / "fig" / "class_distribution.png").stat().st_size > 1000
    assert (tmp_path / "audit" / "contact_sheet.png").is_file() and (tmp_path / "tl" / "clip_track1.png").is_file()


def test_near_copies_are_confirmed_by_the_pixels():
    """A perceptual-hash match is a candidate only: a face under a strong fine-grained pattern keeps the hash of the
    face (the hash sees low frequencies) but not its pixels, and is not called a near copy of it."""
    from ferkit.data.audit import pixel_correlation

    base = (face(1) * 0.35 + 80).astype(np.uint8)  # 80..170: the pattern below never clips
    checker = (np.indices((48, 48)).sum(0) % 2 * 2 - 1) * 75  # the highest frequency only: no low-frequency change
    other = (base.astype(int) + checker).astype(np.uint8)  # same hash, other pixels
    copy = np.clip(base.astype(int) + 4, 0, 255).astype(np.uint8)  # a brighter re-encode: a near copy
    from ferkit.data.audit import NEAR_DISTANCE, hamming

    assert hamming(phash(np.stack([base])), phash(np.stack([other])))[0] <= NEAR_DISTANCE  # a hash candidate
    r = pixel_correlation(np.stack([base, other, copy]), np.array([0, 0]), np.array([1, 2]))
    assert r[0] < 0.9 < r[1]
    ds = Dataset(["a", "b"], {
        "train": Split(np.stack([base, face(2)]), np.array([0, 1]), ["tr0", "tr1"]),
        "test": Split(np.stack([other, copy]), np.array([0, 0]), ["te0", "te1"]),
    }, source="near", format="folders")
    res = audit(ds)
    got = {(f.name, f.reason) for f in res.flags}
    assert ("te1", "near_leak") in got and ("te0", "near_leak") not in got
    assert res.summary()["near_pairs_refuted_by_pixels"] == 2  # the patterned face against the face and its copy
