"""Scale-out of `ferkit serve`: total requests/s of 1 and 2 replicas (separate server processes) on this machine.

For each count it starts that many `ferkit serve` processes on 127.0.0.1 (free ports), waits until every /readyz
answers 200, and sends single-face JPEGs to POST /v1/predict from --clients concurrent clients split evenly over the
replicas, each client keeping its connection to one replica as a connection-level (L4) load balancer would. The
request loop, image and latency figures are benchmarks/serve_load.py's; this script adds the replicas. Traffic never
leaves 127.0.0.1.

    nice -n 15 python benchmarks/serve_replicas.py                        # 1 and 2 replicas, 8 clients, 10 s
    python benchmarks/serve_replicas.py --replicas 1,2,4 --clients 16 --seconds 20 --json
    python benchmarks/serve_replicas.py --seconds 2 --clients 2           # a quick check that it works

Each replica runs --workers inference threads (default: cores / replicas, so every count uses the same cores). The
latency columns are the worst replica's percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
from _common import free_port, machine, rss_mb
from serve_load import face_jpeg, level


def start(replicas: int, workers: int, args: argparse.Namespace) -> list[tuple[subprocess.Popen, str]]:
    env = {k: v for k, v in os.environ.items() if k != "FERKIT_API_KEY"}
    servers = []
    for _ in range(replicas):
        port = free_port()
        cmd = [sys.executable, "-c", "from ferkit.cli import main; main()", "-q", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--queue", str(args.queue), "--workers", str(workers)]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        servers.append((proc, f"http://127.0.0.1:{port}"))
    deadline = time.time() + 90
    waiting = list(servers)
    while waiting and time.time() < deadline:
        for proc, base in list(waiting):
            if proc.poll() is not None:
                stop(servers)
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    waiting.remove((proc, base))
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    if waiting:
        stop(servers)
        raise SystemExit(f"{len(waiting)} server(s) not ready after 90 s")
    return servers


def stop(servers: list[tuple[subprocess.Popen, str]]) -> None:
    for proc, _ in servers:
        proc.terminate()
    for proc, _ in servers:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def spread(urls: list[str], body: bytes, clients: int, seconds: float) -> list[dict]:
    shares = [clients // len(urls) + (i < clients % len(urls)) for i in range(len(urls))]
    return await asyncio.gather(*(level(u, body, n, seconds) for u, n in zip(urls, shares, strict=True) if n))


def measure(replicas: int, args: argparse.Namespace, body: bytes) -> dict:
    workers = args.workers or max(1, (os.cpu_count() or 1) // replicas)
    servers = start(replicas, workers, args)
    try:
        path = "/v1/predict" + ("?detect=false" if args.crops else "")
        urls = [base + path for _, base in servers]
        asyncio.run(spread(urls, body, max(2, replicas), 2.0))  # warm-up: sessions, buffers, connection pools
        parts = asyncio.run(spread(urls, body, args.clients, args.seconds))
        rss = sum(rss_mb(proc.pid) for proc, _ in servers)
    finally:
        stop(servers)
    return {
        "replicas": replicas,
        "workers_each": workers,
        "clients": args.clients,
        "requests_per_s": round(sum(p["requests_per_s"] for p in parts), 1),
        "p50_ms_worst": max(p["p50_ms"] or 0 for p in parts),
        "p95_ms_worst": max(p["p95_ms"] or 0 for p in parts),
        "p99_ms_worst": max(p["p99_ms"] or 0 for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "rss_mb_total": round(rss, 1),
        "per_replica": parts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", default="1,2", help="comma-separated numbers of server processes")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients in all, split over the replicas")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    ap.add_argument("--workers", type=int, default=0, help="inference threads per replica (0: cores / replicas)")
    ap.add_argument("--queue", type=int, default=64, help="server queue (large enough: the test wants no 503)")
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    ap.add_argument("--crops", action="store_true",
                    help="send a 120x120 face crop with detect=false (classification only, no face detector)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()

    counts = [int(x) for x in args.replicas.split(",")]
    if args.clients < max(counts):
        raise SystemExit(f"--clients {args.clients}: fewer than the {max(counts)} replicas")
    body = face_jpeg(args.crops)
    load0 = os.getloadavg()[0]
    results = [measure(n, args, body) for n in counts]
    load1 = os.getloadavg()[0]
    report = {
        "machine": machine(),
        "image": "astronaut face crop 120x120 JPEG, detect=false" if args.crops
        else "skimage astronaut 512x512 JPEG q90, one face",
        "seconds": args.seconds,
        "load_average": [round(load0, 2), round(load1, 2)],
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"# {report['machine']}; {report['image']}; {args.clients} clients, {args.seconds:g} s each; "
              f"1-min load average {load0:.1f} before, {load1:.1f} after")
        print("| replicas | workers each | requests/s | vs 1st | p50 ms | p95 ms | p99 ms | errors | RSS MB (all) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = results[0]["requests_per_s"] or float("nan")
        for r in results:
            print(f"| {r['replicas']} | {r['workers_each']} | {r['requests_per_s']} | "
                  f"{r['requests_per_s'] / base:.2f}x | {r['p50_ms_worst']} | {r['p95_ms_worst']} | "
                  f"{r['p99_ms_worst']} | {r['errors']} | {r['rss_mb_total']} |")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
