"""Static int8 quantisation (ferkit.models.quantize, `ferkit quantize`): metadata kept, outputs close, file smaller."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_class_folders
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.errors import FerkitError

pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

CLASSES = ["happy", "sad", "neutral", "surprise"]


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """48x48 images of noise with a bright blob, labelled by the blob's column (the class folders of conftest)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 60, (n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), n)
    for img, k in zip(out, labels, strict=True):
        cx = int((k + 0.5) * 48 / len(CLASSES)) + int(rng.integers(-2, 3))
        cv2.circle(img, (cx, int(rng.integers(14, 34))), int(rng.integers(4, 8)), 230, -1)
    return out, labels


def faces(n: int, seed: int) -> np.ndarray:
    return blobs(n, seed)[0]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny crop model (48 -> centre 40), briefly trained: outputs neither uniform nor saturated (label smoothing)."""
    from ferkit.models import create_model
    from ferkit.models.export import export_onnx, set_onnx_metadata

    torch.manual_seed(0)
    model = create_model("vgg_f", len(CLASSES))  # the fast model's network: a 16-filter first layer
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for step in range(20):
        x, y = blobs(32, seed=100 + step)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[:, None, 4:44, 4:44]).float()),
                                                 torch.from_numpy(y), label_smoothing=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("q") / "tiny.onnx", CLASSES, 48, crop=40, name="tiny",
                       version="3", extra={"tta": "flip"})
    set_onnx_metadata(path, {"temperature": "0.9"})
    return path


@pytest.fixture(scope="module")
def int8(fp32: Path) -> Path:
    from ferkit.models.quantize import quantize_int8

    out = fp32.with_name("tiny-int8.onnx")
    info = quantize_int8(fp32, out, faces(128, seed=1))
    assert info["calibration_images"] == 128 and info["format"] == "QDQ"
    return out


def meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_int8_keeps_metadata_and_loads_as_a_ferkit_model(fp32: Path, int8: Path) -> None:
    import onnx

    from ferkit.inference.onnx_classifier import OnnxClassifier

    before, after = meta(fp32), meta(int8)
    assert {k: after[k] for k in before} == before  # every entry kept, unchanged
    assert after["precision"] == "int8"
    assert json.loads(after["quantization"])["weights"] == "int8 per-channel"
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # The convolution on the grey image stays float (the slowest int8 layer per unit of work); the others are int8.
    graph = onnx.load(str(int8)).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert [n.input[1] in floats for n in convs] == [True] + [False] * (len(convs) - 1)
    assert json.loads(after["quantization"])["float_layers"] == 1
    clf = OnnxClassifier(int8)
    assert (clf.classes, clf.input_size, clf.crop, clf.name, clf.version, clf.temperature) == (
        CLASSES, 48, 40, "tiny", "3", 0.9)


def test_only_narrow_single_channel_convolutions_stay_float(tmp_path: Path) -> None:
    import onnx

    from ferkit.models import create_model
    from ferkit.models.export import export_onnx
    from ferkit.models.quantize import single_channel_convs

    def stems(arch: str) -> list[str]:
        path = export_onnx(create_model(arch, len(CLASSES)).eval(), tmp_path / f"{arch}.onnx", CLASSES, 48)
        return single_channel_convs(onnx.load(str(path)).graph)

    assert len(stems("vgg_f")) == 1
    assert len(stems("vgg_fs")) == 1  # its stride-2 stem, which feeds a convolution
    assert stems("vgg_f1") == []  # a pool follows: it would run on uint8 in ONNX Runtime's slow layout
    assert stems("vgg_s") == []  # 32 filters: int8 is as fast there


def test_int8_outputs_close_to_fp32_and_file_smaller(fp32: Path, int8: Path) -> None:
    from ferkit.inference.onnx_classifier import OnnxClassifier

    x, y = blobs(200, seed=2)  # not the calibration images
    p32 = OnnxClassifier(fp32).predict_proba(x)
    p8 = OnnxClassifier(int8).predict_proba(x)
    # The comparison means something only for a model that has learnt, and is not sure to the last digit.
    assert (p32.argmax(1) == y).mean() > 0.8 and p32.max(1).mean() < 0.9
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-5)
    assert np.abs(p8 - p32).mean() < 0.02
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.95
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size


def test_calibration_images_come_from_the_training_split_only(tmp_path: Path) -> None:
    from ferkit.data import load_dataset
    from ferkit.models.quantize import calibration_images

    root = make_class_folders(tmp_path / "d", CLASSES, per_class=6)
    ds = load_dataset(root)
    got = calibration_images(root, n=10, seed=0)
    assert len(got) == 10

    def keys(a: np.ndarray) -> set[bytes]:
        return {im.tobytes() for im in a}

    assert keys(got) <= keys(ds["train"].images)
    assert not keys(got) & (keys(ds["val"].images) | keys(ds["test"].images))
    train_only = make_class_folders(tmp_path / "e", CLASSES, per_class=3, splits=("test",))
    with pytest.raises(FerkitError, match="no training images"):
        calibration_images(train_only, n=5)


def test_quantize_refuses_bad_requests(fp32: Path, int8: Path, tmp_path: Path) -> None:
    from ferkit.models.quantize import quantize_int8

    with pytest.raises(FerkitError, match="already quantised"):
        quantize_int8(int8, tmp_path / "again.onnx", faces(8, 0))
    with pytest.raises(FerkitError, match="overwrite"):
        quantize_int8(fp32, fp32, faces(8, 0))
    with pytest.raises(FerkitError, match="unknown"):
        quantize_int8(fp32, tmp_path / "x.onnx", faces(8, 0), method="best")
    (tmp_path / "bad.onnx").write_text("not a model")
    with pytest.raises(FerkitError, match="not an ONNX model"):
        quantize_int8(tmp_path / "bad.onnx", tmp_path / "x.onnx", faces(8, 0))
    assert not (tmp_path / "x.onnx").exists()


def test_quantize_cli(fp32: Path, tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "d", CLASSES, per_class=6)
    out = tmp_path / "m8.onnx"
    r = CliRunner().invoke(app, ["quantize", str(fp32), str(out), "--data", str(data), "--images", "16", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["calibration_images"] == 16
    assert meta(out)["precision"] == "int8"
    before = out.read_bytes()
    r = CliRunner().invoke(app, ["quantize", str(fp32), str(out), "--data", str(data)])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    assert out.read_bytes() == before  # never overwritten without being asked
    r = CliRunner().invoke(app, ["quantize", str(tmp_path / "nope.onnx"), str(tmp_path / "o.onnx"), "--data", str(data)])
    assert r.exit_code == 2 and "no such model" in r.output


def test_half_weights_halve_the_file_compute_in_float32_and_still_quantise(fp32: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from ferkit.inference.onnx_classifier import OnnxClassifier
    from ferkit.models.quantize import float_weights, half_weights, quantize_int8

    proto = onnx.load(str(fp32))
    assert half_weights(proto) > 0
    half = tmp_path / "half.onnx"
    onnx.save(proto, str(half))
    assert half.stat().st_size < 0.6 * fp32.stat().st_size
    assert meta(half) == meta(fp32)
    # ONNX Runtime folds the Casts when it loads the model: what runs holds float32 weights only.
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(half), so, providers=["CPUExecutionProvider"])
    assert not [n for n in onnx.load(so.optimized_model_filepath).graph.node if n.op_type == "Cast"]
    x, _ = blobs(100, seed=3)
    p32, p16 = OnnxClassifier(fp32).predict_proba(x), OnnxClassifier(half).predict_proba(x)
    assert 0 < np.abs(p16 - p32).max() < 2e-3  # rounded weights, not the same file
    assert float_weights(proto) > 0 and not [n for n in proto.graph.node if n.op_type == "Cast"]
    quantize_int8(half, tmp_path / "half-int8.onnx", faces(64, seed=1))
    p8 = OnnxClassifier(tmp_path / "half-int8.onnx").predict_proba(x)
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.95


def test_export_half_marks_the_file(tmp_path: Path) -> None:
    from ferkit.models import create_model
    from ferkit.models.export import export_onnx

    model = create_model("vgg_xs", len(CLASSES)).eval()
    full = export_onnx(model, tmp_path / "full.onnx", CLASSES)
    half = export_onnx(model, tmp_path / "half.onnx", CLASSES, half=True)
    assert meta(half)["weights"] == "float16" and "weights" not in meta(full)
    assert half.stat().st_size < 0.6 * full.stat().st_size
