"""Integration tests on the real archives in ../shared/datasets (skipped when absent).

They share one decoded cache per test session (tests/conftest.py), so each archive is decoded once
(about 7 s) and every later load takes about a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ferkit.data import FER2013_CLASSES, FERPLUS_CLASSES, load_dataset
from ferkit.data.audit import audit, exact_train_copies
from ferkit.data.ferplus import vote_table as ferplus_vote_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FER2013 = SHARED / "fer2013.zip"
FERPLUS = SHARED / "ferplus.zip"
README_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def session_cache(tmp_path_factory):
    # The same session cache as tests/conftest.py sets per test, here for the module-scoped loads too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "ferkit-cache"))
        yield


@pytest.fixture(scope="module")
def fer2013(session_cache):
    return load_dataset(need(FER2013))


@pytest.fixture(scope="module")
def ferplus(session_cache):
    return load_dataset(need(FERPLUS))


def readme_table() -> dict[str, dict[str, int]]:
    """The FER2013 counts table of the datasets' README: split -> class -> count."""
    text = (SHARED / "README.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] in README_SPLITS:
            out[README_SPLITS[cells[0]]] = {h: int(c) for h, c in zip(header[1:], cells[1:], strict=True)}
    return out


@pytest.mark.slow
def test_fer2013_counts_equal_the_readme(fer2013):
    table = readme_table()
    assert set(table) == {"train", "val", "test"}
    assert fer2013.classes == FER2013_CLASSES and not fer2013.skipped
    for split, expected in table.items():
        got = dict(zip(fer2013.classes, fer2013.counts()[split], strict=True))
        assert got == {c: expected[c] for c in fer2013.classes}
        assert sum(got.values()) == expected["total"]
        assert fer2013[split].images.shape[1:] == (48, 48)
    assert all(n.split("/")[-1].startswith("PublicTest_") for n in fer2013["val"].names)
    assert all(n.split("/")[-1].startswith("PrivateTest_") for n in fer2013["test"].names)


@pytest.mark.slow
def test_fer2013_second_load_comes_from_the_cache(fer2013):
    again = load_dataset(FER2013)
    assert again.from_cache
    np.testing.assert_array_equal(again["test"].images, fer2013["test"].images)


@pytest.mark.slow
def test_fer2013_four_class_subset(fer2013):
    four = load_dataset(FER2013, classes="happy,sad,surprise,neutral")
    assert four.classes == ["happy", "sad", "surprise", "neutral"]
    assert four.counts()["train"] == [7215, 4830, 3171, 4965]


@pytest.mark.slow
def test_ferplus_majority_counts(ferplus):
    """Majority-vote counts, checked against a direct count over the raw votes of every label.csv."""
    votes = ferplus_vote_table(FERPLUS)
    assert {s: len(v[0]) for s, v in votes.items()} == {"train": 28558, "val": 3579, "test": 3573}  # README
    for split, (_names, v) in votes.items():
        kept = np.where(v <= 1, 0, v)
        win = kept.argmax(1)
        ok = (kept.max(1) > kept.sum(1) / 2) & (win < 8)
        assert ferplus.counts()[split] == np.bincount(win[ok], minlength=8).tolist()
    # The totals the FER+ majority protocol is known for.
    assert {s: len(sp) for s, sp in ferplus.splits.items()} == {"train": 25045, "val": 3191, "test": 3137}
    assert ferplus.classes == FERPLUS_CLASSES
    np.testing.assert_allclose(ferplus["test"].soft.sum(1), 1, rtol=1e-5)


@pytest.fixture(scope="module")
def fer2013_audit(fer2013):
    return audit(fer2013)


@pytest.mark.slow
def test_fer2013_audit_finds_blanks_and_leakage(fer2013, fer2013_audit):
    counts = fer2013_audit.counts()
    assert 8 <= sum(counts["blank"].values()) <= 20  # FER2013's all-black images
    copies = exact_train_copies(fer2013)
    n = len(fer2013["test"])
    assert 0.05 * n < copies["test"].sum() < 0.12 * n  # ~8% of PrivateTest has an exact copy in train
    assert counts["leak"]["test"] >= copies["test"].sum() - counts["label_conflict"]["test"]
    assert counts["duplicate"]["train"] > 500 and sum(counts["label_conflict"].values()) > 0
    assert fer2013_audit.seconds < 60


@pytest.mark.slow
def test_ferplus_audit_reads_not_face_votes(ferplus):
    from ferkit.data.audit import Flag, _ferplus_flags

    res = audit(ferplus.__class__(ferplus.classes, {"test": ferplus["test"]}, str(FERPLUS), "ferplus"))
    _ferplus_flags(res, ferplus_vote_table(FERPLUS), None)
    nf = [f for f in res.flags if isinstance(f, Flag) and f.reason == "not_face"]
    assert nf and all(re.match(r"FER2013(Train|Valid|Test)/fer\d+\.png", f.name) for f in nf)
