"""One way to name a model, for every command and the library: what a MODEL argument means and which file it loads.

A model spec is one of
- a built-in name: ``default`` (shipped with every release), ``accurate``, ``fast``, or any of them with ``-int8``
  (the int8 copy ``ferkit quantize`` makes): the file ``ferkit_<name>.onnx`` (``ferkit_<name>_int8.onnx``) inside the
  package, which is read-only;
- a ``.onnx`` file;
- a run folder (``ferkit train --out``): its ``model.onnx``, else its ``best.safetensors``; a tune folder
  (``ferkit tune --out``): its best trial's run folder;
- a ``.safetensors`` file (PyTorch weights: only evaluation and calibration, with PyTorch installed, can run them;
  inference names the ONNX file to use instead).

``precision="int8"`` picks the int8 variant of whatever was named: ``default`` -> ``default-int8``, ``x.onnx`` ->
``x-int8.onnx`` beside it, a run folder -> its ``model-int8.onnx``. Nothing here imports PyTorch or ONNX Runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ferkit.errors import FerkitError
from ferkit.utils import assets_dir

# Names a release may ship; only the files present are usable (`builtin_models()`).
KNOWN_BUILTINS = ("default", "accurate", "fast")
PRECISIONS = ("fp32", "int8")
RUN_ONNX = "model.onnx"
RUN_WEIGHTS = "best.safetensors"
TUNE_BEST = "best.json"  # a `ferkit tune` folder: a model spec naming it means its best trial


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `path` is the file to load, `kind` "onnx" or "safetensors"."""

    spec: str  # as the user gave it
    path: Path
    kind: str
    name: str  # shown in results: the built-in name, the run folder's name or the file's stem
    builtin: bool = False
    run_dir: Path | None = None

    def onnx(self) -> Path:
        """The ONNX file to run without PyTorch; a clear error for PyTorch weights, naming the file to use instead."""
        if self.kind == "onnx":
            return self.path
        there = self.path.parent / RUN_ONNX if self.run_dir is None else self.run_dir / RUN_ONNX
        hint = (f"use {there}" if there.is_file() else
                f"export it first: ferkit export {self.path} {self.path.with_suffix('.onnx')}, then use that file")
        raise FerkitError(f"{self.spec}: {self.path.name} holds PyTorch weights, which need PyTorch; ferkit runs "
                          f"ONNX models without it: {hint}")


def builtin_file(name: str) -> Path:
    """Where the built-in model `name` (e.g. "default", "default-int8") lives in the package, shipped or not."""
    base, int8 = (name[: -len("-int8")], True) if name.endswith("-int8") else (name, False)
    return assets_dir() / f"ferkit_{base}{'_int8' if int8 else ''}.onnx"


def builtin_models() -> dict[str, Path]:
    """The built-in models this installation ships: name -> file."""
    out = {}
    for f in sorted(assets_dir().glob("ferkit_*.onnx")):
        stem = f.stem.removeprefix("ferkit_")
        out[stem[: -len("_int8")] + "-int8" if stem.endswith("_int8") else stem] = f
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "default", kv[0])))


def _is_builtin_name(spec: str) -> bool:
    base = spec.removesuffix("-int8")
    return base in KNOWN_BUILTINS or base in {n.removesuffix("-int8") for n in builtin_models()}


def _int8_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-int8{path.suffix}")


def best_trial(folder: Path) -> Path:
    """A `ferkit tune` folder's best trial, the run folder best.json names."""
    try:
        raw = (folder / TUNE_BEST).read_bytes()[:100_000]
        trial = json.loads(raw)["trial"]
        if not isinstance(trial, int) or not 0 <= trial < 1_000_000:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise FerkitError(f"{folder}: a tune folder whose {TUNE_BEST} names no trial") from None
    run = folder / f"trial_{trial:03d}"
    if not run.is_dir():
        raise FerkitError(f"{folder}: its best trial's folder {run.name} is missing")
    return run


