"""What a dataset holds: counts per split and class, imbalance, pixel statistics, the load report, and two figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferkit.data.dataset import SPLITS, Dataset
from ferkit.utils import atomic_write


def dataset_info(ds: Dataset) -> dict:
    """Figures about `ds` as plain JSON-able data."""
    counts = {s: np.bincount(ds[s].labels.astype(np.int64), minlength=len(ds.classes)).tolist()
              for s in SPLITS if s in ds.splits}
    ref = counts.get("train") or next(iter(counts.values()), [])
    nonzero = [c for c in ref if c > 0]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else None
    pixels = {s: pixel_stats(ds[s].images) for s in counts if ds[s].images.size}
    sizes = sorted({tuple(ds[s].images.shape[1:]) for s in counts if len(ds[s])})
    return {
        "source": ds.source,
        "format": ds.format,
        "classes": list(ds.classes),
        "image_size": [list(x) for x in sizes],
        "counts": {s: dict(zip(ds.classes, c, strict=True)) for s, c in counts.items()},
        "totals": {s: int(sum(c)) for s, c in counts.items()},
        "total": int(sum(sum(c) for c in counts.values())),
        "imbalance_ratio": None if imbalance is None else round(imbalance, 3),
        "imbalance_split": "train" if "train" in counts else next(iter(counts), None),
        "empty_classes": {s: [ds.classes[k] for k, n in enumerate(c) if n == 0] for s, c in counts.items()
                          if 0 in c},
        "pixels": pixels,
        "soft_labels": any(ds[s].soft is not None for s in counts),
        "skipped": [{"name": k.name, "reason": k.reason} for k in ds.skipped],
        "from_cache": ds.from_cache,
    }


def pixel_stats(images: np.ndarray, chunk: int = 1024) -> dict[str, float]:
    """Mean and std of the pixels, in chunks: no float copy of a whole split (FER2013's train is 66 M pixels)."""
    flat = images.reshape(len(images), -1)
    s1 = s2 = 0.0
    for k in range(0, len(flat), chunk):
        x = flat[k : k + chunk].astype(np.float64).ravel()
        s1 += float(x.sum())
        s2 += float(np.dot(x, x))
    n = flat.size
    mean = s1 / n
    return {"mean": round(mean, 3), "std": round(float(np.sqrt(max(s2 / n - mean * mean, 0.0))), 3)}


def plot_distribution(ds: Dataset, path: Path) -> None:
    """Grouped bar chart: images per class, one bar per split."""
    # matplotlib's object API on its own Agg canvas: no pyplot state, the caller's backend left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    splits = [s for s in SPLITS if s in ds.splits]
    n = len(ds.classes)
    x = np.arange(n)
    width = 0.8 / max(1, len(splits))
    fig = Figure(figsize=(max(6.0, 0.9 * n + 2), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for k, s in enumerate(splits):
        c = np.bincount(ds[s].labels, minlength=n)
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, c, width, label=f"{s} ({c.sum():,})")
        ax.bar_label(bars, labels=[f"{v:,}" for v in c], fontsize=6, padding=1, rotation=90)
    ax.set_xticks(x, ds.classes, rotation=30 if n > 8 else 0)
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution per split: {Path(ds.source).name}")
    ax.margins(y=0.15)
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))


def plot_samples(ds: Dataset, path: Path, per_class: int = 8, seed: int = 0, split: str | None = None) -> None:
    """A grid of random samples (seeded): one row per class, from `split` (train by default)."""
    # matplotlib's object API on its own Agg canvas: no pyplot state, the caller's backend left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    split = split or ("train" if "train" in ds.splits else next(iter(ds.splits)))
    sp = ds[split]
    rng = np.random.default_rng(seed)
    n = len(ds.classes)
    fig = Figure(figsize=(per_class * 0.85 + 1.0, n * 0.9 + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, per_class, squeeze=False)
    for c in range(n):
        idx = np.flatnonzero(sp.labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for k in range(per_class):
            ax = axes[c][k]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if k < len(pick):
                ax.imshow(sp.images[pick[k]], cmap="gray", vmin=0, vmax=255)
        axes[c][0].set_ylabel(ds.classes[c], fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"Random {split} samples per class (seed {seed}): {Path(ds.source).name}", fontsize=9)
    fig.tight_layout(rect=(0.03, 0, 1, 0.96), h_pad=0.2, w_pad=0.1)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))


def write_figures(ds: Dataset, out: Path, seed: int = 0) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"distribution": out / "class_distribution.png", "samples": out / "samples.png"}
    plot_distribution(ds, paths["distribution"])  # each written atomically: a reader never sees half a PNG
    plot_samples(ds, paths["samples"], seed=seed)
    return {k: str(v) for k, v in paths.items()}
