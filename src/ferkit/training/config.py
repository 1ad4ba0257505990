"""A run's configuration: one TOML file, with `key=value` command-line overrides (dotted for sections)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferkit.errors import FerkitError
from ferkit.training.augment import AugmentConfig


@dataclass
class TrainConfig:
    data: str = "../shared/datasets/fer2013.zip"
    format: str | None = None
    classes: str | None = None  # subset / renames, see ferkit.data.select_classes
    out: str = "runs/default"
    model: str = "vgg_s"
    dropout: float | None = None
    crop: int = 0  # train on random crop x crop windows of the face (e.g. 40 of 48) and test on the centre; 0: whole face
    init: str | None = None  # fine-tune: start from these safetensors weights ("default": the shipped model's)
    freeze: bool = False  # fine-tune only the output layer
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov) | adamw | adam
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | plateau
    warmup: float = 0.15  # fraction of training spent warming up (onecycle)
    label_smoothing: float = 0.1
    ema: float = 0.999  # weight EMA decay; 0 switches it off
    grad_clip: float = 0.0  # max gradient norm; 0 switches it off
    balance: str = "none"  # none | weights (class-weighted loss) | sampler (balanced sampling)
    soft_labels: bool = False  # train on vote distributions (FER+)
    # Distillation: teacher models (run folders or safetensors, probabilities averaged) or a teacher file they wrote.
    teacher: list[str] | str | None = None
    teacher_views: int = 8  # augmented views per training image whose teacher probabilities are computed once
    distill_alpha: float = 0.5  # weight of the KL term to the teachers; 1 - alpha weights the label's cross-entropy
    distill_temperature: float = 2.0
    precision: str = "auto"  # auto | fp32 | bf16 (CPU autocast) ; CUDA always uses bf16 autocast
    channels_last: bool = True
    device: str = "cpu"
    threads: int = 0  # 0: all cores
    seed: int = 0
    patience: int = 0  # early stopping after this many epochs without a better val metric; 0: off
    select_metric: str = "val_acc"  # val_acc | val_macro_f1 | val_loss
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _coerce(value: str, like: Any, key: str) -> Any:
    if isinstance(like, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise FerkitError(f"{key}: expected true or false, got {value!r}")
    try:
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
    except ValueError:
        raise FerkitError(f"{key}: expected a number, got {value!r}") from None
    return None if value.lower() == "none" else value


def _apply(obj: Any, key: str, value: Any, path: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    if key not in names:
        raise FerkitError(f"{path}: unknown setting {key!r}; known: {', '.join(names)}")
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise FerkitError(f"{path}: {key} must be a section")
        for k, v in value.items():
            _apply(current, k, v, f"{path}.{k}")
        return
    if isinstance(value, str) and not isinstance(current, str) and current is not None:
        value = _coerce(value, current, path)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    setattr(obj, key, value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    cfg = TrainConfig()
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise FerkitError(f"{p}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise FerkitError(f"{p}: not valid TOML ({e})") from None
        for k, v in raw.items():
            _apply(cfg, k, v, k)
    for item in overrides or []:
        if "=" not in item:
            raise FerkitError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        target = cfg
        for part in parts[:-1]:
            target = getattr(target, part, None)
            if not dataclasses.is_dataclass(target):
                raise FerkitError(f"override {key!r}: {part!r} is not a section")
        _apply(target, parts[-1], value.strip(), key)
    return cfg


def to_toml(cfg: Any, section: str = "") -> str:
    plain, sections = [], []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            sections.append(to_toml(v, f.name))
        elif v is not None:
            plain.append(f"{f.name} = {_toml_value(v)}")
    head = [f"[{section}]"] if section else []
    return "\n".join(head + plain + ([""] if sections else []) + sections) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)
