"""A cheap probe of fine-tuning settings for a pretrained backbone, before a full-length run: a subset of FER2013
Training, one pass with the new head alone (the body frozen), then passes of the whole body (its first 7 blocks
frozen, lower rates deeper down: lr x 0.5 x 0.93^depth), scored on a subset of PublicTest after each pass.

    python scripts/transfer_probe.py sgd0.02 adamw3e-4 sgd0.003 adamw1e-3 [--model faceres96] [--train 4000] [--val 1000]

It found that SGD at the recipe's first lr (0.02) collapses faceres96 to one class within a pass of unfreezing (no
batch norms: they come folded into the pretrained convolutions), and that AdamW does not (docs/training.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ferkit.data import load_dataset
from ferkit.models import create_model
from ferkit.training.augment import AugmentConfig, augment


def groups(m: torch.nn.Module, lr: float, decay: float = 0.93, body: float = 0.5, frozen: int = 7) -> list[dict]:
    out = [{"params": list(m.head.parameters()), "lr": lr}]
    n = len(m.features)
    out += [{"params": list(b.parameters()), "lr": lr * body * decay ** (n - 1 - i)}
            for i, b in enumerate(m.features) if i >= frozen]
    return out


OPTIMISERS = {
    "sgd0.02": lambda m: torch.optim.SGD(groups(m, 0.02), momentum=0.9, nesterov=True, weight_decay=2e-4),
    "sgd0.003": lambda m: torch.optim.SGD(groups(m, 0.003), momentum=0.9, nesterov=True, weight_decay=2e-4),
    "adamw3e-4": lambda m: torch.optim.AdamW(groups(m, 3e-4), weight_decay=0.05),
    "adamw1e-3": lambda m: torch.optim.AdamW(groups(m, 1e-3), weight_decay=0.05),
    "sgd0.01": lambda m: torch.optim.SGD(groups(m, 0.01), momentum=0.9, nesterov=True, weight_decay=2e-4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("optimisers", nargs="+", choices=sorted(OPTIMISERS))
    ap.add_argument("--model", default="faceres96")
    ap.add_argument("--data", default="../shared/datasets/fer2013.zip")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=2, help="passes of the whole body after the head's pass")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    rng = np.random.default_rng(0)
    tr = rng.choice(len(ds["train"]), args.train, replace=False)
    va = rng.choice(len(ds["val"]), args.val, replace=False)
    xt = torch.from_numpy(ds["train"].images[tr]).float().unsqueeze(1)
    yt = torch.from_numpy(ds["train"].labels[tr]).long()
    xv = torch.from_numpy(ds["val"].images[va]).float().unsqueeze(1)
    yv = ds["val"].labels[va]
    aug = AugmentConfig(rotate=10, translate=0.08, erase=0.25, lowres=0.3)

    @torch.no_grad()
    def accuracy(m: torch.nn.Module) -> float:
        m.eval()
        p = torch.cat([m(xv[i:i + 250].contiguous(memory_format=torch.channels_last)) for i in range(0, len(xv), 250)])
        return float((p.argmax(1).numpy() == yv).mean())

    for name in args.optimisers:
        torch.manual_seed(0)
        m = create_model(args.model, 7)
        m.load_pretrained()
        m = m.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(0)
        m.features.requires_grad_(False)
        opt: torch.optim.Optimizer = torch.optim.AdamW(m.head.parameters(), lr=1e-3, weight_decay=1e-4)
        t0 = time.time()
        for k in range(1 + args.passes):
            if k == 1:
                for i, block in enumerate(m.features):
                    block.requires_grad_(i >= 7)
                opt = OPTIMISERS[name](m)
            m.train()
            perm = torch.randperm(len(xt), generator=gen)
            for s in range(0, len(xt), 64):
                idx = perm[s:s + 64]
                x = augment(xt[idx], aug, gen).contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(m(x), yt[idx], label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
            what = "head alone" if k == 0 else f"whole body, pass {k}"
            print(f"{name:10s} {what:20s} PublicTest subset {100 * accuracy(m):.1f}%  {time.time() - t0:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
