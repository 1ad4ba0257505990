"""Make finished training runs a built-in model (`default`, `accurate`, ...) and write its model card from measured
figures.

    python scripts/ship_model.py default runs/m_vgg_s_s1 --version 2.0.0
    python scripts/ship_model.py accurate runs/m_vgg_s_s1 runs/m_vgg_m_s2 ... --version 1.0.0
    python scripts/ship_model.py default --card-only            # re-render the card from the stored figures
    python scripts/ship_model.py default --speed-only           # re-measure faces/s (idle machine), re-render
    python scripts/ship_model.py default --realval-only --previous OLD.onnx   # realval figures beside an older version

Steps, in the order the protocol allows, all choices on PublicTest (val) and realval (real photos, validation only):
with several runs, the ensemble's weights (minimum log-loss of the members' ten-crop probabilities); export of the
candidate into the reports folder (one ONNX file, the ensemble inside); the temperature; the test-time augmentation.
Then the candidate and the model it would replace go through the product's pipeline on realval (`ferkit evaluate
--detect`, largest face, no face counted wrong): a candidate worse on the mean over realval's datasets beyond noise
(paired bootstrap on the same photos, 95%) is not shipped, whatever PublicTest says. Only then is PrivateTest (test)
touched, once, with and without the chosen augmentation, and the candidate copied to
src/ferkit/assets/ferkit_<name>.onnx (a single network's weights beside it, for fine-tuning). The figures go into the
ONNX metadata (served by `GET /v1/models`), src/ferkit/assets/ferkit_<name>.json and docs/model_card[_<name>].md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def card_path(docs: Path, name: str) -> Path:
    return docs / ("model_card.md" if name == "default" else f"model_card_{name}.md")


def machine() -> str:
    import os

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core {cpu}, {mem:.0f} GiB, no GPU"


def member_val_probs(run: Path, data: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's PublicTest probabilities with ten-crop TTA (scripts/train_members.py stores them; else computed)."""
    f = run / "val_probs.npz"
    if not f.is_file():
        from ferkit.data import load_dataset
        from ferkit.evaluation.predictors import load_ensemble, predict

        ens = load_ensemble(str(run / "best.safetensors"))
        val = load_dataset(data)["val"]
        np.savez(f, probs=predict(ens, val.images, "ten_crop")[1], labels=val.labels,
                 classes=np.array(ens.classes))
    z = np.load(f)
    return z["probs"].astype(np.float64), z["labels"]


