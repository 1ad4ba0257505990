"""Model-side files a user hands in are hostile input too (issue 32, families 2 and 3): safetensors weights whose
metadata lies, teacher files whose arrays are the wrong shape or would inflate to gigabytes, configs that ask for
4,096 threads or a run folder in /proc. Each is one FerkitError line before anything large is allocated."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.models.export import load_weights, read_weights

CLASSES = '["angry", "happy", "sad"]'


def weights(tmp_path: Path, **meta: str) -> Path:
    state = {k: v.contiguous() for k, v in create_model("vgg_xs", 3).state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"arch": "vgg_xs", "classes": CLASSES, "input_size": "48", **meta})
    return path


def test_good_weights_load(tmp_path: Path) -> None:
    model, info = load_weights(weights(tmp_path))
    assert info["classes"] == ["angry", "happy", "sad"] and info["input_size"] == 48


@pytest.mark.parametrize("meta, message", [
    ({"classes": "not json"}, "'classes' is not JSON"),
    ({"classes": "[" + ",".join(f'"c{i}"' for i in range(2_000_000)) + "]"}, "at most 1000"),
    ({"classes": '["a", "a"]'}, "different names"),
    ({"classes": '{"a": 1}'}, "JSON list"),
    ({"input_size": "forty-eight"}, "'input_size' is 'forty-eight', not an integer"),
    ({"input_size": "-48"}, "'input_size' is -48; it must be 1..1024"),
    ({"input_size": "100000"}, "'input_size' is 100000"),
    ({"input_size": "9" * 5000}, "not an integer"),
    ({"crop": "64"}, "'crop' is 64; it must be 1..48"),
    ({"arch": "rm -rf /"}, "not a registered model"),
])
def test_lying_metadata_is_one_line(tmp_path: Path, meta: dict[str, str], message: str) -> None:
    path = weights(tmp_path, **meta)
    with pytest.raises(FerkitError, match=message) as e:
        read_weights(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400


def test_not_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(FerkitError, match="not a safetensors file"):
        read_weights(p)


def _teacher_npz(path: Path, arrays: dict[str, np.ndarray], inflate: dict[str, tuple[int, ...]] | None = None) -> Path:
    """An .npz; `inflate` writes a header declaring that shape (uint8) over a few bytes of data instead."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            z.writestr(f"{name}.npy", buf.getvalue())
        for name, shape in (inflate or {}).items():
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
            z.writestr(f"{name}.npy", buf.getvalue() + b"\0" * 100)
    return path


def _good(n: int = 10, k: int = 2, crop: int = 40) -> dict[str, np.ndarray]:
    return {"views": np.zeros((n, k, crop, crop), np.uint8), "probs": np.full((n, k, 3), 1 / 3, np.float16),
            "classes": np.array(["a", "b", "c"]), "fingerprint": np.array("x"), "format": np.array("ferkit-teacher-1")}


@pytest.mark.parametrize("change", [
    {"views": np.zeros(())},  # 0-d
    {"views": np.zeros(10, np.uint8)},  # 1-d
    {"probs": np.zeros((10,), np.float16)},
    {"views": np.zeros((10, 2, 48, 48), np.uint8)},  # another crop
    {"probs": np.zeros((10, 2, 3), np.int64)},
])
def test_teacher_file_of_the_wrong_shape(tmp_path: Path, change: dict[str, np.ndarray]) -> None:
    from ferkit.training.distill import Teacher

    path = _teacher_npz(tmp_path / "t.npz", {**_good(), **change})
    with pytest.raises(FerkitError, match="teacher .*t.npz"):
        Teacher(path, ["a", "b", "c"], 10, 40, 2.0, torch.device("cpu"))


def test_teacher_file_that_would_inflate_is_refused_from_its_header(tmp_path: Path) -> None:
    from ferkit.training.distill import Teacher

    good = _good()
    del good["views"]
    # 10 images x 100,000 views of 40x40: 1.6 GB declared in a few hundred bytes.
    path = _teacher_npz(tmp_path / "t.npz", good, inflate={"views": (10, 100_000, 40, 40)})
    with pytest.raises(FerkitError, match=r"1\.\.64"):
        Teacher(path, ["a", "b", "c"], 10, 40, 2.0, torch.device("cpu"))
    assert Teacher(_teacher_npz(tmp_path / "ok.npz", _good()), ["a", "b", "c"], 10, 40, 2.0,
                   torch.device("cpu")).k == 2


def test_config_out_in_proc_and_threads(tmp_path: Path, tiny_folders: Path) -> None:
    from ferkit.training.config import load_config

    for out in ("/proc/self/x", "/sys/kernel/x", "/dev/shm/../null"):
        with pytest.raises(FerkitError, match="out: .* the system's own files"):
            load_config(None, [f"out={out}"])
    with pytest.raises(FerkitError, match="threads"):
        load_config(None, ["threads=5000"])
    with pytest.raises(FerkitError, match="teacher_views"):
        load_config(None, ["teacher_views=100000"])


def test_threads_beyond_the_cores_are_clamped(tmp_path: Path, tiny_folders: Path) -> None:
    import os

    from ferkit.training.config import load_config
    from ferkit.training.trainer import Trainer

    cfg = load_config(None, [f"data={tiny_folders}", "threads=4096", "model=vgg_xs", f"out={tmp_path / 'run'}"])
    before = torch.get_num_threads()
    try:
        Trainer(cfg)
        assert torch.get_num_threads() <= (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
