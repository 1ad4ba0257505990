"""Measure what class-weighted loss and balanced sampling do to accuracy and macro-F1 (docs/training.md).

    python scripts/imbalance_study.py fer2013_default -s data=../shared/datasets/fer2013.zip --epochs 12 --out runs/imbalance

Trains one recipe three times, with balance = none, weights and sampler, and scores each best checkpoint on
PublicTest (val): accuracy, macro-F1 and per-class recall. The study chooses a default, so PrivateTest is never
touched. A finished run is not trained again and an interrupted one resumes, so the study can span sessions.
Prints a markdown table and writes imbalance.json and imbalance.png into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

MODES = ("none", "weights", "sampler")


def run_mode(config: Path, mode: str, out: Path, sets: list[str]) -> Path:
    from ferkit.training import load_config, train

    run = out / mode
    if not (run / "metrics.json").exists():
        resume = (run / "state.pt").exists()
        cfg = load_config(run / "config.toml" if resume else config, [*sets, f"balance={mode}", f"out={run}"])
        train(cfg, resume=resume, exist_ok=True)  # the study's own folder: a start that died is started again
    return run


def plot(rows: dict[str, dict], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ferkit.utils import atomic_write

    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(rows)
    for i, (mode, r) in enumerate(rows.items()):
        recall = [r["recall"][c] for c in classes]
        label = f"{mode}: acc {100 * r['accuracy']:.1f}%, macro-F1 {100 * r['macro_f1']:.1f}%"
        ax.bar(np.arange(len(classes)) + (i - (len(rows) - 1) / 2) * width, recall, width, label=label)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylabel("recall on PublicTest")
    ax.set_ylim(0, 1)
    ax.set_title("Class balance: per-class recall of the best checkpoint of each run")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="The training recipe every run shares.")
    ap.add_argument("--out", type=Path, default=Path("runs/imbalance"))
    ap.add_argument("--epochs", type=int, help="Shorten the recipe (the same length for every run).")
    ap.add_argument("-s", "--set", dest="sets", action="append", default=[], help="Further key=value overrides.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # training's progress lines

    from ferkit.evaluation.core import evaluate
    from ferkit.training import load_config
    from ferkit.utils import atomic_write_text

    sets = args.sets + ([f"epochs={args.epochs}"] if args.epochs else [])
    data = load_config(args.config, sets).data
    rows = {}
    for mode in MODES:
        run = run_mode(args.config, mode, args.out, sets)
        m = evaluate(str(run / "model.onnx"), data, split="val", report=False, out=run / "val").metrics["metrics"]
        rows[mode] = {
            "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "balanced_accuracy": m["balanced_accuracy"],
            "recall": {c: v["recall"] for c, v in m["per_class"].items()},
            "best_epoch": json.loads((run / "metrics.json").read_text())["best_epoch"],
        }
    classes = list(rows["none"]["recall"])
    atomic_write_text(args.out / "imbalance.json", json.dumps({"config": str(args.config), "sets": sets, "runs": rows},
                                                            indent=2) + "\n")
    plot(rows, classes, args.out / "imbalance.png")
    print("| balance | accuracy | macro-F1 | balanced accuracy | " + " | ".join(f"{c} recall" for c in classes) + " |")
    print("|---|" + "---:|" * (3 + len(classes)))
    for mode, r in rows.items():
        cells = [r["accuracy"], r["macro_f1"], r["balanced_accuracy"], *(r["recall"][c] for c in classes)]
        print(f"| {mode} | " + " | ".join(f"{100 * v:.1f}%" for v in cells) + " |")


if __name__ == "__main__":
    main()
