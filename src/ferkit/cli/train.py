"""`ferkit train`, `ferkit tune` and `ferkit export`: the training stack (needs `pip install ferkit[train]`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ferkit.cli.common import console, handle_errors, one_line, print_json
from ferkit.errors import FerkitError


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise FerkitError("training needs PyTorch: pip install 'ferkit[train]'") from None


def _pct(metric: str, value: float | None) -> str:
    """Accuracy and F1 in percent (as `ferkit evaluate` shows them); a loss as it is."""
    if value is None:
        return "-"
    return f"{value:.4f}" if metric.endswith("loss") else f"{100 * value:.2f}%"


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def train(
        config: str | None = typer.Argument(None, metavar="[CONFIG]", help="A TOML config file, or a recipe that ships with ferkit by name (fer2013_default, fer2013_crop40); relative paths in a file are relative to its folder. Settings it leaves out keep their defaults."),
        overrides: list[str] | None = typer.Option(None, "--set", "-s", metavar="KEY=VALUE", help="Override a setting (repeatable), e.g. -s lr=0.01 -s augment.mixup=0.2; see docs/training.md."),
        data: str | None = typer.Option(None, metavar="PATH", help="Dataset: any format `ferkit data info` reads. Required unless the config names one."),
        model: str | None = typer.Option(None, metavar="NAME", help="Registered model (see --list-models).  \\[default: vgg_s]"),
        epochs: int | None = typer.Option(None, metavar="N", help="Number of epochs.  \\[default: 30]"),
        out: str | None = typer.Option(None, metavar="DIR", help="Run folder; it must be new or empty (see --resume, --exist-ok).  \\[default: runs/train, then runs/train2, ...]"),
        device: str | None = typer.Option(None, metavar="DEVICE", help="cpu, cuda, cuda:N or mps.  \\[default: cpu]"),
        init: str | None = typer.Option(None, metavar="WEIGHTS", help="Fine-tune: start from these safetensors weights; 'default' is the shipped model's."),
        class_map: str | None = typer.Option(None, "--map", metavar="MAP", help="Fine-tune: which of the starting model's classes each of your classes is, e.g. --map Joy=happy,Calm=neutral (the same name or emotion in any case or spelling is matched without it, as in evaluate)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last finished epoch (an epoch under way when it stopped is trained again)."),
        exist_ok: bool = typer.Option(False, "--exist-ok", help="Train into a folder that is not empty: the old run's files there are removed."),
        list_models: bool = typer.Option(False, "--list-models", help="List registered models and exit."),
        json_out: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    ) -> None:
        """Train a model; keeps the best checkpoint by validation, exports ONNX.

        Example: ferkit train fer2013_default --data fer2013.zip --epochs 5 --out runs/try

        Fine-tune the shipped model on your own class folders: ferkit train --data my_faces/ --init default --epochs 10

        On several processes or GPUs (docs/distributed.md): torchrun --nproc_per_node=4 --no-python ferkit train CONFIG
        """
        _need_torch()
        from ferkit.cli.progress import progress_bar
        from ferkit.models import list_models as _list
        from ferkit.training import load_config
        from ferkit.training import train as _train
        from ferkit.training.trainer import is_main_process

        if list_models:
            console.print("\n".join(_list()))
            return
        if config is None and resume:
            if out is None:
                raise FerkitError("--resume needs the run folder: --out RUN")
            config = str(Path(out) / "config.toml")  # a resumed run reads its own saved config
        cfg = load_config(config, overrides, data=data, model=model, epochs=epochs, out=out, device=device, init=init,
                          class_map=class_map)
        if cfg.data is None:
            raise FerkitError("nothing to train on: give a dataset with --data PATH (e.g. ferkit train --data "
                              "my_faces/ or ferkit train fer2013_default --data fer2013.zip); see ferkit train --help")
        claimed: list[Path] = []  # without --out, the new numbered folder the trainer claims
        try:
            with progress_bar() as progress:
                summary = _train(cfg, resume=resume, exist_ok=exist_ok, progress=progress, on_out=claimed.append)
        except KeyboardInterrupt:
            run = cfg.out or (str(claimed[0]) if claimed else None)
            if run and is_main_process():
                from ferkit.cli.common import err_console

                err_console.print(f"interrupted: {one_line(run)} keeps every finished epoch (the one under way is "
                                  f"trained again); continue with: ferkit train --resume --out {one_line(run)}",
                                  highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        if not is_main_process():
            return  # under torchrun, rank 0 speaks for all
        if json_out:
            print_json(summary)
        else:
            start = ""
            if summary.get("start") is not None:
                start = (f" (the starting model: {_pct(cfg.select_metric, summary['start'])}"
                         + ("; training did not beat it, the run keeps the starting weights)"
                            if not summary["beat_start"] else ")"))
            console.print(f"best {cfg.select_metric} {_pct(cfg.select_metric, summary.get(cfg.select_metric))} at "
                          f"epoch {summary['best_epoch']}{start}; run folder: {one_line(summary['run'])}", highlight=False)

    @app.command()
    @handle_errors
    def tune(
        space: str = typer.Argument(..., metavar="SPACE", help="TOML search space: \\[base] settings and \\[space] ranges; a file, or tune_example (it ships with ferkit)."),
        data: str | None = typer.Option(None, metavar="PATH", help="Dataset for every trial (over the space file's data)."),
        overrides: list[str] | None = typer.Option(None, "--set", "-s", metavar="KEY=VALUE", help="Override a fixed setting of every trial (repeatable), e.g. -s epochs=3."),
        trials: int = typer.Option(10, min=1, metavar="N", help="Trials in all (a resumed study runs the ones left)."),
        out: str | None = typer.Option(None, metavar="DIR", help="Tune folder: the study, one run folder per trial, trials.csv, best.toml.  \\[default: runs/tune, then runs/tune2, ...]"),
        resume: bool = typer.Option(False, "--resume", help="Continue the interrupted study in --out."),
        seed: int = typer.Option(0, metavar="N", help="Seed of the sampler."),
        realval: Path | None = typer.Option(None, metavar="PHOTOS", help="Labelled real photos (e.g. realval.zip): each finished trial is also evaluated on them through the pipeline, and the objective is the mean of its validation score and its mean accuracy over their datasets."),
        json_out: bool = typer.Option(False, "--json", help="Print the best trial as JSON."),
    ) -> None:
        """Hyper-parameter search with Optuna: every trial trains like `ferkit train`, pruned when its validation score
        falls behind the median. Trials are recorded as they finish; Ctrl-C stops, --resume continues.

        Example: ferkit tune tune_example --data fer2013.zip --trials 20 --out runs/tune
        """
        _need_torch()
        from ferkit.cli.common import err_console
        from ferkit.cli.progress import progress_bar
        from ferkit.training.tune import Interrupted
        from ferkit.training.tune import tune as _tune

        score_run = None
        if realval is not None:
            from ferkit.data.photos import read_photos

            read_photos(realval)  # a bad archive fails now, not after the first trial's training

            def score_run(run: Path) -> float:
                from ferkit.evaluation.core import evaluate

                ev = evaluate(str(run / "model.onnx"), realval, detect=True, report=False, out=run / "realval")
                return float(ev.metrics["mean_over_datasets"]["accuracy"])

        try:
            with progress_bar() as progress:
                best = _tune(space, trials, out, data=data, overrides=overrides, seed=seed, resume=resume,
                             progress=progress, score_run=score_run)
        except Interrupted as e:
            folder = one_line(str(e.folder))
            err_console.print(f"interrupted: {e.finished} of {e.trials} trials finished and recorded in {folder}; "
                              f"continue with the same command and --resume --out {folder}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(130) from None
        if json_out:
            print_json(best)
        else:
            folder = Path(best["folder"])
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
            console.print(f"best {best['metric']} {_pct(best['metric'], best['value'])} in trial_{best['trial']:03d} "
                          f"with {params}; table: {one_line(str(folder / 'trials.csv'))}; config: "
                          f"{one_line(str(folder / 'best.toml'))}",
                          highlight=False)

    @app.command()
    @handle_errors
    def export(
        weights: Path = typer.Argument(..., metavar="WEIGHTS", help="A ferkit safetensors file (e.g. RUN/best.safetensors), a run folder, or a tune folder (its best trial)."),
        out: Path = typer.Argument(..., metavar="OUT", help="The ONNX file to write."),
        name: str | None = typer.Option(None, metavar="NAME", help="Model name stored in the ONNX metadata.  \\[default: the run folder's name]"),
        version: str = typer.Option("1", metavar="TEXT", help="Model version stored in the ONNX metadata."),
        half: bool = typer.Option(False, "--half", help="Store the weights as float16: half the file, float32 arithmetic."),
        force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    ) -> None:
        """Export safetensors weights to a self-describing ONNX model for inference.

        Example: ferkit export runs/vgg_s-fer2013 model.onnx --name my-fer --version 2
        """
        _need_torch()
        from ferkit.models.export import export_onnx, load_weights
        from ferkit.runs import export_name
        from ferkit.utils import is_package_asset

        if is_package_asset(out):
            raise FerkitError(f"{out}: inside ferkit's package, whose models are read-only; choose another file")
        if out.exists() and not force:
            raise FerkitError(f"{out}: already exists; pass --force to overwrite it")
        if weights.is_dir():  # a run folder, or a tune folder's best trial: its weights
            from ferkit.inference.resolve import RUN_WEIGHTS, TUNE_BEST, best_trial

            run = best_trial(weights) if (weights / TUNE_BEST).is_file() else weights
            if not (run / RUN_WEIGHTS).is_file():
                raise FerkitError(f"{weights}: not a run folder (no {RUN_WEIGHTS} inside)")
            weights = run / RUN_WEIGHTS
        model, info = load_weights(weights)
        export_onnx(model, out, info["classes"], info["input_size"], info["crop"],
                    name=name or export_name(weights.parent), version=version, half=half)
        console.print(f"wrote {one_line(str(out))}", highlight=False)

    @app.command()
    @handle_errors
    def quantize(
        model: str = typer.Argument(..., help="A ferkit .onnx model, or 'default' for the shipped one."),
        out: Path = typer.Argument(..., help="The int8 ONNX file to write."),
        data: Path = typer.Option(..., "--data", metavar="PATH", help="Dataset (any format `ferkit data info` reads) whose training split calibrates the activations; its val and test splits are never used."),
        images: int = typer.Option(2000, "--images", min=1, metavar="N", help="Training images to calibrate on (drawn at random, fixed seed)."),
        method: str = typer.Option("minmax", "--method", metavar="METHOD", help="Activation ranges: minmax, percentile or entropy."),
        reduce_range: bool = typer.Option(False, "--reduce-range", help="7-bit weights, for x86 CPUs without VNNI."),
        seed: int = typer.Option(0, "--seed", metavar="N", help="Seed for drawing the calibration images."),
        force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
        json_out: bool = typer.Option(False, "--json", help="Print the written model's summary as JSON."),
    ) -> None:
        """Static int8 quantisation (ONNX Runtime, QDQ, per-channel weights) of a ferkit ONNX model.

        Example: ferkit quantize default default-int8.onnx --data ../shared/datasets/fer2013.zip
        """
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise FerkitError("quantize needs onnx: pip install 'ferkit[train]'") from None
        from ferkit.inference.onnx_classifier import default_model_path
        from ferkit.models.quantize import quantize_int8

        src = default_model_path() if model == "default" else Path(model)
        if not src.is_file():
            raise FerkitError(f"{model}: no such model; give 'default' or a .onnx file")
        if out.exists() and not force:
            raise FerkitError(f"{out}: already exists; pass --force to overwrite it")
        from ferkit.inference.onnx_classifier import OnnxClassifier

        OnnxClassifier(src, threads=1)  # checked like every model a user hands in (graph rules, a bounded first run)
        info = quantize_int8(src, out, data, images=images, seed=seed, method=method, reduce_range=reduce_range)
        summary = {"model": str(src), "out": str(out), **info, "size_bytes": out.stat().st_size,
                   "source_size_bytes": src.stat().st_size}
        if json_out:
            print_json(summary)
        else:
            console.print(f"wrote {one_line(str(out))} ({summary['size_bytes'] / 1e6:.1f} MB, from "
                          f"{summary['source_size_bytes'] / 1e6:.1f} MB); calibrated on "
                          f"{info['calibration_images']} training images ({method})")
