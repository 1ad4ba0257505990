"""A run's configuration: one TOML file, with `key=value` command-line overrides (dotted for sections)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferkit.errors import FerkitError
from ferkit.training.augment import AugmentConfig


@dataclass
class TrainConfig:
    data: str | None = None  # required: a dataset any loader reads
    format: str | None = None
    classes: str | None = None  # subset / renames, see ferkit.data.select_classes
    val_fraction: float = 0.1  # a dataset without a val split: this share of train, stratified and seeded, validates
    out: str | None = None  # None: a new numbered folder, runs/train, runs/train2, ...
    model: str = "vgg_s"
    dropout: float | None = None
    crop: int = 0  # train on random crop x crop windows of the face (e.g. 40 of 48) and test on the centre; 0: whole face
    init: str | None = None  # fine-tune: start from these safetensors weights ("default": the shipped model's)
    class_map: str | None = None  # fine-tune: dataset class = init's class ("Joy=happy"), as evaluate's --map
    freeze: bool = False  # fine-tune only the output layer
    pretrained: bool = True  # a network with pretrained weights (faceres, ...) starts from them when init is unset
    freeze_blocks: int = 0  # the first N blocks of the body (features.0, ...) never learn: generic edges, and no backward
    freeze_epochs: int = 0  # warm-up: only the output layer learns for this many epochs, then the whole network
    backbone_lr: float = 1.0  # the layers below the output layer learn at lr x this
    layer_decay: float = 1.0  # and each block below the top one at this times the block above it (early layers less)
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
    threads: int = 0  # 0: all cores (under torchrun: the cores shared out among a node's processes)
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    seed: int = 0
    patience: int = 0  # early stopping after this many epochs without a better val metric; 0: off
    select_metric: str = "val_acc"  # val_acc | val_macro_f1 | val_loss
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# The allowed values of every setting that is not free text: ranges (lo, hi, lo_open, hi_open) or choices.
# Types come from the dataclass annotations; a setting without a rule here is only type-checked.
_CHOICES: dict[str, tuple[str, ...]] = {
    "format": ("csv", "folders", "ferplus", "manifest"),
    "optimizer": ("sgd", "adamw", "adam"),
    "schedule": ("onecycle", "cosine", "plateau"),
    "balance": ("none", "weights", "sampler"),
    "precision": ("auto", "fp32", "bf16"),
    "select_metric": ("val_acc", "val_macro_f1", "val_loss"),
}
_INF = float("inf")
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "dropout": (0, 1, False, True),
    "val_fraction": (0, 1, False, True),
    "crop": (0, _INF, False, True),  # <= the face size: checked by the trainer, which knows the face size
    "epochs": (1, 100_000, False, False),
    "batch_size": (1, 1_000_000, False, False),
    "lr": (0, 10, True, False),
    "weight_decay": (0, 1, False, False),
    "warmup": (0, 1, True, True),
    "label_smoothing": (0, 1, False, True),
    "ema": (0, 1, False, True),
    "freeze_epochs": (0, 100_000, False, False),
    "freeze_blocks": (0, 100_000, False, False),
    "backbone_lr": (0, 10, False, False),
    "layer_decay": (0, 1, True, False),
    "grad_clip": (0, _INF, False, True),
    "teacher_views": (1, 64, False, False),  # ferkit.training.distill.MAX_TEACHER_VIEWS
    "distill_alpha": (0, 1, False, False),
    "distill_temperature": (0, 100, True, False),
    "threads": (0, 4096, False, False),
    "seed": (0, 2**32 - 1, False, False),
    "patience": (0, 100_000, False, False),
    "augment.scale": (0, 1, False, True),
    "augment.rotate": (0, 180, False, False),
    "augment.translate": (0, 1, False, True),
    "augment.brightness": (0, 1, False, False),
    "augment.contrast": (0, 1, False, True),
    "augment.erase": (0, 1, False, False),
    "augment.lowres": (0, 1, False, False),
    "augment.mixup": (0, 100, False, False),
    "augment.cutmix": (0, 100, False, False),
}
_DEVICE = re.compile(r"cpu|cuda(:\d{1,3})?|mps")
MAX_CONFIG_BYTES = 1024 * 1024


def _kinds(annotation: str) -> set[str]:
    """'float | None' -> {'float', 'None'}; 'list[str] | str | None' -> {'list', 'str', 'None'}."""
    return {part.strip().split("[")[0] for part in str(annotation).split("|")}


def _coerce(value: str, kinds: set[str], key: str) -> Any:
    """A `-s key=value` string as the setting's type ('none' for a setting that may be unset)."""
    if "None" in kinds and value.lower() == "none":
        return None
    if "bool" in kinds:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise FerkitError(f"{key}: expected true or false, got {value!r}")
    try:
        if "int" in kinds:
            return int(value)
        if "float" in kinds:
            return float(value)
    except ValueError:
        what = "a number without decimals" if "int" in kinds else "a number"
        raise FerkitError(f"{key}: expected {what}, got {value!r}") from None
    return value


