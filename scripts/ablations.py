"""The recipe ablations of docs/training.md ("How the shipped models were trained"), re-measured from run folders:
PublicTest (val) accuracy of each run with each test-time augmentation, and of ensembles of runs, with the recall of
the hard classes (fear, sad, disgust). PrivateTest is never read here.

    python scripts/ablations.py runs/m_vgg_s_s1 runs/m_vgg_m_s2 --ensemble runs/m_vgg_s_s1,runs/m_vgg_m_s2

Each run's row says its model, crop and epochs; `ferkit train RUN/config.toml --out NEW` re-trains it. Ensembles are
plain averages here (the shipped one weighs its members on PublicTest too: scripts/ship_model.py).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

HARD = ("fear", "sad", "disgust")


def describe(run: Path) -> str:
    c = tomllib.loads((run / "config.toml").read_text())
    crop = f"crop {c['crop']}" if c.get("crop") else "full 48x48 frame"
    teacher = ", distilled" if c.get("teacher") else ""
    return f"`{c['model']}`, {crop}, {c['epochs']} epochs, seed {c['seed']}{teacher}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*", help="run folders (ferkit train --out)")
    ap.add_argument("--ensemble", action="append", default=[], help="comma-separated run folders averaged together")
    ap.add_argument("--data", default="../shared/datasets/fer2013.zip")
    ap.add_argument("--tta", default="none,flip,ten_crop", help="TTA modes to measure (ten_crop needs a crop model)")
    args = ap.parse_args()
    from ferkit.data import load_dataset
    from ferkit.evaluation.predictors import load_ensemble, predict

    val = load_dataset(args.data)["val"]
    modes = args.tta.split(",")
    print(f"| what | {' | '.join(f'TTA `{t}`' for t in modes)} | recall {', '.join(HARD)} (last TTA) |")
    print("|---|" + "---|" * (len(modes) + 1))
    groups = [(describe(r), [str(r / "best.safetensors")]) for r in args.runs]
    groups += [(f"ensemble of {len(g.split(','))}: " + " + ".join(describe(Path(r)) for r in g.split(",")),
                [str(Path(r) / "best.safetensors") for r in g.split(",")]) for g in args.ensemble]
    for what, specs in groups:
        ens = load_ensemble(specs)
        accs, recall = [], ""
        for t in modes:
            if t == "ten_crop" and ens.members[0].crop >= ens.input_size:
                accs.append("n/a")
                continue
            pred = predict(ens, val.images, t)[1].argmax(1)
            accs.append(f"{100 * (pred == val.labels).mean():.2f}%")
            recall = ", ".join(f"{100 * (pred[val.labels == k] == k).mean():.1f}%"
                               for k in (ens.classes.index(c) for c in HARD))
        print(f"| {what} | {' | '.join(accs)} | {recall} |", flush=True)


if __name__ == "__main__":
    main()
