"""Smoke tests of benchmarks/peers.py (ferkit against the `fer` package and face-api.js): frames as claimed, the
face-api label mapping, photo sets and their scores, the face-api worker on a few images, tiny end-to-end runs.

The end-to-end runs need the FER2013 archive and a peer: the fer venv (bash benchmarks/peer_env.sh) or face-api, which
the tests install with `bash benchmarks/peer_env.sh --faceapi` into a folder of their own where node and npm are
present; they time nothing worth reading (a few items, 0.01 s per figure), they only prove that the sides run and the
table adds up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from helpers import BENCHMARKS, astronaut_bgr, load_benchmark

from ferkit.inference import EmotionRecognizer, available_detectors

PEER_PYTHON = BENCHMARKS / ".peer-venv" / "bin" / "python"


@pytest.mark.skipif(not available_detectors(), reason="no face detector installed")
@pytest.mark.parametrize("faces", [1, 3])
def test_frames_hold_the_faces_they_claim(faces: int) -> None:
    pytest.importorskip("skimage")
    frames = load_benchmark("peers").build_frames(4, faces)
    assert frames.shape == (4, 480, 640, 3)
    rec = EmotionRecognizer()
    assert [len(rec.predict(f).faces) for f in frames] == [faces] * 4


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="no fer venv (bash benchmarks/peer_env.sh)")
@pytest.mark.skipif(not (SHARED / "fer2013.zip").is_file(), reason="FER2013 archive not available")
def test_peers_runs_both_sides_and_the_ratios_add_up() -> None:
    r = subprocess.run([sys.executable, str(BENCHMARKS / "peers.py"), "--peer", "fer", "--crops", "200", "--frames",
                        "2", "--seconds", "0.01", "--rounds", "1", "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    fer, (ours,) = out["fer"], out["ferkit"]
    assert out["threads"] == 1 and out["crops"] == 200
    for k in ("crops_per_s_classifier", "crops_per_s_api", "fps_1", "fps_3"):
        assert fer[k] > 0
    assert ours["ratio_crops_batched"] == pytest.approx(ours["crops_per_s_batched"] / fer["crops_per_s_classifier"])
    assert ours["ratio_fps_3"] == pytest.approx(ours["fps_3"] / fer["fps_3"])
    # Both sides really classified the faces (chance is 1/7, the largest class a quarter).
    assert fer["accuracy_classifier"] > 0.35 and ours["accuracy"] > 0.45
    assert len(fer["faces_per_frame_1"]) == len(ours["faces_per_frame_3"]) == 2


# -- face-api.js (benchmarks/faceapi_peer.js on Node.js) and the photo sets (--data) ---------------------------------

FACEAPI_LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised"]  # FACE_EXPRESSION_LABELS


def test_faceapi_labels_map_one_to_one_onto_fer2013() -> None:
    from ferkit.data import FER2013_CLASSES

    peers = load_benchmark("peers")
    assert sorted(peers.FACEAPI_TO_FER2013) == sorted(FACEAPI_LABELS)
    assert sorted(peers.FACEAPI_TO_FER2013.values()) == sorted(FER2013_CLASSES)
    assert peers.FACEAPI_TO_FER2013["fearful"] == "fear" and peers.FACEAPI_TO_FER2013["disgusted"] == "disgust"
    assert peers.FACEAPI_TO_FER2013["surprised"] == "surprise"
    # Probabilities come in the worker's label order, whatever it is, and leave keyed by FER2013 name.
    w = peers.FaceApiWorker.__new__(peers.FaceApiWorker)
    w.info = {"labels": FACEAPI_LABELS[::-1]}
    assert w.to_fer2013([0.0, 0.1, 0.2, 0.3, 0.0, 0.4, 0.0]) == {
        "surprise": 0.0, "disgust": 0.1, "fear": 0.2, "angry": 0.3, "sad": 0.0, "happy": 0.4, "neutral": 0.0}


def test_largest_face_and_photo_scores() -> None:
    peers = load_benchmark("peers")
    assert peers.largest([]) is None
    assert peers.largest([(0, 0, 10, 10), (5, 5, 20, 5), (1, 1, 10, 10)]) == 0
    assert peers.largest([(0, 0, 10, 10), (5, 5, 20, 20)]) == 1
    photos = [{"dataset": "a", "label": "happy"}] * 4 + [{"dataset": "b", "label": "sad"}] * 2
    pred = ["happy", "happy", "sad", None, "sad", None]  # None: no face found, counted wrong
    r = peers.score_photos(photos, pred, [1, 2, 1, 0, 1, 0], seconds=2.0)
    assert r["datasets"]["a"] == {"n": 4, "accuracy": 0.5, "ci": pytest.approx(r["datasets"]["a"]["ci"]),
                                  "no_face": 1}
    assert r["datasets"]["b"]["accuracy"] == 0.5 and r["datasets"]["b"]["no_face"] == 1
    assert r["mean"] == 0.5 and r["pooled"] == pytest.approx(3 / 6) and r["no_face"] == 2
    assert r["photos_per_s"] == 3.0
    lo, hi = r["mean_ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert peers.bootstrap_ci([[1, 1, 1]]) == [1.0, 1.0]


def make_photo_set(root: Path) -> Path:
    """A realval-style folder: manifest.csv + photos (the astronaut, happy, twice; a blank wall, labelled sad)."""
    import cv2

    astro = astronaut_bgr()
    rows = ["dataset,path,label,identity,rated_agrees,sha1"]
    for name, img, ds, label in (("a1.jpg", astro, "one", "happy"), ("a2.png", cv2.resize(astro, (256, 256)), "two",
                                 "happy"), ("wall.png", np.full((200, 240), 128, np.uint8), "two", "sad")):
        (root / ds).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / ds / name), img)
        rows.append(f"{ds},{ds}/{name},{label},x,,0")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_load_photos_reads_a_manifest_and_samples_by_stratum(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    peers = load_benchmark("peers")
    root = make_photo_set(tmp_path / "photos")
    photos = peers.load_photos(root)
    assert [(p["dataset"], p["label"], p["image"].ndim) for p in photos] == [("one", "happy", 3), ("two", "happy", 3),
                                                                              ("two", "sad", 2)]
    assert photos[0]["image"].shape == (512, 512, 3)
    # Every (dataset, label) keeps at least one photo.
    assert len(peers.load_photos(root, n=1)) == 3
    # The same photos from a zip.
    import zipfile

    with zipfile.ZipFile(tmp_path / "p.zip", "w") as z:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(root).as_posix())
    again = peers.load_photos(tmp_path / "p.zip")
    assert all((a["image"] == b["image"]).all() for a, b in zip(photos, again, strict=True))


@pytest.fixture(scope="module")
def faceapi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """face-api installed by benchmarks/peer_env.sh --faceapi into a folder of this test session (npm's own cache
    makes a second install quick); skipped without node and npm, or where npm cannot fetch the pinned packages."""
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    root = tmp_path_factory.mktemp("npm") / "ferkit-faceapi-peer"
    r = subprocess.run(["bash", str(BENCHMARKS / "peer_env.sh"), "--faceapi", str(root)], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"npm could not install face-api: {r.stderr.strip()[-300:]}")
    return root


@pytest.mark.slow
def test_faceapi_worker_classifies_and_detects(faceapi_root: Path) -> None:
    pytest.importorskip("skimage")
    import cv2
    from skimage import data

    from ferkit.data import FER2013_CLASSES

    peers = load_benchmark("peers")
    w = peers.FaceApiWorker(faceapi_root)
    try:
        # The package's own label list is the one the mapping expects.
        assert w.info["labels"] == FACEAPI_LABELS
        assert w.info["faceapi_version"] == "1.7.15" and w.info["backend"] == "wasm"
        assert w.info["detector"].startswith("ssdMobilenetv1")
        astro = data.astronaut()  # RGB; she smiles
        face = astro[60:190, 170:280]  # her face, cut by hand
        gray = cv2.cvtColor(cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        assert w.load("crops", [face, peers.as_rgb(gray)]) == 2
        for batch in (64, 1):
            probs = w.classify("crops", batch=batch)
            assert len(probs) == 2
            for p in probs:
                assert set(p) == set(FER2013_CLASSES) and sum(p.values()) == pytest.approx(1, abs=1e-4)
            assert peers.top(probs[0]) == "happy"
        assert w.classify("crops", only=[1]) == [pytest.approx(probs[1])]
        blank = np.full((240, 320, 3), 128, np.uint8)
        w.load("photos", [astro, blank])
        found = w.detect("photos")
        assert len(found[0]) == 1 and found[1] == []
        x, y, bw, bh = found[0][0]["box"]
        assert 150 < x + bw / 2 < 300 and 50 < y + bh / 2 < 200  # around her face
        assert peers.top(found[0][0]["probabilities"]) == "happy"
        with pytest.raises(RuntimeError, match="no image set"):
            w.classify("nothing")
    finally:
        w.close()
    assert w.proc.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "fer2013.zip").is_file(), reason="FER2013 archive not available")
def test_peers_runs_faceapi_with_photos(faceapi_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    photos = make_photo_set(tmp_path / "photos")
    r = subprocess.run([sys.executable, str(BENCHMARKS / "peers.py"), "--peer", "faceapi", "--faceapi-root",
                        str(faceapi_root), "--crops", "20", "--frames", "1", "--seconds", "0.01", "--rounds", "1",
                        "--data", str(photos), "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    fa, (ours,) = out["faceapi"], out["ferkit"]
    assert "fer" not in out and out["photos"]["datasets"] == {"one": 1, "two": 2}
    for k in ("crops_per_s_classifier", "crops_per_s_api", "fps_1", "fps_3"):
        assert fa[k] > 0
    assert ours["ratio_fps_1_faceapi"] == pytest.approx(ours["fps_1"] / fa["fps_1"])
    assert fa["faces_per_frame_1"] == [1]
    for side in (fa, ours):
        # The astronaut is found and happy; the wall has no face (wrong, counted), whole or not it is no sad face.
        assert side["photos"]["datasets"]["one"]["accuracy"] == 1.0
        assert side["photos"]["datasets"]["two"]["no_face"] == 1
        assert side["photos"]["datasets"]["two"]["accuracy"] == 0.5
        assert side["photos"]["mean"] == 0.75