def choose_weights(probs: list[np.ndarray], labels: np.ndarray) -> list[float]:
    """Non-negative weights summing to 1 that minimise the ensemble's log-loss on PublicTest."""
    from scipy.optimize import minimize

    def nll(z: np.ndarray) -> float:
        w = np.exp(z) / np.exp(z).sum()
        p = sum(wi * pi for wi, pi in zip(w, probs, strict=True))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1)).mean())

    z = minimize(nll, np.zeros(len(probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7}).x
    return [round(float(w), 4) for w in np.exp(z) / np.exp(z).sum()]


def has_vnni() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return "avx512_vnni" in cpuinfo.read_text() if cpuinfo.exists() else True


def ship_int8(asset: Path, out: Path, data: str, tta: str, work: Path) -> dict:
    """The int8 variant (`<name>-int8`) beside the asset, calibrated on Training faces, measured like the fp32 one."""
    from ferkit.evaluation.core import evaluate
    from ferkit.models.quantize import quantize_int8

    quantize_int8(asset, out, data)
    acc = {}
    for split in ("val", "test"):
        for t in dict.fromkeys(["none", tta]):
            e = evaluate(str(out), data, split=split, tta=t, report=False, out=work / f"int8-{split}-{t}")
            acc[f"{split}_{t}"] = e.metrics["metrics"]["accuracy"]
    # int8 accuracy depends on the CPU: without AVX-512 VNNI, ONNX Runtime's u8 x s8 kernels saturate (README).
    return {"size_bytes": out.stat().st_size, "accuracy": acc, "vnni": has_vnni()}


def measure_speed(asset: Path, data: str, threads: int, int8: Path | None) -> dict:
    from ferkit.data import load_dataset

    crops = load_dataset(data)["test"].images[:1024]  # read once for both variants
    # int8 speed hangs on VNNI (about 3x here), so the card says which kind of CPU timed it.
    speed = {"fp32": crops_per_s(asset, crops, threads), "threads": threads, "vnni": has_vnni()}
    if int8:
        speed["int8"] = crops_per_s(int8, crops, threads)
    return speed


def crops_per_s(model: Path, crops: np.ndarray, threads: int, batch: int = 64, seconds: float = 3.0) -> dict:
    """Faces classified per second on PrivateTest crops (batch 64, a fixed thread count), without and with each TTA
    the card names: the figure benchmarks/peers.py measures, here for the card (meaningful on an idle machine)."""
    import time

    from ferkit.inference.onnx_classifier import OnnxClassifier

    m = OnnxClassifier(model, threads=threads)
    out = {}
    for t in dict.fromkeys(["none", m.metadata.get("tta", "none")]):
        m.predict_proba(crops[:batch], tta=t)  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(0, len(crops), batch):
                m.predict_proba(crops[i : i + batch], tta=t)
            n += len(crops)
        out[t] = round(n / (time.perf_counter() - start))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="Built-in name: default, accurate, fast, ...")
    ap.add_argument("runs", type=Path, nargs="*", help="One run folder, or several for an ensemble.")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--data", default="../shared/datasets/fer2013.zip")
    ap.add_argument("--note", help="A sentence for the model card about how the runs went (kept for --card-only).")
    ap.add_argument("--card-only", action="store_true", help="Re-write the model card from the stored figures.")
    ap.add_argument("--speed-only", action="store_true",
                    help="Re-measure the shipped variants' faces/s (on an idle machine) and re-write the card.")
    ap.add_argument("--assets", type=Path, default=ROOT / "src" / "ferkit" / "assets", help=argparse.SUPPRESS)
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help=argparse.SUPPRESS)
    ap.add_argument("--reports", type=Path, default=ROOT / "runs" / "ship", help="Where the evaluation reports go.")
    ap.add_argument("--no-int8", dest="int8", action="store_false", help="Don't ship the int8 variant beside it.")
    ap.add_argument("--half", action="store_true",
                    help="Store the weights as float16 (half the file, float32 arithmetic): more networks in 25 MB.")
    ap.add_argument("--threads", type=int, default=1, help="Threads for the crops/s figures (peers.py's default).")
    ap.add_argument("--realval-only", action="store_true",
                    help="Measure the shipped model (and --previous) on realval through the pipeline; re-render.")
    ap.add_argument("--previous", type=Path, help="With --realval-only: the version it replaced (an ONNX file).")
    ap.add_argument("--previous-version", help="With --previous: its version number, for the card.")
    ap.add_argument("--realval", default=str(ROOT.parent / "shared" / "datasets" / "realval.zip"),
                    help="Real photos for validation (the ship gate and the card's realval section).")
    ap.add_argument("--peers", type=Path, metavar="FILE.json",
                    help="With --card-only: `benchmarks/peers.py --data realval --save FILE.json`; the peers' realval "
                         "figures go into the card beside this model's from the same run.")
    args = ap.parse_args()
    from ferkit.inference.resolve import builtin_file

    # The package's own naming rule for built-in files (ferkit_<name>.onnx, ferkit_<name>_int8.onnx), in --assets.
    asset, asset8 = (args.assets / builtin_file(n).name for n in (args.name, f"{args.name}-int8"))
    if args.card_only or args.speed_only or args.realval_only:
        card = json.loads(asset.with_suffix(".json").read_text())
        card["note"] = card.get("note", "") if args.note is None else args.note
        for m in card["members"]:  # cards written before paths were made portable
            m["config"], m["run"] = portable_config(m["config"]), portable(m["run"])
        card["data"] = portable(card["data"])
        if args.realval_only:
            gate = realval_gate(asset, args.previous, args.realval, args.reports / args.name, args.previous_version)
            card["realval"] = gate["card"]
            print(json.dumps(gate["summary"], indent=2))
        if args.speed_only:
            card["speed"] = measure_speed(asset, args.data, args.threads, asset8 if "int8" in card else None)
        if args.peers:
            card.setdefault("realval", {})["peers"] = peer_figures(args.peers, card["name"])
        asset.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        card_path(args.docs, args.name).write_text(render(card))
        return
    if not args.runs:
        ap.error("give one run folder, or several for an ensemble")

    from ferkit.evaluation.core import calibrate, evaluate, temperature_metadata
    from ferkit.evaluation.metrics import fit_temperature
    from ferkit.models.export import ensemble_graph, export_onnx, load_weights, set_onnx_metadata
    from ferkit.runs import read_log as read_training_log
    from ferkit.utils import atomic_write

    work = args.reports / args.name
    work.mkdir(parents=True, exist_ok=True)
    candidate = work / asset.name  # staged: the package's file changes only once the candidate passes every gate
    previous = work / f"previous-{asset.name}"
    if asset.is_file():
        shutil.copyfile(asset, previous)
    members = []
    for run in args.runs:
        log = read_training_log(run)
        members.append({"run": portable(str(run)), "config": portable_config(tomllib.loads((run / "config.toml").read_text())),
                        "epochs": len(log), "best_epoch": max(log, key=lambda r: r["val_acc"])["epoch"],
                        "train_minutes": round(sum(r["seconds"] for r in log) / 60, 1),
                        "val_accuracy_ten_crop": None, "weight": 1.0, **pretrained_from(run)})
    weights = None
    if len(args.runs) > 1:
        probs, labels = zip(*(member_val_probs(r, args.data) for r in args.runs), strict=True)
        weights = choose_weights(list(probs), labels[0])
        for m, p, w in zip(members, probs, weights, strict=True):
            m["weight"], m["val_accuracy_ten_crop"] = w, float((p.argmax(1) == labels[0]).mean())
        model, info = ensemble_graph([r / "best.safetensors" for r in args.runs], weights)
    else:
        model, info = load_weights(args.runs[0] / "best.safetensors")
    export_onnx(model, candidate, info["classes"], info["input_size"], info["crop"], name=f"ferkit-{args.name}",
                version=args.version, half=args.half)
    # calibrate() never writes into the package (a user's `ferkit calibrate default` gets a copy): shipping does it here.
    cal = calibrate(str(candidate), args.data, split="val", write=False)
    set_onnx_metadata(candidate, {"temperature": f"{cal['temperature']:.4f}"})

    options = ["none", "flip", "ten_crop" if info["crop"] < info["input_size"] else "flip+crops"]
    val = {t: evaluate(str(candidate), args.data, split="val", tta=t, report=False, out=work / f"val-{t}")
           for t in options}
    val_acc = {t: e.metrics["metrics"]["accuracy"] for t, e in val.items()}
    tta = max(val_acc, key=lambda t: (val_acc[t], -options.index(t)))  # ties go to the cheaper option
    t_tta = None
    if tta != "none":  # averaged views are less confident than one: that TTA gets its own temperature
        t_tta = round(fit_temperature(val[tta].prepared.split.labels, val[tta].prob_raw), 4)
        set_onnx_metadata(candidate, temperature_metadata({}, tta, t_tta))

    old_card = asset.with_suffix(".json")
    realval = realval_gate(candidate, previous if previous.is_file() else None, args.realval, work,
                           json.loads(old_card.read_text()).get("version") if old_card.is_file() else None)
    print(json.dumps({"val_accuracy": val_acc, "realval": realval["summary"]}, indent=2))
    if realval["refused"]:
        raise SystemExit(f"not shipped: {realval['refused']}")
    test_plain = evaluate(str(candidate), args.data, split="test", tta="none", out=work / "test-none")
    test_tta = test_plain if tta == "none" else evaluate(str(candidate), args.data, split="test", tta=tta,
                                                         out=work / f"test-{tta}")
    m0, m1 = test_plain.metrics["metrics"], test_tta.metrics["metrics"]
    card = {
        "name": f"ferkit-{args.name}", "builtin": args.name, "version": args.version, "arch": info["arch"],
        # The commit shipped from: --card-only and --speed-only re-render the card later and keep it.
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=ROOT).stdout.strip(),
        "classes": info["classes"], "input_size": info["input_size"], "crop": info["crop"],
        "train_data": "FER2013 Training (28,709 images)", "selection": "PublicTest (val)",
        "members": members, "machine": machine(),
        "train_minutes": round(sum(m["train_minutes"] for m in members), 1),
        "temperature": cal["temperature"], "tta": tta, "val_accuracy": val_acc,
        "test_accuracy": m0["accuracy"], "test_accuracy_ci95": m0["ci95"]["accuracy"],
        "test_accuracy_tta": m1["accuracy"], "test_accuracy_tta_ci95": m1["ci95"]["accuracy"],
        "test_macro_f1": m0["macro_f1"], "test_macro_f1_tta": m1["macro_f1"],
        "test_accuracy_without_train_copies": m0["train_copies"]["accuracy_without"],
        "test_accuracy_tta_without_train_copies": m1["train_copies"]["accuracy_without"],
        "test_train_copies": m0["train_copies"]["n_copies"],
        "test_ece": {"before": cal["test"]["before"]["ece"], "after": cal["test"]["after"]["ece"]},
        "temperature_tta": t_tta,
        # evaluate() reports the ECE with the model's temperatures and without (T undone exactly).
        "test_ece_tta": t_tta and {"before": m1["calibration"]["ece_uncalibrated"], "after": m1["ece"]},
        "per_class": m1["per_class"],
        "realval": realval["card"],
        "data": portable(str(Path(args.data).resolve())), "half": args.half,
        "note": args.note or "",
    }
    summary = {k: card[k] for k in ("test_accuracy", "test_accuracy_tta", "tta", "test_macro_f1", "val_accuracy")}
    set_onnx_metadata(candidate, {"metrics": json.dumps(summary), "tta": tta})
    atomic_write(asset, lambda tmp: shutil.copyfile(candidate, tmp))
    if len(args.runs) == 1:  # the weights ship too, so that `init = "default"` fine-tunes from the shipped model
        atomic_write(asset.with_suffix(".safetensors"),
                     lambda tmp: shutil.copyfile(args.runs[0] / "best.safetensors", tmp))
    card["size_bytes"] = asset.stat().st_size
    if args.int8:
        card["int8"] = ship_int8(asset, asset8, args.data, tta, work)
    card["speed"] = measure_speed(asset, args.data, args.threads, asset8 if args.int8 else None)
    asset.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    card_path(args.docs, args.name).write_text(render(card))
    print(json.dumps(summary, indent=2))


