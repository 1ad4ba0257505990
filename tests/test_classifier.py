"""The one classifier contract and the one Ensemble; TTA as one vocabulary (library, CLI, service), checked where it
enters; the recognizer's public pipeline steps."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.errors import FerkitError
from ferkit.inference import Classifier, EmotionRecognizer, Ensemble
from ferkit.service.app import create_app
from ferkit.service.config import ServiceConfig
from ferkit.views import tta_mode

FACES = np.random.default_rng(0).integers(0, 255, (6, 48, 48), dtype=np.uint8)


class Fixed(Classifier):
    """A classifier whose network gives fixed per-class scores: enough to check the ensemble's arithmetic."""

    def __init__(self, classes: list[str], scores: list[float], name: str = "fixed", tta: str = "none",
                 temperature: float = 1.0):
        self.name = self.source = name
        self.classes, self.input_size, self.crop, self.tta = classes, 48, 48, tta
        self.temperature = temperature
        self.scores = np.asarray(scores, np.float32) / sum(scores)
        self.views_seen: list[int] = []

    def run(self, views: np.ndarray) -> np.ndarray:
        self.views_seen.append(len(views))
        return np.tile(self.scores, (len(views), 1))


def test_ensemble_aligns_classes_weights_members_and_keeps_each_temperature() -> None:
    a = Fixed(["happy", "sad", "angry"], [6, 3, 1], "a")
    b = Fixed(["angry", "happy", "sad"], [1, 1, 2], "b", temperature=2.0)  # the same classes in another order
    ens = Ensemble([a, b], weights=[3, 1])
    assert ens.classes == ["happy", "sad", "angry"] and ens.name == "a+b"
    cal, raw = ens.probabilities(FACES)
    b_in_a_order = np.array([0.25, 0.5, 0.25])
    np.testing.assert_allclose(raw[0], 0.75 * a.scores + 0.25 * b_in_a_order, atol=1e-6)
    b_cal = b.predict_proba(FACES)[0][[1, 2, 0]]  # b's own temperature, then a's class order
    np.testing.assert_allclose(cal[0], 0.75 * a.scores + 0.25 * b_cal, atol=1e-6)
    assert not np.allclose(cal, raw) and ens.calibrated
    assert np.isnan(ens.temperature)  # the members differ: no one temperature to report
    with pytest.raises(FerkitError, match="differ"):
        Ensemble([a, Fixed(["happy", "sad", "fear"], [1, 1, 1])])
    with pytest.raises(FerkitError, match="weights"):
        Ensemble([a, b], weights=[1, -1])


def test_auto_is_the_card_mode_and_every_call_can_choose() -> None:
    clf = Fixed(["happy", "sad"], [1, 1], tta="flip+crops")
    assert clf.mode("auto") == "flip+crops" and clf.mode(True) == "flip" and clf.mode("ten_crop") == "flip+crops"
    clf.predict_proba(FACES, tta="auto")
    assert clf.views_seen == [6] * 10
    ens = Ensemble([clf, Fixed(["sad", "happy"], [1, 1], tta="none")])
    assert ens.mode("auto") == "flip+crops"  # the first member's card speaks for the ensemble
    with pytest.raises(FerkitError, match="tta 'sideways'"):
        clf.predict_proba(FACES, tta="sideways")


def test_recognizer_tta_per_call_matches_the_recognizer_setting(rec: EmotionRecognizer) -> None:
    flipped = EmotionRecognizer(threads=1, tta="flip")
    np.testing.assert_allclose(rec.predict_proba(FACES, tta="flip"), flipped.predict_proba(FACES), atol=1e-6)
    auto = rec.classifier.mode("auto")
    assert auto == tta_mode(rec.models[0].metadata["tta"])
    np.testing.assert_allclose(rec.predict(FACES[0], detect=False, tta="auto").faces[0].probabilities["happy"],
                               rec.predict_proba(FACES[:1], tta=auto)[0][rec.classes.index("happy")], atol=1e-6)
    with pytest.raises(FerkitError, match="tta 'bogus'"):
        rec.predict(FACES[0], tta="bogus")
    with pytest.raises(FerkitError, match="tta 'bogus'"):
        EmotionRecognizer(threads=1, tta="bogus")


def test_public_steps_compose_to_predict(rec: EmotionRecognizer, astronaut: np.ndarray) -> None:
    dets = rec.detect(astronaut)
    assert dets, "the astronaut's face was not found"
    faces = rec.faces(astronaut, dets)
    pred = rec.predict(astronaut)
    assert [f.box for f in faces] == [f.box for f in pred.faces] and faces[0].label == pred.faces[0].label
    np.testing.assert_allclose(rec.predict_proba([rec.crop(astronaut, dets[0])])[0],
                               list(faces[0].probabilities.values()), atol=1e-6)
    whole = rec.faces(astronaut, None)
    assert len(whole) == 1 and whole[0].box == (0, 0, astronaut.shape[1], astronaut.shape[0])
    # Another classifier for the same steps (the service's micro-batcher goes in this way): the detector is shared.
    twin = rec.with_classifier(Fixed(list(rec.classes), [1] * len(rec.classes)))
    assert twin.detector is rec.detector and rec.classifier is not twin.classifier
    assert twin.predict(astronaut).faces[0].confidence == pytest.approx(1 / len(rec.classes))
    with pytest.raises(FerkitError, match="classes"):
        rec.with_classifier(Fixed(["a", "b"], [1, 1]))


def test_cli_refuses_a_wrong_tta_before_any_work(tmp_path) -> None:
    (tmp_path / "x.png").write_bytes(b"not an image")
    for cmd in (["predict", str(tmp_path)], ["evaluate", "default", str(tmp_path)],
                ["compare", "default", "fast", "--data", str(tmp_path)], ["calibrate", "default", str(tmp_path)]):
        r = CliRunner().invoke(app, [*cmd, "--tta", "bogus"])
        assert r.exit_code == 2, (cmd, r.output)
        assert "tta 'bogus'" in r.output and len(r.output.strip().splitlines()) == 1, (cmd, r.output)


def test_service_takes_the_same_modes_and_refuses_others(recognizer, astronaut: np.ndarray) -> None:
    import cv2

    body = cv2.imencode(".jpg", astronaut)[1].tobytes()
    with TestClient(create_app(ServiceConfig(workers=1), recognizer=recognizer), base_url="http://127.0.0.1:8000") as c:
        def probs(tta: str) -> dict:
            r = c.post(f"/v1/predict?tta={tta}", content=body, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            faces = r.json()["faces"]
            assert faces, "no face found"
            return faces[0]["probabilities"]

        assert probs("true") == probs("flip") != probs("none")
        assert probs("false") == probs("none")
        assert probs("auto") == probs(recognizer.classifier.mode("auto"))
        assert probs("flip+crops") == probs("flip%2Bcrops") == probs("ten_crop")  # an unescaped + is a space
        r = c.post("/v1/predict?tta=sideways", content=body, headers={"content-type": "image/jpeg"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", r.text
        assert "tta" in r.json()["error"]["message"]
