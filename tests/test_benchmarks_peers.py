"""Smoke tests of benchmarks/peers.py (ferkit against the `fer` package): frames as claimed, one tiny end-to-end run.

The end-to-end run needs the peer venv (bash benchmarks/peer_env.sh) and the FER2013 archive; it times nothing
worth reading (a few items, 0.01 s per figure), it only proves that both sides run and the table adds up.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED

from ferkit.inference import EmotionRecognizer, available_detectors

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
PEER_PYTHON = BENCH / ".peer-venv" / "bin" / "python"


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", BENCH / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not available_detectors(), reason="no face detector installed")
@pytest.mark.parametrize("faces", [1, 3])
def test_frames_hold_the_faces_they_claim(faces: int) -> None:
    pytest.importorskip("skimage")
    frames = load_peers().build_frames(4, faces)
    assert frames.shape == (4, 480, 640, 3)
    rec = EmotionRecognizer()
    assert [len(rec.predict(f).faces) for f in frames] == [faces] * 4


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="no fer venv (bash benchmarks/peer_env.sh)")
@pytest.mark.skipif(not (SHARED / "fer2013.zip").is_file(), reason="FER2013 archive not available")
def test_peers_runs_both_sides_and_the_ratios_add_up() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "peers.py"), "--crops", "200", "--frames", "2", "--seconds",
                        "0.01", "--rounds", "1", "--json"], capture_output=True, text=True, timeout=900)
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