def pretrained_from(run: Path) -> dict:
    """A run that started from third-party pretrained weights: what the card must name (backbone, package,
    version, licence, authors)."""
    from ferkit.models import create_model
    from ferkit.models.pretrained import provenance

    cfg = tomllib.loads((run / "config.toml").read_text())
    backbone = getattr(create_model(cfg["model"], 2), "backbone", None)
    return {"pretrained": provenance(backbone)} if backbone and cfg.get("pretrained", True) and not cfg.get("init") \
        else {}


def realval_gate(candidate: Path, previous: Path | None, data: str, work: Path, previous_version: str | None) -> dict:
    """Candidate and the model it replaces through the product's pipeline on realval, on the same photos. Refused
    (a reason) when the candidate's mean over datasets is lower beyond noise: the paired bootstrap's 95% interval of
    the difference lies below zero."""
    from ferkit.evaluation.core import evaluate
    from ferkit.evaluation.metrics import paired_difference_ci

    if not Path(data).exists():
        raise SystemExit(f"{data}: no real photos (realval.zip); every candidate is checked on them before it ships")
    new = evaluate(str(candidate), data, detect=True, report=False, out=work / "realval-candidate")
    card = {"candidate": realval_figures(new.metrics), "data": Path(data).name,
            "pipeline": new.metrics.get("pipeline", {})}
    refused = None
    if previous is not None:
        old = evaluate(str(previous), data, detect=True, report=False, out=work / "realval-previous")
        diff = paired_difference_ci(old.run.correct, new.run.correct, old.run.datasets)
        card["previous"] = {**realval_figures(old.metrics), "version": previous_version}
        card["difference"] = {k: diff[k] for k in ("difference", "ci95", "significant")}
        if diff["ci95"][1] < 0:
            refused = (f"realval mean over datasets {100 * diff['difference']:+.1f} points against the shipped model "
                       f"(95% CI {100 * diff['ci95'][0]:+.1f} to {100 * diff['ci95'][1]:+.1f})")
    summary = {"candidate_mean": card["candidate"]["mean"]["accuracy"],
               "previous_mean": card.get("previous", {}).get("mean", {}).get("accuracy"),
               "difference": card.get("difference")}
    return {"card": card, "summary": summary, "refused": refused}


