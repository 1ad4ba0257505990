"""After training: curves PNG, ONNX export of the best weights, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferkit.evaluation.plots import curves_png
from ferkit.evaluation.predictors import read_training_log
from ferkit.utils import atomic_write, atomic_write_text


def plot_curves(run: Path, out: Path | None = None) -> Path | None:
    """Loss and accuracy per epoch, train against val, as one PNG (the same figure as the evaluation report's)."""
    rows = read_training_log(run)
    if not rows:
        return None
    png = curves_png(rows)
    out = out or run / "curves.png"
    atomic_write(out, lambda p: Path(p).write_bytes(png))
    return out


def finish_run(out: Path, summary: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    from ferkit.models.export import export_onnx, load_weights

    plot_curves(out)
    model, info = load_weights(out / "best.safetensors")
    export_onnx(model, out / "model.onnx", info["classes"], info["input_size"], info["crop"], name=name or out.name)
    rows = read_training_log(out)
    best = next((r for r in rows if r["epoch"] == summary.get("best_epoch")), {})
    summary = {**summary, "classes": info["classes"], "arch": info["arch"],
               "train_seconds": round(sum(r["seconds"] for r in rows), 1),
               **{k: v for k, v in best.items() if k.startswith("val_")}}
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    return summary