_WORDS = {"int": "a number without decimals", "float": "a number", "str": "text", "bool": "true or false",
          "list": "a list of text", "None": "none"}


def _typed(value: Any, kinds: set[str], key: str) -> Any:
    """The value if it has the setting's type (an int is a float too); else one line naming the key."""
    if value is None and "None" in kinds:
        return None
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
    elif isinstance(value, int) and "int" in kinds:
        return value
    elif isinstance(value, int | float) and "float" in kinds:
        return float(value)
    elif isinstance(value, str) and "str" in kinds:
        return value
    elif isinstance(value, list) and "list" in kinds and all(isinstance(v, str) for v in value):
        return list(value)
    if not kinds <= set(_WORDS):  # a type this check does not know: the trainer's own checks apply
        return value
    want = " or ".join(sorted(_WORDS[k] for k in kinds))
    raise FerkitError(f"{key}: expected {want}, got {value!r}"[:300])


def _apply(obj: Any, key: str, value: Any, path: str, text: bool = False) -> None:
    """Set one setting from TOML (typed values) or, with text=True, from a `-s key=value` string."""
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
    kinds = _kinds(names[key].type)
    if text:
        value = _coerce(value, kinds, path)
    setattr(obj, key, _typed(value, kinds, path))


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every setting's range and choices, up front: one line naming the first bad key."""
    for key, value in _settings(cfg):
        if key in _CHOICES and value is not None and value not in _CHOICES[key]:
            raise FerkitError(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
        if key in _RANGES and isinstance(value, int | float) and not isinstance(value, bool):
            lo, hi, lo_open, hi_open = _RANGES[key]
            ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (
                value < hi if hi_open else value <= hi)
            if not ok:
                left, right = "(" if lo_open else "[", ")" if hi_open else "]"
                raise FerkitError(f"{key}: {value!r} is outside {left}{_num(lo)}, {_num(hi)}{right}")
        if isinstance(value, str) and "\0" in value:
            raise FerkitError(f"{key}: contains a NUL character")
    if not _DEVICE.fullmatch(cfg.device):
        raise FerkitError(f"device: {cfg.device!r} is not cpu, cuda, cuda:N or mps")
    for key in ("data", "out", "model"):
        value = getattr(cfg, key)
        if value is not None and not value.strip():
            raise FerkitError(f"{key}: empty")
    if isinstance(cfg.teacher, list) and not all(t.strip() for t in cfg.teacher):
        raise FerkitError("teacher: an empty path in the list")
    if cfg.out is not None and _system_path(cfg.out):
        raise FerkitError(f"out: {cfg.out} lies in {_system_path(cfg.out)}, the system's own files; choose a folder "
                          "of yours")
    if cfg.out is not None and Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise FerkitError(f"out: {cfg.out} is a file; a run is written into a folder")
    try:
        from ferkit.models.registry import list_models
    except ImportError:  # the registry needs PyTorch; without it nothing trains anyway
        return cfg
    if cfg.model not in list_models():
        raise FerkitError(f"model: {cfg.model!r} is unknown; choose one of {', '.join(list_models())}")
    return cfg


def _system_path(path: str) -> str | None:
    """The kernel's pseudo-file systems a run folder must never be written into."""
    resolved = Path(path).resolve()
    return next((d for d in ("/proc", "/sys", "/dev") if resolved.is_relative_to(d)), None)


def _num(v: float) -> str:
    return "inf" if v == _INF else f"{int(v):,}" if v == int(v) else f"{v:g}"


def _settings(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += _settings(v, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, v))
    return out


# Settings that name files or folders: relative ones in a config file are relative to that file's folder.
PATH_KEYS = ("data", "out", "init", "teacher")


def recipes_dir() -> Path:
    """The training recipes that ship in the package (`ferkit train fer2013_default`)."""
    from importlib import resources

    return Path(str(resources.files("ferkit") / "configs"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def find_config(spec: str | Path) -> Path:
    """A config file's path, or a recipe's that ships with ferkit named without folder or suffix."""
    p = Path(spec)
    if p.exists() or len(p.parts) > 1:
        return p
    recipe = recipes_dir() / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if recipe.is_file():
        return recipe
    raise FerkitError(f"{spec}: no such config file, nor a built-in recipe ({', '.join(list_recipes())})")


def read_toml(p: Path) -> dict[str, Any]:
    """A TOML file under the size cap; every fault one line naming the file."""
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise FerkitError(f"{p}: {p.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FerkitError(f"{p}: no such config file") from None
    except IsADirectoryError:
        raise FerkitError(f"{p}: is a folder, not a config file") from None
    except UnicodeDecodeError as e:
        raise FerkitError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:
        raise FerkitError(f"{p}: cannot read ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise FerkitError(f"{p}: not valid TOML ({str(e)[:160]})") from None


def _relative_to(folder: Path, value: Any, key: str) -> Any:
    if value is None or (key == "init" and value == "default"):
        return value
    if isinstance(value, list):
        return [_relative_to(folder, v, key) for v in value]
    if key == "teacher" and "," in value:
        return ",".join(_relative_to(folder, v.strip(), key) for v in value.split(","))
    return str(folder / value) if value and not Path(value).is_absolute() else value


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """A copy whose path settings are absolute: what a run's own config.toml records, so that it reads the same
    from any folder (and --resume finds the data again)."""
    def absolute(value: Any, key: str) -> Any:
        if value is None or (key == "init" and value == "default"):
            return value
        if isinstance(value, list):
            return [absolute(v, key) for v in value]
        if key == "teacher" and "," in value:
            return ",".join(absolute(v.strip(), key) for v in value.split(","))
        return os.path.abspath(value)

    return dataclasses.replace(cfg, **{k: absolute(getattr(cfg, k), k) for k in PATH_KEYS})


def set_setting(cfg: TrainConfig, key: str, value: Any, text: bool = False) -> None:
    """One setting by its dotted name (augment.erase), typed or (text=True) from a `key=value` string."""
    parts = key.strip().split(".")
    target: Any = cfg
    for part in parts[:-1]:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            raise FerkitError(f"{key!r}: {part!r} is not a section")
    _apply(target, parts[-1], value.strip() if text else value, key.strip(), text=text)


def apply_settings(cfg: TrainConfig, raw: dict[str, Any], folder: Path | None = None) -> TrainConfig:
    """Typed settings from a TOML table (sections as tables or dotted keys); relative paths relative to `folder`."""
    for k, v in raw.items():
        if "." in k:
            set_setting(cfg, k, v)
        else:
            _apply(cfg, k, v, k)
    if folder is not None:
        for k in PATH_KEYS:
            if k in raw:
                setattr(cfg, k, _relative_to(folder, getattr(cfg, k), k))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **settings: Any) -> TrainConfig:
    """Defaults, then the config file (a path, or a built-in recipe's name), then `key=value` overrides (text, dotted
    for sections), then `settings` (typed values, e.g. from command-line flags; None leaves a setting as it is).

    Relative paths in the file are relative to its folder; in overrides and settings, to the current folder.
    """
    cfg = TrainConfig()
    if path is not None:
        p = find_config(path)
        apply_settings(cfg, read_toml(p), p.parent)
    for item in overrides or []:
        if "=" not in item:
            raise FerkitError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        set_setting(cfg, key, value, text=True)
    for key, value in settings.items():
        if value is not None:
            set_setting(cfg, key, value)
    return validate(cfg)


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
