"""Arguments, folders and terminal output are hostile input too (issue 32, families 4 to 6), beyond the corpus's
kinds (a TIFF of a million strips, names longer than the file system allows and a FER+ label.csv past the row
limit are in tests/hostile.py): camera indices, folders nested 1,100 deep, control characters in the names ferkit
prints, and the service's answer to one stream too many."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.errors import FerkitError

runner = CliRunner()
# What a name may carry to rewrite a terminal: clear the screen, set the window title, colour, a right-to-left
# override that turns "gpj.exe" around, a newline that starts a fake line, a carriage return.
EVIL = "\x1b[2J\x1b]0;pwned\x07\x1b[31m\u202e\nerror: fake\r"


def _assert_escaped(text: str) -> None:
    for raw in ("\x1b", "\x07", "\u202e", "\r", "\nerror: fake"):
        assert raw not in text, (raw, text[-2000:])
    assert "\\x1b[2J" in text and "\\u202e" in text, text[-2000:]


def _error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and lines[-1].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[-1]


@pytest.fixture(scope="module")
def face_png(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> bytes:
    return cv2.imencode(".png", astronaut)[1].tobytes()


# -- arguments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["100000000000000000000", "1" * 200, "99999", "\u00b2"])
def test_camera_index_out_of_range(index: str) -> None:
    """Before: 10^20 reached OpenCV (exit 1, an overflow traceback); a superscript digit counted as a digit."""
    line = _error_line(runner.invoke(app, ["predict", index]))
    assert "camera" in line or "no such file" in line


def test_camera_index_out_of_range_library() -> None:
    from ferkit.inference import EmotionRecognizer

    with pytest.raises(FerkitError, match="no such camera index"):
        EmotionRecognizer(detector="haar").predict(10**20)


@pytest.mark.parametrize("where", ["source", "--model", "--out", "--save", "data info", "evaluate"])
def test_names_longer_than_the_file_system_allows(where: str, tmp_path: Path, face_png: bytes) -> None:
    """ENAMETOOLONG wherever a path is first touched: one error line, exit 2 (before: exit 1, an OSError)."""
    face = tmp_path / "face.png"
    face.write_bytes(face_png)
    long = str(tmp_path / ("a" * 300))
    args = {"source": ["predict", long + ".jpg"], "--model": ["predict", str(face), "-m", long + ".onnx"],
            "--out": ["predict", str(face), "-o", long + ".jsonl"], "--save": ["predict", str(face), "--save", long],
            "data info": ["data", "info", long + ".zip"], "evaluate": ["evaluate", long + ".onnx", str(tmp_path)]}
    line = _error_line(runner.invoke(app, args[where]))
    assert "too long" in line and "aaaa" in line and len(line) < 600


def test_model_name_too_long_library(tmp_path: Path) -> None:
    from ferkit.inference import EmotionRecognizer

    with pytest.raises(FerkitError, match="File name too long"):
        EmotionRecognizer(tmp_path / ("m" * 300 + ".onnx"))


# -- folders nested 1,100 deep --------------------------------------------------------------------------------------
def _nest(root: Path, depth: int, name: str, data: bytes) -> None:
    """root/d/d/.../d/name, `depth` folders deep, made one level at a time by file descriptor (os.makedirs
    itself recurses once per level)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def _remove(top: Path) -> None:
    """rm -r without recursion, deepest first (shutil.rmtree recurses once per level on Python 3.11)."""
    order, stack = [], [top]
    while stack:
        d = stack.pop()
        order.append(d)
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    os.unlink(e.path)
    for d in reversed(order):
        os.rmdir(d)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder outside pytest's own temporary folders: pytest removes old ones with shutil.rmtree, which would
    meet the 1,100 levels below with a RecursionError (in this and later sessions) if a run were cut short."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="ferkit-deep-"))
    yield top
    _remove(top)


@pytest.fixture(scope="module")
def deep(scratch: Path, face_png: bytes) -> Path:
    root = scratch / "photos"
    _nest(root / "happy", 1100, "face.png", face_png)
    (root / "sad").mkdir()
    (root / "sad" / "face.png").write_bytes(face_png)
    return root


def test_deep_folders_predict(deep: Path, scratch: Path) -> None:
    """Before: RecursionError (os.walk, and os.makedirs for --save keeping the layout), exit 1."""
    out = scratch / "out"
    r = runner.invoke(app, ["predict", str(deep), "--json", "--save", str(out)])
    assert r.exit_code == 0, r.output[-2000:]
    found = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(found) == 2 and all(f["faces"] for f in found)
    from ferkit.utils import walk  # Path.rglob would recurse too

    written = [f for _folder, _dirs, files in walk(out) for f in files]
    assert len(written) == 2


def test_deep_folders_datasets(deep: Path) -> None:
    """The folder loader and the cache key walked recursively (RecursionError); a layout it does not know is one
    error line."""
    from ferkit.data import load_dataset

    with pytest.raises(FerkitError, match="unknown folder layout"):
        load_dataset(deep)
    assert "unknown folder layout" in _error_line(runner.invoke(app, ["data", "info", str(deep)]))


