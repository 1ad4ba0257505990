"""Find what is wrong inside a dataset: blank images, exact and near duplicates, leakage across splits,
duplicates whose labels disagree, and (FER+) images voted not-a-face or unknown; write a cleaned manifest.

Everything is vectorised: exact duplicates by sorting 64-bit pixel hashes, near duplicates by a 64-bit DCT
perceptual hash searched with multi-index hashing (pigeonhole on hash blocks), so 35,887 images take seconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferkit.data import ferplus
from ferkit.data.dataset import SPLITS, Dataset
from ferkit.utils import atomic_write, atomic_write_text

# Thresholds measured on FER2013 (docs/data.md, "Audit"): its 12 blank images have a pixel std of 0 and the
# flattest real face 42.6, so anything under 10 is blank or near-uniform.
BLANK_STD = 10.0
# pHash bits that may differ for a near duplicate. On FER2013, pairs at distance <= 4 were, in an eyeballed
# sample, re-crops / re-encodes / retouches of one photo; at 6 about half are different people (docs/data.md).
# The hash has a constant weight (31 bits over the median + DC), so distances are even: 4 also means 5.
NEAR_DISTANCE = 4
# A pHash match is a candidate only: a near copy must also correlate pixel by pixel (Pearson r over the 48x48 gray
# pixels). Two different people framed alike can share a hash; a re-encode or retouch of one photo keeps r above 0.9.
NEAR_CORRELATION = 0.9

REASONS = {
    "blank": "blank or near-uniform image (pixel std below the threshold)",
    "duplicate": "exact copy of another item of the same split",
    "leak": "exact copy of an item of an earlier split (val/test image also in train, or test image in val)",
    "label_conflict": "exact copies whose labels disagree",
    "near_duplicate": "near copy (perceptual hash, confirmed by pixel correlation) of another item of the same split",
    "near_leak": "near copy (perceptual hash, confirmed by pixel correlation) of an item of an earlier split",
    "not_face": "FER+ annotators' majority: not a face",
    "unknown": "FER+ annotators' majority: unknown",
    "no_majority": "FER+ votes without a majority (left out by the FER+ protocol)",
}
ImageReader = Callable[[str], "np.ndarray | None"]
# What --write-clean drops; the near-duplicate reasons are only reported (a pHash match is not proof).
DROPPED = ("blank", "duplicate", "leak", "label_conflict")


@dataclass
class Flag:
    split: str
    name: str
    label: str
    reason: str
    other: str = ""  # "split:name" of the item it duplicates, if any


@dataclass
class AuditResult:
    source: str
    format: str
    classes: list[str]
    sizes: dict[str, int]
    flags: list[Flag] = field(default_factory=list)
    # FER+ rows that the loader leaves out, with their images read from the source (for the contact sheet).
    excluded_images: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    near_pairs_by_distance: dict[int, int] = field(default_factory=dict)
    near_pairs_refuted: int = 0  # pHash matches whose pixels do not correlate: not reported
    # Per val/test split: items whose exact pixels appear in train, whatever their label (exact_train_copies).
    train_copies: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def counts(self) -> dict[str, dict[str, int]]:
        """reason -> split -> number of flagged items."""
        out: dict[str, dict[str, int]] = {r: {} for r in REASONS}
        for f in self.flags:
            out[f.reason][f.split] = out[f.reason].get(f.split, 0) + 1
        return {r: {s: c[s] for s in SPLITS if s in c} for r, c in out.items() if c}

    def dropped(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for f in self.flags:
            if f.reason in DROPPED:
                out.setdefault(f.split, set()).add(f.name)
        return out

    def summary(self) -> dict:
        dropped = self.dropped()
        return {
            "source": self.source,
            "format": self.format,
            "items": self.sizes,
            "thresholds": self.thresholds,
            "counts": self.counts(),
            "near_pairs_by_distance": {str(k): v for k, v in sorted(self.near_pairs_by_distance.items())},
            "near_pairs_refuted_by_pixels": self.near_pairs_refuted,
            "train_copies": self.train_copies,
            "clean_drops": {s: len(dropped.get(s, ())) for s in self.sizes},
            "reasons": {r: REASONS[r] for r in self.counts()},
            "seconds": round(self.seconds, 2),
        }


# ---------------------------------------------------------------- hashes


def pixel_hashes(images: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each image's exact pixels (N,) uint64; equal pixels give equal hashes."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    out = np.empty(len(flat), dtype=np.uint64)
    for i, row in enumerate(flat):  # ~1 µs per image: hashing needs no vectorising
        out[i] = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
    return out


def _dct_basis(n: int, k: int = 8) -> np.ndarray:
    x = np.arange(n)
    return np.cos(np.pi * (2 * x[None, :] + 1) * np.arange(k)[:, None] / (2 * n)).astype(np.float32)


def phash(images: np.ndarray) -> np.ndarray:
    """The DCT perceptual hash (N,) uint64: sign of the 8x8 lowest frequencies against their median.

    Computed on the image itself (a 2-D DCT as two small matrix products for the whole batch), so copies
    that differ by re-encoding, brightness or contrast hash alike.
    """
    n, h, w = images.shape
    x = images.astype(np.float32)
    coeffs = np.einsum("kh,nhw,lw->nkl", _dct_basis(h), x, _dct_basis(w), optimize=True).reshape(n, 64)
    med = np.median(coeffs[:, 1:], axis=1, keepdims=True)  # the DC term would skew the median
    bits = coeffs > med
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) whose hashes differ in at most max_distance bits: (i, j, distance).

    Multi-index hashing: split the 64 bits into max_distance + 1 blocks; two hashes that close agree on
    at least one whole block (pigeonhole), so only items sharing a block value are compared.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    blocks = max_distance + 1
    edges = np.linspace(0, 64, blocks + 1).astype(int)
    cand: list[np.ndarray] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        # Compare each item with the ones after it in its bucket: offset k pairs position p with p + k.
        k = 1
        while k < n:
            same = sk[:-k] == sk[k:]
            if not same.any():
                break
            p = np.flatnonzero(same)
            i, j = order[p], order[p + k]
            cand.append(np.stack([np.minimum(i, j), np.maximum(i, j)]))
            k += 1
    if not cand:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    pairs = np.unique(np.concatenate(cand, axis=1), axis=1)
    d = hamming(hashes[pairs[0]], hashes[pairs[1]])
    keep = d <= max_distance
    return pairs[0][keep], pairs[1][keep], d[keep]


# ---------------------------------------------------------------- checks


def pixel_std(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32).std(axis=1)


def pixel_correlation(images: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Pearson correlation of the pixels of each pair (images[i[k]], images[j[k]])."""
    out = np.zeros(len(i), np.float32)
    for s in range(0, len(i), chunk):
        a = images[i[s:s + chunk]].reshape(len(i[s:s + chunk]), -1).astype(np.float32)
        b = images[j[s:s + chunk]].reshape(len(a), -1).astype(np.float32)
        a -= a.mean(1, keepdims=True)
        b -= b.mean(1, keepdims=True)
        out[s:s + chunk] = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-6)
    return out


