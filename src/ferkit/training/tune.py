"""Hyper-parameter search with Optuna over a declared space; every trial is a run of the same Trainer as
`ferkit train` (schedules, early stopping, checkpoints and select_metric included), pruned through its on_epoch
callback.

Space file (TOML): `[base]` holds fixed settings (as in a run config, dotted keys for sections; relative paths are
relative to the file's folder), `[space]` one entry per searched setting: `{low, high, log?}` for numbers (int if
both bounds are ints) or `{choices = [...]}`.

The tune folder holds study.db (Optuna's SQLite storage: every trial is recorded as it finishes, so an interrupted
study resumes with `resume=True`), one run folder per trial (trial_000, ...; each keeps its weights, its ONNX export
and a trial.json saying how it ended), trials.csv, best.toml (a full run config) and best.json, rewritten after
every trial.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferkit import runs
from ferkit.errors import FerkitError
from ferkit.training.config import (
    TrainConfig,
    absolute_paths,
    apply_settings,
    find_config,
    read_toml,
    set_setting,
    to_toml,
    validate,
)
from ferkit.training.finish import finish_run
from ferkit.training.trainer import Trainer
from ferkit.utils import ProgressFn, atomic_write, atomic_write_text, format_duration

log = logging.getLogger("ferkit.tune")

STUDY = "study.db"
STUDY_NAME = "ferkit-tune"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a study: the finished trials are recorded in `folder`."""

    def __init__(self, folder: Path, finished: int, trials: int):
        super().__init__(f"{folder}: {finished} of {trials} trials finished")
        self.folder, self.finished, self.trials = folder, finished, trials


def _suggest(trial: Any, name: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if isinstance(spec["low"], int) and isinstance(spec["high"], int):
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec.get("log", False))


