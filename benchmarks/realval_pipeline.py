"""The settings between a real photo and the network, measured on realval (real photos, validation only): the crop
margin around the detector's box, a downward shift of the crop, eye-line alignment, contrast normalisation of the
crop, and the detector's input size; for one or more models on the same detections, side by side in one run.

    python benchmarks/realval_pipeline.py [--data ../shared/datasets/realval.zip] [--models default,accurate]
        [--margins 0.9,1.0,1.1,1.2,1.3] [--shifts 0,0.05,0.1] [--norms none,equalize,clahe] [--detect-sizes 320,640]

Each photo is detected once per detector size; the largest face is scored, and a photo with no face counts as wrong,
as in `ferkit evaluate --detect`; images of exactly the model's input size are classified whole, as `predict` does
(CK+'s 48x48 frames: the settings do not apply to them). Per setting: accuracy per dataset, over all photos, and the
unweighted mean over datasets, with the paired bootstrap difference to the product's settings (95% CI, resampled
within each dataset). `--dist` also prints each model's predicted-class shares against the labels' per dataset
(how docs/inference.md found the 4.0.0 default calling news photos angry).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import numpy as np
from _common import REALVAL_ZIP, cpu_name

from ferkit.data.photos import read_photos
from ferkit.evaluation.metrics import mean_over_groups_ci, paired_difference_ci
from ferkit.images import decode_image
from ferkit.inference import DEFAULT_MARGIN, Detection, EmotionRecognizer, aligned_crop


def normalise(crop: np.ndarray, how: str) -> np.ndarray:
    gray = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    if how == "none":
        return gray
    if how == "equalize":
        return cv2.equalizeHist(gray)
    if how == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(gray)
    raise SystemExit(f"--norms: {how!r} is not none, equalize or clahe")


def moved(det: Detection, shift: float, align: bool) -> Detection:
    x, y, w, h = det.box
    return Detection((x, y + shift * h, w, h), det.score, det.landmarks if align else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REALVAL_ZIP))
    ap.add_argument("--models", default="default", help="comma-separated: built-in names or ONNX files")
    ap.add_argument("--margins", default="0.9,1.0,1.1,1.2,1.3")
    ap.add_argument("--shifts", default="0,0.05,0.1", help="crop centre moved down by this share of the box height")
    ap.add_argument("--align", default="on,off")
    ap.add_argument("--norms", default="none,equalize,clahe")
    ap.add_argument("--detect-sizes", default="320,640")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dist", action="store_true", help="print predicted-class shares against the labels'")
    ap.add_argument("--against", metavar="MODEL", help="one of --models: at the product's settings, every model's "
                    "paired difference to it per dataset and of the mean over datasets (95%% CI)")
    args = ap.parse_args()
    if args.against and args.against not in args.models.split(","):
        raise SystemExit(f"--against {args.against}: not one of --models")

    ps = read_photos(args.data)
    recs = {m: EmotionRecognizer(m, threads=args.threads) for m in args.models.split(",")}
    first = next(iter(recs.values()))
    classes = list(first.classes)
    y = np.array([classes.index(p.label) for p in ps.photos])
    groups = np.array([p.dataset for p in ps.photos])
    names = sorted(set(groups))
    t0 = time.time()
    images = []
    for p in ps.photos:
        data, why = ps.read(p)
        images.append(decode_image(data, p.path) if data is not None else None)
    as_is = np.array([img is not None and img.shape[:2] == (first.input_size, first.input_size) for img in images])
    dets: dict[int, list[Detection | None]] = {}
    for size in (int(s) for s in args.detect_sizes.split(",")):
        dets[size] = []
        for img, whole in zip(images, as_is, strict=True):
            found = [] if img is None or whole else first.detect(img, detect_size=size)
            dets[size].append(max(found, key=lambda d: d.box[2] * d.box[3], default=None))
    print(f"# {cpu_name()}, {len(ps.photos)} photos of {len(names)} datasets, "
          f"decoded and detected in {time.time() - t0:.0f} s")
    for size, ds in dets.items():
        print(f"# detect size {size}: no face in {sum(d is None for d, w in zip(ds, as_is, strict=True) if not w)} "
              "photos")
    base = (320 if 320 in dets else next(iter(dets)), DEFAULT_MARGIN, 0.0, "on", "none")
    settings = [base] + [s for s in itertools.product(
        dets, (float(m) for m in args.margins.split(",")), (float(s) for s in args.shifts.split(",")),
        args.align.split(","), args.norms.split(",")) if s != base]
    header = f"{'model':<10} {'det':>4} {'margin':>6} {'shift':>5} {'align':>5} {'norm':>8} " + " ".join(
        f"{n[:8]:>8}" for n in names) + f" {'all':>6} {'mean':>6} {'mean - product (95% CI)':>24}"
    print(header)
    product: dict[str, np.ndarray] = {}
    for (size, margin, shift, align, norm) in settings:
        crops, where = [], []
        for i, (img, det, whole) in enumerate(zip(images, dets[size], as_is, strict=True)):
            if whole:
                crops.append(img)
            elif det is not None:
                crops.append(normalise(aligned_crop(img, moved(det, shift, align == "on"), margin), norm))
            else:
                continue
            where.append(i)
        for name, rec in recs.items():
            pred = np.full(len(y), -1)
            pred[where] = np.array([classes.index(c) for c in rec.classes])[rec.predict_proba(crops).argmax(1)]
            correct = pred == y
            per = [correct[groups == n].mean() for n in names]
            mean = mean_over_groups_ci([(y[groups == n], np.where(pred[groups == n] < 0, len(classes),
                                        pred[groups == n])) for n in names], len(classes) + 1)
            if (size, margin, shift, align, norm) == base:
                product[name] = correct
            d = paired_difference_ci(product[name], correct, groups)
            print(f"{Path(name).stem[:10]:<10} {size:>4} {margin:>6.2f} {shift:>5.2f} {align:>5} {norm:>8} "
                  + " ".join(f"{100 * a:>8.1f}" for a in per)
                  + f" {100 * correct.mean():>6.1f} {100 * mean['accuracy']:>6.1f} "
                  f"{100 * d['difference']:>+7.1f} ({100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})",
                  flush=True)
            if args.dist and (size, margin, shift, align, norm) == base:
                for n in names:
                    sel = groups == n
                    label = np.bincount(y[sel], minlength=len(classes)) / sel.sum()
                    said = np.bincount(pred[sel][pred[sel] >= 0], minlength=len(classes)) / sel.sum()
                    print(f"    {n:<14} " + "  ".join(f"{c[:4]} {100 * a:.0f}/{100 * b:.0f}"
                                                       for c, a, b in zip(classes, label, said, strict=True))
                          + "   (label % / predicted %)")

    if args.against:
        ref = product[args.against]
        print(f"\npaired difference to {args.against} at the product's settings, points (95% CI):")
        print(f"{'model':<24} " + " ".join(f"{n[:16]:>22}" for n in [*names, "mean over datasets"]))
        for name, correct in product.items():
            cells = [paired_difference_ci(ref[groups == n], correct[groups == n]) for n in names]
            cells.append(paired_difference_ci(ref, correct, groups))
            print(f"{Path(name).stem[:24]:<24} " + " ".join(
                f"{100 * c['difference']:+6.1f} ({100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f})".rjust(22)
                for c in cells))


if __name__ == "__main__":
    main()
