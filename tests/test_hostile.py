"""The hostile-input corpus (tests/hostile.py) through every entry point where each kind belongs: the library raises
one FerkitError line naming the file or setting, the command line exits 2 with that one line, batches skip and list,
the service answers 4xx, and bombs stay under 1 GB in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import cv2
import hostile
import numpy as np
import pytest
from typer.testing import CliRunner

from ferkit import images
from ferkit.cli import app
from ferkit.errors import FerkitError

runner = CliRunner()
GB = 1 << 30
ids = {"ids": lambda k: k.name}


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def cli_error(args: list[str], expect: str) -> str:
    """Exit code 2 and one error line (after any progress lines such as 'Loading ...'), holding `expect`."""
    r = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.output, r.stderr
    assert expect in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def face_jpg(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    p = tmp_path_factory.mktemp("face") / "astronaut.jpg"
    cv2.imwrite(str(p), astronaut)
    return p


IMAGE_KINDS = hostile.of("image")
SINGLE_ENTRIES = [k for k in hostile.of("entry") if not k.extra.get("batch_only")]


# -- images and file-system entries ------------------------------------------------------------------------------
@pytest.mark.parametrize("k", IMAGE_KINDS + SINGLE_ENTRIES, **ids)
def test_image_library(k: hostile.Kind, tmp_path: Path, rec) -> None:
    path = k.make(tmp_path)
    for call in (lambda: images.load(path), lambda: rec.predict(path), lambda: rec.predict(str(path))):
        if k.expect is None:
            try:
                call()
            except FerkitError as e:
                assert str(path) in str(e) and "\n" not in str(e)
            continue
        with pytest.raises(FerkitError) as e:
            call()
        assert str(path) in str(e.value) and k.expect in str(e.value) and "\n" not in str(e.value)
    if k.expect == "over the limit":
        assert isinstance(e.value, images.ImageTooLarge)


@pytest.mark.parametrize("k", [k for k in IMAGE_KINDS + SINGLE_ENTRIES if k.expect], **ids)
def test_image_cli_exit_2_one_line(k: hostile.Kind, tmp_path: Path) -> None:
    path = k.make(tmp_path)
    line = cli_error(["predict", str(path)], k.extra.get("cli", k.expect))
    assert path.name in line


@pytest.mark.parametrize("k", hostile.of("image_ok"), **ids)
def test_awkward_legal_images_work(k: hostile.Kind, tmp_path: Path, rec) -> None:
    path = k.make(tmp_path)
    d = images.load(path)
    assert d.image.dtype == np.uint8 and d.image.ndim in (2, 3) and min(d.image.shape[:2]) > 0
    pred = rec.predict(path, detect=False)
    assert len(pred.faces) == 1 and abs(sum(pred.faces[0].probabilities.values()) - 1) < 0.01
    r = runner.invoke(app, ["predict", str(path), "--no-detect", "--json"])
    assert r.exit_code == 0, r.output


def _hostile_folder(root: Path, face: Path) -> tuple[Path, list[hostile.Kind]]:
    folder = root / "photos"
    kinds = IMAGE_KINDS + [k for k in hostile.of("entry") if not k.extra.get("single_only")]
    for k in kinds:
        k.make(folder / k.name)
    (folder / "good").mkdir()
    (folder / "good" / face.name).write_bytes(face.read_bytes())
    return folder, kinds


def test_batch_cli_skips_and_lists_every_bad_item(tmp_path: Path, face_jpg: Path) -> None:
    # Before: one bomb killed `ferkit predict images/ --json` after 2 of 49 images and lost every result.
    folder, kinds = _hostile_folder(tmp_path, face_jpg)
    r = runner.invoke(app, ["predict", str(folder), "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    out = [json.loads(ln) for ln in r.stdout.splitlines()]  # JSON lines, one result per input
    assert [Path(rec["source"]).name for rec in out if rec.get("faces")] == [face_jpg.name]
    skipped = {Path(rec["source"]).parent.name: rec["error"]["message"] for rec in out if "error" in rec}
    for k in kinds:
        if k.expect is not None:
            assert k.name in skipped and k.expect in skipped[k.name], (k.name, skipped.get(k.name))
    n = sum("error" in rec for rec in out)
    assert f"{n} skipped" in r.stderr and n >= len([k for k in kinds if k.expect])
    # The table mode lists them on stderr and still prints the table.
    r = runner.invoke(app, ["predict", str(folder)], env={"COLUMNS": "300"})
    assert r.exit_code == 0 and face_jpg.name in r.stdout and "bomb_30000.gif" in r.stderr


def test_batch_library_skips_and_lists_every_bad_item(tmp_path: Path, face_jpg: Path, rec) -> None:
    folder, kinds = _hostile_folder(tmp_path, face_jpg)
    batch = rec.predict(folder)
    assert [Path(p.source).name for p in batch.predictions if p.faces] == [face_jpg.name]
    listed = {Path(s).parent.name for s, _ in batch.skipped}
    assert {k.name for k in kinds if k.expect} <= listed
    assert all("\n" not in why for _, why in batch.skipped)


def test_dataset_loader_skips_bad_images(tmp_path: Path) -> None:
    from ferkit.data import load_dataset

    root = tmp_path / "ds"
    face = hostile.png_bytes(hostile.small_image(48, 48))
    for cls in ("happy", "sad"):
        for i in range(3):
            hostile.write(root / cls, f"ok{i}.png", face)
    expected = {}
    for k in IMAGE_KINDS:
        p = k.make(tmp_path / "kinds" / k.name)
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm"}:
            target = root / "happy" / f"{k.name}{p.suffix}"
            if p.stat().st_size > 100 << 20:
                target.symlink_to(p)  # the sparse 3 GiB file: linked, not copied
            else:
                target.write_bytes(p.read_bytes())
            expected[f"happy/{target.name}"] = k
    ds = load_dataset(root, use_cache=False)
    assert sum(len(s) for s in ds.splits.values()) == 6 + sum(1 for k in expected.values() if k.expect is None)
    why = {s.name: s.reason for s in ds.skipped}
    for name, k in expected.items():
        if k.expect is not None:
            assert name in why and (k.expect in why[name] or "over the limit" in why[name]), (name, why.get(name))


# -- dataset loaders -------------------------------------------------------------------------------------------
LOADER_KINDS = hostile.of("csv") + hostile.of("archive") + hostile.of("ferplus") + hostile.of("manifest")


@pytest.mark.parametrize("k", LOADER_KINDS, **ids)
def test_loader_library_and_cli(k: hostile.Kind, tmp_path: Path) -> None:
    from ferkit.data import load_dataset

    path = k.make(tmp_path)
    if k.expect is None:
        ds = load_dataset(path, use_cache=False)
        assert any(k.extra["skipped"] in s.reason for s in ds.skipped), ds.skipped
        return
    with pytest.raises(FerkitError) as e:
        load_dataset(path, use_cache=False)
    assert k.expect in str(e.value) and "\n" not in str(e.value) and path.name in str(e.value)
    cli_error(["data", "info", str(path)], k.expect)


@pytest.mark.parametrize("k", hostile.of("convert"), **ids)
def test_convert_writes_nothing_outside(k: hostile.Kind, tmp_path: Path) -> None:
    src = k.make(tmp_path / "src")
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    r = runner.invoke(app, ["data", "convert", str(src), str(out), "--to", "folders"])
    written = {p for p in tmp_path.rglob("*")} - before
    if k.expect is not None:
        assert r.exit_code == 2 and k.expect in r.stderr.splitlines()[-1], r.output
        assert not written
    else:
        assert r.exit_code == 0, r.output
        assert written and all(p == out or p.is_relative_to(out) for p in written)
    assert not any(p.name.endswith(".png") for p in Path("/").iterdir())


# -- models and configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", hostile.of("model"), **ids)
def test_model_library_cli_and_service(k: hostile.Kind, tmp_path: Path, face_jpg: Path) -> None:
    pytest.importorskip("onnx")
    from ferkit.inference import EmotionRecognizer, OnnxClassifier

    path = k.make(tmp_path)
    for make in (lambda: OnnxClassifier(path), lambda: EmotionRecognizer(path, detector="haar")):
        with pytest.raises(FerkitError) as e:
            make()
        assert k.expect in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    cli_error(["predict", str(face_jpg), "--model", str(path)], k.expect)
    pytest.importorskip("fastapi")
    from ferkit.service import ServiceConfig, create_app

    with pytest.raises(FerkitError, match="^" + str(path).replace("\\", "\\\\").replace(".", r"\.")):
        create_app(ServiceConfig(model=(str(path),)))


@pytest.mark.parametrize("k", hostile.of("config"), **ids)
def test_config_library_and_cli(k: hostile.Kind, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ferkit.training import load_config

    path, sets = k.make(tmp_path)
    with pytest.raises(FerkitError) as e:
        load_config(path, sets)
    assert k.expect in str(e.value) and "\n" not in str(e.value)
    args = ["train"] + ([str(path)] if path is not None else []) + [a for s in sets for a in ("-s", s)]
    cli_error(args + ["-s", f"out={tmp_path / 'run'}"] if "out=" not in " ".join(sets) else args, k.expect)
    assert not (tmp_path / "run").exists()


def test_config_values_that_must_work() -> None:
    pytest.importorskip("torch")
    from ferkit.training import load_config

    cfg = load_config(None, ["dropout=0.3", "init=none", "crop=40", "augment.mixup=0.2", "teacher=a", "lr=1e-3"])
    assert (cfg.dropout, cfg.init, cfg.crop, cfg.augment.mixup, cfg.teacher, cfg.lr) == (0.3, None, 40, 0.2, "a", 1e-3)


# -- memory: bombs in a fresh process ------------------------------------------------------------------------------
# The child reports its own peak: VmHWM belongs to the process's new address space, whereas ru_maxrss (os.wait4,
# getrusage) keeps the pre-exec peak, i.e. this big test process's own RSS at fork time.
PEAK_PRELUDE = textwrap.dedent("""
    import atexit, sys
    def _report_peak():
        with open("/proc/self/status") as f:
            kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        sys.stderr.write(f"\\nVMHWM {kb}\\n")
    atexit.register(_report_peak)
