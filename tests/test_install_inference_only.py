"""Plain `pip install ferkit` (no extras) in a fresh virtual environment: no PyTorch, and `ferkit predict` works.

Slow-ish (a fresh venv and a pip install, from the local wheel cache when warm): skip with FERKIT_SKIP_INSTALL_TEST=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.environ.get("FERKIT_SKIP_INSTALL_TEST") == "1",
                                reason="FERKIT_SKIP_INSTALL_TEST=1")


@pytest.mark.slow
def test_plain_install_predicts_without_torch(tmp_path: Path) -> None:
    from skimage import data

    # Copy only what a source distribution holds, so the build never writes into the checkout.
    src = tmp_path / "ferkit-src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    assert (src / "src" / "ferkit" / "assets" / "ferkit_default.onnx").is_file(), "the default model must ship"

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    py = bindir / ("python.exe" if sys.platform == "win32" else "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    r = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr

    photo = tmp_path / "astronaut.jpg"
    assert cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    r = subprocess.run([str(bindir / "ferkit"), "predict", str(photo), "--json"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = [json.loads(line) for line in r.stdout.splitlines()]  # one JSON line per image
    assert out["schema"] == 1 and len(out["faces"]) == 1
    assert out["faces"][0]["label"] in out["faces"][0]["probabilities"]
    # The library entry point too, in the same torch-free environment.
    code = ("import sys; from ferkit import EmotionRecognizer; p = EmotionRecognizer().predict(sys.argv[1]); "
            "assert len(p.faces) == 1; assert 'torch' not in sys.modules; print(p.faces[0].label)")
    r = subprocess.run([str(py), "-c", code, str(photo)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
