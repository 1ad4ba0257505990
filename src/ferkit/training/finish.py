"""After training: curves PNG, ONNX export of the best weights, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferkit.utils import atomic_write, atomic_write_text


def read_log(run: Path) -> list[dict[str, Any]]:
    path = run / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run: Path, out: Path | None = None) -> Path | None:
    """Loss and accuracy per epoch, train against val, as one PNG."""
    rows = read_log(run)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [r["train_loss"] for r in rows], label="train (augmented)")
    a.plot(ep, [r["val_loss"] for r in rows], label="val")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    b.plot(ep, [r["train_acc"] for r in rows], label="train (augmented)")
    b.plot(ep, [r["val_acc"] for r in rows], label="val accuracy")
    b.plot(ep, [r["val_macro_f1"] for r in rows], label="val macro-F1", linestyle="--")
    b.set(xlabel="epoch", ylabel="score", title="Accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = out or run / "curves.png"
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out


def finish_run(out: Path, summary: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    from ferkit.models.export import export_onnx, load_weights

    plot_curves(out)
    model, info = load_weights(out / "best.safetensors")
    export_onnx(model, out / "model.onnx", info["classes"], info["input_size"], name=name or out.name)
    rows = read_log(out)
    best = next((r for r in rows if r["epoch"] == summary.get("best_epoch")), {})
    summary = {**summary, "classes": info["classes"], "arch": info["arch"],
               "train_seconds": round(sum(r["seconds"] for r in rows), 1),
               **{k: v for k, v in best.items() if k.startswith("val_")}}
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    return summary