def exact_train_copies(ds: Dataset) -> dict[str, np.ndarray]:
    """For each split other than train: a bool mask of its items whose exact pixels also appear in train.

    Report test accuracy on `~mask` to leave out images the model may have seen in training.
    """
    if "train" not in ds.splits:
        return {s: np.zeros(len(sp), dtype=bool) for s, sp in ds.splits.items()}
    train = np.unique(pixel_hashes(ds["train"].images))
    out = {}
    for s, sp in ds.splits.items():
        if s == "train":
            continue
        h = pixel_hashes(sp.images)
        mask = np.isin(h, train)
        if mask.any():  # a 64-bit hash collision is unlikely; confirm on the pixels anyway
            tr = ds["train"]
            th = pixel_hashes(tr.images)
            first = {int(v): i for i, v in reversed(list(enumerate(th)))}
            for i in np.flatnonzero(mask):
                mask[i] = np.array_equal(sp.images[i], tr.images[first[int(h[i])]])
        out[s] = mask
    return out


def audit(
    ds: Dataset,
    blank_std: float = BLANK_STD,
    near_distance: int = NEAR_DISTANCE,
    ferplus_votes: dict[str, tuple[list[str], np.ndarray]] | None = None,
    read_image: ImageReader | None = None,
) -> AuditResult:
    """Flag every problem item of `ds`; see REASONS. `ferplus_votes` (from ferplus.vote_table) adds
    the FER+ rows the loader left out; `read_image(name)` reads their pixels for the contact sheet."""
    t0 = time.perf_counter()
    splits = [s for s in SPLITS if s in ds.splits]
    images = np.concatenate([ds[s].images for s in splits]) if splits else np.zeros((0, 48, 48), np.uint8)
    labels = np.concatenate([ds[s].labels for s in splits]) if splits else np.zeros(0, np.int64)
    split_id = np.concatenate([np.full(len(ds[s]), k) for k, s in enumerate(splits)]) if splits else labels
    names = [n for s in splits for n in ds[s].names]
    res = AuditResult(ds.source, ds.format, list(ds.classes), {s: len(ds[s]) for s in splits},
                      thresholds={"blank_std": blank_std, "near_distance": near_distance})

    def flag(i: int, reason: str, other: int | None = None) -> None:
        o = "" if other is None else f"{splits[split_id[other]]}:{names[other]}"
        res.flags.append(Flag(splits[split_id[i]], names[i], ds.classes[labels[i]], reason, o))

    # Blank / near-uniform.
    std = pixel_std(images)
    blank = std < blank_std
    for i in np.flatnonzero(blank):
        flag(int(i), "blank")

    # Exact duplicates: sort by hash; runs of equal hashes are copies (confirmed on the pixels).
    h = pixel_hashes(images)
    order = np.lexsort((np.arange(len(h)), split_id, h))  # by hash, then split (train first), then position
    hs = h[order]
    starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
    ends = np.r_[starts[1:], len(hs)]
    in_dup = np.zeros(len(h), dtype=bool)
    for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        group = order[a:b]
        group = group[[np.array_equal(images[group[0]], images[g]) for g in group]]
        if len(group) < 2:
            continue
        in_dup[group] = True
        if blank[group[0]]:
            continue  # blank copies of each other are reported once, as blank
        if len(set(labels[group].tolist())) > 1:
            for g in group:
                other = next(o for o in group if labels[o] != labels[g])
                flag(int(g), "label_conflict", int(other))
            continue
        first = int(group[0])
        for g in group[1:]:
            flag(int(g), "leak" if split_id[g] != split_id[first] else "duplicate", first)

    # Near duplicates (not blank, not exact copies of each other).
    hp = phash(images)
    ok = np.flatnonzero(~blank)
    i, j, d = near_pairs(hp[ok], near_distance)
    i, j = ok[i], ok[j]
    differ = np.array([not np.array_equal(images[a], images[b]) for a, b in zip(i, j, strict=True)], dtype=bool)
    i, j, d = i[differ], j[differ], d[differ]
    same = pixel_correlation(images, i, j) >= NEAR_CORRELATION
    res.near_pairs_refuted = int((~same).sum())
    i, j, d = i[same], j[same], d[same]
    res.near_pairs_by_distance = {int(k): int(v) for k, v in zip(*np.unique(d, return_counts=True), strict=True)}
    seen: set[int] = set()
    # The later item (by split order, then position) is the copy; each item is reported once.
    for a, b in sorted(zip(i.tolist(), j.tolist(), strict=True), key=lambda p: (split_id[p[1]], p[1])):
        first, second = (a, b) if (split_id[a], a) <= (split_id[b], b) else (b, a)
        if second in seen:
            continue
        seen.add(second)
        flag(second, "near_leak" if split_id[first] != split_id[second] else "near_duplicate", first)

    res.train_copies = {s: int(m.sum()) for s, m in exact_train_copies(ds).items()}
    if ferplus_votes:
        _ferplus_flags(res, ferplus_votes, read_image)
    res.seconds = time.perf_counter() - t0
    return res