def resolve_model(spec: str | Path | None = None, *, precision: str | None = None) -> ModelRef:
    """The model a spec names (see the module docstring); FerkitError saying what exists when nothing matches."""
    if precision not in (None, *PRECISIONS):
        raise FerkitError(f"precision {precision!r}: unknown; choose one of {', '.join(PRECISIONS)}")
    int8 = precision == "int8"
    text = "default" if spec is None else str(spec)
    path = Path(text)
    try:
        path.exists()
    except OSError as e:  # a name longer than the file system allows, ...
        raise FerkitError(f"{text}: cannot read ({e.strerror or e})") from None
    if not path.exists() and _is_builtin_name(text):
        name = text if not int8 or text.endswith("-int8") else f"{text}-int8"
        f = builtin_file(name)
        if not f.is_file():
            shipped = ", ".join(builtin_models()) or "none"
            what = f"built-in model {name!r}" + (f" (the int8 copy of {text!r})" if name != text else "")
            raise FerkitError(f"{what} is not shipped in this version of ferkit (shipped: {shipped})"
                              + (f"; make one with: ferkit quantize {text} {name}.onnx --data DATASET" if int8 else ""))
        return ModelRef(text, f, "onnx", name, builtin=True)
    if not path.exists():
        shipped = ", ".join(builtin_models()) or "none"
        raise FerkitError(f"{text}: no such model; give a .onnx file, a run folder or a built-in name "
                          f"({shipped})")
    if path.is_dir() and path.suffix.lower() in (".onnx", ".safetensors"):
        raise FerkitError(f"{text}: no such model file ({path.name} is a folder)")
    if path.is_dir() and not (path / RUN_ONNX).exists() and not (path / RUN_WEIGHTS).exists() and (
            path / TUNE_BEST).is_file():
        path = best_trial(path)
    if path.is_dir():
        onnx, weights = path / RUN_ONNX, path / RUN_WEIGHTS
        if int8:
            want = _int8_path(onnx)
            if not want.is_file():
                raise FerkitError(f"{text}: no int8 model in this run folder ({want.name}); make it with: "
                                  f"ferkit quantize {onnx} {want} --data DATASET")
            return ModelRef(text, want, "onnx", f"{path.resolve().name}-int8", run_dir=path)
        if onnx.is_file():
            return ModelRef(text, onnx, "onnx", path.resolve().name, run_dir=path)
        if weights.is_file():
            return ModelRef(text, weights, "safetensors", path.resolve().name, run_dir=path)
        raise FerkitError(f"{text}: not a run folder (no {RUN_ONNX} or {RUN_WEIGHTS} inside)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        if int8 and "-int8" not in path.stem:
            want = _int8_path(path)
            if not want.is_file():
                raise FerkitError(f"{text}: no int8 copy beside it ({want.name}); make it with: "
                                  f"ferkit quantize {path} {want} --data DATASET")
            path = want
        return ModelRef(text, path, "onnx", path.stem)
    if suffix == ".safetensors":
        if int8:
            raise FerkitError(f"{text}: int8 models are ONNX files; export and quantise it first "
                              "(ferkit export, then ferkit quantize)")
        return ModelRef(text, path, "safetensors", path.stem)
    raise FerkitError(f"{text}: not a model; expected a .onnx file, a run folder, a .safetensors file or a "
                      f"built-in name ({', '.join(builtin_models()) or 'none'})")


def resolve_models(specs: str | Path | Sequence[str | Path] | None, *,
                   precision: str | None = None) -> list[ModelRef]:
    """Several specs (a list, or one string of comma-separated specs) for an ensemble; None is the default model."""
    if specs is None:
        return [resolve_model(None, precision=precision)]
    items = [specs] if isinstance(specs, str | Path) else list(specs)
    # "a.onnx,b.onnx" (FERKIT_MODEL, one flag) is two models, unless a file by that very name exists.
    flat = [s.strip() for item in items
            for s in ([str(item)] if isinstance(item, Path) or Path(str(item)).exists() else str(item).split(","))]
    flat = [s for s in flat if s]
    if not flat:
        raise FerkitError("model: give at least one model")
    return [resolve_model(s, precision=precision) for s in flat]
