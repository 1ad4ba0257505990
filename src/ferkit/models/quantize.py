"""Smaller ferkit ONNX files: static int8 quantisation with ONNX Runtime's tools (QDQ format, per-channel weights),
and float16 storage of the weights (half_weights) for a file half the size that computes exactly as in float32.

Activations are calibrated on images of a dataset's *training* split only (never validation or test, which measure
the result). The quantised file keeps every metadata entry of the source (classes, input_size, crop, name,
version, temperature, ...) and adds ``precision = "int8"`` and ``quantization`` (how it was made), so it loads
through ``ferkit.inference.onnx_classifier.OnnxClassifier`` like any ferkit model.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'ferkit[train]'``), not PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ferkit.data import load_dataset
from ferkit.errors import FerkitError
from ferkit.utils import atomic_write
from ferkit.views import preprocess, tta_views

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def calibration_images(data: str | Path, n: int = 2000, seed: int = 0, size: int = 48) -> np.ndarray:
    """Up to `n` faces drawn at random (fixed seed) from the training split of any dataset ferkit reads."""

    ds = load_dataset(data, size=size)
    train = ds.splits.get("train")
    if train is None or len(train) == 0:
        raise FerkitError(f"{data}: no training images to calibrate on (int8 calibration never uses val or test)")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(train), size=min(n, len(train)), replace=False))
    return train.images[idx]


def _read_meta(model: str | Path):
    import onnx

    path = Path(model)
    if not path.is_file():
        raise FerkitError(f"{path}: no such model file")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # onnx raises protobuf's untyped errors for a file that is not a model
        raise FerkitError(f"{path}: not an ONNX model ({str(e).splitlines()[0][:200]})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "classes" not in meta:
        raise FerkitError(f"{path}: ONNX model without ferkit metadata (classes, input_size)")
    if meta.get("precision") == "int8":
        raise FerkitError(f"{path}: already quantised to int8")
    return proto, meta


def half_weights(proto, min_size: int = 256) -> int:
    """Store the float32 weights of an ONNX model (`onnx.ModelProto`, changed in place) as float16, each read back
    through a Cast to float32 that ONNX Runtime folds once when it loads the model: the file is half the size and
    the arithmetic stays float32, so speed is unchanged and only the weights' rounding differs (about 1e-3 of each).
    That is how the `accurate` ensemble fits more networks in its 25 MB. Small tensors (biases) stay float32, and so
    does any tensor float16 cannot hold. Returns the number of tensors converted; float_weights undoes it."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    casts = []
    for init in list(g.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init)
        if a.size < min_size or not np.all(np.abs(a) < np.finfo(np.float16).max):
            continue
        half = numpy_helper.from_array(a.astype(np.float16), f"{init.name}_fp16")
        g.initializer.remove(init)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], name=f"{init.name}_to_float",
                                      to=TensorProto.FLOAT))
    nodes = casts + list(g.node)  # the Casts first: a graph's nodes must come in a computable order
    del g.node[:]
    g.node.extend(nodes)
    return len(casts)


def float_weights(proto) -> int:
    """Undo half_weights in place: every Cast of a float16 weight becomes a float32 weight again (what ONNX Runtime's
    quantiser expects to find). Returns the number of tensors converted."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    done = 0
    for node in list(g.node):
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if src is None or src.data_type != TensorProto.FLOAT16:
            continue
        g.initializer.remove(src)
        g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(src).astype(np.float32), node.output[0]))
        g.node.remove(node)
        done += 1
    return done


def _reader(views: np.ndarray, input_name: str, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        """The calibration views in batches, as the model's only input."""

        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict | None:
            if self.i >= len(views):
                return None
            x = views[self.i : self.i + batch]
            self.i += batch
            return {input_name: x}

        def rewind(self) -> None:
            self.i = 0

    return Batches()


