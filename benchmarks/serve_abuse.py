"""Hostile clients against `ferkit serve`: the server's peak memory and /healthz latency while they push.

Starts `ferkit serve` on 127.0.0.1 (a free port; nothing leaves this machine) in a child process limited to
`--nofile` file descriptors (ulimit -n), then runs each scenario for `--seconds`:

* slow-uploads: N clients each announce a 9.9 MB upload and trickle it in (1 kB per 0.5 s);
* many-uploads: N clients post legal images as fast as they can: 9.9 MB noise PNGs, 16-image batches and
  49-megapixel PNGs (a few MB each, 49 MP to decode);
* many-connections: N idle TCP connections (more than the descriptor limit when N > --nofile).

For each it prints the server's peak RSS (VmHWM, reset between scenarios), /healthz latency percentiles sampled
every 0.25 s by a separate client, the answers the abusers got, and how many bytes of log the server wrote.

    nice -n 15 python benchmarks/serve_abuse.py                          # every scenario, 200 clients, 15 s each
    nice -n 15 python benchmarks/serve_abuse.py --scenarios slow-uploads --clients 50 --seconds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import free_port, machine, status_kb

SCENARIOS = ("slow-uploads", "many-uploads", "many-connections")


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter of the process (Linux 4.0+): each scenario gets its own peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def noise_png(megabytes: float) -> bytes:
    import cv2

    side = int((megabytes * 1e6 / 3) ** 0.5)
    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 0])[1].tobytes()


def big_png(megapixels: float) -> bytes:
    """A legal image of `megapixels` that compresses to a few MB: cheap to send, costly to decode."""
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    row = (np.arange(side, dtype=np.uint32) * 255 // side).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(row, (side, side)).copy(), "L").convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


async def healthz_probe(base: str, stop: asyncio.Event) -> list[float]:
    """/healthz latency every 0.25 s on a fresh connection each time (a new visitor), timeouts as 10 s."""
    out = []
    while not stop.is_set():
        t = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=10) as c:
                await c.get(base + "/healthz")
            out.append(time.perf_counter() - t)
        except httpx.HTTPError:
            out.append(10.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return out


async def slow_uploads(port: int, clients: int, seconds: float, answers: dict) -> None:
    size = int(9.9 * 1024 * 1024)

    async def one() -> None:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            answers[type(e).__name__] = answers.get(type(e).__name__, 0) + 1
            return
        w.write(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
                f"Content-Length: {size}\r\n\r\n".encode())
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                w.write(b"\0" * 1024)
                await w.drain()
                try:
                    line = await asyncio.wait_for(r.readline(), 0.5)
                except TimeoutError:
                    continue
                if line:
                    code = line.split()[1].decode() if len(line.split()) > 1 else "?"
                    answers[code] = answers.get(code, 0) + 1
                    return
                answers["closed"] = answers.get("closed", 0) + 1
                return
            answers["still_open"] = answers.get("still_open", 0) + 1
        except (ConnectionError, OSError):
            answers["reset"] = answers.get("reset", 0) + 1
        finally:
            w.close()

    await asyncio.gather(*(one() for _ in range(clients)))


async def many_uploads(base: str, clients: int, seconds: float, answers: dict) -> None:
    bodies = [("/v1/predict", noise_png(9.5), "image/png"), ("/v1/predict", big_png(49), "image/png")]
    batch = [("f", (f"{i}.png", noise_png(0.5), "image/png")) for i in range(16)]
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as c:

        async def one(k: int) -> None:
            while time.perf_counter() < deadline:
                try:
                    if k % 3 == 2:
                        r = await c.post(base + "/v1/predict/batch", files=batch)
                    else:
                        path, body, ctype = bodies[k % 2]
                        r = await c.post(base + path, content=body, headers={"content-type": ctype})
                    answers[str(r.status_code)] = answers.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as e:
                    answers[type(e).__name__] = answers.get(type(e).__name__, 0) + 1
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(one(k) for k in range(clients)))


async def many_connections(port: int, clients: int, seconds: float, answers: dict) -> None:
    socks = []
    for _ in range(clients):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            socks.append(s)
        except OSError as e:
            answers[type(e).__name__] = answers.get(type(e).__name__, 0) + 1
    answers["opened"] = len(socks)
    await asyncio.sleep(seconds)
    for s in socks:
        try:
            data = s.recv(256)
            what = "503" if data.startswith(b"HTTP/1.1 503") else "closed" if data == b"" else "other"
        except BlockingIOError:
            what = "still_open"
        except OSError:
            what = "reset"
        answers[what] = answers.get(what, 0) + 1
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--clients", type=int, default=200, help="abusive clients per scenario")
    ap.add_argument("--connections", type=int, default=1100, help="idle connections in many-connections")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each scenario")
    ap.add_argument("--nofile", type=int, default=1024, help="the server's file-descriptor limit (ulimit -n)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    # This process opens more sockets than the server may.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 512)), hard))

    port = free_port()
    cmd = [sys.executable, "-c", "from ferkit.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = {k: v for k, v in os.environ.items() if k != "FERKIT_API_KEY"}
    log = tempfile.NamedTemporaryFile(prefix="ferkit-serve-", suffix=".log", delete=False)  # noqa: SIM115

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, max(args.nofile, hard)))

    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_fds)
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {Path(log.name).read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise SystemExit("server not ready after 90 s")
        idle_rss = status_kb(server.pid, "VmRSS") / 1024
        for name in scenarios:
            rss_before = status_kb(server.pid, "VmRSS") / 1024  # memory the allocator kept from the last scenario
            peak_reset = reset_peak(server.pid)
            log_before = Path(log.name).stat().st_size
            answers: dict = {}

            async def run(name: str = name, answers: dict = answers) -> list[float]:
                stop = asyncio.Event()
                probe = asyncio.create_task(healthz_probe(base, stop))
                await asyncio.sleep(0.3)
                if name == "slow-uploads":
                    await slow_uploads(port, args.clients, args.seconds, answers)
                elif name == "many-uploads":
                    await many_uploads(base, args.clients, args.seconds, answers)
                else:
                    await many_connections(port, args.connections, args.seconds, answers)
                stop.set()
                return await probe

            t0 = time.perf_counter()
            latencies = np.array(asyncio.run(run())) * 1000
            res = {
                "scenario": name,
                "clients": args.connections if name == "many-connections" else args.clients,
                "seconds": round(time.perf_counter() - t0, 1),
                "rss_before_mb": round(rss_before, 1),
                "peak_rss_mb": round(status_kb(server.pid, "VmHWM") / 1024, 1) if peak_reset else None,
                "rss_after_mb": round(status_kb(server.pid, "VmRSS") / 1024, 1),
                "healthz_p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
                "healthz_max_ms": round(float(latencies.max()), 1) if len(latencies) else None,
                "healthz_timeouts": int((latencies >= 10_000).sum()),
                "answers": answers,
                "log_bytes": Path(log.name).stat().st_size - log_before,
                "server_alive": server.poll() is None,
            }
            results.append(res)
            if not args.json:
                print(f"{name}: peak RSS {res['peak_rss_mb']} MB, /healthz p50 {res['healthz_p50_ms']} ms max "
                      f"{res['healthz_max_ms']} ms ({res['healthz_timeouts']} timeouts), log {res['log_bytes']} B, "
                      f"answers {answers}", file=sys.stderr)
            time.sleep(1.0)
        config = httpx.get(base + "/v1/models").json()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        Path(log.name).unlink(missing_ok=True)
    report = {
        "machine": machine(),
        "server": {"nofile": args.nofile, "workers": config["workers"], "queue": config["queue"],
                   "max_upload_mb": config["max_upload_mb"], "idle_rss_mb": round(idle_rss, 1)},
        "scenarios": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\n{report['machine']}; server: ulimit -n {args.nofile}, {config['workers']} workers, "
              f"idle RSS {report['server']['idle_rss_mb']} MB\n")
        print("| scenario | clients | RSS before MB | peak RSS MB | /healthz p50 ms | /healthz max ms | log bytes | answers |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for r in results:
            print(f"| {r['scenario']} | {r['clients']} | {r['rss_before_mb']} | {r['peak_rss_mb']} | "
                  f"{r['healthz_p50_ms']} | {r['healthz_max_ms']} | {r['log_bytes']} | {json.dumps(r['answers'])} |")
    return 0 if all(r["server_alive"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
