"""ONNX files a user passes are hostile input too (issue 32, family 1): beyond the corpus's model kinds
(tests/hostile.py, run by test_hostile.py through the library, `ferkit predict -m` and the service), the checks
must let every model ferkit itself exports through, leave the built-in models alone, catch outputs that go bad on
real faces only, and bound the first run in time. evaluate, compare and calibrate load models the same way."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.errors import FerkitError

runner = CliRunner()
onnx = pytest.importorskip("onnx")


def _faces(n: int = 4, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 255, (n, size, size), dtype=np.uint8)


def _error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[-1]


# -- ferkit's own exports pass -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["baseline", "vgg_s", "vgg_fs", "resnet_s", "faceres"])
def test_ferkit_exports_pass_the_checks(arch: str, tmp_path: Path) -> None:
    """Registry networks, the MobileNet `faceres` (a Resize whose sizes and TensorFlow-style Pads whose widths are
    computed from constants and Shape nodes), float16 weights: loaded as a user's file, probed, and run."""
    torch = pytest.importorskip("torch")
    from ferkit.inference import OnnxClassifier
    from ferkit.inference.onnx_check import check_operators, read_model
    from ferkit.models import create_model
    from ferkit.models.export import export_onnx

    torch.manual_seed(0)
    net = create_model(arch, 3).eval()
    path = export_onnx(net, tmp_path / f"{arch}.onnx", ["a", "b", "c"], input_size=48, half=arch == "vgg_s")
    check_operators(path, read_model(path))
    clf = OnnxClassifier(path, threads=1)
    p = clf.predict_proba(_faces())
    assert p.shape == (4, 3) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_ferkit_ensemble_export_passes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from ferkit.inference import OnnxClassifier
    from ferkit.models import create_model
    from ferkit.models.export import EnsembleGraph, WithSoftmax, export_onnx

    torch.manual_seed(0)
    members = [create_model("vgg_xs", 3).eval() for _ in range(2)]
    ens = EnsembleGraph(members, [[0, 1, 2], [2, 1, 0]], [1.0, 2.0]).eval()
    path = export_onnx(ens, tmp_path / "ens.onnx", ["a", "b", "c"], input_size=48)
    clf = OnnxClassifier(path, threads=1)
    with torch.no_grad():
        x = torch.from_numpy(_faces().astype(np.float32))[:, None]
        want = WithSoftmax(ens)(x).numpy()
    np.testing.assert_allclose(clf.run(_faces().astype(np.float32)), want, atol=1e-4)


