"""Evaluation numbers against hand-computed cases (no torch, no model files)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferkit.data.classes import class_lut, parse_map, remap_split
from ferkit.data.dataset import Split
from ferkit.errors import FerkitError
from ferkit.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_confusions,
    classification_metrics,
    f1_from_confusions,
    fit_temperature,
    mcnemar,
    reliability,
    summarize,
    vote_agreement,
)
from ferkit.evaluation.saliency import occlusion_map
from ferkit.inference.resolve import resolve_models
from ferkit.views import apply_temperature, cut, tta_mode, tta_views

CLASSES = ["a", "b", "c"]
# True labels 0 0 1 1 2; predictions 0 1 1 1 0.
Y = np.array([0, 0, 1, 1, 2])
PROB = np.array([
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.1, 0.8, 0.1],
    [0.2, 0.5, 0.3],
    [0.5, 0.1, 0.4],
])


def test_classification_metrics_by_hand():
    m = classification_metrics(Y, PROB, CLASSES)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # a: tp 1, fp 1, fn 1; b: tp 2, fp 1, fn 0; c: tp 0, fn 1.
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 2 * 0.8) / 5)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["confusion_normalized"][0] == pytest.approx([0.5, 0.5, 0])
    # Top-2: item 1 (true a, top-2 {b, a}) yes; item 4 (true c, top-2 {a, c}) yes -> all five.
    assert m["top2_accuracy"] == pytest.approx(1.0)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.4])))


def test_macro_f1_ignores_model_classes_absent_from_data():
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, prob, CLASSES)
    # a: P 1, R 0.5 -> F1 2/3; b: F1 1; class c is not in the data (its false positive still costs a's recall).
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["per_class"]["c"]["support"] == 0
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_reliability_and_ece_by_hand():
    # Two items at confidence 0.9, both right; two at 0.6, one right.
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 0, 0, 1])
    rel = reliability(y, prob, bins=10)
    assert rel["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert sum(rel["count"]) == 4
    assert rel["count"][8] == 2 and rel["count"][5] == 2  # (0.8, 0.9] and (0.5, 0.6]
    assert rel["accuracy"][5] == pytest.approx(0.5)
    assert rel["accuracy"][0] is None


def test_bootstrap_resamples_match_sklearn_and_bracket_the_estimate():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    idx = rng.integers(0, 300, size=(5, 300))
    f1 = f1_from_confusions(bootstrap_confusions(y, pred, idx, 4))
    for b in range(5):
        want = f1_score(y[idx[b]], pred[idx[b]], labels=[0, 1, 2, 3], average=None, zero_division=0)
        assert f1[b] == pytest.approx(want)
    ci = bootstrap_ci(y, pred, 4, n_boot=500, seed=0)
    acc = (y == pred).mean()
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    assert ci["accuracy"][1] - ci["accuracy"][0] < 0.15
    assert bootstrap_ci(y, pred, 4, n_boot=500, seed=0) == ci  # seeded
    perfect = bootstrap_ci(y, y, 4, n_boot=200)
    assert perfect["accuracy"] == [1.0, 1.0] and perfect["macro_f1"] == [1.0, 1.0]


def test_mcnemar_by_hand():
    # 10 items only A gets right, 2 only B, 20 both right, 8 both wrong.
    a = np.array([1] * 10 + [0] * 2 + [1] * 20 + [0] * 8, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 20 + [0] * 8, dtype=bool)
    t = mcnemar(a, b)
    assert (t["a_only"], t["b_only"]) == (10, 2)
    assert t["p_exact"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert t["chi2"] == pytest.approx(49 / 12)
    assert t["p_chi2"] == pytest.approx(math.erfc(math.sqrt(49 / 12 / 2)))
    assert mcnemar(a, a)["p_exact"] == 1.0


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(4000, 5))
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in p_true])
    over = apply_temperature(p_true, 1 / 3)  # three times too sharp
    assert fit_temperature(y, over) == pytest.approx(3.0, rel=0.1)
    cal = apply_temperature(over, 2.5)
    assert apply_temperature(cal, 1 / 2.5) == pytest.approx(over, abs=1e-5)  # 1/T undoes T


def test_vote_agreement_by_hand():
    soft = np.array([[0.5, 0.5, 0], [0, 0.2, 0.8], [1, 0, 0]], np.float32)
    v = vote_agreement(np.array([1, 0, 0]), soft)
    assert v["in_votes_accuracy"] == pytest.approx(2 / 3)
    assert v["mean_vote_share"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_summarize_reports_train_copies_and_calibration():
    copy = np.array([True, False, False, False, True])
    m = summarize(Y, PROB, PROB, CLASSES, calibrated=True, train_copy=copy, n_boot=200)
    tc = m["train_copies"]
    assert tc["n_copies"] == 2 and tc["n_without"] == 3
    assert tc["accuracy_without"] == pytest.approx(2 / 3)  # items 1, 2, 3: wrong, right, right
    assert tc["accuracy_on_copies"] == pytest.approx(0.5)
    assert "ece_uncalibrated" in m["calibration"]
    assert m["votes"] is None


def test_class_lut_maps_drops_and_explains():
    assert class_lut(["a", "b"], ["b", "a", "x"], {}).tolist() == [1, 0]
    lut = class_lut(["anger", "happiness", "contempt"], ["angry", "happy"],
                    parse_map("anger=angry,happiness=happy,contempt=-"))
    assert lut.tolist() == [0, 1, -1]
    # The same emotions by other names are matched; a class the model has no emotion for is explained.
    assert class_lut(["anger", "happiness"], ["angry", "happy", "sad"], {}).tolist() == [0, 1]
    with pytest.raises(FerkitError, match=r"--map contempt=-"):
        class_lut(["anger", "contempt"], ["angry", "happy", "sad"], {})
    with pytest.raises(FerkitError, match="not among the model's classes"):
        class_lut(["a"], ["b"], {"a": "zzz"})
    with pytest.raises(FerkitError, match="expected DATASET_CLASS=MODEL_CLASS"):
        parse_map("anger")


def test_align_split_moves_votes_to_model_classes():
    sp = Split(np.zeros((3, 4, 4), np.uint8), np.array([0, 1, 2]), ["x", "y", "z"],
               np.array([[0.6, 0.2, 0.2], [0.1, 0.9, 0], [0.3, 0.3, 0.4]], np.float32))
    out, keep = remap_split(sp, np.array([1, 0, -1]), 2, renormalise=False)
    assert keep.tolist() == [0, 1] and out.labels.tolist() == [1, 0]
    np.testing.assert_allclose(out.soft, [[0.2, 0.6], [0.9, 0.1]], rtol=1e-6)


def test_tta_views_and_crops():
    imgs = np.random.default_rng(0).integers(0, 255, (2, 48, 48), dtype=np.uint8)
    crops = tta_views(imgs, "crops")
    assert len(crops) == 5 and all(c.shape == imgs.shape for c in crops)
    assert len(tta_views(imgs, "flip")) == 2 and len(tta_views(imgs, "flip+crops")) == 10
    assert np.array_equal(tta_views(imgs, "flip")[1], imgs[:, :, ::-1])
    assert tta_mode(True) == "flip" and tta_mode(False) == "none"
    with pytest.raises(FerkitError, match="tta 'rotate'"):
        tta_mode("rotate")
    assert [r.spec for r in resolve_models(["default,fast", "accurate"])] == ["default", "fast", "accurate"]


def test_crop_views_are_the_windows_training_cuts():
    imgs = np.random.default_rng(1).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    centre = tta_views(imgs, "none", 40)
    assert len(centre) == 1 and np.array_equal(centre[0], imgs[:, 4:44, 4:44])
    ten = tta_views(imgs, "ten_crop", 40)
    assert len(ten) == 10 and all(v.shape == (3, 40, 40) for v in ten)
    assert np.array_equal(ten[1], imgs[:, :40, :40]) and np.array_equal(ten[4], imgs[:, 8:, 8:])
    assert np.array_equal(ten[5], centre[0][:, :, ::-1])
    # The per-image windows training cuts are the same pixels as the fixed windows of evaluation.
    ys, xs = np.array([0, 4, 8]), np.array([8, 4, 0])
    got = cut(imgs, ys, xs, 40)
    for i in range(3):
        assert np.array_equal(got[i], imgs[i, ys[i] : ys[i] + 40, xs[i] : xs[i] + 40])
    with pytest.raises(FerkitError, match="crop 50"):
        tta_views(imgs, "none", 50)


def test_occlusion_map_finds_the_region_the_model_uses():
    def proba(x: np.ndarray) -> np.ndarray:
        # "Class 0" is the brightness of the top-left corner.
        s = x[:, :12, :12].mean((1, 2)) / 255
        return np.stack([s, 1 - s], 1)

    img = np.zeros((48, 48), np.uint8)
    img[:12, :12] = 255
    heat = occlusion_map(proba, img, 0)
    assert heat.shape == (48, 48) and heat.max() == pytest.approx(1.0)
    assert heat[:12, :12].mean() > 5 * heat[24:, 24:].mean()
