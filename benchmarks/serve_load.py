"""Load test of `ferkit serve`: requests/s and latency percentiles at several client concurrencies.

Starts `ferkit serve` on 127.0.0.1 (a free port) in a child process, sends single-face JPEGs (skimage's astronaut,
512 x 512) to POST /v1/predict from N concurrent clients for a fixed time per level, and reports throughput,
p50/p95/p99 latency, errors and the server's resident memory before and after. Traffic never leaves 127.0.0.1.

    nice -n 15 python benchmarks/serve_load.py                      # 1, 8 and 32 clients, 10 s each
    nice -n 15 python benchmarks/serve_load.py --levels 1,4 --seconds 5 --workers 2 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def face_jpeg(crop: bool = False) -> bytes:
    from skimage import data

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,8,32", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    ap.add_argument("--workers", type=int, default=None, help="server inference threads (default: the server's)")
    ap.add_argument("--queue", type=int, default=64, help="server queue (large enough: the test wants no 503)")
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    ap.add_argument("--crops", action="store_true",
                    help="send a 120x120 face crop with detect=false (classification only, no face detector)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-c", "from ferkit.cli import main; main()", "-q", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--queue", str(args.queue)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.model:
        cmd += ["--model", args.model]
    env = {k: v for k, v in os.environ.items() if k != "FERKIT_API_KEY"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("server not ready after 60 s")
        info = httpx.get(base + "/v1/models").json()
        body = face_jpeg(args.crops)
        url = base + "/v1/predict" + ("?detect=false" if args.crops else "")
        asyncio.run(level(url, body, 2, 2.0))  # warm-up: sessions, buffers, connection pools
        rss_before = rss_mb(server.pid)
        results = []
        for n in (int(x) for x in args.levels.split(",")):
            res = asyncio.run(level(url, body, n, args.seconds))
            res["rss_mb_after"] = round(rss_mb(server.pid), 1)
            results.append(res)
            if not args.json:
                print(f"{n:>3} clients: {res['requests_per_s']:>6} req/s  p50 {res['p50_ms']} ms  p95 {res['p95_ms']} ms"
                      f"  p99 {res['p99_ms']} ms  errors {res['errors']}  RSS {res['rss_mb_after']} MB",
                      file=sys.stderr)
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "model": info["models"][0]["name"],
            "detector": info["detector"],
            "workers": info["workers"],
            "image": "astronaut face crop 120x120 JPEG, detect=false" if args.crops
            else "skimage astronaut 512x512 JPEG q90, one face",
            "rss_mb_before": round(rss_before, 1),
            "levels": results,
        }
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nserver RSS before {report['rss_mb_before']} MB, after {results[-1]['rss_mb_after']} MB; "
              f"model {report['model']}, detector {report['detector']}, {report['workers']} workers; "
              f"{report['image']}\n")
        print("| clients | requests/s | p50 ms | p95 ms | p99 ms | errors | RSS after MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
                  f"{r['errors']} | {r['rss_mb_after']} |")
    bad = sum(r["errors"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
