"""The TF.js graph importer (ferkit.models.tfjs) on graphs the tests write themselves: against TensorFlow.js on
Node.js where node and npm are here, the MobileNet-v1 weight copy, the transfer-training settings, and the errors
for files that are not what they claim."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.errors import FerkitError
from ferkit.models.mobilenet import MOBILENET_V1, MobileNetV1, copy_from_graph
from ferkit.models.tfjs import load_graph


class GraphWriter:
    """Builds a TF.js graph model (model.json + one weight shard) node by node."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.specs, self.blobs = rng, [], [], []

    def const(self, name: str, arr: np.ndarray, quant: str | None = None) -> str:
        arr = np.asarray(arr)
        spec = {"name": name, "shape": list(arr.shape), "dtype": "int32" if arr.dtype.kind == "i" else "float32"}
        if quant == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            self.blobs.append(arr.astype(np.float16).tobytes())
        elif quant == "uint8":
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / 255 or 1.0
            q = np.round((arr - lo) / scale).astype(np.uint8)
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale}
            self.blobs.append(q.tobytes())
        else:
            self.blobs.append(arr.astype(np.int32 if arr.dtype.kind == "i" else np.float32).tobytes())
        self.specs.append(spec)
        self.nodes.append({"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}})
        return name

    def op(self, name: str, op: str, inputs: list[str], **attr) -> str:
        def enc(v):
            if isinstance(v, bool):
                return {"b": v}
            if isinstance(v, str):
                return {"s": base64.b64encode(v.encode()).decode()}
            if isinstance(v, float):
                return {"f": v}
            if isinstance(v, int):
                return {"i": str(v)}
            if v and isinstance(v[0], str):
                return {"list": {"s": [base64.b64encode(s.encode()).decode() for s in v]}}
            return {"list": {"i": [str(i) for i in v]}}

        self.nodes.append({"name": name, "op": op, "input": inputs, "attr": {k: enc(v) for k, v in attr.items()}})
        return name

    def write(self, folder: Path, inputs: dict[str, list[int]]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "w.bin").write_bytes(b"".join(self.blobs))
        placeholders = [{"name": n, "op": "Placeholder",
                         "attr": {"dtype": {"type": "DT_FLOAT"},
                                  "shape": {"shape": {"dim": [{"size": str(s)} for s in shape]}}}}
                        for n, shape in inputs.items()]
        doc = {"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
               "modelTopology": {"node": placeholders + self.nodes, "versions": {"producer": 1}},
               "weightsManifest": [{"paths": ["w.bin"], "weights": self.specs}]}
        path = folder / "model.json"
        path.write_text(json.dumps(doc))
        return path


def conv_kw(stride: int = 1, padding: str = "SAME") -> dict:
    return {"strides": [1, stride, stride, 1], "padding": padding, "data_format": "NHWC", "dilations": [1, 1, 1, 1]}


def many_ops_graph(folder: Path) -> tuple[Path, list[str]]:
    """A small graph using most supported ops, with float32, float16 and uint8-quantised weights."""
    g = GraphWriter(np.random.default_rng(1))
    r = g.rng
    g.op("c1", "Conv2D", ["input", g.const("k1", r.normal(0, 0.3, (3, 3, 3, 8)))], **conv_kw(2))
    g.op("b1", "BiasAdd", ["c1", g.const("bias1", r.normal(0, 0.1, 8), "float16")])
    g.op("r1", "Relu6", ["b1"])
    g.op("dw", "DepthwiseConv2dNative", ["r1", g.const("kd", r.normal(0, 0.3, (3, 3, 8, 1)), "uint8")], **conv_kw(2))
    g.op("m", "Mul", ["dw", g.const("scale", r.uniform(0.5, 1.5, 8))])
    g.op("a", "AddV2", ["m", g.const("shift", r.normal(0, 0.1, 8))])
    g.op("pr", "Prelu", ["a", g.const("alpha", r.uniform(0, 0.3, 8))])
    g.op("fc", "_FusedConv2D", ["pr", g.const("k2", r.normal(0, 0.3, (1, 1, 8, 6))), g.const("bias2", r.normal(0, 0.1, 6))],
         fused_ops=["BiasAdd", "Relu"], num_args=1, **conv_kw(1))
    g.op("pad", "Pad", ["fc", g.const("pads", np.array([[0, 0], [1, 0], [0, 1], [0, 0]], np.int32))])
    g.op("mp", "MaxPool", ["pad"], ksize=[1, 2, 2, 1], **conv_kw(2))
    g.op("ap", "AvgPool", ["fc"], ksize=[1, 3, 3, 1], **conv_kw(2))
    g.op("cat", "ConcatV2", ["mp", "ap", g.const("axis", np.array(3, np.int32))])
    g.op("mean", "Mean", ["cat", g.const("axes", np.array([1, 2], np.int32))], keep_dims=False)
    g.op("abs", "Abs", ["mean"])
    g.op("sub", "Sub", ["mean", "abs"])
    g.op("fm", "_FusedMatMul", ["sub", g.const("w", r.normal(0, 0.5, (12, 5))), g.const("wb", r.normal(0, 0.1, 5))],
         fused_ops=["BiasAdd"], num_args=1, transpose_a=False, transpose_b=False)
    g.op("sm", "Softmax", ["fm"])
    g.op("flat", "Reshape", ["cat", g.const("shape", np.array([-1, 4 * 4 * 12], np.int32))])
    return g.write(folder, {"input": [-1, 28, 28, 3]}), ["sm", "flat", "cat"]


def mobilenet_graph(folder: Path) -> Path:
    """MobileNet-v1 written as the converted FaceRes graph is: convolutions with folded batch norms, ReLU6 as
    Relu/Minimum/Maximum, a global mean."""
    g = GraphWriter(np.random.default_rng(2))
    r = g.rng
    six, zero = g.const("six", np.array(6.0, np.float32)), g.const("zero", np.array(0.0, np.float32))

    def block(x: str, name: str, kernel: np.ndarray, stride: int, depthwise: bool) -> str:
        k = g.const(f"{name}/k", kernel)
        y = g.op(f"{name}/conv", "DepthwiseConv2dNative" if depthwise else "Conv2D", [x, k], **conv_kw(stride))
        if depthwise:
            y = g.op(f"{name}/mul", "Mul", [y, g.const(f"{name}/s", r.uniform(0.5, 1.5, kernel.shape[2]))])
        cout = kernel.shape[2] if depthwise else kernel.shape[3]
        y = g.op(f"{name}/add", "Add", [y, g.const(f"{name}/b", r.normal(0, 0.2, cout))])
        y = g.op(f"{name}/relu", "Relu", [y])
        y = g.op(f"{name}/min", "Minimum", [y, six])
        return g.op(f"{name}/max", "Maximum", [y, zero])

    x = block("input", "stem", r.normal(0, 0.02, (3, 3, 3, 32)), 2, False)
    cin = 32
    for i, (cout, stride) in enumerate(MOBILENET_V1):
        x = block(x, f"dw{i}", r.normal(0, 0.3, (3, 3, cin, 1)), stride, True)
        x = block(x, f"pw{i}", r.normal(0, (2 / cin) ** 0.5, (1, 1, cin, cout)), 1, False)
        cin = cout
    g.op("pool", "Mean", [x, g.const("axes", np.array([1, 2], np.int32))], keep_dims=False)
    return g.write(folder, {"input": [-1, 64, 64, 3]})


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="needs node and npm")
def test_graph_matches_tensorflow_js(tmp_path: Path) -> None:
    from ferkit.models.pretrained import run_tfjs

    path, outputs = many_ops_graph(tmp_path / "g")
    x = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 3)).astype(np.float32)
    ref = run_tfjs(path, x, outputs)
    with torch.no_grad():
        got = load_graph(path, outputs)(torch.from_numpy(x))
    for r, g in zip(ref, got, strict=True):
        assert r.shape == tuple(g.shape)
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-4, atol=1e-4)


