"""The browser page in a real headless Chromium, driven over the Chrome DevTools protocol (python `websockets`).

Skipped when /usr/bin/chromium (Debian's `chromium`) or the `websockets` package is missing. Nothing is downloaded;
the browser talks only to a uvicorn server the test starts on 127.0.0.1. Set FERKIT_SCREENSHOTS=DIR to keep the
screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import pytest
from helpers import astronaut_bgr, free_port, start_uvicorn

pytest.importorskip("fastapi")
websockets = pytest.importorskip("websockets")
uvicorn = pytest.importorskip("uvicorn")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def server(recognizer):
    from ferkit.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(port=free_port(), workers=1), recognizer=recognizer)
    srv, thread = start_uvicorn(app, timeout=30)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{app.state.config.port}", recognizer.classes
    srv.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("skimage.data")
    d = tmp_path_factory.mktemp("images")
    img = astronaut_bgr()
    jpeg = d / "astronaut.jpg"
    cv2.imwrite(str(jpeg), img)
    # Chromium's fake camera plays an MJPEG file (concatenated JPEGs) in a loop.
    frame = cv2.imencode(".jpg", cv2.resize(img, (640, 480)))[1].tobytes()
    mjpeg = d / "camera.mjpeg"
    mjpeg.write_bytes(frame * 30)
    return {"jpeg": jpeg, "mjpeg": mjpeg}


class Cdp:
    """Just enough of the DevTools protocol: commands by id, events ignored."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    async def __call__(self, method: str, **params):
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str):
        res = await self("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    async def screenshot(self, path: Path) -> None:
        res = await self("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(res["data"]))
        keep = os.environ.get("FERKIT_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)


@pytest.fixture
def browser(tmp_path, images):
    profile = tmp_path / "profile"
    args = [
        "nice", "-n", "15", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        "--disable-default-apps", "--mute-audio", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1", "--window-size=1280,900",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={images['mjpeg']}", "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.time() + 30
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.1)
    try:
        assert port_file.exists(), "chromium did not open its DevTools port"
        yield int(port_file.read_text().split("\n")[0])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _page(devtools_port: int):
    import httpx

    async with httpx.AsyncClient() as client:
        targets = (await client.get(f"http://127.0.0.1:{devtools_port}/json/list")).json()
    page = next(t for t in targets if t["type"] == "page")
    return await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)


@pytest.mark.slow
def test_page_upload_shows_emotion(server, browser, images, tmp_path):
    base, classes = server

    async def run() -> str:
        async with await _page(browser) as ws:
            cdp = Cdp(ws)
            await cdp("Page.enable")
            await cdp("Page.navigate", url=base + "/")
            await cdp.wait_for("document.readyState === 'complete' && "
                               "document.querySelector('#model').textContent.includes('classes')")
            doc = await cdp("DOM.getDocument")
            node = await cdp("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
            await cdp("DOM.setFileInputFiles", files=[str(images["jpeg"])], nodeId=node["nodeId"])
            label = await cdp.wait_for("(document.querySelector('#faces .face-label') || {}).textContent")
            bars = await cdp.js("document.querySelectorAll('#faces .bar').length")
            assert bars == len(classes)
            assert await cdp.js("!document.querySelector('#view').classList.contains('hidden')")
            assert await cdp.js("document.querySelector('#error').style.display") in ("", "none")
            await cdp.screenshot(tmp_path / "page_upload.png")
            # The offline API reference renders the OpenAPI schema with its examples.
            await cdp("Page.navigate", url=base + "/docs")
            ops = await cdp.wait_for("document.querySelectorAll('details.op').length")
            assert ops >= 7
            await cdp.js("document.querySelectorAll('details.op')[2].open = true")
            assert "probabilities" in await cdp.js("document.body.innerText")
            await cdp.screenshot(tmp_path / "docs_page.png")
            return label

    label = asyncio.run(run())
    assert label in classes
    assert (tmp_path / "page_upload.png").stat().st_size > 10_000


@pytest.mark.slow
def test_page_camera_streams_live_labels(server, browser, tmp_path):
    base, classes = server

    async def run() -> tuple[str, str]:
        async with await _page(browser) as ws:
            cdp = Cdp(ws)
            await cdp("Page.enable")
            await cdp("Page.navigate", url=base + "/")
            await cdp.wait_for("document.readyState === 'complete' && "
                               "document.querySelector('#model').textContent.includes('classes')")
            await cdp.js("document.querySelector('#tab-camera').click()")
            await cdp.js("document.querySelector('#cam-btn').click()")
            label = await cdp.wait_for("(document.querySelector('#live .face-label') || {}).textContent", 40)
            # A few frames for the timeline, then a screenshot.
            await cdp.wait_for("/frame ([5-9]|\\d\\d)/.test(document.querySelector('#cam-stats').textContent)", 40)
            stats = await cdp.js("document.querySelector('#cam-stats').textContent")
            await cdp.screenshot(tmp_path / "page_camera.png")
            await cdp.js("document.querySelector('#cam-btn').click()")
            return label, stats

    label, stats = asyncio.run(run())
    assert label in classes
    assert "frames/s" in stats