""")


def _run_measured(code: str, args: list[str], timeout: float = 600) -> tuple[int, str, str, int]:
    """Run `python -c code args...`: (exit code, stdout, stderr, the child's peak RSS in bytes)."""
    r = subprocess.run([sys.executable, "-c", PEAK_PRELUDE + code, *args], capture_output=True, text=True,
                       timeout=timeout)
    peaks = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("VMHWM ")]
    assert peaks, r.stderr[-2000:]
    return r.returncode, r.stdout, r.stderr, peaks[-1] * 1024


BOMB_SCRIPT = textwrap.dedent("""
    import json, sys
    from ferkit import EmotionRecognizer, FerkitError
    from ferkit.data import load_dataset
    rec = EmotionRecognizer(threads=1)
    out = {}
    for kind, path in json.loads(sys.argv[1]):
        try:
            if kind == "image":
                rec.predict(path)
            else:
                load_dataset(path, use_cache=False)
            out[path] = "ok"
        except FerkitError as e:
            out[path] = str(e)
    print(json.dumps(out))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_bombs_stay_under_1_gb(tmp_path: Path, face_jpg: Path, rec) -> None:
    bombs = [k for k in hostile.KINDS if k.bomb and k.group != "model"]  # models: test_model_bombs_...
    paths = [("image" if k.group == "image" else "data", str(k.make(tmp_path / k.name))) for k in bombs]
    code, out, err, rss = _run_measured(BOMB_SCRIPT, [json.dumps(paths)])
    assert code == 0, err[-3000:]
    answers = json.loads(out)
    for k, (_, p) in zip(bombs, paths, strict=True):
        assert answers[p] != "ok" or k.expect is None, (k.name, answers[p])
    assert rss < GB, f"peak RSS {rss / 2**20:.0f} MiB over {len(bombs)} bombs"
    # The command line over a folder of them: every bomb listed, the face predicted, still under 1 GB.
    folder = tmp_path / "folder"
    for k in bombs:
        if k.group == "image":
            k.make(folder / k.name)
    (folder / face_jpg.name).write_bytes(face_jpg.read_bytes())
    cli = "import sys; from ferkit.cli import main; sys.argv[0] = 'ferkit'; main()"
    code, out, err, rss = _run_measured(cli, ["predict", str(folder), "--json"])
    assert code == 0, err[-3000:]
    res = [json.loads(ln) for ln in out.splitlines()]
    assert sum("faces" in r for r in res) == 1 and sum("error" in r for r in res) == sum(k.group == "image"
                                                                                      for k in bombs)
    assert rss < GB, f"ferkit predict: peak RSS {rss / 2**20:.0f} MiB"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_model_bombs_stay_under_1_gb_and_a_minute(tmp_path: Path, face_jpg: Path) -> None:
    """ONNX files whose constants or outputs allocate gigabytes are refused by their first run, in a child process
    limited to 512 MB; `ferkit predict -m` itself stays under 1 GB and answers within a minute (issue 32)."""
    pytest.importorskip("onnx")
    cli = "import sys; from ferkit.cli import main; sys.argv[0] = 'ferkit'; main()"
    bombs = [k for k in hostile.of("model") if k.bomb]
    assert bombs
    for k in bombs:
        path = k.make(tmp_path / k.name)
        t0 = time.monotonic()
        code, _out, err, rss = _run_measured(cli, ["predict", str(face_jpg), "--model", str(path)], timeout=120)
        seconds = time.monotonic() - t0
        assert code == 2 and k.expect in err and str(path) in err and "Traceback" not in err, (k.name, err[-2000:])
        assert rss < GB and seconds < 60, f"{k.name}: peak RSS {rss / 2**20:.0f} MiB, {seconds:.0f} s"


# -- the service -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(rec):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from ferkit.service import ServiceConfig, create_app

    class Client(TestClient):  # as a local client sees the server (see test_service.Client)
        def websocket_connect(self, url, *args, headers=None, **kw):
            return super().websocket_connect(url, *args, headers={"host": "127.0.0.1:8000", **(headers or {})}, **kw)

    with Client(create_app(ServiceConfig(workers=1), recognizer=rec), base_url="http://127.0.0.1:8000",
                raise_server_exceptions=False) as c:
        yield c


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and "Traceback" not in r.text
    assert code is None or body["error"]["code"] == code, body
    return body["error"]


@pytest.mark.parametrize("k", [k for k in IMAGE_KINDS if k.status], **ids)
def test_image_uploads_answer_4xx(k: hostile.Kind, tmp_path: Path, service) -> None:
    data = k.make(tmp_path).read_bytes()
    _error(service.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"}), k.status)
    _error(service.post("/v1/predict", files={"file": ("upload", data, "image/png")}), k.status)
    r = service.post("/v1/predict/batch", files=[("a", ("bad", data, "image/png")), ("b", ("ok.png",
                                                 hostile.png_bytes(hostile.small_image(48, 48)), "image/png"))])
    assert r.status_code == 200 and r.json()["results"][0]["error"]["status"] == k.status
    assert "faces" in r.json()["results"][1]  # the batch goes on
    with service.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(data)
        assert ws.receive_json()["error"]["status"] == k.status
        ws.send_text('{"type": "reset"}')
        assert ws.receive_json() == {"type": "reset"}  # the stream goes on


@pytest.mark.parametrize("k", hostile.of("http"), **ids)
def test_http_requests_answer_4xx(k: hostile.Kind, service) -> None:
    q: hostile.Request = k.make(Path("."))
    r = service.request(q.method, q.url, headers=q.headers, content=q.content, json=q.json_body, files=q.files)
    _error(r, q.status, q.code)


@pytest.mark.parametrize("k", hostile.of("ws"), **ids)
def test_websocket_messages(k: hostile.Kind, service) -> None:
    w = k.make(Path("."))
    if "refused" in w:
        from starlette.testclient import WebSocketDenialResponse

        with pytest.raises(WebSocketDenialResponse) as e, service.websocket_connect(w["url"], headers=w["headers"]) as ws:
            ws.receive_json()
        _error(e.value, w["refused"], w["code"])  # refused before the handshake, with its own status and code
        return
    with service.websocket_connect(w["url"]) as ws:
        if "text" in w:
            ws.send_text(w["text"])
        else:
            ws.send_bytes(w["bytes"])
        assert ws.receive_json()["error"]["code"] == w["answer"]
        ws.send_text('{"type": "reset"}')
        assert ws.receive_json() == {"type": "reset"}


# -- memory at the limits: legal images just under them, and the big archive bombs (slow: minutes) --------------
def _at_the_limit(d: Path) -> list[tuple[str, str, Path]]:
    """(what, kind, path): legal images of about MAX_PIXELS in every format's costliest form, and the archive bombs
    of the issue at full size (a 1 GiB .csv.gz, a zip member that honestly declares 2.5 GiB)."""
    import gzip as _gzip
    import zipfile

    from PIL import Image

    side = int(images.MAX_PIXELS**0.5) - 1
    rng = np.random.default_rng(0)
    # Smooth tiles: the files stay small (JPEG would not even write a noise picture this size progressive), while
    # the decoders' scratch memory depends on the size alone.
    tile = cv2.resize(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
    rgba = Image.fromarray(np.tile(tile, (side // 64 + 1, side // 64 + 1, 1))[:side, :side], "RGBA")
    d.mkdir(parents=True, exist_ok=True)
    out = []

    def save(name: str, img: Image.Image, fmt: str, **kw: object) -> None:
        img.save(d / name, fmt, **kw)
        out.append((f"{name}: {side}x{side} {img.mode} {fmt} {kw or ''}", "image", d / name))

    save("cmyk_progressive.jpg", rgba.convert("CMYK"), "JPEG", progressive=True, quality=75, subsampling=0)
    save("rgb_progressive_444.jpg", rgba.convert("RGB"), "JPEG", progressive=True, quality=75, subsampling=0)
    save("rgba.webp", rgba, "WEBP", lossless=True, quality=0, method=0)
    save("rgba_deflate.tif", rgba, "TIFF", compression="tiff_adobe_deflate")
    save("palette.gif", rgba.convert("RGB").quantize(32), "GIF")
    save("palette.bmp", rgba.convert("RGB").quantize(32), "BMP")
    save("rgb.jp2", rgba.convert("RGB"), "JPEG2000")
    png16 = d / "rgba16.png"
    png16.write_bytes(hostile.png(side, side, depth=16, color=6, idat=_rows(side, 8)))
    out.append((f"rgba16.png: {side}x{side} 16-bit RGBA PNG", "image", png16))
    gz = d / "bomb_1gib.csv.gz"
    gz.write_bytes(hostile.gzip_rows(1 << 30))
    out.append((f"bomb_1gib.csv.gz: {gz.stat().st_size:,} bytes inflating to 1 GiB", "data", gz))
    zp = d / "member_2_5gib.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z, z.open("fer2013.csv", "w", force_zip64=True) as f:
        block = b"0,7\n" * (1 << 18)
        for _ in range(int(2.5 * (1 << 30)) // len(block)):
            f.write(block)
    out.append((f"member_2_5gib.zip: {zp.stat().st_size:,} bytes, a member of 2.5 GiB", "data", zp))
    del _gzip
    return out


def _rows(side: int, bytes_per_pixel: int) -> bytes:
    """PNG pixel data (filter byte + row) that deflate packs small: a 1 kB noise pattern repeated."""
    z = zlib.compressobj(6)
    pattern = np.random.default_rng(1).integers(0, 256, 1024, dtype=np.uint8).tobytes()
    row = b"\0" + (pattern * (side * bytes_per_pixel // 1024 + 1))[: side * bytes_per_pixel]
    return b"".join([*(z.compress(row) for _ in range(side)), z.flush()])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_legal_images_at_the_limit_stay_under_1_gb(tmp_path: Path, rec) -> None:
    """Prints each case's peak RSS (run with -s to see the table quoted in docs/inference.md)."""
    rows = []
    for what, kind_, path in _at_the_limit(tmp_path):
        code, out, err, rss = _run_measured(BOMB_SCRIPT, [json.dumps([[kind_, str(path)]])])
        assert code == 0, err[-3000:]
        answer = json.loads(out)[str(path)]
        rows.append((what, path.stat().st_size, rss, answer))
        assert rss < GB, (what, rss)
    print(f"\npeak RSS of `EmotionRecognizer().predict(path)` / `load_dataset(path)` in a fresh process "
          f"(MAX_PIXELS {images.MAX_PIXELS:,}):")
    for what, size, rss, answer in rows:
        print(f"| {what} | {size / 2**20:.1f} MiB | {rss / 2**20:.0f} MiB | {answer.split(': ', 1)[-1][:90]} |")
