"""`ferkit evaluate`, `ferkit calibrate` and `ferkit compare`: thin commands over ferkit.evaluation."""

from __future__ import annotations

from pathlib import Path

import typer

from ferkit.cli.common import TTA_HELP, check_tta, console, handle_errors, one_line, print_json, quiet, tta_option
from ferkit.cli.data import FORMAT_HELP
from ferkit.cli.progress import progress_bar

SPLIT_HELP = "Which split to use: train, val or test."
MAP_HELP = "Dataset class -> model class, e.g. 'anger=angry,happiness=happy,contempt=-' ('-' leaves a class out)."
DETECT_HELP = ("Whole labelled photos through the product's pipeline, as EmotionRecognizer.predict sees a user's "
               "photo: detection, alignment, crop, classification of the largest face; a photo with no face found "
               "counts as wrong and is listed. DATA: a folder or .zip of <class>/<photo> or <dataset>/<class>/<photo>, "
               "or with a manifest.csv (dataset,path,label). Metrics per dataset, over all and their mean.")
RESTRICT_HELP = ("Renormalise each model's probabilities over the dataset's classes (a 7-class model on a 4-class "
                 "dataset then never predicts the other 3); without it their predictions count as mistakes.")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("evaluate")(evaluate_cmd)
    app.command("calibrate")(calibrate_cmd)
    app.command("compare")(compare_cmd)


