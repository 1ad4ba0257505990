"""Load test of `ferkit serve`, micro-batching off against on: requests/s and latency at several client concurrencies.

For each --model it starts two `ferkit serve` processes on 127.0.0.1 (free ports), one with batching off
(FERKIT_BATCH_FACES=0) and one with it on (--window-ms, default 2, and --batch-faces), and measures them
in turns, level by level (off at 1 client, on at 1 client, off at 8, ...), so a change in the machine's load hits both
alike. N concurrent clients post single-face JPEGs (skimage's astronaut, 512 x 512) to POST /v1/predict for a fixed
time per level. It prints throughput, p50/p95/p99 latency, errors, the server's resident memory, and for the batching
server how many images and faces its batches held at that level (from its /metrics), then one table with the on/off
ratios. Traffic never leaves 127.0.0.1.

    nice -n 15 python benchmarks/serve_load.py                      # the default model, 1, 8 and 32 clients, 10 s each
    python benchmarks/serve_load.py --model default --model fast    # both models in one run
    python benchmarks/serve_load.py --crops                         # 120 x 120 face crops, detect=false
    python benchmarks/serve_load.py --levels 1,4 --seconds 2 --workers 2 --json   # a quick check that it works
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
from _common import astronaut, free_port, machine, rss_mb

MODES = ("off", "on")


def face_jpeg(crop: bool = False) -> bytes:
    img = astronaut()
    if crop:  # the astronaut's face, square, as a detector would cut it
        img = img[50:170, 163:283]
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


async def level(url: str, body: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    faces: list[int] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers={"content-type": "image/jpeg"})
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                    continue
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    faces.append(len(r.json()["faces"]))

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    ok = statuses.get(200, 0)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok + len(errors),
        "statuses": statuses,
        "requests_per_s": round(ok / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "faces_per_image": sorted(set(faces)),
    }


class Server:
    """`ferkit serve` in a child process on a free port of 127.0.0.1; `env` adds FERKIT_* settings."""

    def __init__(self, model: str | None, args: argparse.Namespace, env: dict[str, str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "from ferkit.cli import main; main()", "-q", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--queue", str(args.queue)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        if model:
            cmd += ["--model", model]
        full = {k: v for k, v in os.environ.items() if k != "FERKIT_API_KEY" and not k.startswith("FERKIT_BATCH_")}
        self.proc = subprocess.Popen(cmd, env={**full, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return httpx.get(self.base + "/v1/models").json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout:g} s")

    def batches(self) -> dict[str, float]:
        """The batch histograms' running sums and counts (ferkit.service.telemetry)."""
        text = httpx.get(self.base + "/metrics").text
        out = {}
        for name in ("ferkit_batch_images_sum", "ferkit_batch_images_count", "ferkit_batch_faces_sum",
                     "ferkit_batch_wait_seconds_sum", "ferkit_batch_wait_seconds_count"):
            m = re.search(rf"^{name} (\S+)$", text, re.M)
            out[name] = float(m.group(1)) if m else 0.0
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    calls = after["ferkit_batch_images_count"] - before["ferkit_batch_images_count"]
    waits = after["ferkit_batch_wait_seconds_count"] - before["ferkit_batch_wait_seconds_count"]
    if not calls:
        return {"batches": 0}
    return {
        "batches": int(calls),
        "images_per_batch": round((after["ferkit_batch_images_sum"] - before["ferkit_batch_images_sum"]) / calls, 2),
        "faces_per_batch": round((after["ferkit_batch_faces_sum"] - before["ferkit_batch_faces_sum"]) / calls, 2),
        "mean_wait_ms": round(1000 * (after["ferkit_batch_wait_seconds_sum"]
                                      - before["ferkit_batch_wait_seconds_sum"]) / max(waits, 1), 2),
    }


