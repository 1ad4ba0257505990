"""`ferkit train`, `ferkit tune` and `ferkit export`: the training stack (needs `pip install ferkit[train]`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ferkit.cli.common import console, handle_errors, print_json
from ferkit.errors import FerkitError


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise FerkitError("training needs PyTorch: pip install 'ferkit[train]'") from None


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def train(
        config: Path | None = typer.Argument(None, help="TOML config (see configs/); settings not in it keep defaults."),
        overrides: list[str] | None = typer.Option(None, "--set", "-s", help="Override a setting: key=value, e.g. lr=0.01 or augment.mixup=0.2."),
        data: str | None = typer.Option(None, help="Dataset path (any format `ferkit data info` reads)."),
        model: str | None = typer.Option(None, help="Registered model name (see `ferkit train --list-models`)."),
        epochs: int | None = typer.Option(None, help="Number of epochs."),
        out: str | None = typer.Option(None, help="Run folder."),
        device: str | None = typer.Option(None, help="cpu or cuda."),
        init: str | None = typer.Option(None, help="Fine-tune: start from these safetensors weights; 'default' is the shipped model."),
        resume: bool = typer.Option(False, help="Continue an interrupted run in its run folder exactly where it stopped."),
        list_models: bool = typer.Option(False, "--list-models", help="List registered models and exit."),
        json_out: bool = typer.Option(False, "--json", help="Print the final metrics as JSON."),
    ) -> None:
        """Train a model; keeps the best checkpoint by validation, exports ONNX.

        Example: ferkit train configs/fer2013_default.toml --epochs 5 --out runs/try

        Fine-tune the shipped model on your own class folders: ferkit train --data my_faces/ --init default --epochs 10

        On several processes or GPUs (docs/distributed.md): torchrun --nproc_per_node=4 --no-python ferkit train CONFIG
        """
        _need_torch()
        from ferkit.models import list_models as _list
        from ferkit.training import load_config
        from ferkit.training import train as _train
        from ferkit.training.trainer import is_main_process

        if list_models:
            console.print("\n".join(_list()))
            return
        sets = list(overrides or [])
        for key, value in (("data", data), ("model", model), ("epochs", epochs), ("out", out), ("device", device),
                           ("init", init)):
            if value is not None:
                sets.append(f"{key}={value}")
        if resume and config is None:
            # A resumed run reads its own saved config.
            run = next((s.split("=", 1)[1] for s in sets if s.startswith("out=")), None)
            if run is None:
                raise FerkitError("--resume needs the run folder: --out RUN (or the run's config file)")
            config = Path(run) / "config.toml"
        cfg = load_config(config, sets)
        summary = _train(cfg, resume=resume)
        if not is_main_process():
            return  # under torchrun, rank 0 speaks for all
        if json_out:
            print_json(summary)
        else:
            console.print(f"best {cfg.select_metric} {summary.get(cfg.select_metric):.4f} at epoch "
                          f"{summary['best_epoch']}; run folder: {cfg.out}")

    @app.command()
    @handle_errors
    def tune(
        space: Path = typer.Argument(..., help="TOML search space: [base] settings and [space] ranges (see configs/tune_example.toml)."),
        trials: int = typer.Option(10, help="Number of trials."),
        out: Path = typer.Option(Path("runs/tune"), help="Folder for trials, the table and the best config."),
        json_out: bool = typer.Option(False, "--json", help="Print the best trial as JSON."),
    ) -> None:
        """Hyper-parameter search with Optuna, pruning on validation accuracy.

        Example: ferkit tune configs/tune_example.toml --trials 20 --out runs/tune
        """
        _need_torch()
        from ferkit.training.tune import tune as _tune

        best = _tune(space, trials, out)
        if json_out:
            print_json(best)
        else:
            console.print(f"best val_acc {best['value']:.4f} with {best['params']}; "
                          f"table: {out / 'trials.csv'}; config: {out / 'best.toml'}")

    @app.command()
    @handle_errors
    def export(
        weights: Path = typer.Argument(..., help="A ferkit safetensors file (e.g. RUN/best.safetensors)."),
        out: Path = typer.Argument(..., help="The ONNX file to write."),
        name: str = typer.Option("ferkit-model", help="Model name stored in the ONNX metadata."),
        version: str = typer.Option("1", help="Model version stored in the ONNX metadata."),
    ) -> None:
        """Export safetensors weights to a self-describing ONNX model for inference.

        Example: ferkit export runs/default/best.safetensors model.onnx --name my-fer --version 2
        """
        _need_torch()
        from ferkit.models.export import export_onnx, load_weights

        model, info = load_weights(weights)
        export_onnx(model, out, info["classes"], info["input_size"], info["crop"], name=name, version=version)
        console.print(f"wrote {out}")

    @app.command()
    @handle_errors
    def quantize(
        model: str = typer.Argument(..., help="A ferkit .onnx model, or 'default' for the shipped one."),
        out: Path = typer.Argument(..., help="The int8 ONNX file to write."),
        data: Path = typer.Option(..., "--data", help="Dataset (any format `ferkit data info` reads) whose training split calibrates the activations; its val and test splits are never used."),
        images: int = typer.Option(2000, "--images", min=1, help="Training images to calibrate on (drawn at random, fixed seed)."),
        method: str = typer.Option("minmax", "--method", help="Activation ranges: minmax, percentile or entropy."),
        reduce_range: bool = typer.Option(False, "--reduce-range", help="7-bit weights, for x86 CPUs without VNNI."),
        seed: int = typer.Option(0, "--seed", help="Seed for drawing the calibration images."),
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
        from ferkit.inference.model import default_model_path
        from ferkit.models.quantize import quantize_int8

        src = default_model_path() if model == "default" else Path(model)
        if not src.is_file():
            raise FerkitError(f"{model}: no such model; give 'default' or a .onnx file")
        if out.exists() and not force:
            raise FerkitError(f"{out}: already exists; pass --force to overwrite it")
        info = quantize_int8(src, out, data, images=images, seed=seed, method=method, reduce_range=reduce_range)
        summary = {"model": str(src), "out": str(out), **info, "size_bytes": out.stat().st_size,
                   "source_size_bytes": src.stat().st_size}
        if json_out:
            print_json(summary)
        else:
            console.print(f"wrote {out} ({summary['size_bytes'] / 1e6:.1f} MB, from "
                          f"{summary['source_size_bytes'] / 1e6:.1f} MB); calibrated on "
                          f"{info['calibration_images']} training images ({method})")