def _ferplus_flags(
    res: AuditResult, votes: dict[str, tuple[list[str], np.ndarray]], read_image: ImageReader | None
) -> None:
    for split, (names, v) in votes.items():
        if not len(names):
            continue
        for k in np.flatnonzero(ferplus.majority(v) < 0):  # the items the FER+ majority rule leaves out
            reason = ferplus.left_out_reason(v[k])
            res.flags.append(Flag(split, names[k], "", reason, ""))
            if read_image is not None and reason in (ferplus.NOT_FACE, ferplus.UNKNOWN):
                img = read_image(names[k])
                if img is not None:
                    res.excluded_images[names[k]] = img


# ---------------------------------------------------------------- outputs


def write_flagged_csv(res: AuditResult, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "name", "label", "reason", "other"])
    for f in res.flags:
        w.writerow([f.split, f.name, f.label, f.reason, f.other])
    atomic_write_text(path, buf.getvalue())


def clean_manifest(res: AuditResult, ds: Dataset) -> dict:
    """The manifest `load_dataset(manifest.json)` reads: the source and, per split, the names kept."""
    dropped = res.dropped()
    source = str(Path(ds.source).resolve()) if ds.source else ""
    return {
        "source": source,
        "format": ds.format,
        "keep": {s: [n for n in sp.names if n not in dropped.get(s, set())] for s, sp in ds.splits.items()},
        "dropped": {s: len(v) for s, v in dropped.items()},
        "dropped_reasons": list(DROPPED),
    }


