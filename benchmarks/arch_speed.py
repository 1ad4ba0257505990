"""Inference speed of every registered architecture in ONNX Runtime, fp32 and int8, side by side in one run: the
speed half of choosing the `fast` model (the accuracy half is each trained run's PublicTest accuracy).

    python benchmarks/arch_speed.py [--threads 1] [--batch 64] [--crops 48,40] [--models vgg_xs,vgg_s]

Untrained weights are as fast as trained ones, so each network is exported as it is built; its int8 copy is
calibrated on random faces (the ranges change the numbers, not the work). Figures: faces per second on random 48x48
faces, centre crop, one ONNX Runtime session per model, the best of --rounds timed turns of --seconds each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import cpu_name

from ferkit.inference.onnx_classifier import OnnxClassifier
from ferkit.models import create_model, list_models
from ferkit.models.export import export_onnx
from ferkit.models.quantize import quantize_int8

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def faces_per_s(path: Path, faces: np.ndarray, threads: int, batch: int, seconds: float, rounds: int) -> float:
    m = OnnxClassifier(path, threads=threads)
    m.predict_proba(faces[:batch])
    best = 0.0
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(0, len(faces), batch):
                m.predict_proba(faces[i : i + batch])
            n += len(faces)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (benchmarks/peers.py's default)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--crops", default="40", help="crop sizes of the 48x48 face the network sees (48: all of it)")
    ap.add_argument("--models", default=",".join(m for m in list_models() if m != "baseline"))
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import torch

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (512, 48, 48), dtype=np.uint8)
    print(f"# {cpu_name()}, {args.threads} thread(s), batch {args.batch}, "
          f"faces/s in ONNX Runtime")
    print(f"{'model':<10} {'crop':>4} {'params':>10} {'fp32 faces/s':>13} {'int8 faces/s':>13} {'int8/fp32':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = create_model(name, len(CLASSES)).eval()
            params = sum(p.numel() for p in model.parameters())
            for crop in (int(c) for c in args.crops.split(",")):
                fp32 = Path(tmp) / f"{name}_{crop}.onnx"
                export_onnx(model, fp32, CLASSES, 48, crop)
                int8 = fp32.with_name(fp32.stem + "_int8.onnx")
                quantize_int8(fp32, int8, faces, images=256)
                a, b = (faces_per_s(p, faces, args.threads, args.batch, args.seconds, args.rounds) for p in (fp32, int8))
                print(f"{name:<10} {crop:>4} {params:>10,} {a:>13,.0f} {b:>13,.0f} {b / a:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