def realval_figures(m: dict) -> dict:
    """Per dataset and mean over datasets: accuracy and macro-F1 with their 95% intervals; the no-face count."""
    keys = ("n", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95")
    return {"datasets": {d: {k: v[k] for k in keys if k in v} for d, v in m["datasets"].items()},
            "mean": {k: m["mean_over_datasets"][k] for k in ("accuracy", "accuracy_ci95", "macro_f1",
                                                              "macro_f1_ci95")},
            "all": {"accuracy": m["metrics"]["accuracy"], "accuracy_ci95": m["metrics"]["ci95"]["accuracy"]},
            "no_face": m["no_face"]["n"]}


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def portable(value: str) -> str:
    """A path as the repository knows it (relative to the checkout, or ../shared/...): a card names no machine's
    folders."""
    parts = []
    for item in str(value).split(","):
        p = Path(item.strip())
        if p.is_absolute():
            for base, prefix in ((ROOT, ""), (ROOT.parent, "../")):
                if p.is_relative_to(base):
                    p = Path(prefix + str(p.relative_to(base)))
                    break
            else:
                p = Path(p.name)
        parts.append(str(p))
    return ",".join(parts)


def portable_config(cfg: dict) -> dict:
    keys = ("data", "out", "init", "teacher")
    return {k: (portable(v) if k in keys and isinstance(v, str) else
                [portable(x) for x in v] if k in keys and isinstance(v, list) else v) for k, v in cfg.items()}


def recipe(r: dict) -> str:
    a = r["augment"]
    opt = {"sgd": "SGD with Nesterov momentum", "adamw": "AdamW", "adam": "Adam"}[r["optimizer"]]
    sched = {"onecycle": "one-cycle", "plateau": "reduce-on-plateau"}.get(r["schedule"], r["schedule"])
    crop = r.get("crop", 0)
    aug = [f"scale {a['scale']:.0%}", f"rotation {a['rotate']:g} degrees", f"translation {a['translate']:.0%}"]
    aug += ["horizontal flip"] * a["flip"] + [f"brightness {a['brightness']:g}", f"contrast {a['contrast']:g}"]
    aug += [f"random erasing with probability {a['erase']:g}"] * (a["erase"] > 0)
    aug += [f"mixup {a['mixup']:g}"] * (a["mixup"] > 0) + [f"cutmix {a['cutmix']:g}"] * (a["cutmix"] > 0)
    aug += [f"then a random {crop}x{crop} crop"] * bool(crop)
    teacher = f"; distilled from {r['teacher']} (alpha {r['distill_alpha']:g}, T {r['distill_temperature']:g})" \
        if r.get("teacher") else ""
    return (f"`{r['model']}`, seed {r['seed']}, {r['epochs']} epochs, batch {r['batch_size']}, {opt}, {sched} "
            f"learning rate (peak {r['lr']:g}), weight decay {r['weight_decay']:g}, label smoothing "
            f"{r['label_smoothing']:g}, weight EMA {r['ema']:g}, class balance `{r['balance']}`{teacher}; "
            f"augmentation on whole batches: {', '.join(aug)}")


def variants(c: dict) -> str:
    """The int8 variant's accuracy and both variants' speed, for cards that measured them."""
    if "speed" not in c:
        return ""
    sp, tta = c["speed"], c["tta"]
    rows = [f"| `{c['builtin']}` (fp32) | {c['size_bytes'] / 1e6:.1f} MB | {pct(c['val_accuracy']['none'])} | "
            f"{pct(c['test_accuracy'])} / {pct(c['test_accuracy_tta'])} | {sp['fp32']['none']:,} / "
            f"{sp['fp32'][tta]:,} |"]
    if "int8" in c:
        a = c["int8"]["accuracy"]
        rows.append(f"| `{c['builtin']}-int8` | {c['int8']['size_bytes'] / 1e6:.1f} MB | {pct(a['val_none'])} | "
                    f"{pct(a['test_none'])} / {pct(a[f'test_{tta}'])} | {sp['int8']['none']:,} / {sp['int8'][tta]:,} |")
    no_vnni = ("; its accuracy was measured on a CPU without AVX-512 VNNI, where ONNX Runtime's int8 kernels "
               "saturate and lose one to two points (README)") if not c.get("int8", {}).get("vnni", True) else ""
    cpu = {True: " (its CPU with AVX-512 VNNI)", False: " (its CPU without AVX-512 VNNI)"}.get(sp.get("vnni"), "")
    return f"""
Variants: the int8 copy is quantised statically (QDQ, per-channel weights) with activations calibrated on 2,000
Training faces (`ferkit quantize`){no_vnni}.
Speed: faces per second on PrivateTest crops, batch 64, {sp['threads']} thread(s) of ONNX Runtime, on the machine
above{cpu}, measured by the same command (`python benchmarks/peers.py` times the same against the `fer` package in one
run).

| variant | file | PublicTest, no TTA | PrivateTest, no TTA / TTA `{tta}` | faces/s, no TTA / TTA `{tta}` |
|---|---|---|---|---|
{chr(10).join(rows)}
"""


def peer_figures(path: Path, name: str) -> dict:
    """This model's and the peers' realval figures from one run of benchmarks/peers.py --data realval --save."""
    run = json.loads(path.read_text())
    ours = next((r for r in run.get("ferkit", []) if r.get("model") == name and "photos" in r), None)
    if ours is None:
        raise SystemExit(f"{path}: no realval figures of {name} (run peers.py --model ... --data realval --save)")
    systems = {"this model": ours["photos"]}
    systems |= {peer: run[peer]["photos"] for peer in ("fer", "faceapi") if "photos" in run.get(peer, {})}
    return {"machine": run.get("machine", "?"), "systems": systems}


def peers_table(peers: dict) -> str:
    """This model beside the peers, all from one run: accuracy per dataset and the mean, with 95% intervals."""
    systems = peers["systems"]
    names = list(systems)
    datasets = list(systems[names[0]]["datasets"])

    def cell(acc: float, ci: list[float]) -> str:
        return f"{pct(acc)} ({pct(ci[0])} to {pct(ci[1])})"

    rows = ["| dataset | " + " | ".join(f"`{n}`" if n != "this model" else n for n in names) + " |",
            "|---|" + "---|" * len(names)]
    for d in datasets:
        rows.append(f"| {d} | " + " | ".join(cell(systems[n]["datasets"][d]["accuracy"], systems[n]["datasets"][d]["ci"])
                                               for n in names) + " |")
    rows.append("| **mean over datasets** | " + " | ".join(cell(systems[n]["mean"], systems[n]["mean_ci"])
                                                        for n in names) + " |")
    return (f"\nBeside other systems, each through its own pipeline, in one run of `python benchmarks/peers.py --model "
            f"... --peer fer --data realval` ({peers['machine']}):\n\n" + "\n".join(rows) + "\n")


def realval_section(c: dict) -> str:
    r = c.get("realval")
    if not r:
        return ""
    new, old = r["candidate"], r.get("previous")

    def cell(v: dict) -> str:
        lo, hi = v["accuracy_ci95"]
        return f"{pct(v['accuracy'])} ({pct(lo)} to {pct(hi)})"

    head = f"| dataset | photos | {c['version']} |" + (f" previous ({old.get('version') or '?'}) |" if old else "")
    rows = [head, "|---|---:|---|" + ("---|" if old else "")]
    for d, v in new["datasets"].items():
        rows.append(f"| {d} | {v['n']} | {cell(v)} |" + (f" {cell(old['datasets'][d])} |" if old else ""))
    rows.append(f"| **mean over datasets** | | {cell(new['mean'])} |" + (f" {cell(old['mean'])} |" if old else ""))
    rows.append(f"| all photos | | {cell(new['all'])} |" + (f" {cell(old['all'])} |" if old else ""))
    diff = ""
    if old:
        d = r["difference"]
        diff = (f"\nThis version minus the previous one, mean over datasets: {100 * d['difference']:+.1f} points "
                f"(paired bootstrap on the same photos, 95% CI {100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})."
                " A candidate below zero beyond noise is not shipped.\n")
    p = r.get("pipeline", {})
    return f"""
## Results on real photos (realval, through the pipeline)
{r['data']}: 2,076 labelled photos of six public expression sets, read as a user's photos are
(`ferkit evaluate {c['builtin']} {r['data']} --detect`): detector `{p.get('detector', '?')}`, eye-line alignment,
crop margin {p.get('margin', '?')}, the largest face, no TTA; a photo with no face found counts as wrong
({new['no_face']} here). realval is validation data: it chooses, it never trains. Accuracy with 95% bootstrap intervals:

{chr(10).join(rows)}
{diff}{peers_table(r["peers"]) if "peers" in r else ""}
Other systems on the same photos, each through its own pipeline: `benchmarks/peers.py --data realval`
(docs/evaluation.md).
"""


def pretrained(c: dict) -> str:
    """The third-party weights a member started from: named with their package, licence and authors."""
    seen = {m["pretrained"]["backbone"]: m["pretrained"] for m in c["members"] if m.get("pretrained")}
    return "".join(f"\n- Started from pretrained weights{'' if len(c['members']) == 1 else ' (' + k + ' members)'}: "
                   f"{p['what']}, `{p['graph']}` of npm `{p['package']}` ({p['licence']}; {p['authors']}), imported "
                   "by `ferkit.models.tfjs` at training time (they are not in this repository; the fine-tuned network "
                   "is ferkit's)."
                   for k, p in seen.items())


def render(c: dict) -> str:
    commit = c.get("commit", "unknown")
    lo, hi = c["test_accuracy_ci95"]
    lo2, hi2 = c["test_accuracy_tta_ci95"]
    runs = " ".join(m["run"] for m in c["members"]) + " --half" * c.get("half", False)
    rows = "\n".join(f"| {k} | {pct(v['precision'])} | {pct(v['recall'])} | {pct(v['f1'])} | {v['support']} |"
                     for k, v in c["per_class"].items())
    single = len(c["members"]) == 1
    half = "; weights stored as float16, computed in float32" if c.get("half") else ""
    if single:
        what = f"- Architecture: `{c['arch']}` from the ferkit registry (`ferkit train --list-models`)."
    else:
        what = "- An ensemble of {} networks in one ONNX graph; their probabilities are averaged with weights chosen " \
               "on PublicTest (minimum log-loss):\n".format(len(c["members"])) + "\n".join(
                   f"  - `{m['config']['model']}` seed {m['config']['seed']}, weight {m['weight']:.3f} "
                   f"(PublicTest accuracy alone, ten crops: {pct(m['val_accuracy_ten_crop'])})" for m in c["members"])
    crop = (f"the network sees a {c['crop']}x{c['crop']} window of it (the centre one, or ten with TTA `ten_crop`)"
            if c["crop"] < c["input_size"] else "the network sees the whole face")
    ece_tta = ""
    if c.get("test_ece_tta"):
        e = c["test_ece_tta"]
        ece_tta = (f"| expected calibration error with TTA `{c['tta']}`, before / after its own temperature "
                   f"({c['temperature_tta']}) | {e['before']:.3f} / {e['after']:.3f} |\n")
        own = (f"; TTA `{c['tta']}` averages views, which are less confident than one, so it has its own, "
               f"{c['temperature_tta']} (`ferkit calibrate --tta {c['tta']}`)")
    else:
        own = ""
    recipes = "\n".join(f"- `{m['run']}`: {recipe(m['config'])}; best epoch {m['best_epoch']} of {m['epochs']}, "
                        f"{m['train_minutes']} minutes." for m in c["members"])
    return f"""# Model card: {c['name']} {c['version']}

The built-in model `{c['builtin']}` (`EmotionRecognizer("{c['builtin']}")`, `--model {c['builtin']}`), shipped inside
the `ferkit` package as `src/ferkit/assets/ferkit_{c['builtin']}.onnx` ({c['size_bytes'] / 1e6:.1f} MB{half}).
Generated by `python scripts/ship_model.py {c['builtin']} {runs} --version {c['version']}` (commit {commit},
Python {platform.python_version()}); every figure below comes from that command, which you can re-run.

## What it is
{what}
- Input: a face preprocessed to {c['input_size']}x{c['input_size']} gray pixels 0..255; {crop}. Normalisation is
  inside the graph. Output: probabilities over {', '.join(c['classes'])}.
- Calibrated: temperature {c['temperature']} fitted on PublicTest (`ferkit calibrate`){own}; stored in the model's
  metadata and applied by inference.

## Data and protocol
- Trained on {c['train_data']}, labels as published; nothing else.{pretrained(c)}
- Every choice on {c['selection']}: each network's checkpoint (best validation accuracy){'' if single else ', the ensemble weights'},
  the temperature and the test-time augmentation. PrivateTest (test) was touched once, after those choices.

## Recipe and cost
{recipes}
- Training time in total, across resumed runs: {c['train_minutes']} minutes ({c['train_minutes'] / 60:.1f} hours of
  wall-clock) on {c['machine']}.
- Reproduce: `ferkit train RUN/config.toml --out NEW_RUN` for each run (its config records every setting and the
  data's path), then the command above.

## Results on FER2013 PrivateTest (3,589 images)
{c['note']}

| figure | value |
|---|---|
| PrivateTest accuracy, no TTA | {pct(c['test_accuracy'])} (95% CI {pct(lo)} to {pct(hi)}) |
| PrivateTest accuracy, TTA `{c['tta']}` (chosen on PublicTest) | {pct(c['test_accuracy_tta'])} (95% CI {pct(lo2)} to {pct(hi2)}) |
| macro-F1, no TTA / with TTA | {pct(c['test_macro_f1'])} / {pct(c['test_macro_f1_tta'])} |
| accuracy without the {c['test_train_copies']} test images that have an exact pixel copy in Training, no TTA / TTA | {pct(c['test_accuracy_without_train_copies'])} / {pct(c['test_accuracy_tta_without_train_copies'])} |
| expected calibration error, before / after temperature | {c['test_ece']['before']:.3f} / {c['test_ece']['after']:.3f} |
{ece_tta}| PublicTest accuracy by TTA option (used to choose) | {', '.join(f"{k}: {pct(v)}" for k, v in c['val_accuracy'].items())} |

{variants(c)}
Per class, with TTA `{c['tta']}`:

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

The full reports (confusion matrix, reliability diagram, examples, saliency) are written by
`ferkit evaluate {c['builtin']} {c['data']} --tta {c['tta']}`.
{realval_section(c)}
## Limits
FER2013 faces are small, gray, mostly frontal web images; expect lower accuracy on real photos with other crops,
lighting or poses. Disgust has 436 training images and the weakest recall. The labels are noisy (see `ferkit data audit`).
"""


if __name__ == "__main__":
    main()
