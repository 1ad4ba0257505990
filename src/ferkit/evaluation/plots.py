"""The report's figures as PNG bytes: confusion matrices, reliability diagram, face grids, saliency (the training
curves are a run's own figure: ferkit.runs).

Matplotlib is used through its object API on the Agg canvas (no pyplot state, no display needed), imported lazily.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def confusion_png(cm: list[list[int]], cm_norm: list[list[float]], classes: list[str]) -> bytes:
    """Counts and row-normalised confusion matrices side by side (rows: true class, columns: predicted). With fewer
    rows than classes, the last classes are predictions only (evaluate --detect's "no face")."""
    n = len(classes)
    side = max(4.0, 0.6 * n + 2)
    fig = _figure(2 * side + 1, side)
    cm_a, norm_a = np.array(cm), np.array(cm_norm)
    n_rows = len(cm_a)
    for k, (mat, title, fmt) in enumerate([(cm_a, "counts", "d"), (norm_a, "row-normalised (recall)", ".2f")]):
        ax = fig.add_subplot(1, 2, k + 1)
        shown = norm_a  # colour by the normalised value in both panels: big classes do not drown the rest
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        for i in range(n_rows):
            for j in range(n):
                v = mat[i, j]
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8 if n <= 8 else 6,
                        color="white" if shown[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n_rows), classes[:n_rows])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix, {title}")
    fig.tight_layout()
    return _png(fig)


def reliability_png(rel: dict[str, Any], rel_before: dict[str, Any] | None = None) -> bytes:
    """Accuracy against confidence per bin (perfect calibration is the diagonal), with the confidence histogram."""
    fig = _figure(6, 6.5)
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    bins = rel["bins"]
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
    ax.bar(centres, np.nan_to_num(acc), width=1 / bins, edgecolor="#1f4e79", color="#4a90d9", alpha=0.8,
           label=f"accuracy per bin (ECE {rel['ece']:.3f})")
    if rel_before is not None:
        acc_b = np.array([np.nan if a is None else a for a in rel_before["accuracy"]])
        conf_b = np.array([np.nan if c is None else c for c in rel_before["confidence"]])
        ax.plot(conf_b, acc_b, "o--", color="#d9534f", label=f"before temperature scaling (ECE {rel_before['ece']:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (top-1 confidence)")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelbottom=False)
    ax2 = fig.add_subplot(gs[1], sharex=ax)
    ax2.bar(centres, rel["count"], width=1 / bins, color="#888888", edgecolor="#444444")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("images")
    return _png(fig)


def face_grid_png(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], title: str, cols: int) -> bytes:
    """One row per class: (row label, [(face, caption), ...]); empty cells where a class has fewer faces.

    Faces are square, or all of one wider shape (a photo beside its face crop): cells are as wide as the widest.
    The faces go into one mosaic drawn by a single imshow: dozens of subplots take seconds to lay out.
    """
    n_rows = max(1, len(rows))
    side = max((items[0][0].shape[0] for _, items in rows if items), default=48)
    width = max((img.shape[1] * side // img.shape[0] for _, items in rows for img, _ in items), default=side)
    lines = max((cap.count("\n") + 1 for _, items in rows for _, cap in items), default=1)
    gap, cap = side // 8, side // 3 + (lines - 1) * side // 5  # space between faces, and above each for its caption
    cell_w, cell_h = width + gap, side + cap + gap
    mosaic = np.full((n_rows * cell_h, cols * cell_w), 255, np.uint8)
    inch = 1.1 / side  # a face about 1.1 inch wide; the figure follows the mosaic's shape
    fig = _figure(cols * cell_w * inch / 0.88, n_rows * cell_h * inch / 0.96 + 0.3)
    ax = fig.add_axes((0.12, 0.0, 0.88, 0.96))
    texts = []
    for r, (label, items) in enumerate(rows):
        y0 = r * cell_h + cap
        texts.append((-gap, y0 + side / 2, label, dict(ha="right", va="center", fontsize=10, fontweight="bold")))
        if not items:
            texts.append((side / 2, y0 + side / 2, "none", dict(ha="center", va="center", fontsize=8, color="gray")))
        for c, (img, caption) in enumerate(items[:cols]):
            x0 = c * cell_w
            face = img if img.shape == (side, width) else _fit(img, side, width)
            mosaic[y0 : y0 + side, x0 : x0 + width] = face
            texts.append((x0 + width / 2, y0 - 2, caption, dict(ha="center", va="bottom", fontsize=7 if lines == 1
                                                                 else 6, linespacing=1.1)))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for x, y, t, kw in texts:
        ax.text(x, y, t, **kw)
    ax.set_axis_off()
    ax.set_anchor("N")  # the mosaic right under the title
    fig.suptitle(title)
    return _png(fig)


def _fit(img: np.ndarray, side: int, width: int | None = None) -> np.ndarray:
    import cv2

    return cv2.resize(img, (width or side, side), interpolation=cv2.INTER_AREA)


def saliency_png(items: list[tuple[np.ndarray, np.ndarray, str]], cols: int = 6) -> bytes:
    """Pairs of (face, occlusion heat map in 0..1, caption): the face, then the heat map over it."""
    import cv2

    n = len(items)
    rows = max(1, -(-n // (cols // 2)))
    fig = _figure(1.4 * cols, 1.6 * rows + 0.4)
    fig.suptitle("Occlusion sensitivity: red = covering this area lowers the predicted class's probability most")
    for k, (img, heat, caption) in enumerate(items):
        heat = np.clip(heat, 0, 1)
        colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
        base = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
        # Opacity follows the heat: the face stays visible where hiding it changes nothing.
        alpha = 0.7 * heat[..., None]
        overlay = ((1 - alpha) * base + alpha * colour).astype(np.uint8)
        for j, (im, cap) in enumerate(((img, caption), (overlay, ""))):
            ax = fig.add_subplot(rows, cols, 2 * k + j + 1)
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if cap:
                ax.set_title(cap, fontsize=7)
    fig.tight_layout()
    return _png(fig)
