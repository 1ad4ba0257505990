"""Data-parallel training speed: images/s of `ferkit train` on 1 process and under torchrun on N processes.

Each configuration is a real run of the training command (`python -m ferkit train`, through torchrun for more
than one process) on the same data and global batch; the figure is the training loop's own images/s of the last
epoch in the run's log.jsonl (augmentation, forward, backward, gradient all-reduce, optimiser, EMA; not validation),
so the first epoch can serve as a warm-up. The data is a synthetic FER2013-style CSV (random 48x48 faces, 7 classes)
unless --data names a dataset.

    python benchmarks/ddp_speed.py                                  # 1 and 2 CPU processes, cores shared out
    python benchmarks/ddp_speed.py --procs 1,2 --images 4096 --epochs 3
    python benchmarks/ddp_speed.py --device cuda --procs 1,2,4      # one GPU per process
    python benchmarks/ddp_speed.py --images 256 --epochs 1          # a quick check that it works (figures meaningless)

On CPUs every process gets cores / processes threads, so N processes use the same cores as one: the table shows
the cost of splitting the work (all-reduce, smaller per-process batches, N copies of the data), not a gain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import free_port, machine

FER2013_TRAIN = 28_709


def synthetic_csv(path: Path, train: int, val: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for i in range(train + val):
            px = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
            f.write(f"{rng.integers(0, 7)},{px},{'Training' if i < train else 'PublicTest'}\n")
    return path


def run(procs: int, args: argparse.Namespace, data: str, work: Path) -> dict:
    out = work / f"p{procs}"
    threads = (args.threads or max(1, (os.cpu_count() or 1) // procs)) if args.device == "cpu" else 1
    sets = [f"data={data}", f"out={out}", f"model={args.model}", f"epochs={args.epochs}",
            f"batch_size={args.batch}", f"device={args.device}", f"threads={threads}", f"precision={args.precision}"]
    cmd = [sys.executable]
    if procs > 1:
        cmd += ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"]
    cmd += ["-m", "ferkit", "train", "--json", *(a for s in sets for a in ("-s", s))]
    env = os.environ | {"FERKIT_CACHE": str(work / "cache")}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{procs} processes failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"processes": procs, "threads_each": threads, "batch_each": args.batch // procs,
            "images_per_s": rows[-1]["images_per_s"], "epoch_s": rows[-1]["seconds"], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2", help="comma-separated numbers of processes")
    ap.add_argument("--data", default=None, help="a dataset (default: a synthetic CSV of --images faces)")
    ap.add_argument("--images", type=int, default=2048, help="training images of the synthetic dataset")
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch is measured; the first warms up")
    ap.add_argument("--model", default="vgg_s")
    ap.add_argument("--batch", type=int, default=128, help="global batch (split over the processes)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    ap.add_argument("--threads", type=int, default=0, help="threads per CPU process (0: cores / processes)")
    ap.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (as the training setting)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()

    import torch

    procs = [int(p) for p in args.procs.split(",")]
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ferkit-ddp-") as tmp:
        work = Path(tmp)
        data = args.data or str(synthetic_csv(work / "synthetic.csv", args.images, 256))
        results = [run(p, args, data, work) for p in procs]
    load1 = os.getloadavg()[0]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None
    system = machine() + (f", {gpu}" if gpu else "") + f", torch {torch.__version__}"
    base = results[0]["images_per_s"]
    for r in results:
        r["vs_first"] = r["images_per_s"] / base
    report = {"machine": system, "device": args.device, "model": args.model, "global_batch": args.batch,
              "data": args.data or f"synthetic, {args.images} training images", "epochs": args.epochs,
              "load_average": [round(load0, 2), round(load1, 2)], "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"# {system}; {args.model}, global batch {args.batch}, precision {args.precision}, {report['data']}, "
          f"last of {args.epochs} epochs; 1-min load average {load0:.1f} before, {load1:.1f} after")
    first = f"{procs[0]} process{'es' if procs[0] > 1 else ''}"
    print(f"| processes | threads each | batch each | images/s | vs {first} | FER2013 epoch | whole run incl. start-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['processes']} | {r['threads_each'] if args.device == 'cpu' else '-'} | {r['batch_each']} | "
              f"{r['images_per_s']:.0f} | {r['vs_first']:.2f}x | {FER2013_TRAIN / r['images_per_s']:.0f} s | "
              f"{r['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()