def contact_sheet(res: AuditResult, ds: Dataset, path: Path, per_reason: int = 6, seed: int = 0) -> None:
    """One PNG: a row of examples per reason; duplicates are shown as pairs (item, then the item it copies)."""
    # matplotlib's object API on its own Agg canvas: no pyplot state, the caller's backend left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lookup = {(s, n): (s, k) for s in ds.splits for k, n in enumerate(ds[s].names)}

    def image(split: str, name: str) -> np.ndarray | None:
        hit = lookup.get((split, name))
        if hit is not None:
            return ds[hit[0]].images[hit[1]]
        return res.excluded_images.get(name)

    rng = np.random.default_rng(seed)
    by_reason: dict[str, list[Flag]] = {}
    for f in res.flags:
        by_reason.setdefault(f.reason, []).append(f)
    rows = []
    for reason in REASONS:
        flags = [f for f in by_reason.get(reason, []) if image(f.split, f.name) is not None]
        if not flags:
            continue
        pick = rng.choice(len(flags), size=min(per_reason, len(flags)), replace=False)
        rows.append((reason, [flags[p] for p in sorted(pick)]))
    if not rows:
        rows = [("no problems found", [])]
    cols = max(1, max(len(r[1]) * (2 if r[1] and r[1][0].other else 1) for r in rows))
    cols = min(cols, 12)
    fig = Figure(figsize=(cols * 0.9, len(rows) * 1.25 + 0.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (reason, flags) in enumerate(rows):
        tiles: list[tuple[np.ndarray, str]] = []
        for f in flags:
            tiles.append((image(f.split, f.name), f"{f.split}\n{f.label}"))
            if f.other:
                s2, n2 = f.other.split(":", 1)
                lbl = ""
                hit = lookup.get((s2, n2))
                if hit is not None:
                    lbl = ds.classes[int(ds[hit[0]].labels[hit[1]])]
                tiles.append((image(s2, n2), f"= {s2}\n{lbl}"))
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if c < len(tiles) and tiles[c][0] is not None:
                ax.imshow(tiles[c][0], cmap="gray", vmin=0, vmax=255)
                ax.set_title(tiles[c][1], fontsize=5.5, pad=1.5)
        axes[r][0].set_ylabel(reason.replace("_", "\n"), fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    fig.suptitle(f"ferkit data audit: examples per reason ({Path(res.source).name})", fontsize=9)
    fig.tight_layout(rect=(0.04, 0, 1, 0.97), h_pad=0.4, w_pad=0.1)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=85))


def write_outputs(
    res: AuditResult, ds: Dataset, out: Path, write_clean: bool = False, figures: bool = True
) -> dict[str, str]:
    """flagged.csv, summary.json, contact_sheet.png and (write_clean) manifest.json under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"flagged": out / "flagged.csv", "summary": out / "summary.json"}
    write_flagged_csv(res, paths["flagged"])
    if figures:
        paths["contact_sheet"] = out / "contact_sheet.png"
        tmp = out / ".contact_sheet.tmp.png"
        contact_sheet(res, ds, tmp)
        tmp.replace(paths["contact_sheet"])
    if write_clean:
        paths["manifest"] = out / "manifest.json"
        atomic_write_text(paths["manifest"], json.dumps(clean_manifest(res, ds), indent=1) + "\n")
    summary = res.summary() | {"outputs": {k: str(v) for k, v in paths.items()}}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2) + "\n")
    return {k: str(v) for k, v in paths.items()}