def quantize_int8(
    model: str | Path,
    out: str | Path,
    calibration: np.ndarray | str | Path,
    *,
    images: int = 2000,
    seed: int = 0,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    batch: int = 64,
) -> dict:
    """Write an int8 (QDQ) copy of the ferkit ONNX `model` to `out`; returns how it was made (also in its metadata).

    calibration: a dataset path (`images` faces drawn with `seed` from its training split, see calibration_images),
    or N x H x W uint8 training faces of any size. Either way the faces are preprocessed to the model's input_size,
    then cut to its centre crop, exactly as the network sees them at test time. method: how activation ranges are
    set from the calibration outputs (minmax, percentile at 99.999%, or entropy). reduce_range: 7-bit weights, for
    x86 CPUs without VNNI where 8-bit products can saturate. The final softmax stays in float (it is cheap, and 8-bit
    probabilities would be too coarse for the temperature and the confidence thresholds).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise FerkitError(f"calibration method {method!r}: unknown; choose one of {', '.join(CALIBRATION_METHODS)}")
    proto, meta = _read_meta(model)
    out = Path(out)
    if out.resolve() == Path(model).resolve():
        raise FerkitError(f"{out}: the output would overwrite the model being quantised")
    size = int(meta.get("input_size", 48))
    crop = int(meta.get("crop", size))
    if isinstance(calibration, str | Path):
        calibration = calibration_images(calibration, n=images, seed=seed, size=size)
    faces = np.asarray(calibration)
    if len(faces) == 0:
        raise FerkitError("int8 calibration: no images")
    if not (faces.ndim == 3 and faces.shape[1:] == (size, size) and faces.dtype == np.uint8):
        faces = np.stack([preprocess(im, size) for im in faces])
    views = tta_views(faces, "none", crop)[0][:, None].astype(np.float32)
    batch = max(1, min(batch, len(views)))
    if method != "minmax":
        # Whole batches only: ORT's histogram calibrators cannot stack a shorter last batch.
        views = views[: len(views) // batch * batch]
    input_name = proto.graph.input[0].name
    cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}[method]
    info = {
        "format": "QDQ", "activations": "uint8", "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "reduce_range": reduce_range, "calibration": method, "calibration_images": len(views),
        "tool": f"onnxruntime {_ort_version()}",
    }

    # The logits stay float too: the output layer is tiny, and 8-bit logits shift every probability.
    extra: dict = {"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999

    def write(tmp: str) -> None:
        import onnx

        with tempfile.TemporaryDirectory(prefix="ferkit-int8-") as work:
            # ORT's graph clean-up first (constant folding, shape inference), as its quantisation guide advises.
            src, pre = str(model), str(Path(work) / "pre.onnx")
            if float_weights(proto):  # int8 weights are made from float32 ones
                src = str(Path(work) / "float.onnx")
                onnx.save(proto, src)
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(src, pre, skip_symbolic_shape=True)
            except Exception:  # pre-processing is an optimisation; quantise the model as it is if it fails
                pre = src
            graph = onnx.load(pre).graph
            softmax = [n.name for n in graph.node if n.op_type == "Softmax"]
            stems = single_channel_convs(graph)
            info["float_layers"] = len(stems)
            # ORT's calibrators print progress on stdout, which belongs to the caller (e.g. `--json` output).
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(
                    pre, tmp, _reader(views, input_name, batch), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=softmax + stems, calibrate_method=cal,
                    extra_options=extra,
                )
        q = onnx.load(tmp)
        del q.metadata_props[:]
        for k, v in {**meta, "precision": "int8", "quantization": json.dumps(info)}.items():
            q.metadata_props.add(key=k, value=v)
        onnx.save(q, tmp)

    atomic_write(out, write)
    return info


def single_channel_convs(graph, max_filters: int = 16) -> list[str]:
    """The narrow convolutions (up to `max_filters` filters) that read the grey image itself and feed another
    convolution: they stay float. ONNX Runtime's int8 convolution does the least work per second there (9 products
    per output, few outputs): on `fast` 2.0.0 (`vgg_f`) its 16-filter first layer took a fifth of the int8 time for 1%
    of the work, and keeping it float made the model 10% faster (so is `vgg_fs`'s stride-2 first layer). Not when a
    pooling layer follows: that pool would then run on uint8 in ONNX Runtime's slow NCHW path (`vgg_f1` was 40% slower
    so); with 32 filters (`default`, `accurate`) the change was within the noise (+2%, -4%).
    benchmarks/arch_speed.py measures it."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def feeds_conv(node) -> bool:
        nxt = readers.get(node.output[0], [])
        while len(nxt) == 1 and nxt[0].op_type in ("Relu", "BatchNormalization"):
            nxt = readers.get(nxt[0].output[0], [])
        return len(nxt) == 1 and nxt[0].op_type == "Conv"

    return [n.name for n in graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and len(shape := shapes.get(n.input[1], [])) == 4
            and shape[1] == 1 and shape[0] <= max_filters and all(a.i == 1 for a in n.attribute if a.name == "group")
            and feeds_conv(n)]


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