def _read_space(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    raw = read_toml(path)
    unknown = set(raw) - {"base", "space"}
    if unknown:
        raise FerkitError(f"{path}: unknown section {', '.join(sorted(unknown))}; a space file has [base] and [space]")
    space = raw.get("space", {})
    if not space:
        raise FerkitError(f"{path}: no [space] section to search")
    for name, spec in space.items():
        if not isinstance(spec, dict) or not ("choices" in spec or ("low" in spec and "high" in spec)):
            raise FerkitError(f"{path}: space.{name} needs low and high, or choices")
        if name in ("out", "select_metric"):
            raise FerkitError(f"{path}: space.{name} can't be searched (one study, one folder, one metric)")
    return raw.get("base", {}), space


def _config(base: TrainConfig, params: dict[str, Any], out: Path) -> TrainConfig:
    cfg = copy.deepcopy(base)
    for k, v in params.items():
        set_setting(cfg, k, v)
    cfg.out = str(out)
    return validate(cfg)


def tune(
    space_path: str | Path,
    trials: int = 10,
    out: str | Path | None = None,
    data: str | None = None,
    overrides: list[str] | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: ProgressFn | None = None,
    score_run: Callable[[Path], float] | None = None,
) -> dict[str, Any]:
    """Run (or, with resume, continue) a study of `trials` trials in all; returns the best trial.

    score_run: a second figure for each finished trial's run folder (the command line's --realval: its mean accuracy
    over realval's datasets through the pipeline); the objective is then the mean of the validation metric and it,
    so that no trial wins on FER2013 alone. Pruning still compares the validation metric epoch by epoch.

    out: the tune folder (None: a new runs/tune, runs/tune2, ...); a folder that holds anything is refused unless
    resuming the study in it. data and overrides (`key=value`) apply over the space file's [base], as for
    `ferkit train`. Ctrl-C stops after recording the finished trials (KeyboardInterrupt propagates).
    """
    import optuna

    if trials < 1:
        raise FerkitError(f"--trials {trials}: give at least one trial")
    space_file = find_config(space_path)
    base_raw, space = _read_space(space_file)
    base = apply_settings(TrainConfig(), base_raw, space_file.parent)
    for item in overrides or []:
        if "=" not in item:
            raise FerkitError(f"override {item!r}: expected key=value")
        set_setting(base, *item.split("=", 1), text=True)
    if data is not None:
        base.data = data
    if base.data is None:
        raise FerkitError("nothing to tune on: give a dataset with --data PATH, or data in the space file's [base]")
    for name, spec in space.items():  # every searched name and its first value checked before any training
        set_setting(TrainConfig(), name, spec["choices"][0] if "choices" in spec else spec["low"])
    validate(base)
    if score_run is not None and base.select_metric == "val_loss":
        raise FerkitError("select_metric val_loss can't be averaged with a real-photo accuracy; choose val_acc or "
                          "val_macro_f1")

    folder = _claim(out, resume)
    storage = f"sqlite:///{(folder / STUDY).resolve()}"
    direction = "minimize" if base.select_metric == "val_loss" else "maximize"
    record = json.dumps({"space": space, "base": to_toml(absolute_paths(base)), "second_score": score_run is not None},
                        sort_keys=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported here, without Optuna's tracebacks
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    if study.user_attrs.get("record", record) != record:
        raise FerkitError(f"{folder}: its study searched another space or base settings; resume it with the same "
                          "space file, --data and -s settings, or choose another --out")
    study.set_user_attr("record", record)
    _retry_interrupted(study)

    finished = [t for t in study.trials if t.state in (_state().COMPLETE, _state().PRUNED)]
    todo = trials - len(finished)
    log.info("tune folder %s", folder)
    if finished:
        log.info("%s: %d of %d trials already finished", folder, len(finished), trials)
    clock = {"t0": time.monotonic(), "done": 0}

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        run = folder / f"trial_{trial.number:03d}"
        k = len(finished) + clock["done"] + 1
        tag = f"trial {k}/{trials}"
        log.info("%s (trial_%03d): %s", tag, trial.number, ", ".join(f"{n}={_fmt(v)}" for n, v in params.items()))

        def on_epoch(epoch: int, row: dict[str, Any]) -> None:
            trial.report(row[base.select_metric], epoch)
            # A trial that has trained its last epoch is finished, not pruned: it keeps its export.
            if epoch < trainer.cfg.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {base.select_metric} "
                                         f"{row[base.select_metric]:.4f} was behind the median of earlier trials")

        def trial_progress(what: str, done: int, total: int) -> None:
            if progress:
                progress(f"{tag} {what}", done, total)

        trainer = Trainer(_config(base, params, run), exist_ok=True, progress=trial_progress, on_epoch=on_epoch)
        state, note = "complete", "finished every epoch"
        try:
            summary = trainer.fit()
        except optuna.TrialPruned as e:
            state, note = "pruned", str(e)
            raise
        except KeyboardInterrupt:
            state, note = "interrupted", f"interrupted (Ctrl-C) during epoch {trainer.epoch + 1}; retried on resume"
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            _trial_record(run, trainer, trial.number, params, state, note)
        finish_run(run, {"run": str(run), **summary})
        if score_run is None:
            return float(trainer.best)
        second = float(score_run(run))
        trial.set_user_attr(base.select_metric, float(trainer.best))
        trial.set_user_attr("second_score", second)
        return (float(trainer.best) + second) / 2

    def after(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        clock["done"] += 1
        _write_tables(folder, study, space, base)
        done = [x for x in study.trials if x.state == _state().COMPLETE]
        best = f"best so far {study.best_value:.4f} (trial_{study.best_trial.number:03d})" if done else "none finished"
        left = todo - clock["done"]
        eta = f"; ETA {format_duration((time.monotonic() - clock['t0']) / clock['done'] * left)}" if left > 0 else ""
        value = f"{t.value:.4f}" if t.value is not None else t.state.name.lower()
        log.info("trial %d/%d (trial_%03d): %s %s; %s%s", len(finished) + clock["done"], trials, t.number,
                 base.select_metric, value, best, eta)

    if todo > 0:
        try:
            study.optimize(objective, n_trials=todo, callbacks=[after])
        except KeyboardInterrupt:
            raise Interrupted(folder, _finished(study), trials) from None
        finally:
            _write_tables(folder, study, space, base)
    if not any(t.state == _state().COMPLETE for t in study.trials):
        raise FerkitError("no trial completed; widen the space or train longer")
    best = study.best_trial
    metric = f"mean of {base.select_metric} and the second score" if score_run else base.select_metric
    return {"trial": best.number, "value": best.value, "metric": metric, "params": best.params,
            "folder": str(folder), "run": str(folder / f"trial_{best.number:03d}"),
            "finished": _finished(study)}


def _finished(study: Any) -> int:
    return sum(t.state in (_state().COMPLETE, _state().PRUNED) for t in study.trials)


def _state() -> Any:
    from optuna.trial import TrialState

    return TrialState


def _claim(out: str | Path | None, resume: bool) -> Path:
    if out is None:
        if resume:
            raise FerkitError("--resume needs the tune folder: --out DIR")
        return runs.new_run_dir(Path("runs") / "tune")
    folder = Path(out)
    has_study = (folder / STUDY).is_file()
    if resume and not has_study:
        raise FerkitError(f"--resume: {folder / STUDY} not found; nothing to resume")
    if not resume and folder.is_dir() and any(folder.iterdir()):
        hint = "pass --resume to continue its study" if has_study else "it holds no study to resume"
        raise FerkitError(f"{folder}: not empty; {hint}, or choose another --out")
    if folder.exists() and not folder.is_dir():
        raise FerkitError(f"{folder}: is a file; a study is written into a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _retry_interrupted(study: Any) -> None:
    """Trials a Ctrl-C (or a kill) cut short are tried again, with the same settings, before new ones."""
    state = _state()
    retried = list(study.user_attrs.get("retried", []))
    for t in study.trials:
        if t.state == state.RUNNING:  # the process was killed: nobody will finish it
            study.tell(t.number, state=state.FAIL)
        if (t.state == state.RUNNING or t.user_attrs.get("interrupted")) and t.number not in retried:
            study.enqueue_trial(t.params)
            retried.append(t.number)
    study.set_user_attr("retried", retried)


def _trial_record(run: Path, trainer: Any, number: int, params: dict[str, Any], state: str, note: str) -> None:
    have = [f for f in (runs.WEIGHTS, runs.STATE, runs.LOG) if (run / f).is_file()]
    if not (run / runs.WEIGHTS).is_file():
        note += "; no weights: no epoch finished"
    else:
        note += f"; {runs.WEIGHTS} holds its best epoch ({trainer.best_epoch})"
    rec = {"trial": number, "state": state, "params": params, "epochs_run": trainer.epoch,
           "best_epoch": trainer.best_epoch, trainer.cfg.select_metric: trainer.best, "note": note, "files": have}
    if run.is_dir():
        atomic_write_text(run / "trial.json", json.dumps(rec, indent=2))


def _write_tables(folder: Path, study: Any, space: dict[str, Any], base: TrainConfig) -> None:
    metric = base.select_metric
    second = any("second_score" in t.user_attrs for t in study.trials)
    # With a second score the objective is the mean of the two; both are shown.
    rows = [{"trial": t.number, "state": t.state.name, "objective" if second else metric: t.value,
             **({metric: t.user_attrs.get(metric), "second_score": t.user_attrs.get("second_score")} if second else {}),
             "seconds": round(t.duration.total_seconds(), 1) if t.duration else None, **t.params}
            for t in study.trials]
    fields = ["trial", "state", *(["objective", metric, "second_score"] if second else [metric]), "seconds", *space]

    def write_csv(p: str) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    atomic_write(folder / "trials.csv", write_csv)
    done = [t for t in study.trials if t.state == _state().COMPLETE]
    if not done:
        return
    best = study.best_trial
    cfg = _config(base, best.params, folder / f"trial_{best.number:03d}")
    cfg.out = None  # a new run from the best settings gets its own folder
    atomic_write_text(folder / "best.toml", to_toml(absolute_paths(cfg)))
    atomic_write_text(folder / "best.json", json.dumps(
        {"trial": best.number, "value": best.value, "metric": metric, "params": best.params}, indent=2))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
