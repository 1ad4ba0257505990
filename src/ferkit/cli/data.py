"""`ferkit data ...`: info, audit, convert."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ferkit.cli.common import console, err_console, handle_errors, one_line, print_json, quiet

app = typer.Typer(help="Explore, audit and convert datasets.", no_args_is_help=True)
# ferkit.data.audit's BLANK_STD and NEAR_DISTANCE, for --help without importing NumPy at start-up
# (tests/test_cli_help.py checks they agree).
A_BLANK_STD, A_NEAR_DISTANCE = 10.0, 4

DATA_HELP = "Dataset: fer2013.csv(.gz), class folders, FER+ folders, any of them in a .zip, or a manifest.json."
FORMAT_HELP = "Force the dataset format: csv, folders, ferplus or manifest (default: detected)."
CLASSES_HELP = "Keep and/or rename classes, e.g. 'happy,sad,surprise,neutral' or 'anger=angry'."


def _status(msg: str, json_out: bool) -> None:
    if not quiet() and not json_out:
        err_console.print(msg, highlight=False)


def _load(data: Path, fmt: str | None, classes: str | None, json_out: bool):
    from ferkit.data import load_dataset

    _status(f"Loading {one_line(str(data))} ...", json_out)
    t0 = time.perf_counter()
    ds = load_dataset(data, format=fmt, classes=classes)
    seconds = time.perf_counter() - t0
    _status(f"Loaded {sum(len(s) for s in ds.splits.values()):,} images in {seconds:.1f} s"
            f"{' (from the cache)' if ds.from_cache else ''}", json_out)
    return ds, seconds


def _print_skipped(skipped: list, limit: int = 20) -> None:
    if not skipped:
        console.print("Load report: every item was read.")
        return
    console.print(f"Load report: {len(skipped)} item(s) skipped", style="yellow")
    for s in skipped[:limit]:
        console.print(f"  {one_line(s.name)}: {one_line(s.reason)}", highlight=False)
    if len(skipped) > limit:
        console.print(f"  ... and {len(skipped) - limit} more (use --json for the full list)")


@app.command()
@handle_errors
def info(
    data: Path = typer.Argument(..., metavar="DATA", show_default=False, help=DATA_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for the figures (class_distribution.png, "
                                    "samples.png); none are drawn without it."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON on stdout, nothing else."),
    classes: str | None = typer.Option(None, "--classes", metavar="SPEC", help=CLASSES_HELP),
    fmt: str | None = typer.Option(None, "--format", metavar="FORMAT", help=FORMAT_HELP),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed for the random samples figure."),
) -> None:
    """Counts per split and class, imbalance, pixel statistics, the load report, and figures.

    Example: ferkit data info fer2013.zip --out reports/fer2013
    """
    from ferkit.data.info import dataset_info, write_figures

    ds, seconds = _load(data, fmt, classes, json_out)
    facts = dataset_info(ds) | {"load_seconds": round(seconds, 3)}
    if out is not None:
        facts["figures"] = write_figures(ds, out, seed=seed)
    if json_out:
        print_json(facts)
        return
    from rich.table import Table

    splits = list(facts["counts"])
    table = Table(title=f"{one_line(str(data))} ({facts['format']}, {len(ds.classes)} classes)")
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    for c in ds.classes:
        row = [facts["counts"][s][c] for s in splits]
        table.add_row(one_line(c), *[f"{v:,}" for v in row], f"{sum(row):,}")
    table.add_section()
    table.add_row("total", *[f"{facts['totals'][s]:,}" for s in splits], f"{facts['total']:,}", style="bold")
    console.print(table)
    if facts["imbalance_ratio"] is not None:
        console.print(f"Imbalance ratio ({facts['imbalance_split']}, largest / smallest class): "
                      f"{facts['imbalance_ratio']:.1f}")
    for s, empty in facts["empty_classes"].items():
        console.print(f"{s}: no images of {one_line(', '.join(empty))}", style="yellow")
    for s, p in facts["pixels"].items():
        console.print(f"Pixels {s}: mean {p['mean']:.1f}, std {p['std']:.1f}")
    _print_skipped(ds.skipped)
    for p in facts.get("figures", {}).values():
        console.print(f"Wrote {one_line(str(p))}", highlight=False)


@app.command()
@handle_errors
def audit(
    data: Path = typer.Argument(..., metavar="DATA", show_default=False, help=DATA_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for flagged.csv, summary.json, "
                                    "contact_sheet.png (and manifest.json); nothing is written without it."),
    write_clean: bool = typer.Option(False, "--write-clean", help="Also write manifest.json: the dataset without "
                                     "blanks, leaked val/test items, label conflicts and extra exact copies."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout, nothing else."),
    fmt: str | None = typer.Option(None, "--format", metavar="FORMAT", help=FORMAT_HELP),
    blank_std: float = typer.Option(A_BLANK_STD, "--blank-std", metavar="STD",
                                    help="Pixel std under which an image is blank."),
    near_distance: int = typer.Option(A_NEAR_DISTANCE, "--near-distance", min=0, max=15, metavar="BITS",
                                      help="pHash bits that may differ for a near duplicate."),
) -> None:
    """Find blank images, exact and near duplicates, train/val/test leakage, label conflicts and (FER+)
    not-a-face / unknown votes. The source is never modified.

    Example: ferkit data audit fer2013.zip --out reports/fer2013-audit --write-clean
    """
    from ferkit.data import audit as A
    from ferkit.data.archive import Tree
    from ferkit.data.ferplus import vote_table
    from ferkit.errors import FerkitError

    if write_clean and out is None:
        raise FerkitError("--write-clean needs --out DIR (where manifest.json is written)")
    ds, _ = _load(data, fmt, None, json_out)
    votes, read = None, None
    if ds.format == "ferplus":
        votes = vote_table(ds.source)
        tree = Tree(Path(ds.source))

        def read(name: str):
            from ferkit.images import decode_image

            raw = tree.try_read(name)
            try:
                img = None if not raw else decode_image(raw, name, gray=True)
            except FerkitError:
                return None  # the contact sheet shows what can be read; the loader's report lists the rest
            return img if img is not None and img.shape == ds[next(iter(ds.splits))].images.shape[1:] else None

    _status("Auditing ...", json_out)
    res = A.audit(ds, blank_std=blank_std, near_distance=near_distance, ferplus_votes=votes, read_image=read)
    summary = res.summary()
    if out is not None:
        summary["outputs"] = A.write_outputs(res, ds, out, write_clean=write_clean)
    if json_out:
        print_json(summary)
        return
    from rich.table import Table

    splits = list(res.sizes)
    table = Table(title=f"Audit of {one_line(str(data))} ({', '.join(f'{s} {n:,}' for s, n in res.sizes.items())})")
    table.add_column("reason")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_column("meaning")
    for reason, per in summary["counts"].items():
        table.add_row(reason, *[f"{per.get(s, 0):,}" for s in splits], A.REASONS[reason])
    console.print(table)
    if not summary["counts"]:
        console.print("No problems found.")
    for s, n in summary["train_copies"].items():
        if n:
            # Another count than the leak row: any copy in train, whatever its label (what a test score is inflated
            # by), where leak counts same-label copies of any earlier split and label conflicts have their own row.
            console.print(f"{s}: {n:,} of {res.sizes[s]:,} items ({n / res.sizes[s]:.1%}) have an exact copy in "
                          "train, whatever its label (the leak row counts copies of an earlier split with the same "
                          "label; copies with another label are label_conflict)", soft_wrap=True)
    if res.near_pairs_refuted:
        console.print(f"{res.near_pairs_refuted:,} perceptual-hash matches were not near copies (pixel correlation "
                      f"below {A.NEAR_CORRELATION}) and are not reported", soft_wrap=True)
    console.print(f"Audit took {res.seconds:.1f} s.")
    for p in summary.get("outputs", {}).values():
        console.print(f"Wrote {one_line(str(p))}", highlight=False)


@app.command()
@handle_errors
def convert(
    data: Path = typer.Argument(..., metavar="DATA", show_default=False, help=DATA_HELP),
    out: Path = typer.Argument(..., metavar="OUT", show_default=False,
                               help="New folder (--to folders) or .csv / .csv.gz file (--to csv)."),
    to: str = typer.Option(..., "--to", metavar="folders|csv", show_default=False,
                           help="folders: train/val/test/<class>/*.png; csv: emotion,pixels,Usage."),
    fmt: str | None = typer.Option(None, "--format", metavar="FORMAT", help=FORMAT_HELP),
    classes: str | None = typer.Option(None, "--classes", metavar="SPEC", help=CLASSES_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON on stdout."),
) -> None:
    """Write any loaded dataset as class folders of PNGs or as a fer2013-style CSV (lossless).

    Example: ferkit data convert fer2013.zip fer2013.csv.gz --to csv
    """
    from ferkit.data.convert import TARGETS
    from ferkit.data.convert import convert as do_convert
    from ferkit.errors import FerkitError

    if to not in TARGETS:
        raise FerkitError(f"--to {to!r}: unknown; choose one of {', '.join(TARGETS)}")
    ds, _ = _load(data, fmt, classes, json_out)
    from ferkit.cli.progress import progress_bar

    t0 = time.perf_counter()
    with progress_bar("img") as update:
        written = do_convert(ds, out, to, progress=None if json_out else update)
    result = {"source": str(data), "out": str(out), "to": to, "classes": ds.classes, "written": written,
              "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        print_json(result)
    else:
        console.print(f"Wrote {sum(written.values()):,} images to {one_line(str(out))} "
                      f"({', '.join(f'{s} {n:,}' for s, n in written.items())})", highlight=False)
