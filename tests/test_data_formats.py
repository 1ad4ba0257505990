"""Loader tests on tiny datasets made here: every format (csv, csv.gz, folders, FER+, zip), the cache,
class subsets, manifests, and every bad-input case (one-line errors naming the file or row)."""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.data import FER2013_CLASSES, FERPLUS_CLASSES, load_dataset, select_classes
from ferkit.data.ferplus import majority as ferplus_majority
from ferkit.data.ferplus import vote_table as ferplus_vote_table
from ferkit.data.formats import detect_format
from ferkit.errors import FerkitError
from ferkit.images import decode_image, read_image


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


def face(seed: int, size: int = 48) -> np.ndarray:
    """A distinct, textured uint8 image per seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def csv_text(rows: list[tuple[str, np.ndarray, str | None]]) -> str:
    usage = rows[0][2] is not None
    lines = ["emotion,pixels,Usage" if usage else "emotion,pixels"]
    for label, img, u in rows:
        px = " ".join(map(str, img.ravel().tolist()))
        lines.append(f"{label},{px},{u}" if usage else f"{label},{px}")
    return "\n".join(lines) + "\n"


def fer_rows() -> list[tuple[str, np.ndarray, str]]:
    usages = ["Training"] * 14 + ["PublicTest"] * 7 + ["PrivateTest"] * 7
    return [(str(i % 7), face(i), u) for i, u in enumerate(usages)]


def make_kaggle(root: Path, per_class: int = 2) -> dict[str, np.ndarray]:
    """train/<class>/Training_*.png and test/<class>/{PublicTest,PrivateTest}_*.png."""
    imgs = {}
    for k, c in enumerate(FER2013_CLASSES):
        for i in range(per_class):
            for rel in (f"train/{c}/Training_{k}{i}.png", f"test/{c}/PublicTest_{k}{i}.png",
                        f"test/{c}/PrivateTest_{k}{i}.png"):
                imgs[rel] = face(zlib.crc32(rel.encode()))
                write_png(root / rel, imgs[rel])
    return imgs


def make_ferplus(root: Path) -> list[tuple[str, list[int]]]:
    """FER2013Train/Valid/Test with label.csv; votes cover every rule of the majority protocol."""
    votes = [
        [10, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # neutral
        [1, 6, 1, 1, 1, 0, 0, 0, 0, 0],  # happiness: singles dropped, 6 of 6
        [4, 0, 4, 0, 0, 0, 0, 0, 2, 0],  # no majority (4 of 10)
        [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],  # NF wins: left out
        [2, 0, 0, 0, 0, 0, 0, 0, 7, 1],  # unknown wins: left out
        [0, 0, 0, 0, 3, 0, 0, 5, 0, 0],  # contempt 5 of 8
    ]
    table = []
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        lines = []
        for i, v in enumerate(votes):
            name = f"fer{folder[-4:]}{i}.png"
            write_png(root / folder / name, face(i + 100 * len(table)))
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, v)))
            table.append((f"{folder}/{name}", v))
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return table


def zip_dir(src: Path, dst: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, prefix + p.relative_to(src).as_posix())
    return dst


# ---------------------------------------------------------------- formats


def test_fer2013_csv(tmp_path):
    rows = fer_rows()
    p = tmp_path / "fer2013.csv"
    p.write_text(csv_text(rows))
    ds = load_dataset(p)
    assert ds.format == "csv" and ds.classes == FER2013_CLASSES
    assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 14, "val": 7, "test": 7}
    np.testing.assert_array_equal(ds["train"].images, np.stack([r[1] for r in rows[:14]]))
    np.testing.assert_array_equal(ds["test"].labels, [int(r[0]) for r in rows[21:]])
    assert ds["val"].names[0] == "row16"


def test_csv_gz_and_zip_and_forced_format(tmp_path):
    text = csv_text(fer_rows())
    gz = tmp_path / "fer2013.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    ref = load_dataset(gz)
    z = tmp_path / "fer.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("fer2013/fer2013.csv", text)
    odd = tmp_path / "faces.data"
    odd.write_text(text)
    with pytest.raises(FerkitError, match="faces.data"):
        load_dataset(odd)
    for other in (load_dataset(z), load_dataset(odd, format="csv")):
        assert other.classes == ref.classes
        for s in ref.splits:
            np.testing.assert_array_equal(other[s].images, ref[s].images)
            np.testing.assert_array_equal(other[s].labels, ref[s].labels)


def test_csv_with_class_names_and_no_usage_is_split_stratified(tmp_path):
    rows = [(["happy", "sad", "neutral"][i % 3], face(i), None) for i in range(60)]
    p = tmp_path / "named.csv"
    p.write_text(csv_text(rows))
    ds = load_dataset(p, val_fraction=0.2, test_fraction=0.2)
    assert ds.classes == ["happy", "sad", "neutral"]  # FER2013 order for a subset of its classes
    assert {s: np.bincount(sp.labels).tolist() for s, sp in ds.splits.items()} == {
        "train": [12, 12, 12], "val": [4, 4, 4], "test": [4, 4, 4]}


def test_kaggle_folders_split_test_by_prefix(tmp_path):
    imgs = make_kaggle(tmp_path / "fer")
    ds = load_dataset(tmp_path / "fer")
    assert ds.format == "folders" and ds.classes == FER2013_CLASSES
    assert [len(ds[s]) for s in ("train", "val", "test")] == [14, 14, 14]
    assert all("PublicTest_" in n for n in ds["val"].names)
    assert all("PrivateTest_" in n for n in ds["test"].names)
    for s in ds.splits:
        for img, lbl, name in zip(ds[s].images, ds[s].labels, ds[s].names, strict=True):
            np.testing.assert_array_equal(img, imgs[name])
            assert name.split("/")[1] == ds.classes[lbl]


def test_train_validation_test_four_classes_and_wrapped_zip(tmp_path):
    root = tmp_path / "four"
    for split in ("train", "validation", "test"):
        for k, c in enumerate(["surprise", "happy", "sad", "neutral"]):
            for i in range(3):
                write_png(root / split / c / f"{i}.png", face(k * 10 + i))
    ds = load_dataset(root)
    assert ds.classes == ["happy", "sad", "surprise", "neutral"]
    assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 12, "val": 12, "test": 12}
    zipped = load_dataset(zip_dir(root, tmp_path / "four.zip", prefix="dataset-v1/"))
    assert zipped.classes == ds.classes
    for s in ds.splits:
        np.testing.assert_array_equal(zipped[s].images, ds[s].images)


def test_one_folder_of_classes_seeded_stratified(tmp_path):
    root = tmp_path / "flat"
    for k, c in enumerate(["cat_a", "cat_b"]):
        for i in range(50):
            write_png(root / c / f"{i}.png", face(k * 100 + i))
    a = load_dataset(root, seed=1)
    b = load_dataset(root, seed=1, use_cache=False)
    c = load_dataset(root, seed=2)
    assert a.classes == ["cat_a", "cat_b"]
    assert {s: np.bincount(sp.labels).tolist() for s, sp in a.splits.items()} == {
        "train": [40, 40], "val": [5, 5], "test": [5, 5]}
    assert a["val"].names == b["val"].names
    assert a["val"].names != c["val"].names
    assert not set(a["train"].names) & set(a["test"].names)


def test_class_folders_that_are_links(tmp_path):
    # Before: links to folders were not followed and `ferkit data info course` said "empty; no files found".
    root = tmp_path / "course"
    for k, c in enumerate(["happy", "sad"]):
        for i in range(4):
            write_png(root / "train" / c / f"{i}.png", face(k * 10 + i))
    (root / "test").mkdir()
    (root / "test" / "happy").symlink_to(Path("..") / "train" / "happy", target_is_directory=True)  # inside: followed
    (root / "train" / "happy" / "again").symlink_to(root, target_is_directory=True)  # a loop: not walked twice
    assert detect_format(root) == "folders"
    ds = load_dataset(root)
    assert ds.classes == ["happy", "sad"] and (len(ds["train"]), len(ds["test"])) == (8, 4)
    (root / "test" / "sad").symlink_to(Path("..") / "train" / "sad", target_is_directory=True)
    assert len(load_dataset(root)["test"]) == 8  # a new link is a new dataset, not the cached one
    # A link out of the named folder: refused, saying which link and why.
    outside = tmp_path / "elsewhere" / "neutral"
    write_png(outside / "0.png", face(99))
    (root / "train" / "neutral").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FerkitError) as e:
        load_dataset(root, use_cache=False)
    assert str(root / "train" / "neutral") in one_line(e) and "outside" in one_line(e)


def test_ferplus_majority_votes_and_soft_labels(tmp_path):
    make_ferplus(tmp_path / "fp")
    for src in (tmp_path / "fp", zip_dir(tmp_path / "fp", tmp_path / "fp.zip")):
        ds = load_dataset(src)
        assert ds.format == "ferplus" and ds.classes == FERPLUS_CLASSES
        assert set(ds.splits) == {"train", "val", "test"}
        for sp in ds.splits.values():
            assert [FERPLUS_CLASSES[k] for k in sp.labels] == ["neutral", "happiness", "contempt"]
            assert sp.soft.shape == (3, 8)
            np.testing.assert_allclose(sp.soft.sum(1), 1, rtol=1e-6)
            np.testing.assert_allclose(sp.soft[1], np.array([1, 6, 1, 1, 1, 0, 0, 0]) / 10)


def test_ferplus_majority_rule():
    assert ferplus_majority(np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], np.float32)) == -1  # all singles
    assert ferplus_majority(np.array([3, 3, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)) == -1  # tie, no majority
    assert ferplus_majority(np.array([0, 0, 0, 0, 0, 0, 0, 0, 6, 4], np.float32)) == -1  # unknown
    assert ferplus_majority(np.array([0, 0, 0, 3, 0, 0, 2, 0, 0, 0], np.float32)) == 3


def test_ferplus_vote_table_keeps_left_out_rows(tmp_path):
    table = make_ferplus(tmp_path / "fp")
    votes = ferplus_vote_table(tmp_path / "fp")
    names, v = votes["train"]
    assert len(names) == 6 and v.shape == (6, 10)
    assert names[3] == table[3][0] and v[3].tolist() == table[3][1]


def test_classes_subset_and_rename(tmp_path):
    p = tmp_path / "fer2013.csv"
    p.write_text(csv_text(fer_rows()))
    ds = load_dataset(p, classes="happy,sad,surprise,neutral")
    assert ds.classes == ["happy", "sad", "surprise", "neutral"]
    assert len(ds["train"]) == 8 and set(ds["train"].labels.tolist()) == {0, 1, 2, 3}
    merged = select_classes(load_dataset(p), "angry=negative,disgust=negative,happy")
    assert merged.classes == ["negative", "happy"]
    assert np.bincount(merged["train"].labels).tolist() == [4, 2]
    with pytest.raises(FerkitError, match="joy"):
        load_dataset(p, classes="happy,joy")


def test_cache_is_one_npz_keyed_by_content(tmp_path):
    p = tmp_path / "fer2013.csv"
    p.write_text(csv_text(fer_rows()))
    first = load_dataset(p)
    second = load_dataset(p)
    assert not first.from_cache and second.from_cache
    cache = Path(__import__("os").environ["FERKIT_CACHE"])
    assert len(list(cache.glob("*.npz"))) == 1
    for s in first.splits:
        np.testing.assert_array_equal(first[s].images, second[s].images)
        assert second[s].images.dtype == np.uint8
    p.write_text(csv_text(fer_rows()[:21]))  # new content, new key
    third = load_dataset(p)
    assert not third.from_cache and "test" not in third.splits


def test_manifest_keeps_listed_items(tmp_path):
    make_kaggle(tmp_path / "fer")
    ds = load_dataset(tmp_path / "fer")
    keep = {"train": ds["train"].names[:3], "test": ds["test"].names[-2:]}
    m = tmp_path / "manifest.json"
    m.write_text(__import__("json").dumps({"source": "fer", "format": "folders", "keep": keep}))
    clean = load_dataset(m)
    assert clean["train"].names == keep["train"] and len(clean["val"]) == 0
    np.testing.assert_array_equal(clean["test"].images, ds["test"].images[-2:])


# ---------------------------------------------------------------- bad input


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    with pytest.raises(FerkitError) as e:
        load_dataset(tmp_path / "nope.zip")
    assert "nope.zip" in one_line(e) and "no such" in one_line(e)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerkitError) as e:
        load_dataset(tmp_path / "empty")
    assert "empty" in one_line(e)


def test_unknown_layouts(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(FerkitError, match="unknown layout") as e:
        load_dataset(tmp_path / "notes")
    one_line(e)
    write_png(tmp_path / "deep" / "a" / "b" / "c" / "x.png", face(1))
    with pytest.raises(FerkitError, match="unknown folder layout"):
        load_dataset(tmp_path / "deep")
    bad_zip = tmp_path / "broken.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FerkitError, match="broken.zip"):
        load_dataset(bad_zip)
    with pytest.raises(FerkitError, match="--format"):
        load_dataset(tmp_path / "deep", format="parquet")
    with pytest.raises(FerkitError, match="label.csv"):
        load_dataset(tmp_path / "deep", format="ferplus")


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        ("3,1 2 3", "row 3: expected 3 columns"),
        ("3,1 2 x 4,Training", "row 3: 'pixels' holds a value that is not a number"),
        ("3,1 2 3,Training", "row 3: 'pixels' must be a square image"),
        ("3,1 2 3 999,Training", "row 3: 'pixels' must be a square image"),
        ("3,1 2 3 4,Holdout", "row 3: unknown Usage"),
    ],
)
def test_malformed_csv_row_names_the_row(tmp_path, row, expect):
    p = tmp_path / "bad.csv"
    p.write_text(f"emotion,pixels,Usage\n0,1 2 3 4,Training\n{row}\n")
    with pytest.raises(FerkitError) as e:
        load_dataset(p, size=2)
    assert "bad.csv" in one_line(e) and expect in one_line(e)


def test_csv_header_and_gzip_errors(tmp_path):
    p = tmp_path / "wrong.csv"
    p.write_text("label,image\n0,1 2 3 4\n")
    with pytest.raises(FerkitError, match="'emotion' and 'pixels'"):
        load_dataset(p)
    gz = tmp_path / "broken.csv.gz"
    gz.write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(FerkitError, match="broken.csv.gz"):
        load_dataset(gz)


def test_ferplus_bad_label_row(tmp_path):
    make_ferplus(tmp_path / "fp")
    (tmp_path / "fp" / "FER2013Valid" / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,2,3\n')
    with pytest.raises(FerkitError, match=r"FER2013Valid/label.csv: row 1"):
        load_dataset(tmp_path / "fp")


def test_corrupt_and_truncated_images_are_skipped_and_listed(tmp_path):
    make_kaggle(tmp_path / "fer", per_class=1)
    good = (tmp_path / "fer" / "train" / "happy" / "Training_30.png").read_bytes()
    (tmp_path / "fer" / "train" / "happy" / "Training_trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "fer" / "train" / "sad" / "Training_junk.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "fer" / "test" / "sad" / "PrivateTest_empty.png").write_bytes(b"")
    ds = load_dataset(tmp_path / "fer")
    assert len(ds["train"]) == 7 and len(ds["test"]) == 7
    skipped = {s.name: s.reason for s in ds.skipped}
    assert set(skipped) == {"train/happy/Training_trunc.png", "train/sad/Training_junk.jpg",
                            "test/sad/PrivateTest_empty.png"}
    assert "not a readable image" in skipped["train/sad/Training_junk.jpg"]
    assert load_dataset(tmp_path / "fer").skipped == ds.skipped  # the cache keeps the load report
    # The same damage inside a zip.
    zds = load_dataset(zip_dir(tmp_path / "fer", tmp_path / "fer.zip"))
    assert {s.name for s in zds.skipped} == set(skipped)


def test_single_image_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.png"
    ok, buf = cv2.imencode(".png", face(3))
    p.write_bytes(buf.tobytes()[:100])
    with pytest.raises(FerkitError) as e:
        read_image(str(p))
    assert "broken.png" in one_line(e) and "not a readable image" in one_line(e)
    with pytest.raises(FerkitError, match="missing.png: no such file"):
        read_image(str(tmp_path / "missing.png"))
    with pytest.raises(FerkitError, match="x.jpg: empty file"):
        decode_image(b"", "x.jpg")


def test_detect_format(tmp_path):
    make_ferplus(tmp_path / "fp")
    make_kaggle(tmp_path / "fer", per_class=1)
    assert detect_format(tmp_path / "fp") == "ferplus"
    assert detect_format(tmp_path / "fer") == "folders"
    assert detect_format(tmp_path / "x.csv.gz") == "csv"


def test_csv_fast_and_row_by_row_parsers_agree(tmp_path):
    rows = fer_rows()
    clean = tmp_path / "clean.csv"
    clean.write_text(csv_text(rows))
    messy = tmp_path / "messy.csv"  # double spaces and a trailing space: only the row-by-row parser takes them
    messy.write_text(csv_text(rows).replace(" 1", "  1").replace(",Training", " ,Training"))
    a, b = load_dataset(clean), load_dataset(messy)
    for s in a.splits:
        np.testing.assert_array_equal(a[s].images, b[s].images)
        np.testing.assert_array_equal(a[s].labels, b[s].labels)
    small = load_dataset(clean, size=24)
    assert small["train"].images.shape == (14, 24, 24)


def test_csv_blank_lines_keep_row_numbers(tmp_path):
    p = tmp_path / "gaps.csv"
    p.write_text("emotion,pixels,Usage\n\n0,1 2 3 4,Training\n\n1,5 6 7 8,Holdout\n")
    with pytest.raises(FerkitError, match="row 5: unknown Usage"):
        load_dataset(p, size=2)


# ---------------------------------------------------------------- hostile files (more kinds in test_hostile.py)
@pytest.mark.parametrize(("body", "expect"), [
    ("emotion,pixels\n0,1 2 3 4\n\u00b2,1 2 3 4\n", "row 3: emotion '\u00b2' is not an integer"),
    ("emotion,pixels\n0,1 2 3 4\n99999999999,1 2 3 4\n", "row 3: emotion 99999999999: integer labels must be"),
    ("emotion,pixels\n0,1 2 3 4\n,1 2 3 4\n", "row 3: empty 'emotion'"),
    ("emotion,pixels\n0,1 2 3 4\n1," + "1 " * 100_000 + "\n", "row 3: field larger than field limit"),
])
def test_csv_rows_that_used_to_crash(tmp_path, body, expect):
    p = tmp_path / "bad.csv"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(FerkitError) as e:
        load_dataset(p, size=2)
    assert "bad.csv" in one_line(e) and expect in one_line(e)


def test_csv_encoding_and_damaged_gzip(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("emotion,pixels\nhappy,1 2 3 4\ncaf\u00e9,1 2 3 4\n".encode("latin-1"))
    with pytest.raises(FerkitError, match=r"latin1.csv: not UTF-8 text .*byte 0xe9"):
        load_dataset(p, size=2)
    text = ("emotion,pixels,Usage\n" + "0,1 2 3 4,Training\n" * 20000).encode()
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(gzip.compress(text)[:-200])
    with pytest.raises(FerkitError, match=r"cut.csv.gz: truncated or damaged gzip"):
        load_dataset(gz, size=2)


def test_gzip_and_zip_bombs_are_refused_while_inflating(tmp_path):
    # 64 MiB of one repeated row deflate about 1000 times: refused once the inflated text passes the ratio.
    row = b"0," + b"1 " * 3 + b"1,Training\n"
    text = b"emotion,pixels,Usage\n" + row * (64 * 2**20 // len(row))
    gz = tmp_path / "bomb.csv.gz"
    gz.write_bytes(gzip.compress(text, 6))
    with pytest.raises(FerkitError, match=r"bomb.csv.gz: inflates more than 50 times"):
        load_dataset(gz)
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("fer2013.csv", text)
    with pytest.raises(FerkitError, match=r"bomb.zip:fer2013.csv: inflates \d[\d,]* times"):
        load_dataset(z)
    # An image member that inflates like a bomb is skipped and listed; the others load.
    make_kaggle(tmp_path / "fer", per_class=1)
    zdir = zip_dir(tmp_path / "fer", tmp_path / "imgs.zip")
    with zipfile.ZipFile(zdir, "a", zipfile.ZIP_DEFLATED) as f:
        f.writestr("train/happy/Training_bomb.png", b"\0" * (32 * 2**20))
    ds = load_dataset(zdir)
    why = {s.name: s.reason for s in ds.skipped}
    assert "inflates" in why["train/happy/Training_bomb.png"] and len(ds["train"]) == 7


@pytest.mark.parametrize("vote", ["nan", "inf", "-inf", "-1", "1e300"])
def test_ferplus_votes_must_be_counts(tmp_path, vote):
    # Before: nan votes became an all-nan soft label and trained silently.
    make_ferplus(tmp_path / "fp")
    label = tmp_path / "fp" / "FER2013Train" / "label.csv"
    rows = label.read_text().splitlines()
    rows[1] = rows[1].replace('",1,6,', f'",1,{vote},')
    label.write_text("\n".join(rows) + "\n")
    with pytest.raises(FerkitError, match=r"FER2013Train/label.csv: row 2: votes must be counts"):
        load_dataset(tmp_path / "fp")


@pytest.mark.parametrize("text", ['{"source": 5, "keep": {}}', '{"source": "x", "keep": []}', "[1, 2]",
                                  '{"source": "x", "keep": {"train": [1]}}', "[" * 100_000, "\xff\xfe"])
def test_malformed_manifest(tmp_path, text):
    p = tmp_path / "m.json"
    p.write_bytes(text.encode("utf-8", errors="surrogateescape") if text != "\xff\xfe" else b"\xff\xfe{")
    with pytest.raises(FerkitError, match="m.json: not a ferkit manifest"):
        load_dataset(p)


def test_manifest_of_a_manifest_is_refused(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"source": "m.json", "keep": {}}')
    with pytest.raises(FerkitError, match="source must be a dataset"):
        load_dataset(p)
