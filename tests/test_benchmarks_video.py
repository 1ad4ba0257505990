"""Smoke tests of benchmarks/video_detect.py: the clips hold the faces they claim, the motion prototype moves boxes
by each face's velocity, and a tiny run prints a row per option (its speed figures mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import BENCHMARKS, load_benchmark

from ferkit.inference import Detection, available_detectors

pytestmark = pytest.mark.skipif(not available_detectors(), reason="no face detector installed")


class FakeRecognizer:
    """Detections of one face moving 6 px right and 3 px down per call."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, frame):
        x, y = 100 + 6 * self.calls, 50 + 3 * self.calls
        self.calls += 1
        return [Detection((x, y, 80, 90), 0.9, [(x + 20, y + 30), (x + 60, y + 30)])]


def test_motion_moves_boxes_between_detections_by_velocity() -> None:
    vd = load_benchmark("video_detect")
    fake = FakeRecognizer()
    m = vd.MotionDetect(fake, every=3)
    boxes = [m.detect(None)[0] for _ in range(7)]
    assert fake.calls == 3  # frames 0, 3 and 6 detect
    xs = [b.box[0] for b in boxes]
    # No velocity before the second detection; then 6 px per 3 frames = 2 px per frame.
    assert xs == [100, 100, 100, 106, 108, 110, 112]
    assert boxes[5].box[1] == pytest.approx(53 + 2 * 1.0) and boxes[5].landmarks[0] == pytest.approx((130, 85))


def test_tiny_run_has_a_row_per_option_and_the_baseline_finds_the_drawn_faces() -> None:
    pytest.importorskip("skimage")
    r = subprocess.run([sys.executable, str(BENCHMARKS / "video_detect.py"), "--frames", "9", "--clips",
                        "one,five", "--sizes", "320", "--every", "3", "--detectors", "auto", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)["rows"]
    assert [(x["clip"], x["detect_size"], x["detect_every"], x["between"]) for x in rows] == [
        (c, s, e, b) for c in ("one", "five")
        for s, e, b in ((640, 1, "-"), (320, 1, "-"), (320, 3, "reuse"), (320, 3, "motion"))]
    for x in rows:
        if x["detect_size"] == 640:  # the baseline against itself, and against the faces drawn into the clip
            assert x["box_iou"] == 1.0 and x["label_agreement"] == 1.0 and x["clip_recall"] == 1.0
        assert x["fps"] > 0 and 0 <= x["found"] <= 1
