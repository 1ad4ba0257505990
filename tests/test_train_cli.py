"""`ferkit train`, `tune` and `export` as a user runs them: run folders are never mixed or overwritten, runs are
numbered, configs and recipes resolve from anywhere, an interrupted study resumes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from ferkit.cli import app  # noqa: E402

FAST = ["-s", "batch_size=16", "-s", "threads=1", "-s", "augment.flip=false"]


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train(data: Path, *extra: object):
    return _run("train", "--data", data, "--epochs", 1, *FAST, *extra)


def test_a_run_folder_that_holds_a_run_is_refused_unless_resumed_or_reused(tiny_folders: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _train(tiny_folders, "--out", run, "--json")
    assert first.exit_code == 0, first.output
    weights = (run / "best.safetensors").read_bytes()
    again = _train(tiny_folders, "--out", run)
    assert again.exit_code == 2 and "not empty" in again.output and "--resume" in again.output
    assert "Traceback" not in again.output
    assert (run / "best.safetensors").read_bytes() == weights and len((run / "log.jsonl").read_text().splitlines()) == 1
    # A folder of the user's own files is not a run folder either.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _train(tiny_folders, "--out", mine).exit_code == 2
    # --exist-ok starts a new run there: the old run's files go, the user's others stay.
    (run / "notes.txt").write_text("keep me")
    reused = _train(tiny_folders, "--out", run, "--exist-ok", "-s", "seed=3", "--json")
    assert reused.exit_code == 0, reused.output
    assert (run / "notes.txt").read_text() == "keep me"
    assert [json.loads(r)["epoch"] for r in (run / "log.jsonl").read_text().splitlines()] == [1]
    assert "seed = 3" in (run / "config.toml").read_text()
    # --resume through the command line continues the run from its own config (2 epochs in all).
    resumed = _run("train", "--resume", "--out", run, "--epochs", 2, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert [json.loads(r)["epoch"] for r in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads(resumed.stdout)["epochs_run"] == 2


def test_runs_without_out_are_numbered_and_named_after_their_folder(tiny_folders: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ferkit.inference.onnx_classifier import OnnxClassifier

    monkeypatch.chdir(tmp_path)
    folders = []
    for _ in range(2):
        r = _train(tiny_folders, "--json")
        assert r.exit_code == 0, r.output
        folders.append(json.loads(r.stdout)["run"])
    # The folder says what the run is: the model and the data (and what a fine-tune starts from).
    assert folders == [str(Path("runs") / "vgg_s-tiny"), str(Path("runs") / "vgg_s-tiny2")]
    assert OnnxClassifier(tmp_path / "runs" / "vgg_s-tiny2" / "model.onnx").name == "vgg_s-tiny2"
    # A run folder called like a built-in model exports a model that is not called like one.
    r = _train(tiny_folders, "--out", "runs/default")
    assert r.exit_code == 0, r.output
    assert OnnxClassifier(tmp_path / "runs" / "default" / "model.onnx").name == "run-default"


def test_bare_train_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _run("train")
    assert r.exit_code == 2 and "--data" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()
    r = _run("train", "fer2013_default")  # the recipe names no dataset: it is the user's to give
    assert r.exit_code == 2 and "--data" in r.output
    r = _run("train", "no_such_recipe", "--data", tmp_path)
    assert r.exit_code == 2 and "fer2013_default" in r.output  # the error lists the recipes that ship


def test_recipes_ship_and_config_paths_are_relative_to_the_config(tiny_folders: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ferkit.training import load_config
    from ferkit.training.config import list_recipes

    assert {"fer2013_default", "fer2013_crop40", "tune_example"} <= set(list_recipes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("fer2013_default", data=str(tiny_folders))
    assert (cfg.model, cfg.epochs, cfg.data) == ("vgg_s", 40, str(tiny_folders))
    # A config file's relative paths are relative to its own folder, not to the current one.
    conf = tmp_path / "project" / "conf"
    conf.mkdir(parents=True)
    (conf / "run.toml").write_text('data = "../faces"\nout = "../runs/a"\nepochs = 1\nbatch_size = 16\nthreads = 1\n'
                                   "[augment]\nflip = false\n")
    (tmp_path / "project" / "faces").symlink_to(tiny_folders, target_is_directory=True)
    cfg = load_config(conf / "run.toml")
    assert Path(cfg.data).resolve() == tiny_folders.resolve()
    r = _run("train", conf / "run.toml", "--json")
    assert r.exit_code == 0, r.output
    run = tmp_path / "project" / "runs" / "a"
    assert (run / "model.onnx").is_file() and not (elsewhere / "runs").exists()
    # The run's own config records absolute paths: it reads the same from anywhere (and --resume finds the data).
    assert Path(load_config(run / "config.toml").data).resolve() == tiny_folders.resolve()


def test_typed_flags_are_not_turned_back_into_text(tiny_folders: Path) -> None:
    from ferkit.training import load_config

    cfg = load_config(None, ["lr=0.1"], data=str(tiny_folders), epochs=3, model="resnet_s", out="x,y=z")
    assert (cfg.epochs, cfg.model, cfg.lr, cfg.out) == (3, "resnet_s", 0.1, "x,y=z")
    with pytest.raises(Exception, match="epochs"):
        load_config(None, epochs="three")


def test_export_names_the_model_after_the_run_and_never_overwrites(tiny_folders: Path, tmp_path: Path) -> None:
    from ferkit.inference.onnx_classifier import OnnxClassifier
    from ferkit.utils import assets_dir

    run = tmp_path / "mine"
    assert _train(tiny_folders, "--out", run).exit_code == 0
    out = tmp_path / "m.onnx"
    r = _run("export", run / "best.safetensors", out, "--version", "3")
    assert r.exit_code == 0, r.output
    clf = OnnxClassifier(out)
    assert (clf.name, clf.metadata["version"]) == ("mine", "3")
    assert clf.classes == json.loads((run / "metrics.json").read_text())["classes"]
    r = _run("export", run / "best.safetensors", out)
    assert r.exit_code == 2 and "--force" in r.output
    assert _run("export", run / "best.safetensors", out, "--force", "--name", "x").exit_code == 0
    assert OnnxClassifier(out).name == "x"
    half = tmp_path / "half.onnx"
    assert _run("export", run / "best.safetensors", half, "--half").exit_code == 0
    assert OnnxClassifier(half).metadata["weights"] == "float16" and half.stat().st_size < out.stat().st_size
    r = _run("export", run / "best.safetensors", assets_dir() / "ferkit_default.onnx", "--force")
    assert r.exit_code == 2 and "read-only" in r.output


def test_help_has_no_type_placeholders_and_keeps_brackets() -> None:
    for cmd in ("train", "tune", "export", "quantize", "evaluate", "compare", "calibrate"):
        r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0
        for placeholder in ("<bool>", "<str>", "<int>", "<path>", "<list", "<float>"):
            assert placeholder not in r.output, (cmd, placeholder)
    tune = CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).output
    assert "[base]" in tune and "[space]" in tune
    train = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: runs/train" in train and "[default: 30]" in train


def _space(tmp_path: Path, data: Path) -> Path:
    space = tmp_path / "space.toml"
    space.write_text(f'[base]\ndata = "{data}"\nepochs = 2\nbatch_size = 16\nthreads = 1\nema = 0\n'
                     '"augment.flip" = false\n[space]\nlr = { choices = [0.02, 0.05] }\n'
                     'label_smoothing = { low = 0.0, high = 0.2 }\n')
    return space


def test_tune_records_trials_through_the_trainer_and_resumes_after_ctrl_c(tiny_folders: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from ferkit.training import load_config
    from ferkit.training.trainer import Trainer

    space, out = _space(tmp_path, tiny_folders), tmp_path / "tune"
    calls = {"n": 0}
    fit = Trainer.fit

    def fit_then_ctrl_c(self):  # the second trial is interrupted in its first epoch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", fit_then_ctrl_c)
    r = _run("tune", space, "--trials", 3, "--out", out)
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and "interrupted: 1 of 3 trials finished" in r.output
    assert "--resume" in r.output
    states = [row["state"] for row in csv.DictReader((out / "trials.csv").open())]
    assert states == ["COMPLETE", "FAIL"]
    trial0 = out / "trial_000"
    assert {"best.safetensors", "model.onnx", "log.jsonl", "metrics.json", "trial.json"} <= {p.name for p in trial0.iterdir()}
    assert len((trial0 / "log.jsonl").read_text().splitlines()) == 2  # every epoch, logged by the Trainer
    assert "interrupted" in json.loads((out / "trial_001" / "trial.json").read_text())["note"]
    # The same folder again without --resume is refused; with it the study goes on, the interrupted trial first.
    assert _run("tune", space, "--trials", 3, "--out", out).exit_code == 2
    r = _run("tune", space, "--trials", 3, "--out", out, "--resume", "--json")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert rows[2]["lr"] == rows[1]["lr"] and rows[2]["label_smoothing"] == rows[1]["label_smoothing"]
    best = json.loads(r.stdout)
    assert best["finished"] == 3 and best["trial"] in (0, 2, 3)
    assert (out / f"trial_{best['trial']:03d}" / "model.onnx").is_file()
    cfg = load_config(out / "best.toml")
    assert cfg.lr == best["params"]["lr"] and cfg.epochs == 2 and cfg.out is None
    # Progress said which trial of how many, the best so far and the time left.
    assert "trial 1/3" in r.output or "trial 3/3" in r.output
    assert "best so far" in r.output


def test_tune_takes_data_and_settings_like_train(tiny_folders: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text('[base]\nepochs = 3\n[space]\nlr = { choices = [0.05] }\n')
    r = _run("tune", space, "--trials", 1, "--out", tmp_path / "t")
    assert r.exit_code == 2 and "--data" in r.output
    r = _run("tune", space, "--trials", 1, "--out", tmp_path / "t", "--data", tiny_folders, "-s", "epochs=1",
             *FAST, "--json")
    assert r.exit_code == 0, r.output
    trial = tmp_path / "t" / "trial_000"
    assert len((trial / "log.jsonl").read_text().splitlines()) == 1  # -s epochs=1 over the file's 3
    assert json.loads((trial / "trial.json").read_text())["state"] == "complete"
    r = _run("tune", space, "--out", tmp_path / "u", "--data", tiny_folders, "-s", "nope=1")
    assert r.exit_code == 2 and "nope" in r.output


def test_tune_with_realval_averages_the_two_scores(tiny_folders: Path, tmp_path: Path) -> None:
    """--realval: each finished trial is also scored on labelled photos through the pipeline (here the tiny set's
    48x48 test faces, classified whole as predict does), and the objective is the mean of the two."""
    import csv

    space = tmp_path / "space.toml"
    space.write_text('[base]\nepochs = 1\n[space]\nlr = { choices = [0.05] }\n')
    r = _run("tune", space, "--trials", 1, "--out", tmp_path / "t", "--data", tiny_folders, *FAST,
             "--realval", tiny_folders, "--json")
    assert r.exit_code == 0, r.output
    (row,) = list(csv.DictReader((tmp_path / "t" / "trials.csv").open()))
    second = json.loads((tmp_path / "t" / "trial_000" / "realval" / "metrics.json").read_text())
    assert float(row["second_score"]) == pytest.approx(second["mean_over_datasets"]["accuracy"])
    assert float(row["objective"]) == pytest.approx((float(row["val_acc"]) + float(row["second_score"])) / 2)
    r = _run("tune", space, "--trials", 1, "--out", tmp_path / "u", "--data", tiny_folders, *FAST,
             "--realval", tmp_path / "missing.zip")
    assert r.exit_code == 2 and "missing.zip" in r.output


def test_ctrl_c_says_how_to_resume(tiny_folders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ferkit.training

    def interrupted(cfg, **kwargs):
        cfg.out = str(tmp_path / "run")  # as the trainer does once it has claimed the folder
        raise KeyboardInterrupt

    monkeypatch.setattr(ferkit.training, "train", interrupted)
    r = _train(tiny_folders)
    assert r.exit_code == 130
    assert f"ferkit train --resume --out {tmp_path / 'run'}" in r.output.replace("\n", "")


def test_tune_trials_that_finish_their_epochs_are_complete(tiny_folders: Path, tmp_path: Path) -> None:
    """With one epoch per trial no trial is pruned after its only epoch: each is complete, with its export, and the
    last line rounds its figures."""
    import csv

    space = tmp_path / "space.toml"
    space.write_text('[base]\nepochs = 1\n[space]\nlr = { low = 0.001, high = 0.3, log = true }\n')
    r = _run("tune", space, "--trials", 4, "--out", tmp_path / "t", "--data", tiny_folders, *FAST)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "t" / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["COMPLETE"] * 4
    assert all((tmp_path / "t" / f"trial_{i:03d}" / "model.onnx").is_file() for i in range(4))
    last = " ".join(r.output.split()).rsplit("best val_acc", 1)[-1]  # the closing line, however it wrapped
    assert "lr=" in last and not re.search(r"\d{8,}", last)
    # Every command that takes a model takes run folders, and a tune folder means its best trial.
    from ferkit.inference.resolve import resolve_model

    best = json.loads((tmp_path / "t" / "best.json").read_text())["trial"]
    assert resolve_model(tmp_path / "t").path == tmp_path / "t" / f"trial_{best:03d}" / "model.onnx"
    face = next((tiny_folders / "test" / "happy").iterdir())
    r = _run("predict", face, "-m", tmp_path / "t", "--json")
    assert r.exit_code == 0, r.output
    for src in (tmp_path / "t", tmp_path / "t" / "trial_000"):
        r = _run("export", src, tmp_path / f"{src.name}.onnx")
        assert r.exit_code == 0 and (tmp_path / f"{src.name}.onnx").is_file(), r.output
    r = _run("export", tiny_folders, tmp_path / "x.onnx")
    assert r.exit_code == 2 and "not a run folder" in r.output