def test_ensemble_of_members_with_different_windows(tmp_path: Path) -> None:
    """A 40x40-crop member beside a whole-face one: the ensemble takes the whole face and cuts the narrower member's
    centre window itself (what ferkit.views gives that member alone); other input sizes are refused."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from ferkit.models import create_model
    from ferkit.models.export import WithSoftmax, ensemble_graph
    from ferkit.views import tta_views

    torch.manual_seed(0)
    files = []
    for i, (crop, size) in enumerate([(48, 48), (40, 48), (64, 64)]):
        m = create_model("vgg_xs", 3).eval()
        files.append(tmp_path / f"m{i}.safetensors")
        save_file(m.state_dict(), str(files[-1]), metadata={"arch": "vgg_xs", "classes": '["a", "b", "c"]',
                                                           "input_size": str(size), "crop": str(crop)})
    ens, info = ensemble_graph(files[:2])
    assert info["crop"] == 48 and info["arch"] == "ensemble(vgg_xs+vgg_xs@40)"
    faces = _faces().astype(np.float32)
    member = [ensemble_graph([f])[0] for f in files[:2]]
    with torch.no_grad():
        whole = WithSoftmax(member[0])(torch.from_numpy(faces)[:, None])
        centre = WithSoftmax(member[1])(torch.from_numpy(tta_views(faces, "none", 40)[0])[:, None])
        got = WithSoftmax(ens)(torch.from_numpy(faces)[:, None])
    np.testing.assert_allclose(got.numpy(), ((whole + centre) / 2).numpy(), atol=1e-5)
    with pytest.raises(FerkitError, match="input size 64 differs"):
        ensemble_graph([files[0], files[2]])


def test_builtin_models_are_ours_and_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferkit.inference import OnnxClassifier, onnx_check
    from ferkit.inference.onnx_classifier import default_model_path

    if not default_model_path().is_file():
        pytest.skip("no shipped model")

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a built-in model went through the child-process probe")

    monkeypatch.setattr(onnx_check, "first_run", refuse)
    monkeypatch.setattr(onnx_check, "check_operators", refuse)
    OnnxClassifier("default")
    OnnxClassifier(str(default_model_path()))  # the same file named by its path is still the package's own


def test_a_checked_file_is_probed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ferkit.inference import OnnxClassifier, onnx_check

    path = hostile.onnx_model(tmp_path, "tiny.onnx")
    calls = []
    real = onnx_check.first_run
    monkeypatch.setattr(onnx_check, "first_run", lambda *a: calls.append(a) or real(*a))
    OnnxClassifier(path)
    OnnxClassifier(path)
    assert len(calls) == 1
    os.utime(path, ns=(1, 1))  # a changed file is checked again
    OnnxClassifier(path)
    assert len(calls) == 2


# -- outputs that go bad on real faces -------------------------------------------------------------------------------
def test_nan_on_real_faces_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """The blank face of the first run gives probabilities; a real face gives NaN. Before: NaN probabilities in
    the results (and a NaN traceback in evaluation); now one FerkitError line naming the model."""
    from ferkit.inference import EmotionRecognizer, OnnxClassifier

    path = hostile.onnx_model(tmp_path, "nan_on_faces.onnx", tail=hostile._tail_nan_on_faces)
    clf = OnnxClassifier(path)  # passes: fine on a blank face
    with pytest.raises(FerkitError, match="NaN or infinite probabilities") as e:
        clf.predict_proba(_faces())
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FerkitError, match="NaN"):
        EmotionRecognizer(path).predict_proba(_faces())
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), _faces(1)[0])
    line = _error_line(runner.invoke(app, ["predict", str(face), "--no-detect", "-m", str(path)]))
    assert str(path) in line and "NaN" in line


def test_evaluate_compare_calibrate_quantize_refuse_hostile_models(tmp_path: Path, tiny_folders: Path) -> None:
    """The evaluation commands load models as predict does: one error line, exit 2, for every hostile kind."""
    pytest.importorskip("sklearn")
    good = hostile.onnx_model(tmp_path / "good", "good.onnx", classes=3,
                              meta={"classes": json.dumps(["happy", "sad", "neutral"])})
    for name in ("loop_2_63", "expand_from_pixels", "nan_outputs", "classes_100000", "temperature_tiny"):
        k = next(k for k in hostile.of("model") if k.name == name)
        bad = k.make(tmp_path / name)
        for args in (["evaluate", str(bad), str(tiny_folders), "--out", str(tmp_path / "ev")],
                     ["compare", str(good), str(bad), "--data", str(tiny_folders), "--out", str(tmp_path / "cmp")],
                     ["calibrate", str(bad), str(tiny_folders), "--no-write"],
                     ["quantize", str(bad), str(tmp_path / "q.onnx"), "--data", str(tiny_folders)]):
            line = _error_line(runner.invoke(app, args))
            assert k.expect in line and bad.name in line, (name, args[0], line)


# -- the first run's bounds ------------------------------------------------------------------------------------------
def test_first_run_is_bounded_in_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferkit.inference import OnnxClassifier, onnx_check

    monkeypatch.setattr(onnx_check, "PROBE_SECONDS", 0.01)  # no model loads in a fresh process that fast
    path = hostile.onnx_model(tmp_path, "slow.onnx")
    with pytest.raises(FerkitError, match=r"took more than 0\.01 s; refused") as e:
        OnnxClassifier(path)
    assert str(path) in str(e.value)


def test_first_run_that_crashes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that dies (a segfault in the runtime, the kernel's OOM killer) is the model's refusal, not ours."""
    from ferkit.inference import OnnxClassifier, onnx_check

    script = tmp_path / "die.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(onnx_check, "_first_run_script", lambda: str(script))
    path = hostile.onnx_model(tmp_path, "crash.onnx")
    with pytest.raises(FerkitError, match="failed \\(signal SIGSEGV\\); refused"):
        OnnxClassifier(path)


def test_graph_rules_track_what_depends_on_the_pixels(tmp_path: Path) -> None:
    """Sizes computed from Shape nodes and constants are fine (ferkit's faceres does it), from values not."""
    from onnx import helper

    from ferkit.inference.onnx_check import check_operators, read_model

    def tail_from_shape():
        nodes = [helper.make_node("Shape", ["input"], ["s"]), helper.make_node("Expand", ["z", "two"], ["zz"]),
                 helper.make_node("Slice", ["s", "start", "end"], ["n"]),
                 helper.make_node("ConstantOfShape", ["n"], ["zeros"]), *hostile._softmax_plus("zeros")]
        nodes[-1] = helper.make_node("Softmax", ["z2"], ["probabilities"], axis=1)
        inits = [hostile._i64("two", [1, 3]), hostile._i64("start", [0]), hostile._i64("end", [1]), hostile._zero()]
        return nodes, inits

    ok = hostile.onnx_model(tmp_path, "from_shape.onnx", tail=tail_from_shape)
    check_operators(ok, read_model(ok))
    bad = hostile.onnx_model(tmp_path, "from_values.onnx", tail=hostile._tail_size_from_pixels("ConstantOfShape"))
    with pytest.raises(FerkitError, match="depends on the input's values"):
        check_operators(bad, read_model(bad))
