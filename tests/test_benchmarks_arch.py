"""Smoke test of benchmarks/arch_speed.py: a tiny run prints a row per model and crop (its figures mean nothing here)."""

from __future__ import annotations

import subprocess
import sys

from helpers import BENCHMARKS


def test_arch_speed_prints_a_row_per_model_and_crop() -> None:
    cmd = [sys.executable, str(BENCHMARKS / "arch_speed.py"), "--models", "vgg_xs", "--crops", "48,40",
           "--seconds", "0.05", "--rounds", "1", "--batch", "16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("vgg_xs")]
    assert [r[1] for r in rows] == ["48", "40"]
    assert all(float(r[3].replace(",", "")) > 0 and float(r[4].replace(",", "")) > 0 for r in rows)