def run_model(model: str, args: argparse.Namespace, body: bytes, url_path: str, levels: list[int]) -> dict:
    on_env = {}
    if args.window_ms is not None:
        on_env["FERKIT_BATCH_WINDOW_MS"] = str(args.window_ms)
    if args.batch_faces is not None:
        on_env["FERKIT_BATCH_FACES"] = str(args.batch_faces)
    servers = {"off": Server(model, args, {"FERKIT_BATCH_FACES": "0"}), "on": Server(model, args, on_env)}
    try:
        info = {mode: s.wait_ready() for mode, s in servers.items()}
        if info["on"]["batch_faces"] == 0:
            raise SystemExit("the 'on' server has batching off (--batch-faces or --window-ms 0?)")
        for s in servers.values():
            asyncio.run(level(s.base + url_path, body, 2, 2.0))  # warm-up: sessions, buffers, connection pools
        rss_before = {mode: round(rss_mb(s.proc.pid), 1) for mode, s in servers.items()}
        rows = []
        for n in levels:
            row: dict = {"clients": n}
            for mode in MODES:  # in turns: the same machine state for both, level by level
                s = servers[mode]
                before = s.batches()
                res = asyncio.run(level(s.base + url_path, body, n, args.seconds))
                res["rss_mb_after"] = round(rss_mb(s.proc.pid), 1)
                if mode == "on":
                    res.update(batch_stats(before, s.batches()))
                row[mode] = res
                if not args.json:
                    print(f"{model} batching {mode:>3}, {n:>3} clients: {res['requests_per_s']:>6} req/s  "
                          f"p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  errors {res['errors']}  "
                          f"RSS {res['rss_mb_after']} MB"
                          + (f"  {res.get('images_per_batch', 0)} images/batch" if mode == "on" else ""),
                          file=sys.stderr)
            off, on = row["off"], row["on"]
            row["ratio_requests_per_s"] = round(on["requests_per_s"] / off["requests_per_s"], 2) \
                if off["requests_per_s"] else None
            rows.append(row)
        m = info["on"]["models"][0]
        return {
            "model": model,
            "name": "+".join(x["name"] for x in info["on"]["models"]),
            "version": m.get("version", ""),
            "detector": info["on"]["detector"],
            "workers": info["on"]["workers"],
            "batch_window_ms": info["on"]["batch_window_ms"],
            "batch_faces": info["on"]["batch_faces"],
            "rss_mb_before": rss_before,
            "levels": rows,
        }
    finally:
        for s in servers.values():
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None, metavar="MODEL",
                    help="a model spec for `ferkit serve --model` (built-in name, .onnx, run folder); repeat for "
                         "several models, each measured on its own (default: default)")
    ap.add_argument("--levels", default="1,8,32", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each level, per mode")
    ap.add_argument("--workers", type=int, default=None, help="server inference threads (default: the server's)")
    ap.add_argument("--queue", type=int, default=64, help="server queue (large enough: the test wants no 503)")
    ap.add_argument("--window-ms", type=float, default=2.0,
                    help="batching server's FERKIT_BATCH_WINDOW_MS (the server's default is 0: off)")
    ap.add_argument("--batch-faces", type=int, default=None,
                    help="batching server's FERKIT_BATCH_FACES (default: the server's)")
    ap.add_argument("--crops", action="store_true",
                    help="send a 120x120 face crop with detect=false (classification only, no face detector)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    body = face_jpeg(args.crops)
    url_path = "/v1/predict" + ("?detect=false" if args.crops else "")

    results = [run_model(model, args, body, url_path, levels) for model in args.model or ["default"]]
    report = {
        "machine": machine(),
        "image": "astronaut face crop 120x120 JPEG, detect=false" if args.crops
        else "skimage astronaut 512x512 JPEG q90, one face",
        "seconds_per_level": args.seconds,
        "models": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\n{report['machine']}; {report['image']}; {args.seconds:g} s per level and mode\n")
        print("| model | clients | req/s off | req/s on | on/off | p50 ms off | p50 ms on | p99 ms off | p99 ms on "
              "| images/batch | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for res in results:
            for r in res["levels"]:
                off, on = r["off"], r["on"]
                print(f"| {res['name']} | {r['clients']} | {off['requests_per_s']} | {on['requests_per_s']} | "
                      f"{r['ratio_requests_per_s']} | {off['p50_ms']} | {on['p50_ms']} | {off['p99_ms']} | "
                      f"{on['p99_ms']} | {on.get('images_per_batch', '-')} | {off['errors'] + on['errors']} |")
        for res in results:
            last = res["levels"][-1]
            print(f"\n{res['name']} {res['version']}: detector {res['detector']}, {res['workers']} workers, batching "
                  f"on = {res['batch_faces']} faces within {res['batch_window_ms']:g} ms; server RSS before "
                  f"{res['rss_mb_before']['off']} / {res['rss_mb_before']['on']} MB (off / on), after "
                  f"{last['off']['rss_mb_after']} / {last['on']['rss_mb_after']} MB")
    bad = sum(r[m]["errors"] for res in results for r in res["levels"] for m in MODES)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
