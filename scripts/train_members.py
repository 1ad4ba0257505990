"""Train the ensemble's members one after another, on a GPU when there is one, and score each on PublicTest.

    python scripts/train_members.py --device cuda --out runs/members              # the full set, one GPU
    python scripts/train_members.py --device cpu --epochs 1 --members vgg_s:1     # a smoke run

Each member is `configs/fer2013_crop40.toml` with its own model and seed, in RUN/<model>_s<seed>/: the usual run
folder (best.safetensors, model.onnx, log.jsonl, ...) plus val_probs.npz, its PublicTest (val) probabilities with
ten-crop TTA, which is all that choosing the ensemble's weights needs, and member.json (its figures). Finished members are kept; an interrupted one
resumes. Stops starting new members once --budget-minutes is spent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Diverse members: two VGG widths and a ResNet, different seeds. On one H200 each takes a few minutes.
MEMBERS = ["vgg_s:11", "vgg_m:12", "vgg_l:13", "resnet_s:14", "vgg_s:15"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "fer2013_crop40.toml")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "members")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--members", default=",".join(MEMBERS), help="model:seed,... (registry names)")
    ap.add_argument("--epochs", type=int, help="Override the recipe's epochs (e.g. 1 for a smoke run).")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "fer2013.zip"),
                    help="The dataset (the recipe names none).")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="key=value, as ferkit train -s")
    ap.add_argument("--budget-minutes", type=float, default=float("inf"))
    args = ap.parse_args()

    import torch

    from ferkit.data import load_dataset
    from ferkit.models.export import load_weights
    from ferkit.training import load_config, train
    from ferkit.training.trainer import predict_proba

    t0 = time.time()
    done = {}
    for spec in args.members.split(","):
        model, seed = spec.split(":")
        run = args.out / f"{model}_s{seed}"
        if (run / "member.json").is_file():
            done[run.name] = json.loads((run / "member.json").read_text())
            continue
        if (time.time() - t0) / 60 > args.budget_minutes:
            print(f"budget spent: {run.name} not started")
            break
        extra = [f"model={model}", f"seed={seed}", f"out={run}", f"device={args.device}", *args.overrides]
        extra += [f"epochs={args.epochs}"] * (args.epochs is not None) + [f"data={args.data}"]
        cfg = load_config(args.config, extra)
        # A member folder is this script's own: a start that died before its first epoch is started again.
        summary = train(cfg, resume=(run / "state.pt").is_file(), exist_ok=True)
        net, info = load_weights(run / "best.safetensors")
        val = load_dataset(cfg.data, format=cfg.format, classes=cfg.classes)["val"]
        prob = predict_proba(net.to(args.device), val.images, torch.device(args.device), tta="ten_crop", crop=info["crop"])
        acc = float((prob.argmax(1) == val.labels).mean())
        np.savez(run / "val_probs.npz", probs=prob, labels=val.labels, classes=np.array(info["classes"]))
        done[run.name] = {**summary, "val_acc_ten_crop": acc}
        (run / "member.json").write_text(json.dumps(done[run.name], indent=2))
        print(f"{run.name}: val acc {summary['val_acc']:.4f}, ten-crop {acc:.4f}, {(time.time() - t0) / 60:.1f} min")
    print(json.dumps(done, indent=2))


if __name__ == "__main__":
    main()
