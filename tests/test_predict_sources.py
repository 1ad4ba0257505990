"""One model resolver, one result schema and a library that predicts on any source (issue 13, items 5-7 and 9),
and batch inference split across machines (issue 15): shards, resume, merge. Every input is written by the test."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_inference import make_tiny_model
from test_predict_cli import lines, make_video
from typer.testing import CliRunner

from ferkit.cli import app
from ferkit.errors import FerkitError
from ferkit.inference import EmotionRecognizer, available_detectors, builtin_models, default_model_path, resolve_model
from ferkit.inference.resolve import KNOWN_BUILTINS
from ferkit.inference.results import Batch, Prediction
from ferkit.inference.sources import shard_of

needs_detector = pytest.mark.skipif(not available_detectors(), reason="no face detector installed")
needs_model = pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model")
runner = CliRunner()


def invoke(args: list[str]):
    return runner.invoke(app, args, env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """Twelve images (faces and walls) in two levels, and one file that is no image."""
    root = tmp_path_factory.mktemp("many")
    for i in range(12):
        d = root / ("sub" if i % 3 == 0 else "")
        d.mkdir(exist_ok=True)
        img = astronaut if i % 2 == 0 else np.full((200, 260, 3), 40 + 10 * i, np.uint8)
        cv2.imwrite(str(d / f"img{i:02d}.jpg"), img)
    (root / "notes.txt").write_text("no image")
    return root


# -- item 5: one resolver ----------------------------------------------------------------------------------------
def test_builtin_names_and_their_files() -> None:
    shipped = builtin_models()
    assert "default" in shipped and shipped["default"] == default_model_path()
    ref = resolve_model("default")
    assert (ref.path, ref.kind, ref.name, ref.builtin) == (default_model_path(), "onnx", "default", True)
    missing = [n for n in (*KNOWN_BUILTINS, *(f"{n}-int8" for n in KNOWN_BUILTINS)) if n not in shipped]
    for name in missing:
        with pytest.raises(FerkitError) as e:
            EmotionRecognizer(name)
        msg = str(e.value)
        assert f"built-in model {name!r} is not shipped in this version" in msg and "default" in msg, msg
        assert "\n" not in msg


def test_run_folder_onnx_and_int8(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "exp7"
    run.mkdir(parents=True)
    make_tiny_model(run / "model.onnx", ["angry", "happy", "neutral"])
    rec = EmotionRecognizer(run)  # before: "no such model file"
    assert rec.models[0].path == run / "model.onnx" and resolve_model(run).name == "exp7"
    with pytest.raises(FerkitError, match="no int8 model in this run folder.*ferkit quantize"):
        EmotionRecognizer(run, precision="int8")
    shutil.copy(run / "model.onnx", run / "model-int8.onnx")
    assert EmotionRecognizer(run, precision="int8").models[0].path == run / "model-int8.onnx"
    plain = tmp_path / "mine.onnx"
    shutil.copy(run / "model.onnx", plain)
    with pytest.raises(FerkitError, match="mine-int8.onnx"):
        EmotionRecognizer(plain, precision="int8")
    shutil.copy(plain, tmp_path / "mine-int8.onnx")
    assert EmotionRecognizer(str(plain), precision="int8").models[0].path == tmp_path / "mine-int8.onnx"
    with pytest.raises(FerkitError, match="precision 'int4'"):
        EmotionRecognizer(plain, precision="int4")


def test_safetensors_says_which_file_to_use(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for spec in (run, run / "best.safetensors"):
        with pytest.raises(FerkitError) as e:
            EmotionRecognizer(spec)  # before: a raw ONNX Runtime protobuf message, or "no such model file"
        msg = str(e.value)
        assert "PyTorch" in msg and "ferkit export" in msg and "protobuf" not in msg.lower() and "\n" not in msg
    make_tiny_model(run / "model.onnx", ["a", "b"])
    with pytest.raises(FerkitError, match=f"use {run / 'model.onnx'}"):
        EmotionRecognizer(run / "best.safetensors")


@needs_detector
def test_cli_takes_every_model_spec(tmp_path: Path, astronaut: np.ndarray) -> None:
    run = tmp_path / "exp"
    run.mkdir()
    make_tiny_model(run / "model.onnx", ["angry", "happy", "neutral"])
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), astronaut)
    r = invoke(["predict", str(img), "--model", str(run), "--json"])
    assert r.exit_code == 0, r.output
    assert list(json.loads(r.stdout)["faces"][0]["probabilities"]) == ["angry", "happy", "neutral"]
    r = invoke(["predict", str(img), "--model", str(run), "--precision", "int8"])
    assert r.exit_code == 2 and "no int8 model" in r.stderr
    r = invoke(["predict", str(img), "--model", "nonsense"])
    assert r.exit_code == 2 and "nonsense: no such model" in r.stderr and "default" in r.stderr


# -- item 7: any source, results that draw and save themselves ----------------------------------------------------
@needs_detector
def test_predict_folder_glob_and_list_give_a_batch(rec: EmotionRecognizer, folder: Path) -> None:
    batch = rec.predict(folder)
    assert isinstance(batch, Batch) and len(batch) == 13
    assert [Path(s).name for s, _ in batch.skipped] == ["notes.txt"]
    assert sum(bool(p.faces) for p in batch.predictions) == 6 and all(p.image is None for p in batch)
    assert [p.path for p in batch.predictions][:2] == ["img01.jpg", "img02.jpg"]  # relative paths, in order
    assert len(rec.predict(str(folder / "sub" / "*.jpg"))) == 4
    listed = rec.predict([folder / "img02.jpg", str(folder / "sub" / "img00.jpg"), cv2.imread(str(folder / "img04.jpg"))])
    assert [len(p.faces) for p in listed] == [1, 1, 1] and listed[2].source is None


@needs_detector
def test_batch_results_plot_save_and_export(rec: EmotionRecognizer, folder: Path, tmp_path: Path) -> None:
    batch = rec.predict(folder)
    face = next(p for p in batch.predictions if p.faces)
    assert face.plot().shape == (512, 512, 3)  # the file is read again: a batch keeps no pixels
    written = batch.save(tmp_path / "ann")
    assert sorted(p.relative_to(tmp_path / "ann").as_posix() for p in written)[:2] == ["img01.jpg", "img02.jpg"]
    assert (tmp_path / "ann" / "sub" / "img00.jpg").is_file()
    rows = batch.rows()
    assert len(rows) == 12 and {"source", "x", "y", "w", "h", "label", *rec.classes} <= set(rows[0])
    pd = pytest.importorskip("pandas")
    df = batch.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == 12 and list(df.columns[-len(rec.classes):]) == rec.classes
    assert df["label"].notna().sum() == 6


@needs_detector
def test_stream_video_frame_by_frame_with_tracks(rec: EmotionRecognizer, astronaut: np.ndarray,
                                                 tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.avi", astronaut, frames=10)
    stream = rec.stream(video, smooth=3, save=tmp_path / "out")
    assert stream.kind == "video" and stream.total == 10
    seen = []
    for pred in stream:
        assert pred.image is not None and pred.plot().shape == (480, 640, 3)  # each frame draws itself
        seen.append(pred)
    assert [p.frame for p in seen] == list(range(10)) and {f.track_id for p in seen for f in p.faces} == {1}
    names = {p.name for p in stream.written}
    assert "clip_timeline.csv" in names and any(n.startswith("clip.") for n in names)
    batch = rec.predict(video, max_frames=4)
    assert [p.frame for p in batch] == [0, 1, 2, 3] and all(p.image is None for p in batch)
    with pytest.raises(FerkitError, match="not kept"):
        batch[0].plot()


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/endless.jpg":  # no Content-Length, more bytes than any limit
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            chunk = b"\xff" * 65536
            try:
                for _ in range(1000):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        f = self.root / self.path.lstrip("/")
        if not f.is_file():
            self.send_error(404)
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, astronaut: np.ndarray) -> Iterator[str]:
    cv2.imwrite(str(tmp_path / "face.jpg"), astronaut)
    handler = type("H", (_Handler,), {"root": tmp_path})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@needs_detector
def test_url_source_is_downloaded_within_the_limits(rec: EmotionRecognizer, server: str) -> None:
    from ferkit import images

    pred = rec.predict(f"{server}/face.jpg")
    assert isinstance(pred, Prediction) and len(pred.faces) == 1 and pred.source == f"{server}/face.jpg"
    with pytest.raises(images.ImageTooLarge, match="over the limit of 10,000"):
        images.fetch(f"{server}/face.jpg", max_bytes=10_000)  # refused by its Content-Length
    with pytest.raises(images.ImageTooLarge, match="over the limit of 1,000,000 bytes"):
        images.fetch(f"{server}/endless.jpg", max_bytes=1_000_000)  # refused while reading
    with pytest.raises(FerkitError, match="HTTP 404"):
        rec.predict(f"{server}/missing.jpg")
    batch = rec.predict([f"{server}/face.jpg", f"{server}/missing.jpg"])
    assert len(batch.predictions) == 1 and "HTTP 404" in batch.skipped[0][1]


# -- item 9: -q and -v anywhere; -q never hides the answer -----------------------------------------------------
@needs_detector
def test_quiet_and_verbose_anywhere(folder: Path) -> None:
    img = str(folder / "sub" / "img00.jpg")
    for args in (["-q", "predict", img], ["predict", img, "-q"], ["predict", "-q", img, "--quiet"]):
        r = invoke(args)
        assert r.exit_code == 0, (args, r.output)
        assert "img00.jpg" in r.stdout and "happy" in r.stdout or "face" in r.stdout  # the table is the answer
        assert "predict:" not in r.stderr  # the summary log line is not
    r = invoke(["predict", img, "-v", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["faces"]
    r = invoke(["data", "info", str(folder / "nope"), "-q"])
    assert r.exit_code == 2 and "nope" in r.stderr
    r = invoke(["predict", img])
    assert "predict: 1 image(s), 1 face(s)" in r.stderr


# -- issue 15: --shard, resume, --merge --------------------------------------------------------------------------
def test_shards_cover_every_file_once_whatever_else_is_there() -> None:
    keys = [f"d{i // 50}/img{i:04d}.jpg" for i in range(1000)]
    shares = {k: shard_of(k, 4) for k in keys}
    assert set(shares.values()) == {1, 2, 3, 4}
    assert all(180 < sum(v == s for v in shares.values()) < 320 for s in range(1, 5))
    assert {k: shard_of(k, 4) for k in reversed(keys)} == shares  # from the name alone, in any order


@needs_detector
def test_shard_resume_and_merge(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    for k in (1, 2, 3):
        r = invoke(["predict", str(folder), "--shard", f"{k}/3", "--out", str(out)])
        assert r.exit_code == 0, r.output
    files = sorted(out.glob("*.jsonl"))
    assert [f.name for f in files] == [f"predictions-{k}-of-3.jsonl" for k in (1, 2, 3)]
    per = [[json.loads(ln)["source"] for ln in f.read_text().splitlines()] for f in files]
    everything = sorted(s for share in per for s in share)
    assert len(everything) == len(set(everything)) == 13  # every entry (the text file too) in exactly one share
    # A worker killed mid-line: the torn line is dropped and the rest is not done again.
    first = files[0]
    full = first.read_text().splitlines()
    first.write_text("\n".join(full[:-1]) + "\n" + full[-1][: len(full[-1]) // 2])
    r = invoke(["predict", str(folder), "--shard", "1/3", "--out", str(first), "--json"])
    assert r.exit_code == 0, r.output
    assert [rec["source"] for rec in lines(r.stdout)] == [json.loads(full[-1])["source"]]  # only the lost one
    assert first.read_text().splitlines() == full
    r = invoke(["predict", "--merge", str(out / "*.jsonl"), "--out", str(tmp_path / "all.jsonl")])
    assert r.exit_code == 0, r.output
    merged = [json.loads(ln) for ln in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [m["source"] for m in merged] == everything
    whole = lines(invoke(["predict", str(folder), "--json"]).stdout)
    assert sorted(json.dumps(m, sort_keys=True) for m in merged) == sorted(json.dumps(w, sort_keys=True)
                                                                          for w in whole)
    r = invoke(["predict", "--merge", str(files[0]), str(files[2])])
    assert r.exit_code == 0 and "2-of-3" in r.stderr and "missing" in r.stderr


def test_shard_argument_errors(folder: Path) -> None:
    for bad in ("0/3", "4/3", "x", "1/0"):
        r = invoke(["predict", str(folder), "--shard", bad])
        assert r.exit_code == 2 and "--shard" in r.stderr, (bad, r.output)
    r = invoke(["predict", "0", "--shard", "1/2"])
    assert r.exit_code == 2 and "--shard" in r.stderr


def test_video_sink_picks_a_codec_and_falls_back(tmp_path: Path) -> None:
    import os
    import stat

    from ferkit.inference.video import VIDEO_CODECS, VideoSink

    assert [c for c, _ in VIDEO_CODECS[:3]] == ["avc1", "vp80", "vp09"]  # browser-playable ones first
    sink = VideoSink(tmp_path, "best", 10.0, (64, 48))
    for i in range(3):
        sink.write(np.full((48, 64, 3), 60 * i, np.uint8))
    sink.close()
    assert sink.path.is_file() and sink.path.suffix == dict(VIDEO_CODECS)[sink.codec]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(sink.path.stat().st_mode) == 0o666 & ~umask  # before: 0600, a private temporary file's
    fallback = VideoSink(tmp_path, "old", 10.0, (64, 48), codecs=(("zzzz", ".mp4"), ("MJPG", ".avi")))
    fallback.write(np.zeros((48, 64, 3), np.uint8))
    fallback.close()
    assert fallback.codec == "MJPG" and fallback.path.name == "old.avi"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    with pytest.raises(FerkitError, match="none of the codecs zzzz"):
        VideoSink(tmp_path, "none", 10.0, (64, 48), codecs=(("zzzz", ".mp4"),))
