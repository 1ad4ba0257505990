"""Export to ferkit's self-describing ONNX format; load safetensors weights (never unpickling) to evaluate or fine-tune.

The ONNX graph takes N x 1 x H x W float32 gray pixels in 0..255 and returns class probabilities; its
metadata holds `classes` (JSON list, output order), `input_size` (the side a face is preprocessed to), `crop` (the
side of the window the network sees, ferkit.views), `name`, `version`, `arch`, `temperature`, and
`weights = "float16"` when the weights are stored so.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferkit.data.classes import match_classes
from ferkit.errors import FerkitError
from ferkit.metadata import MAX_INPUT_SIZE, ensemble_orders, parse_classes, parse_int
from ferkit.models.registry import create_model, list_models
from ferkit.utils import atomic_write


class WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata (classes, input_size, arch) of a ferkit safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise FerkitError(f"{path}: not a safetensors file ({str(e)[:160]})") from None
    if "arch" not in meta or "classes" not in meta:
        raise FerkitError(f"{path}: safetensors file without ferkit metadata (arch, classes)")
    # Every field typed and ranged before a tensor is read (the same rules as an ONNX file's metadata).
    if meta["arch"] not in list_models():
        raise FerkitError(f"{path}: metadata 'arch' is {meta['arch'][:40]!r}, not a registered model")
    size = parse_int(path, "input_size", meta.get("input_size", "48"), 1, MAX_INPUT_SIZE)
    info = {"arch": meta["arch"], "classes": parse_classes(path, meta["classes"]), "input_size": size,
            "crop": parse_int(path, "crop", meta.get("crop", str(size)), 1, size)}
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FerkitError(f"{path}: not a safetensors file ({str(e)[:160]})") from None
    return state, info


def load_weights(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A model and its metadata (classes, input_size, arch) from a ferkit safetensors file."""
    state, info = read_weights(path)
    model = create_model(info["arch"], len(info["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FerkitError(f"{path}: weights do not match model {info['arch']!r} ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, info


class EnsembleGraph(nn.Module):
    """Members' probabilities averaged with weights, in the first member's class order, returned as
    log-probabilities so the export's softmax gives back the average: one ONNX file that loads like any model.
    The PyTorch graph of what ferkit.inference.classifier.Ensemble computes at run time, by the same rule
    (ferkit.metadata.ensemble_orders, normalised weights), for shipping an ensemble as one file."""

    def __init__(self, members: list[nn.Module], orders: list[list[int]], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.orders = [None if o == sorted(o) else o for o in orders]
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.arch = "ensemble(" + "+".join(getattr(m, "arch", "?") for m in members) + ")"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = 0
        for m, order, w in zip(self.members, self.orders, self.weights, strict=True):
            q = torch.softmax(m(x), 1)
            p = p + w * (q if order is None else q[:, order])
        return torch.log(p.clamp_min(1e-12))


class CentreWindow(nn.Module):
    """A member that sees a smaller centre window than the ensemble's input (a 40x40-crop network beside whole-face
    ones), cut inside the graph as ferkit.views cuts it."""

    def __init__(self, member: nn.Module, size: int, crop: int):
        super().__init__()
        self.member, self.crop, self.offset = member, crop, (size - crop) // 2
        self.arch = f"{getattr(member, 'arch', '?')}@{crop}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o, c = self.offset, self.crop
        return self.member(x[:, :, o : o + c, o : o + c])


def ensemble_graph(paths: list[str | Path], weights: list[float] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """An EnsembleGraph of ferkit safetensors files (same classes in any order, same input size). Members may see
    different windows: the ensemble takes the widest, and each narrower member its own centre window of it."""
    members, infos = [], []
    for p in paths:
        model, info = load_weights(p)
        if info["input_size"] != (infos[0] if infos else info)["input_size"]:
            raise FerkitError(f"{p}: input size {info['input_size']} differs from {paths[0]}'s "
                              f"{infos[0]['input_size']}; an ensemble needs one")
        members.append(model)
        infos.append(info)
    crop = max(i["crop"] for i in infos)
    members = [m if i["crop"] == crop else CentreWindow(m, crop, i["crop"]) for m, i in zip(members, infos, strict=True)]
    orders = [o.tolist() for o in ensemble_orders([(str(p), i["classes"]) for p, i in zip(paths, infos, strict=True)])]
    weights = weights or [1.0] * len(members)
    if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
        raise FerkitError(f"ensemble weights {weights}: give one non-negative weight per member")
    ens = EnsembleGraph(members, orders, weights).eval()
    return ens, {**infos[0], "crop": crop, "arch": ens.arch, "members": [str(p) for p in paths],
                 "weights": ens.weights}


def classifier_name(model: nn.Module) -> str:
    """The module name of the output layer, the only part that depends on the class set, as the model declares it."""
    name = getattr(model, "classifier_layer", None)
    if name is None:
        raise FerkitError(f"model {getattr(model, 'arch', type(model).__name__)!r} declares no classifier_layer")
    return name


def init_from(model: nn.Module, path: str | Path, classes: list[str],
              mapping: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Start `model` (built for `classes`) from saved weights, for fine-tuning; returns the classes it learns anew and
    the matches made by emotion rather than by name ('Happy' -> 'happy').

    Every layer is copied except the output layer, whose rows are matched to the saved model's classes as evaluation
    matches them (ferkit.data.classes.match_classes: `mapping` first, then the name, then the emotion in any case or
    spelling), so a new order, a subset, renamed or extra classes keep what the saved model knew of each class; a
    class it never saw keeps its fresh rows.
    """
    state, info = read_weights(path)
    if info["arch"] != getattr(model, "arch", None):
        raise FerkitError(f"init {path}: the weights are {info['arch']!r}, the run's model is "
                          f"{getattr(model, 'arch', '?')!r}; set model={info['arch']}")
    unknown = [k for k in (mapping or {}) if k not in classes]
    if unknown:
        raise FerkitError(f"--map: {', '.join(unknown)} not among the dataset's classes ({', '.join(classes)})")
    matches = {c: m for c, m in match_classes(classes, info["classes"], mapping).items() if m in info["classes"]}
    head = classifier_name(model)
    own = model.state_dict()
    w, b = own[f"{head}.weight"].clone(), own[f"{head}.bias"].clone()
    new = []
    for i, c in enumerate(classes):
        if c in matches:
            j = info["classes"].index(matches[c])
            w[i], b[i] = state[f"{head}.weight"][j], state[f"{head}.bias"][j]
        else:
            new.append(c)
    state[f"{head}.weight"], state[f"{head}.bias"] = w, b
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FerkitError(f"init {path}: weights do not match model {info['arch']!r} ({str(e).splitlines()[0]})") from None
    return new, {c: m for c, m in matches.items() if c != m}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    classes: list[str],
    input_size: int = 48,
    crop: int | None = None,
    name: str = "ferkit-model",
    version: str = "1",
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write `model` as a ferkit ONNX file; half: store its weights as float16 (half the size, float32 arithmetic:
    ferkit.models.quantize.half_weights)."""
    import onnx

    path = Path(path)
    # A copy: the exporter folds batch norms into the convolutions of the module it is given, in place.
    model = WithSoftmax(copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format))
    crop = crop or input_size
    dummy = torch.zeros(1, 1, crop, crop)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            # A ferkit file's face size is fixed (its metadata says it), so sizes read while tracing are constants.
            warnings.filterwarnings("ignore", "Converting a tensor to a Python", torch.jit.TracerWarning)
            # TensorFlow-style padding (ferkit.models.mobilenet) exports a reversing Slice the folder leaves as is.
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            torch.onnx.export(
                model, (dummy,), tmp, input_names=["input"], output_names=["probabilities"],
                dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17, dynamo=False,
            )
        m = onnx.load(tmp)
        if half:
            from ferkit.models.quantize import half_weights

            half_weights(m)
        meta = {
            "classes": json.dumps(classes),
            "input_size": str(input_size),
            "crop": str(crop),
            "name": name,
            "version": version,
            "arch": getattr(model.model, "arch", type(model.model).__name__),
            "temperature": "1.0",
            **({"weights": "float16"} if half else {}),
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()},
        }
        del m.metadata_props[:]
        for k, v in meta.items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, tmp)

    atomic_write(path, write)
    return path


def set_onnx_metadata(path: str | Path, updates: dict[str, str], out: str | Path | None = None) -> None:
    """Change metadata entries of an ONNX file, e.g. the fitted temperature: in place, or into a new file `out`
    (atomically either way)."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path))
    current = {p.key: p.value for p in m.metadata_props}
    current.update(updates)
    del m.metadata_props[:]
    for k, v in current.items():
        m.metadata_props.add(key=k, value=v)
    atomic_write(path if out is None else out, lambda tmp: onnx.save(m, tmp))