def test_mobilenet_copies_the_graph(tmp_path: Path) -> None:
    graph = load_graph(mobilenet_graph(tmp_path / "m"), ["pool"]).eval()
    net = MobileNetV1(7, scale=64).eval()
    before = net.features[5].conv.weight.clone()
    copy_from_graph(net, graph)
    assert not torch.equal(before, net.features[5].conv.weight)
    gray = torch.rand(2, 1, 64, 64) * 255
    with torch.no_grad():
        want = graph(gray.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous())
        got = net.forward_features(gray)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()
    # Off by one pixel in SAME padding (PyTorch's symmetric padding) would not match: the check can fail.
    net.features[0].forward = lambda x: torch.clamp(net.features[0].conv(torch.nn.functional.pad(x, (1, 1, 1, 1))), 0, 6)
    with torch.no_grad():
        assert not torch.allclose(net.forward_features(gray), want, rtol=1e-4, atol=1e-4)


def test_graph_trains(tmp_path: Path) -> None:
    """Constants are parameters: a step changes the weights and lowers the loss."""
    path, _ = many_ops_graph(tmp_path / "g")
    g = load_graph(path, ["fm"])
    x = torch.rand(8, 28, 28, 3) * 255
    y = torch.randint(5, (8,))
    opt = torch.optim.SGD(g.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(g(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    path, _ = many_ops_graph(tmp_path / "g")
    doc = _doc(path)
    doc["modelTopology"]["node"][-1]["op"] = "NonMaxSuppressionV5"
    path.write_text(json.dumps(doc))
    with pytest.raises(FerkitError, match="op 'NonMaxSuppressionV5' .*node 'flat'.* not supported"):
        load_graph(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["weightsManifest"][0].update(paths=["../outside.bin"]), "outside the model's folder"),
    (lambda d: d["weightsManifest"][0].update(paths=["missing.bin"]), "missing"),
    (lambda d: d["weightsManifest"][0]["weights"][0].update(shape=[100_000, 100_000]), "more than"),
    (lambda d: d["weightsManifest"][0]["weights"][0].update(shape=[64, 64, 3, 8]), "the shards hold"),
    (lambda d: d["weightsManifest"][0]["weights"][0].update(dtype="complex64"), "not supported"),
    (lambda d: d["modelTopology"]["node"].append(
        {"name": "loop", "op": "Relu", "input": ["loop"]}), "cycle"),
    (lambda d: d.update(modelTopology=[]), "not a TF.js graph model"),
])
def test_bad_files_give_one_line(tmp_path: Path, change, message: str) -> None:
    path, _ = many_ops_graph(tmp_path / "g")
    (tmp_path / "outside.bin").write_bytes(b"\0" * 10_000)
    doc = _doc(path)
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(FerkitError, match=message) as e:
        load_graph(path, ["loop"] if message == "cycle" else None)
    assert "\n" not in str(e.value)


def test_not_json(tmp_path: Path) -> None:
    p = tmp_path / "model.json"
    p.write_bytes(b"\x89PNG not json")
    with pytest.raises(FerkitError, match="model.json: not a TF.js model.json"):
        load_graph(p)


@pytest.mark.parametrize("arch", ["faceres96", "faceres96n"])
def test_faceres_exports_to_onnx(tmp_path: Path, arch: str) -> None:
    """The upscaling, TensorFlow's SAME padding and the put-back norms export; ONNX Runtime gives PyTorch's
    probabilities."""
    import onnxruntime as ort

    from ferkit.models import create_model
    from ferkit.models.export import export_onnx

    net = create_model(arch, 7).eval()
    path = export_onnx(net, tmp_path / "m.onnx", [str(i) for i in range(7)], input_size=48)
    x = np.random.default_rng(0).uniform(0, 255, (3, 1, 48, 48)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_identity_norms_keep_the_pretrained_function(tmp_path: Path) -> None:
    """faceres96n's batch norms start as the identity on the first training batch (the pretrained function is kept),
    then learn like any batch norm (the export is checked with faceres96's)."""
    graph = load_graph(mobilenet_graph(tmp_path / "m"), ["pool"]).eval()
    plain, normed = MobileNetV1(7, scale=64).eval(), MobileNetV1(7, scale=64, norm=True)
    copy_from_graph(plain, graph)
    copy_from_graph(normed, graph)
    gray = torch.rand(16, 1, 64, 64) * 255
    with torch.no_grad():
        normed.train()(gray)  # the first training batch
        assert torch.allclose(normed.eval().forward_features(gray), plain.forward_features(gray), atol=1e-3)
        norm = normed.features[3].norm
        first = norm.running_mean.clone(), norm.weight.clone()
        normed.train()(gray**2 / 255)  # a later batch (not an affine copy: the norms would undo it) moves the statistics as in any batch norm, not the scale
        assert not torch.allclose(norm.running_mean, first[0]) and torch.equal(norm.weight, first[1])


def test_transfer_settings_split_the_learning_rate() -> None:
    from ferkit.models import create_model
    from ferkit.training.config import TrainConfig
    from ferkit.training.trainer import _blocks, make_optimizer, make_schedule

    net = create_model("faceres96", 7)
    cfg = TrainConfig(model="faceres96", lr=0.1, backbone_lr=0.5, layer_decay=0.9, freeze_blocks=3)
    opt = make_optimizer(cfg, net)
    make_schedule(cfg, opt, 10)
    blocks = _blocks(net)
    assert max(blocks.values()) == 26 and "head.1.weight" not in blocks
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert by_param[id(named["head.1.weight"])]["lr_scale"] == 1.0
    assert by_param[id(named["features.26.conv.weight"])]["lr_scale"] == pytest.approx(0.5)
    assert by_param[id(named["features.3.conv.weight"])]["lr_scale"] == pytest.approx(0.5 * 0.9 ** 23)
    assert by_param[id(named["features.26.conv.bias"])]["weight_decay"] == 0.0
    assert all(id(named[f"features.{i}.conv.weight"]) not in by_param for i in range(3))  # frozen blocks
    # Defaults keep the two groups every earlier run had (weights with decay, the rest without).
    plain = make_optimizer(TrainConfig(lr=0.1), create_model("vgg_s", 7))
    assert [g["weight_decay"] for g in plain.param_groups] == [5e-4, 0.0]


def test_lowres_augmentation_softens_some_faces() -> None:
    from ferkit.training.augment import AugmentConfig, augment

    x = torch.rand(64, 1, 48, 48) * 255
    cfg = AugmentConfig(scale=0, rotate=0, translate=0, brightness=0, contrast=0, erase=0, flip=False, lowres=0.5)
    y = augment(x, cfg, torch.Generator().manual_seed(0))
    changed = ((y - x).abs().amax((1, 2, 3)) > 1).float().mean()
    assert y.shape == x.shape and 0.2 < changed < 0.8
    # A blurred copy of noise has less contrast between neighbours.
    soft = (y - x).abs().amax((1, 2, 3)) > 1
    assert y[soft].diff(dim=-1).abs().mean() < x[soft].diff(dim=-1).abs().mean()
