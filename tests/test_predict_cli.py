"""`ferkit predict` on images, folders, globs and videos the tests write from real faces, and on every bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_inference import SHARED, make_tiny_model
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.inference import available_detectors, default_model_path

pytestmark = pytest.mark.skipif(not available_detectors(), reason="no face detector installed")
runner = CliRunner()


@pytest.fixture(scope="module")
def model_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if default_model_path().is_file():
        return []
    return ["--model", str(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", ["angry", "happy", "neutral"]))]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """A folder tree: two faces, one image without a face, and bad files in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "astronaut.jpg"), astronaut)
    cv2.imwrite(str(root / "sub" / "astronaut_gray.png"), cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "wall.png"), np.full((240, 320, 3), 90, np.uint8))
    (root / "sub" / "notes.jpg").write_text("this is not an image")
    (root / "sub" / "cut.jpg").write_bytes(cv2.imencode(".jpg", astronaut)[1].tobytes()[:300])
    (root / "readme.txt").write_text("not an image suffix: listed as skipped, not read")
    return root


def make_video(path: Path, astronaut: np.ndarray, frames: int = 24, faces: int = 1) -> Path:
    """640x480 video of the astronaut's face moving across a plain background."""
    face = cv2.resize(astronaut[20:260, 120:330], (150, 171))  # face with hair and collar: the Haar cascade wants some
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    w = cv2.VideoWriter(str(path), fourcc, 12.0, (640, 480))
    assert w.isOpened()
    for t in range(frames):
        frame = np.full((480, 640, 3), 200, np.uint8)
        for k in range(faces):
            x, y = 20 + 4 * t + 200 * k, 40 + 240 * (k % 2)
            frame[y : y + 171, x : x + 150] = face
        w.write(frame)
    w.release()
    return path


def invoke(args: list[str], columns: int = 80):
    # 80 columns, as in a default terminal: nothing a test reads may depend on a wide one.
    return runner.invoke(app, args, catch_exceptions=False, env={"COLUMNS": str(columns)})


def lines(stdout: str) -> list[dict]:
    """JSON lines output: one record per line, every line JSON."""
    return [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]


def test_single_image_json_is_one_result(photos: Path, model_args: list[str]) -> None:
    r = invoke(["predict", str(photos / "astronaut.jpg"), "--json", *model_args])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)  # one line: the whole of stdout is one JSON document
    assert res["schema"] == 1 and res["source"].endswith("astronaut.jpg") and (res["width"], res["height"]) == (512, 512)
    face = res["faces"][0]
    assert len(res["faces"]) == 1 and len(face["box"]) == 4 and face["label"] in face["probabilities"]


@pytest.mark.parametrize("columns", [80, 60])
def test_table_never_folds_a_value(photos: Path, tmp_path: Path, model_args: list[str], columns: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: at 80 columns rich folded long paths and boxes mid-token ('691,102,160,18' / '9').
    from ferkit.cli.common import console

    monkeypatch.setattr(console, "width", columns)  # the console's width is fixed when COLUMNS is set at import
    deep = tmp_path / "a_rather_long_folder_name" / "and_another_one_below_it" / "holiday_photos_2024"
    deep.mkdir(parents=True)
    (deep / "astronaut_on_the_launch_pad.jpg").write_bytes((photos / "astronaut.jpg").read_bytes())
    r = invoke(["predict", str(deep / "astronaut_on_the_launch_pad.jpg"), *model_args], columns=columns)
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.stdout.splitlines() if "pad.jpg" in ln)
    box = lines(invoke(["predict", str(deep / "astronaut_on_the_launch_pad.jpg"), "--json", *model_args]).stdout)[0]
    x, y, w, h = box["faces"][0]["box"]
    assert f"{x},{y},{w},{h}" in row  # the box whole, on the row of its file
    assert "_pad.jpg │" in row and "│ ..." in row  # the path's end stays, its start gives way
    assert len(row) <= max(columns, 73)  # 73: the narrowest the table gets (a 12-character source)


def test_folder_json_lines_skip_and_list_bad_files(photos: Path, model_args: list[str]) -> None:
    r = invoke(["predict", str(photos), "--json", *model_args])
    assert r.exit_code == 0, r.output
    recs = lines(r.stdout)
    assert all(rec["schema"] == 1 for rec in recs)
    ok = {Path(rec["source"]).name: rec for rec in recs if "error" not in rec}
    bad = {Path(rec["source"]).name: rec["error"]["message"] for rec in recs if "error" in rec}
    assert set(ok) == {"astronaut.jpg", "astronaut_gray.png", "wall.png"}
    assert len(ok["astronaut.jpg"]["faces"]) == 1 and ok["astronaut.jpg"]["faces"][0]["label"]
    assert ok["wall.png"]["faces"] == []  # "no face" is a result, not an error
    assert sorted(bad) == ["cut.jpg", "notes.jpg", "readme.txt"]
    assert "not an image file (.txt)" in bad["readme.txt"] and "not a readable image" in bad["cut.jpg"]
    assert "3 skipped" in r.stderr and "2 face(s)" in r.stderr and "1 without a face" in r.stderr