def test_deep_glob_is_refused_in_one_line(deep: Path) -> None:
    pattern = str(deep / "happy") + "/*" * 1100 + "/*.png"
    r = runner.invoke(app, ["predict", pattern])
    assert r.exit_code in (0, 2) and "Traceback" not in r.output and "internal error" not in r.output, r.output


# -- terminal output ------------------------------------------------------------------------------------------------
def test_file_names_are_escaped_in_table_skips_and_summary(tmp_path: Path, face_png: bytes) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / f"a{EVIL}b.png").write_bytes(face_png)
    (folder / f"notes{EVIL}.txt").write_text("x")
    r = runner.invoke(app, ["predict", str(folder), "--save", str(tmp_path / f"out{EVIL}")],
                      env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    # The table: nothing raw (in an 80-column terminal the name is cut short, so its escaped form may not all show).
    assert not any(raw in r.stdout for raw in ("\x1b", "\x07", "\u202e", "\r", "\nerror: fake")), r.stdout
    _assert_escaped(r.stderr)  # skipped list, summary, files written


def test_error_lines_and_logs_are_escaped(tmp_path: Path) -> None:
    line = _error_line(runner.invoke(app, ["predict", str(tmp_path / f"gone{EVIL}.jpg")]))
    _assert_escaped(line)


def _class_zip(path: Path, names: list[str], face: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for split in ("train", "test"):
            for i, name in enumerate(names):
                z.writestr(f"{split}/{name}/{i}.png", face)
    return path


def test_zip_class_names_and_csv_labels_are_escaped(tmp_path: Path) -> None:
    """`data info` prints class names (zip folders, CSV labels) in a table and in log lines."""
    face = hostile.png_bytes(hostile.small_image(48, 48))
    z = _class_zip(tmp_path / "classes.zip", [f"happy{EVIL.replace(chr(10), '').replace(chr(13), '')}", "sad"], face)
    r = runner.invoke(app, ["data", "info", str(z)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\u202e" not in r.output and "\\x1b[2J" in r.stdout
    px = " ".join(["9"] * 16)
    csv = tmp_path / "labels.csv"
    csv.write_text("emotion,pixels\n" + "".join(f'"{lbl}",{px}\n' for lbl in (f"happy{EVIL}", "sad") for _ in range(3)))
    r = runner.invoke(app, ["data", "info", str(csv)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    _assert_escaped(r.stdout)


def test_log_lines_are_escaped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from ferkit.cli.common import _EscapingFormatter

    record = logging.LogRecord("ferkit", logging.INFO, __file__, 1, "model %s: classes %s", ("m", EVIL), None)
    _assert_escaped(_EscapingFormatter("%(message)s").format(record))


def test_one_line_keeps_printable_text() -> None:
    from ferkit.cli.common import one_line

    assert one_line("Ünïcødé 表情 happy.jpg") == "Ünïcødé 表情 happy.jpg"
    assert one_line("a\tb\x00c\u200fd") == "a\\tb\\x00c\\u200fd"


# -- the service: one stream too many ------------------------------------------------------------------------------
def test_ninth_stream_is_told_to_come_back(recognizer) -> None:
    """Before: the 9th WebSocket got the same empty 403 as a foreign page; now it is accepted and closed with
    1013 "try again later" and its reason, and the eight go on."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from ferkit.service import ServiceConfig, create_app

    config = ServiceConfig(workers=1)
    assert config.max_streams == 8
    with TestClient(create_app(config, recognizer=recognizer), base_url="http://127.0.0.1:8000") as c:
        headers = {"host": "127.0.0.1:8000"}
        opened = [c.websocket_connect("/v1/stream", headers=headers) for _ in range(8)]
        streams = [cm.__enter__() for cm in opened]
        try:
            with pytest.raises(WebSocketDisconnect) as e, c.websocket_connect("/v1/stream", headers=headers) as ws:
                ws.receive_json()
            assert e.value.code == 1013 and "try again later" in e.value.reason and "8 streams" in e.value.reason
            streams[-1].send_text('{"type": "reset"}')
            assert streams[-1].receive_json() == {"type": "reset"}
        finally:
            for cm in opened:
                cm.__exit__(None, None, None)


def test_tiff_strips_are_counted_from_the_directory() -> None:
    from ferkit import images

    assert images._tiff_strips(io.BytesIO(hostile.tiff_strips(16, 1000))) == 1000
    assert images._tiff_strips(io.BytesIO(hostile.png_bytes())) == 0
    d = images.load(hostile.tiff_strips(16, 64))  # a legal TIFF of 64 strips still decodes
    assert d.image.shape[:2] == (64, 16) and np.all(d.image == 0)


def test_evaluate_and_compare_escape_names(tmp_path: Path) -> None:
    """A dataset folder named with escapes and a newline reaches evaluate's tables and compare's output escaped."""
    from conftest import make_class_folders

    data = make_class_folders(tmp_path / f"d{EVIL}", ["happy", "sad"], per_class=4, splits=("test",))
    for args in (["evaluate", "default", str(data), "--out", str(tmp_path / "e"), "--saliency", "0"],
                 ["compare", "default", "fast", "--data", str(data), "--out", str(tmp_path / "c")]):
        r = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert r.exit_code == 0, r.output
        _assert_escaped(r.stdout)