@handle_errors
def evaluate_cmd(
    models: list[str] = typer.Argument(..., metavar="MODEL",
                                       help="'default', a run folder, a .onnx or .safetensors file; several "
                                            "(or comma separated) make an ensemble."),
    data: Path = typer.Argument(..., metavar="DATA", help="Any dataset ferkit reads, or a cleaned manifest.json."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help=SPLIT_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Output folder.  \\[default: a new runs/eval/<model>-<data>, numbered if it exists]"),
    tta: str = tta_option(),
    map_spec: str | None = typer.Option(None, "--map", metavar="A=B,...", help=MAP_HELP),
    restrict: bool = typer.Option(False, "--restrict", help=RESTRICT_HELP),
    format: str | None = typer.Option(None, "--format", metavar="FORMAT", help=FORMAT_HELP),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=100, metavar="N", help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed for bootstrap and example sampling."),
    saliency: int = typer.Option(2, "--saliency", min=0, metavar="N", help="Occlusion maps per class (0: none)."),
    detect: bool = typer.Option(False, "--detect", help=DETECT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON on stdout, nothing else."),
) -> None:
    """Evaluate a model (or an ensemble) on a dataset split; write metrics.json, predictions.csv (one row per image),
    PNGs and a self-contained report.html.

    Example: ferkit evaluate default fer2013.zip --out runs/eval/default-fer2013
    Whole photos: ferkit evaluate default ../shared/datasets/realval.zip --detect
    """
    check_tta(tta)
    from ferkit.evaluation import evaluate
    from ferkit.evaluation.report import dataset_rows, per_class_rows, summary_rows

    with progress_bar() as prog:
        ev = evaluate(models, data, split=split, out=out, tta=tta, map_spec=map_spec, format=format,
                      n_boot=bootstrap, seed=seed, saliency=saliency, restrict=restrict, progress=prog,
                      detect=detect)
    if as_json:
        print_json(ev.metrics)
        return
    if quiet():
        return
    from rich.table import Table

    r = ev.metrics
    table = Table(title=one_line(f"{r['model']['name']} on {data} ({split}, {r['data']['n']} images)"))
    for col in ("metric", "value", "note"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for row in summary_rows(r):
        table.add_row(*map(one_line, row))
    console.print(table)
    pc = Table(title="Per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        pc.add_column(col, justify="left" if col == "class" else "right")
    rows = per_class_rows(r["metrics"])
    for i, row in enumerate(rows):
        pc.add_row(*map(one_line, row), end_section=i == len(rows) - 3)  # a rule above the averages
    console.print(pc)
    if detect:
        ds = Table(title="Per dataset (no face: counted as wrong)")
        for col in ("dataset", "photos", "accuracy", "95% CI", "macro-F1", "95% CI", "no face"):
            ds.add_column(col, justify="left" if col == "dataset" else "right")
        rows = dataset_rows(r)
        for i, row in enumerate(rows):
            ds.add_row(*map(one_line, row[:7]), end_section=i == len(rows) - 3)
        console.print(ds)
    console.print(one_line(f"Report: {ev.out / 'report.html'}; every image's prediction: {ev.out / 'predictions.csv'}"),
                  highlight=False)


@handle_errors
def calibrate_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="A .onnx file, a run folder with model.onnx, or 'default'."),
    data: Path = typer.Argument(..., metavar="DATA", help="The dataset whose validation split fits the temperature."),
    split: str = typer.Option("val", "--split", metavar="SPLIT", help="Split to fit on."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE", help="Write a calibrated copy here (default: your own model "
                                                                "in place; a built-in model, which is read-only, to "
                                                                "a new <name>-calibrated.onnx in the current folder)."),
    write: bool = typer.Option(True, "--write/--no-write", help="Store the temperature in the model's metadata."),
    tta: str = tta_option("Fit T for predictions with this TTA (stored for that mode only: averaged views need "
                          "their own T). " + TTA_HELP),
    map_spec: str | None = typer.Option(None, "--map", metavar="A=B,...", help=MAP_HELP),
    format: str | None = typer.Option(None, "--format", metavar="FORMAT", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout, nothing else."),
) -> None:
    """Fit temperature scaling on the validation split (minimising NLL) and store T in the ONNX model's metadata.

    Example: ferkit calibrate runs/fer2013_default ../shared/datasets/fer2013.zip
    """
    check_tta(tta)
    from ferkit.evaluation import calibrate

    with progress_bar() as prog:
        res = calibrate(model, data, split=split, out=out, write=write, map_spec=map_spec, format=format,
                        progress=prog, tta=tta)
    if as_json:
        print_json(res)
        return
    if quiet():
        return
    mode = "" if res["tta"] == "none" else f" for TTA {res['tta']}"
    console.print(f"Temperature T{mode} = {res['temperature']:.4f} (was {res['temperature_before']:g}), "
                  f"fitted on {res['split']} ({res['n']} images)", highlight=False)
    for part in (res["split"], "test"):
        if part in res:
            b, a = res[part]["before"], res[part]["after"]
            console.print(f"  {part}: ECE {_pct(b['ece'])} -> {_pct(a['ece'])}, NLL {b['nll']:.4f} -> {a['nll']:.4f}",
                          highlight=False)
    if res["copy_of_builtin"]:
        console.print(one_line(f"{model} is a built-in model and stays as shipped: wrote a calibrated copy to "
                               f"{res['written_to']}; use it with --model {res['written_to']}"), highlight=False)
    elif res["written_to"]:
        key = "temperature" if res["tta"] == "none" else "temperatures"
        console.print(one_line(f"Stored in {res['written_to']} (metadata '{key}')"), highlight=False)
    else:
        console.print("Not written (--no-write)")


@handle_errors
def compare_cmd(
    models: list[str] = typer.Argument(..., metavar="MODEL", help="Two or more models; 'a,b' is an ensemble."),
    data: Path = typer.Option(..., "--data", "-d", metavar="PATH", help="The dataset all models are evaluated on."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help=SPLIT_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for compare.md and compare.json.  \\[default: a new runs/eval/compare-<data>, numbered if it exists]"),
    tta: str = tta_option(),
    map_spec: str | None = typer.Option(None, "--map", metavar="A=B,...", help=MAP_HELP),
    restrict: bool = typer.Option(False, "--restrict", help=RESTRICT_HELP),
    format: str | None = typer.Option(None, "--format", metavar="FORMAT", help=FORMAT_HELP),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=100, metavar="N", help="Bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed for bootstrap."),
    detect: bool = typer.Option(False, "--detect", help=DETECT_HELP + " Pairs: McNemar and a paired bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison JSON on stdout, nothing else."),
) -> None:
    """Evaluate several models on the same images: one table side by side, McNemar's test for each pair.

    Example: ferkit compare default runs/fer2013_default --data ../shared/datasets/fer2013.zip
    """
    check_tta(tta)
    from ferkit.evaluation import compare, markdown, write_compare
    from ferkit.evaluation.report import default_out
    from ferkit.runs import new_run_dir

    with progress_bar() as prog:
        res = compare(models, data, split=split, tta=tta, map_spec=map_spec, format=format, n_boot=bootstrap,
                      seed=seed, restrict=restrict, progress=prog, detect=detect)
    target = out if out is not None else new_run_dir(default_out(["compare"], data, split))
    write_compare(res, target)
    if as_json:
        print_json(res)
        return
    if quiet():
        return
    # Plain text: a Markdown table must not be re-wrapped to the terminal width; names in it escaped line by line.
    typer.echo("\n".join(one_line(line) for line in markdown(res).split("\n")))
    console.print(one_line(f"Written: {target / 'compare.md'}, {target / 'compare.json'}"), highlight=False)