def test_glob_csv_one_row_per_face(photos: Path, model_args: list[str]) -> None:
    r = invoke(["predict", str(photos / "*.jpg"), "--csv", *model_args])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [Path(x["source"]).name for x in rows] == ["astronaut.jpg"]
    p = {k: float(v) for k, v in rows[0].items() if k not in
         ("source", "frame", "time", "face", "track_id", "x", "y", "w", "h", "score", "label", "confidence")}
    assert abs(sum(p.values()) - 1) < 0.01 and rows[0]["label"] == max(p, key=p.get)


def test_save_and_crops(photos: Path, tmp_path: Path, model_args: list[str]) -> None:
    r = invoke(["predict", str(photos), "--save", str(tmp_path / "ann"), "--crops", str(tmp_path / "crops"),
                *model_args])
    assert r.exit_code == 0, r.output
    ann = cv2.imread(str(tmp_path / "ann" / "astronaut.jpg"))
    assert ann is not None and ann.shape == (512, 512, 3)
    assert (tmp_path / "ann" / "sub" / "astronaut_gray.jpg").is_file()
    crops = sorted(p.name for p in (tmp_path / "crops").iterdir())
    assert crops == ["astronaut_face0.png", "sub__astronaut_gray_face0.png"]
    crop = cv2.imread(str(tmp_path / "crops" / "astronaut_face0.png"))
    assert crop.shape[0] == crop.shape[1] > 48


def test_save_and_crops_never_replace_a_file(astronaut: np.ndarray, tmp_path: Path, model_args: list[str]) -> None:
    # Before: coll/face.png and coll/face.jpg both went to out/face.jpg ("wrote out/face.jpg" twice, one lost), and
    # their crops to one face_face0.png.
    coll = tmp_path / "coll"
    coll.mkdir()
    cv2.imwrite(str(coll / "face.png"), astronaut)
    cv2.imwrite(str(coll / "face.jpg"), astronaut[:, ::-1])
    out, crops = tmp_path / "out", tmp_path / "crops"
    out.mkdir()
    (out / "face-2.jpg").write_bytes(b"there before")
    r = invoke(["predict", str(coll), "--save", str(out), "--crops", str(crops), *model_args])
    assert r.exit_code == 0, r.output
    said = [ln.removeprefix("wrote ") for ln in r.stderr.splitlines() if ln.startswith("wrote ")]
    written = [Path(ln.split(" (")[0]) for ln in said]
    assert sorted(p.name for p in out.iterdir()) == ["face-2.jpg", "face-3.jpg", "face.jpg"]
    assert (out / "face-2.jpg").read_bytes() == b"there before"
    assert sorted(p.name for p in crops.iterdir()) == ["face_face0-2.png", "face_face0.png"]
    assert len(set(written)) == len(written) == 4 and all(p.is_file() for p in written)  # every file said, once
    assert f"{out / 'face-3.jpg'} (from {coll / 'face.png'}: {out / 'face.jpg'} was taken)" in said
    # A video run twice into one folder: the second gets its own stem for all its files.
    video = make_video(tmp_path / "clip.avi", astronaut, frames=3)
    for _ in range(2):
        r = invoke(["predict", str(video), "--save", str(out), *model_args])
        assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert {"clip_timeline.csv", "clip-2_timeline.csv"} <= names
    assert len([n for n in names if n.startswith("clip-2.")]) == len([n for n in names if n.startswith("clip.")]) == 1
    assert "clip_timeline.csv was taken" in r.stderr


def test_no_detect_on_fer2013_crops(tmp_path: Path, model_args: list[str]) -> None:
    import zipfile

    if not (SHARED / "fer2013.zip").is_file():
        pytest.skip("../shared/datasets/fer2013.zip is absent")
    with zipfile.ZipFile(SHARED / "fer2013.zip") as z:
        names = [n for n in z.namelist() if n.startswith("test/happy/") and n.endswith(".jpg")][:3]
        for n in names:
            (tmp_path / Path(n).name).write_bytes(z.read(n))
    r = invoke(["predict", str(tmp_path), "--json", "--no-detect", *model_args])
    assert r.exit_code == 0, r.output
    recs = lines(r.stdout)
    assert len(recs) == 3 and all(x["faces"][0]["box"] == [0, 0, 48, 48] and x["detector"] is None for x in recs)


