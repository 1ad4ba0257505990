"""A run folder and its files, in one place below training and evaluation (which both read and write runs).

A run folder holds:

| file | written by | what |
|---|---|---|
| config.toml | training | every setting of the run |
| log.jsonl | training | one JSON row per finished epoch |
| best.safetensors | training | the best weights by the run's select_metric |
| state.pt | training | the resumable state of the last finished epoch |
| teacher.npz | training | distillation targets (kept: reused when the teachers, data and settings match) |
| curves.png | training, evaluation | loss and accuracy per epoch |
| model.onnx | training | the best weights exported for inference |
| metrics.json | training | best epoch, validation figures, training time |
| provenance.jsonl | training | the code each start or resume ran: ferkit's and torch's versions, the git commit |

Every file is written through `ferkit.utils.atomic_write`: a reader (or a resumed run) never sees half a file.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from ferkit import __version__
from ferkit.errors import FerkitError
from ferkit.utils import atomic_write, next_free

CONFIG = "config.toml"
LOG = "log.jsonl"
WEIGHTS = "best.safetensors"
STATE = "state.pt"
TEACHER = "teacher.npz"
CURVES = "curves.png"
ONNX = "model.onnx"
METRICS = "metrics.json"
PROVENANCE = "provenance.jsonl"
# The files of one training run: a run folder reused with exist_ok loses these (and keeps teacher.npz, whose
# fingerprint says whether it still fits, and anything else the user put there).
RUN_FILES = (CONFIG, LOG, WEIGHTS, STATE, CURVES, ONNX, METRICS, PROVENANCE)
DEFAULT_BASE = Path("runs") / "train"
# Names of the built-in models (`--model default`): a run's exported model is never called one of them.
BUILTIN_NAMES = ("default", "accurate", "fast", "default-int8")


def new_run_dir(base: str | Path = DEFAULT_BASE) -> Path:
    """A new, empty run folder: runs/train, then runs/train2, runs/train3, ... (created here, so two runs started
    at the same time never share one)."""
    while True:
        path = next_free(base)
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:  # another run took it between the check and the mkdir
            continue


def check_out(path: str | Path, resume: bool, exist_ok: bool) -> None:
    """Refuse to train into a folder that holds anything, unless resuming it or told to reuse it; with exist_ok,
    remove the old run's files so that two runs never mix (a later --resume would otherwise read the old one)."""
    path = Path(path)
    if resume or not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    if not exist_ok:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise FerkitError(f"{path}: not empty ({shown}); pass --resume to continue the run in it, --exist-ok to "
                          "start a new run there (its old run files are removed), or choose another --out")
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)


def export_name(run: str | Path) -> str:
    """The model name a run's ONNX export carries: the run folder's name, never a built-in model's."""
    name = Path(run).resolve().name or "run"
    return f"run-{name}" if name in BUILTIN_NAMES else name


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's objects (unreadable lines are skipped: a run may still be writing)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda p: Path(p).write_text(text))


def read_log(run: str | Path) -> list[dict[str, Any]]:
    """Per-epoch rows of a run folder's log.jsonl."""
    return [r for r in _read_rows(Path(run) / LOG) if "epoch" in r]


def write_log(run: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace the log with these rows, atomically."""
    _write_rows(Path(run) / LOG, rows)


def append_log(run: str | Path, row: dict[str, Any]) -> None:
    """Add one epoch's row. The whole (small) log is rewritten atomically, so a kill never leaves half a line."""
    write_log(run, [*read_log(run), row])


def _git(folder: Path, *args: str) -> str | None:
    try:
        # No optional locks: a status must not hold the index's lock while the user commits.
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=folder, capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git, or a repository too slow to ask
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> dict[str, Any] | None:
    """The commit of the repository ferkit's code is checked out from, and whether its tracked files differ from it
    (dirty); None for an installed package."""
    here = Path(__file__).parent
    # A package installed into a virtual environment that lies inside some repository is not that repository's code.
    if _git(here, "ls-files", "--error-unmatch", Path(__file__).name) is None:
        return None
    commit = _git(here, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(here, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def provenance() -> dict[str, Any]:
    """The code a run trains with: ferkit's and PyTorch's versions, and the git commit (None outside a checkout)."""
    import torch

    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ferkit": __version__, "torch": torch.__version__,
            "git": git_commit()}


def read_provenance(run: str | Path) -> list[dict[str, Any]]:
    """The provenance records of a run folder, oldest first; none for a run trained before ferkit kept them."""
    return _read_rows(Path(run) / PROVENANCE)


def add_provenance(run: str | Path, record: dict[str, Any]) -> None:
    """Add one start's (or resume's) record: a run resumed with other code keeps the record of each."""
    _write_rows(Path(run) / PROVENANCE, [*read_provenance(run), record])


def curves_png(rows: list[dict[str, Any]]) -> bytes:
    """Loss and accuracy per epoch from a run's log rows, as PNG bytes (matplotlib's object API on the Agg canvas:
    no pyplot state, and the caller's backend is left alone)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ep = [r["epoch"] for r in rows]
    panels = (
        ("Loss", (("train_loss", "-"), ("val_loss", "--"))),
        ("Accuracy / macro-F1", (("train_acc", "-"), ("val_acc", "--"), ("val_macro_f1", ":"))),
    )
    for i, (title, keys) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, i)
        for key, style in keys:
            if any(key in r for r in rows):
                ax.plot(ep, [r.get(key, np.nan) for r in rows], style, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def write_curves(run: str | Path, out: str | Path | None = None) -> Path | None:
    """The run's curves.png (or `out`); None when the log has no rows yet."""
    rows = read_log(run)
    if not rows:
        return None
    png = curves_png(rows)
    target = Path(out) if out is not None else Path(run) / CURVES
    atomic_write(target, lambda p: Path(p).write_bytes(png))
    return target


def write_metrics(run: str | Path, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2)
    atomic_write(Path(run) / METRICS, lambda p: Path(p).write_text(text))
