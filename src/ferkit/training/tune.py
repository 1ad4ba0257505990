"""Hyper-parameter search with Optuna over a declared space, pruning trials on validation accuracy.

Space file (TOML): `[base]` holds fixed settings (as in a run config, dotted keys for sections), `[space]` one entry
per searched setting: `{low, high, log?}` for numbers (int if both bounds are ints) or `{choices = [...]}`.
"""

from __future__ import annotations

import csv
import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from ferkit.errors import FerkitError
from ferkit.training.config import load_config, to_toml
from ferkit.training.trainer import Trainer
from ferkit.utils import atomic_write_text

log = logging.getLogger("ferkit.tune")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _suggest(trial: Any, name: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if "low" not in spec or "high" not in spec:
        raise FerkitError(f"space.{name}: needs low and high, or choices")
    if isinstance(spec["low"], int) and isinstance(spec["high"], int):
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec.get("log", False))


def tune(space_path: Path, trials: int, out: Path, seed: int = 0) -> dict[str, Any]:
    import optuna

    try:
        raw = tomllib.loads(Path(space_path).read_text())
    except FileNotFoundError:
        raise FerkitError(f"{space_path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise FerkitError(f"{space_path}: not valid TOML ({e})") from None
    base = _flatten(raw.get("base", {}))
    space = raw.get("space", {})
    if not space:
        raise FerkitError(f"{space_path}: no [space] section to search")
    out.mkdir(parents=True, exist_ok=True)
    load_config(None, [f"{k}={v}" for k, v in base.items()] + [f"{k}={s.get('low', (s.get('choices') or [0])[0])}"
                                                                 for k, s in space.items()])  # validate names early

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        sets = [f"{k}={v}" for k, v in {**base, **params}.items()] + [f"out={out / f'trial_{trial.number:03d}'}"]
        trainer = Trainer(load_config(None, sets), progress=False)
        best = 0.0
        while trainer.epoch < trainer.cfg.epochs:
            trainer.train_epoch()
            acc = trainer.validate()["val_acc"]
            trainer.epoch += 1
            best = max(best, acc)
            trial.report(acc, trainer.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    study.optimize(objective, n_trials=trials, callbacks=[lambda s, t: log.info("trial %d: %s %s", t.number, t.state.name, t.value)])
    rows = [{"trial": t.number, "state": t.state.name, "val_acc": t.value, **t.params} for t in study.trials]
    fields = ["trial", "state", "val_acc", *space]

    def write_csv(p: str) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    from ferkit.utils import atomic_write

    atomic_write(out / "trials.csv", write_csv)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise FerkitError("no trial completed; widen the space or train longer")
    best = study.best_trial
    cfg = load_config(None, [f"{k}={v}" for k, v in {**base, **best.params}.items()])
    atomic_write_text(out / "best.toml", to_toml(cfg))
    result = {"trial": best.number, "value": best.value, "params": best.params}
    atomic_write_text(out / "best.json", json.dumps(result, indent=2))
    return result