def test_video_tracks_timeline_and_annotated_video(astronaut: np.ndarray, tmp_path: Path,
                                                   model_args: list[str]) -> None:
    video = make_video(tmp_path / "clip.avi", astronaut, frames=24)
    out = tmp_path / "out"
    r = invoke(["predict", str(video), "--json", "--vid-stride", "2", "--save", str(out), "--smooth", "3",
                *model_args])
    assert r.exit_code == 0, r.output
    recs = lines(r.stdout)
    assert [x["frame"] for x in recs] == list(range(0, 24, 2))
    assert {f["track_id"] for x in recs for f in x["faces"]} == {1}  # one face, one track all along
    assert recs[1]["time"] == pytest.approx(2 / 12, abs=1e-3)
    written = [Path(ln.removeprefix("wrote ")) for ln in r.stderr.splitlines() if ln.startswith("wrote ")]
    annotated = next(p for p in written if p.stem == "clip" and p.suffix in (".mp4", ".webm"))
    assert annotated.parent == out and {p.name for p in written} >= {"clip_timeline.csv", annotated.name}
    assert all(p.is_file() and p.stat().st_mode & 0o044 for p in written)  # every file said, readable by others
    cap = cv2.VideoCapture(str(annotated))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()
    timeline = list(csv.DictReader((out / "clip_timeline.csv").open()))
    assert len(timeline) == 12 and timeline[0]["track_id"] == "1"
    pytest.importorskip("matplotlib")
    assert (out / "clip_track1.png").stat().st_size > 5000


def test_video_five_faces_max_faces_and_detect_every(astronaut: np.ndarray, tmp_path: Path,
                                                     model_args: list[str]) -> None:
    video = make_video(tmp_path / "five.avi", astronaut, frames=6, faces=3)
    r = invoke(["predict", str(video), "--json", "--detect-every", "3", *model_args])
    faces = [f for x in lines(r.stdout) for f in x["faces"]]
    assert r.exit_code == 0 and len(faces) == 18 and len({f["track_id"] for f in faces}) == 3
    r = invoke(["predict", str(video), "--json", "--max-faces", "2", *model_args])
    assert sum(len(x["faces"]) for x in lines(r.stdout)) == 12


@pytest.mark.parametrize("case", ["not_image", "truncated", "missing", "bad_video", "no_camera", "empty_dir",
                                  "no_match", "bad_detector", "bad_model"])
def test_bad_input_is_one_line_error(case: str, tmp_path: Path, astronaut: np.ndarray,
                                     model_args: list[str]) -> None:
    extra: list[str] = []
    if case == "not_image":
        src = tmp_path / "a.jpg"
        src.write_text("hello")
    elif case == "truncated":
        src = tmp_path / "t.jpg"
        src.write_bytes(cv2.imencode(".jpg", astronaut)[1].tobytes()[:500])
    elif case == "missing":
        src = tmp_path / "missing.jpg"
    elif case == "bad_video":
        src = tmp_path / "broken.mp4"
        src.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    elif case == "no_camera":
        src = Path("97")
    elif case == "empty_dir":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "no_match":
        src = tmp_path / "*.png"
    elif case == "bad_detector":
        src, extra = tmp_path, ["--detector", "nope"]
    else:
        src = tmp_path
        (tmp_path / "bad.onnx").write_bytes(b"no")
        extra = ["--model", str(tmp_path / "bad.onnx")]
    r = invoke(["predict", str(src), *(extra or model_args)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.output
    name = "nope" if case == "bad_detector" else ("bad.onnx" if case == "bad_model" else src.name)
    assert name in lines[0]


def test_predict_help_has_example() -> None:
    r = invoke(["predict", "--help"])
    assert r.exit_code == 0 and "Example: ferkit predict" in r.output


def test_file_names_with_markup_are_printed_as_written(tmp_path: Path, astronaut: np.ndarray,
                                                       model_args: list[str]) -> None:
    # A rich MarkupError ('[/x]' closes nothing) used to kill the whole table; errors name such files plainly too.
    d = tmp_path / "markup["
    d.mkdir()
    cv2.imwrite(str(d / "x].jpg"), astronaut)  # the path reads 'markup[/x].jpg'
    (d / "[red]bad[").mkdir()
    (d / "[red]bad[" / "x].png").write_bytes(b"not an image")  # ... '[red]bad[/x].png'
    r = runner.invoke(app, ["predict", str(tmp_path), *model_args], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "markup[/x].jpg" in r.stdout and "[red]bad[/x].png: not a readable image" in r.stderr
    r = runner.invoke(app, ["predict", str(d / "[red]bad[" / "x].png"), *model_args], env={"COLUMNS": "80"})
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "[red]bad[/x].png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_json_lines_into_a_closed_pipe_stop_quietly(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(400):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    ferkit = Path(sys.executable).with_name("ferkit")
    done = subprocess.run(f"'{ferkit}' predict '{tmp_path}' --json -q | head -c 100", shell=True,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith('{"schema": 1') and len(done.stdout) == 100
    assert "error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
