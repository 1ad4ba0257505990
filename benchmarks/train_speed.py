"""Training speed of every registered model on this machine: images/s for fp32 and bf16 autocast, and the time
of one FER2013 epoch (28,709 images), measured side by side in one run.

    python benchmarks/train_speed.py [--threads 2] [--batch 128] [--steps 4] [--models vgg_s,resnet_s] [--crops 48,40,32]
                                     [--freeze-blocks 0,7]

The figures use random 48x48 faces and the full training step (augmentation and the random crop the network sees,
forward, backward, SGD step), per crop size (48: the whole face), and for networks with pretrained weights (faceres...)
also with their first N blocks frozen (the transfer recipes' freeze_blocks: no backward through them); the first step of each configuration is a warm-up
and is not counted.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import cpu_name

from ferkit.models import create_model, list_models
from ferkit.training.augment import AugmentConfig, augment

FER2013_TRAIN = 28_709


def bench(name: str, bf16: bool, batch: int, steps: int, crop: int, frozen: int = 0) -> float:
    torch.manual_seed(0)
    model = create_model(name, 7).to(memory_format=torch.channels_last).train()
    for block in list(model.features)[:frozen]:
        block.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True)
    x8 = torch.randint(0, 256, (batch, 1, 48, 48), dtype=torch.uint8)
    y = torch.randint(0, 7, (batch,))
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        x = augment(x8.float(), AugmentConfig(), gen, crop).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / (sum(times[1:]) / steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--crops", default="48,40", help="Crop sizes of the 48x48 face the network sees.")
    ap.add_argument("--freeze-blocks", default="0,7", help="Frozen first blocks, for networks with pretrained weights.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    print(f"# {cpu_name()}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, native bf16: {native}")
    print(f"{'model':<12} {'crop':>4} {'frozen':>6} {'params':>9} {'fp32 img/s':>11} {'bf16 img/s':>11} {'fp32 epoch':>11} "
          f"{'bf16 epoch':>11}")
    for name in args.models.split(","):
        net = create_model(name, 7)
        params = sum(p.numel() for p in net.parameters())
        freezes = [int(f) for f in args.freeze_blocks.split(",")] if hasattr(net, "load_pretrained") else [0]
        for crop, frozen in ((int(c), f) for c in args.crops.split(",") for f in freezes):
            try:
                fp32 = bench(name, False, args.batch, args.steps, crop, frozen)
            except RuntimeError:  # the seeds' baseline has dense layers sized for 48x48
                print(f"{name:<12} {crop:>4} {frozen:>6} {params:>9,} {'n/a: fixed input size':>23}")
                continue
            # Emulated bf16 is ten times slower on CPUs without native bf16: one timed step is enough to show it.
            bf16 = bench(name, True, args.batch, 1 if not native else args.steps, crop, frozen)
            print(f"{name:<12} {crop:>4} {frozen:>6} {params:>9,} {fp32:>11.0f} {bf16:>11.0f} "
                  f"{FER2013_TRAIN / fp32:>10.0f}s {FER2013_TRAIN / bf16:>10.0f}s", flush=True)


if __name__ == "__main__":
    main()
