"""After training: curves PNG, ONNX export of the best weights, metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferkit import runs
from ferkit.models.export import export_onnx, load_weights


def finish_run(out: Path, summary: dict[str, Any], name: str | None = None) -> dict[str, Any]:

    runs.write_curves(out)
    model, info = load_weights(out / runs.WEIGHTS)
    export_onnx(model, out / runs.ONNX, info["classes"], info["input_size"], info["crop"],
                name=name or runs.export_name(out))
    rows = runs.read_log(out)
    best = next((r for r in rows if r["epoch"] == summary.get("best_epoch")), {})
    summary = {**summary, "classes": info["classes"], "arch": info["arch"],
               "train_seconds": round(sum(r["seconds"] for r in rows), 1),
               **{k: v for k, v in best.items() if k.startswith("val_")}}
    runs.write_metrics(out, summary)
    return summary
