"""ferkit.data.classes (class specs, --map, lookup tables, remapping labels and votes) and ferkit.data.ferplus
(the majority rule and why an image is left out): the one home of each."""

from __future__ import annotations

import numpy as np
import pytest

from ferkit.data import ferplus
from ferkit.data.classes import (
    class_lut,
    match_classes,
    parse_class_spec,
    parse_map,
    remap_labels,
    remap_split,
    remap_votes,
    select_lut,
)
from ferkit.data.dataset import Split
from ferkit.errors import FerkitError


def test_class_specs_subset_rename_and_merge():
    assert parse_class_spec("happy, sad") == [("happy", "happy"), ("sad", "sad")]
    assert parse_class_spec(["anger=angry", "happy"]) == [("anger", "angry"), ("happy", "happy")]
    classes, lut = select_lut(["angry", "disgust", "happy", "sad"], "angry=negative,disgust=negative,happy")
    assert classes == ["negative", "happy"] and lut.tolist() == [0, 0, 1, -1]
    with pytest.raises(FerkitError, match="--classes: calm not in the dataset's classes"):
        select_lut(["angry"], "calm")


def test_map_and_lut_for_a_model():
    assert parse_map("anger=angry, contempt=-") == {"anger": "angry", "contempt": "-"}
    assert parse_map(None) == {}
    with pytest.raises(FerkitError, match="--map 'anger'"):
        parse_map("anger")
    # The same emotion in another spelling or case is matched without a --map (as fine-tuning matches it).
    assert class_lut(["Anger", "happiness", "Surprised"], ["angry", "happy", "surprise"], {}).tolist() == [0, 1, 2]
    assert match_classes(["Happy", "joy", "Calm"], ["happy", "neutral"], {"joy": "-"}) == {
        "Happy": "happy", "joy": "-", "Calm": "neutral"}
    with pytest.raises(FerkitError, match="map them with --map glee=-"):
        class_lut(["anger", "glee"], ["angry", "happy"], {})
    lut = class_lut(["anger", "happiness", "contempt"], ["angry", "happy"],
                    parse_map("anger=angry,happiness=happy,contempt=-"))
    assert lut.tolist() == [0, 1, -1]
    with pytest.raises(FerkitError, match="leaves no class"):
        class_lut(["a"], ["b"], {"a": "-"})


def test_remapping_labels_and_votes():
    lut = np.array([1, 1, -1, 0])
    labels, keep = remap_labels(np.array([0, 2, 3, 1]), lut)
    assert labels.tolist() == [1, 0, 1] and keep.tolist() == [0, 2, 3]
    votes = np.array([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.5, 0.5]], np.float32)
    np.testing.assert_allclose(remap_votes(votes, lut, 2, renormalise=False), [[0, 0.75], [0.5, 0]])
    np.testing.assert_allclose(remap_votes(votes, lut, 2, renormalise=True), [[0, 1], [1, 0]])
    sp = Split(np.zeros((4, 2, 2), np.uint8), np.array([0, 2, 3, 1]), list("abcd"), np.eye(4, dtype=np.float32))
    out, keep = remap_split(sp, lut, 2, renormalise=False)
    assert out.names == ["a", "c", "d"] and out.labels.tolist() == [1, 0, 1] and out.soft.shape == (3, 2)


def test_ferplus_majority_and_reasons():
    votes = np.array([
        [6, 2, 0, 0, 0, 0, 0, 0, 1, 1],  # neutral
        [4, 0, 4, 0, 0, 0, 0, 0, 2, 0],  # no majority
        [0, 0, 0, 0, 0, 0, 0, 0, 7, 3],  # unknown
        [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],  # not a face
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # only single votes: nothing left
        [0, 0, 0, 3, 0, 0, 2, 0, 0, 1],  # sadness 3 of 5 (the single vote dropped)
    ], np.float32)
    assert ferplus.majority(votes).tolist() == [0, -1, -1, -1, -1, 3]
    assert [ferplus.left_out_reason(v) for v in votes] == [None, "no_majority", "unknown", "not_face",
                                                          "no_majority", None]
    assert ferplus.majority(votes[5]) == 3  # one row
