"""Import TensorFlow.js graph models (model.json + weight shards) as PyTorch modules (training side only).

`load_graph(model.json)` reads the graph and its weights (float32, float16, and uint8/uint16-quantised) and returns
a `TFJSGraph`: an `nn.Module` that runs the graph op by op, with the float constants as trainable parameters. It
takes and returns tensors in TensorFlow's layout (NHWC images) and keeps 4-D values in PyTorch's NCHW inside, so
convolutions run at PyTorch's speed. Files a user hands in are checked before anything is allocated: the weights'
declared sizes against the shard files and a cap, shapes and dtypes against what the reader knows; an op it can't
run is one error naming the op (and the node).

Checked against TensorFlow.js itself on Node.js (scripts/check_tfjs_import.py, tests/test_tfjs_import.py).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferkit.errors import FerkitError

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_WEIGHT_BYTES = 1024 * 1024 * 1024
MAX_NODES = 100_000

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANT = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}

# Ops that only pass a value on, and the elementwise ops: name -> torch function.
_UNARY = {
    "Relu": torch.relu, "Relu6": lambda x: torch.clamp(x, 0, 6), "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
    "Abs": torch.abs, "Neg": torch.neg, "Square": torch.square, "Sqrt": torch.sqrt, "Rsqrt": torch.rsqrt,
    "Exp": torch.exp, "Elu": F.elu, "Identity": lambda x: x, "Floor": torch.floor,
}
_BINARY = {
    "Add": torch.add, "AddV2": torch.add, "BiasAdd": torch.add, "Sub": torch.sub, "Mul": torch.mul,
    "RealDiv": torch.div, "Maximum": torch.maximum, "Minimum": torch.minimum, "Pow": torch.pow,
    "SquaredDifference": lambda a, b: (a - b) ** 2,
}
_CONV = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")
_REDUCE = {"Mean": torch.mean, "Sum": torch.sum, "Max": torch.amax, "Min": torch.amin}
SUPPORTED_OPS = sorted({"Placeholder", "Const", "MatMul", "_FusedMatMul", "Softmax", "Reshape", "Squeeze", "ConcatV2",
                        "Pad", "MaxPool", "AvgPool", "Prelu", "LeakyRelu", "Cast", *_UNARY, *_BINARY, *_CONV,
                        *_REDUCE})
# NHWC axis -> NCHW axis, for 4-D values kept in PyTorch's layout.
_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class Value:
    """A value in the graph: a tensor, and whether it is a 4-D image kept as NCHW (TensorFlow sees NHWC)."""

    __slots__ = ("t", "nchw")

    def __init__(self, t: torch.Tensor, nchw: bool = False):
        self.t, self.nchw = t, nchw

    def tf(self) -> torch.Tensor:
        """In TensorFlow's layout."""
        return self.t.permute(0, 2, 3, 1) if self.nchw else self.t

    def torch4d(self) -> torch.Tensor:
        """As NCHW (a 4-D value that came in TensorFlow's layout is permuted)."""
        if self.nchw:
            return self.t
        if self.t.ndim != 4:
            raise ValueError(f"expected a 4-D image tensor, got shape {tuple(self.t.shape)}")
        return self.t.permute(0, 3, 1, 2)


def _attr(node: dict[str, Any], key: str, default: Any = None) -> Any:
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    return default


def _pads_same(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: the extra pixel goes after (bottom, right), where PyTorch's is symmetric."""
    eff = (k - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _padded(x: torch.Tensor, node: dict[str, Any], k: tuple[int, int], stride: tuple[int, int],
            dil: tuple[int, int]) -> torch.Tensor:
    padding = _attr(node, "padding", "VALID")
    if padding == "SAME":
        (t, b), (lft, r) = (_pads_same(int(x.shape[2 + i]), k[i], stride[i], dil[i]) for i in range(2))
    elif padding == "EXPLICIT":
        p = _attr(node, "explicit_paddings", [0] * 8)
        t, b, lft, r = p[2], p[3], p[4], p[5]
    elif padding == "VALID":
        return x
    else:
        raise FerkitError(f"node {node['name']!r}: padding {padding!r} is not SAME, VALID or EXPLICIT")
    return F.pad(x, (lft, r, t, b)) if (t or b or lft or r) else x


def _fused(x: torch.Tensor, node: dict[str, Any], args: list[Value], nchw: bool) -> torch.Tensor:
    """The ops TF.js fuses after a convolution or matmul: BiasAdd, then an activation."""
    ops = _attr(node, "fused_ops", [])
    i = 0
    for op in ops:
        if op == "BiasAdd":
            bias = args[i].t
            x = x + (bias.view(-1, 1, 1) if nchw else bias)
            i += 1
        elif op == "Relu":
            x = torch.relu(x)
        elif op == "Relu6":
            x = torch.clamp(x, 0, 6)
        elif op == "Elu":
            x = F.elu(x)
        elif op == "Sigmoid":
            x = torch.sigmoid(x)
        elif op == "LeakyRelu":
            x = F.leaky_relu(x, _attr(node, "leakyrelu_alpha", 0.2))
        elif op == "Prelu":
            alpha = args[i].t
            alpha = alpha.reshape(-1, 1, 1) if nchw else alpha
            x = torch.where(x >= 0, x, x * alpha)
            i += 1
        else:
            raise FerkitError(f"node {node['name']!r}: fused op {op!r} is not supported")
    return x


def _binary_operands(a: Value, b: Value) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both operands in one layout: an NCHW image with a per-channel vector (or NHWC tensor) as NCHW."""
    if a.nchw == b.nchw:
        return a.t, b.t, a.nchw

    def as_nchw(v: Value) -> torch.Tensor:
        if v.nchw:
            return v.t
        t = v.t
        if t.ndim == 4:
            return t.permute(0, 3, 1, 2)
        # Broadcasting from the right: TF's last axis is channels, which sit third from the right in NCHW.
        return t.reshape(*t.shape[:-1], t.shape[-1], 1, 1) if t.ndim >= 1 and t.numel() > 1 else t

    return as_nchw(a), as_nchw(b), True


class TFJSGraph(nn.Module):
    """A TF.js graph model as a module: `forward(*inputs)` takes the inputs (NHWC images) in the graph's order and
    returns the requested output (or a tuple of them), in TensorFlow's layout."""

    def __init__(self, nodes: list[dict[str, Any]], weights: dict[str, np.ndarray],
                 outputs: list[str] | None = None, source: str = "graph"):
        super().__init__()
        self.source = source
        by_name = {n["name"]: n for n in nodes}
        unsupported = sorted({n["op"] for n in nodes if n["op"] not in SUPPORTED_OPS})
        if unsupported:
            where = next(n["name"] for n in nodes if n["op"] == unsupported[0])
            raise FerkitError(f"{source}: op {unsupported[0]!r} (node {where!r}) is not supported"
                              + (f"; nor {', '.join(unsupported[1:])}" if len(unsupported) > 1 else ""))
        self.inputs = [n["name"] for n in nodes if n["op"] == "Placeholder"]
        consumers: dict[str, int] = {}
        for n in nodes:
            for i in n.get("input", []):
                consumers[_ref(i)] = consumers.get(_ref(i), 0) + 1
        self.outputs = outputs or [n["name"] for n in nodes if n["op"] != "Const" and n["name"] not in consumers]
        for o in self.outputs:
            if _ref(o) not in by_name:
                raise FerkitError(f"{source}: no node named {o!r} to return")
        # Run only what the outputs need, in dependency order.
        self.order = _topological(by_name, [_ref(o) for o in self.outputs], source)
        kernels = {_ref(by_name[n]["input"][1]) for n in self.order if by_name[n]["op"] in _CONV}
        self.params = nn.ParameterDict()
        self.keys: dict[str, str] = {}
        self.consts: dict[str, torch.Tensor] = {}
        for name in self.order:
            node = by_name[name]
            if node["op"] != "Const":
                continue
            if name not in weights:
                raise FerkitError(f"{source}: constant {name!r} has no weights in the manifest")
            arr = weights[name]
            if name in kernels:  # HWIO (or H W C M for depthwise): stored once as PyTorch's OIHW
                if arr.ndim != 4:
                    raise FerkitError(f"{source}: kernel {name!r} has shape {arr.shape}, not 4-D")
                arr = arr.transpose(3, 2, 0, 1)
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if t.dtype.is_floating_point and t.numel() > 1:
                key = f"p{len(self.params)}"
                self.keys[name] = key
                self.params[key] = nn.Parameter(t)
            else:
                self.consts[name] = t
        self.nodes = {n: by_name[n] for n in self.order}
        self.kernels = kernels

    def const(self, name: str) -> torch.Tensor:
        return self.params[self.keys[name]] if name in self.keys else self.consts[name]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.source}: takes {len(self.inputs)} inputs, got {len(inputs)}")
        env: dict[str, Value] = {}
        for name, x in zip(self.inputs, inputs, strict=True):
            env[name] = Value(x.float().permute(0, 3, 1, 2), True) if x.ndim == 4 else Value(x.float())
        for name in self.order:
            if name in env:
                continue
            node = self.nodes[name]
            if node["op"] == "Const":
                env[name] = Value(self.const(name))
                continue
            args = [env[_ref(i)] for i in node.get("input", []) if not i.startswith("^")]
            env[name] = self._run(node, args)
        outs = tuple(env[_ref(o)].tf() for o in self.outputs)
        return outs[0] if len(outs) == 1 else outs

    def _run(self, node: dict[str, Any], args: list[Value]) -> Value:
        op = node["op"]
        if op in _UNARY:
            return Value(_UNARY[op](args[0].t), args[0].nchw)
        if op in _BINARY:
            a, b, nchw = _binary_operands(args[0], args[1])
            return Value(_BINARY[op](a, b), nchw)
        if op in _CONV:
            return self._conv(node, args)
        if op in ("MatMul", "_FusedMatMul"):
            a, b = args[0].tf(), args[1].tf()
            a = a.t() if _attr(node, "transpose_a", False) else a
            b = b.t() if _attr(node, "transpose_b", False) else b
            y = a @ b
            return Value(_fused(y, node, args[2:], False) if op == "_FusedMatMul" else y)
        if op == "Softmax":
            return Value(torch.softmax(args[0].tf(), -1))
        if op in _REDUCE:
            axes = [int(a) for a in np.atleast_1d(args[1].t.numpy())]
            x = args[0]
            rank = x.t.ndim
            axes = [a % rank for a in axes]
            keep = bool(_attr(node, "keep_dims", False))
            if x.nchw:
                dims = [_AXIS[a] for a in axes]
                y = _REDUCE[op](x.t, dim=dims, keepdim=keep)
                return Value(y, keep)
            return Value(_REDUCE[op](x.t, dim=axes, keepdim=keep))
        if op == "Reshape":
            shape = [int(s) for s in args[1].t.numpy().ravel()]
            return Value(args[0].tf().reshape(shape))
        if op == "Squeeze":
            dims = _attr(node, "squeeze_dims", [])
            x = args[0].tf()
            return Value(x.squeeze(dims) if dims else x.squeeze())
        if op == "ConcatV2":
            axis = int(args[-1].t)
            parts = args[:-1]
            if all(p.nchw for p in parts):
                return Value(torch.cat([p.t for p in parts], _AXIS[axis % 4]), True)
            return Value(torch.cat([p.tf() for p in parts], axis))
        if op == "Pad":
            p = args[1].t.numpy().astype(int)
            x = args[0]
            if x.nchw:
                return Value(F.pad(x.t, (p[2, 0], p[2, 1], p[1, 0], p[1, 1], p[3, 0], p[3, 1])), True)
            flat = [int(v) for row in p[::-1] for v in row]
            return Value(F.pad(x.t, flat))
        if op in ("MaxPool", "AvgPool"):
            k = _attr(node, "ksize", [1, 1, 1, 1])[1:3]
            s = _attr(node, "strides", [1, 1, 1, 1])[1:3]
            x = args[0].torch4d()
            if op == "MaxPool":
                x = _padded(x, node, k, s, (1, 1)) if _attr(node, "padding") != "SAME" else F.pad(
                    x, _flat_pads(x, k, s), value=float("-inf"))
                return Value(F.max_pool2d(x, k, s), True)
            if _attr(node, "padding") == "SAME":  # TF averages over the pixels inside the image only
                pads = _flat_pads(x, k, s)
                ones = F.pad(torch.ones_like(x[:1, :1]), pads)
                return Value(F.avg_pool2d(F.pad(x, pads), k, s) / F.avg_pool2d(ones, k, s), True)
            return Value(F.avg_pool2d(x, k, s), True)
        if op == "Prelu":
            a, alpha, nchw = _binary_operands(args[0], args[1])
            return Value(torch.where(a >= 0, a, a * alpha), nchw)
        if op == "LeakyRelu":
            return Value(F.leaky_relu(args[0].t, _attr(node, "alpha", 0.2)), args[0].nchw)
        if op == "Cast":
            return Value(args[0].t.float(), args[0].nchw)
        raise FerkitError(f"{self.source}: op {op!r} (node {node['name']!r}) is not supported")

    def _conv(self, node: dict[str, Any], args: list[Value]) -> Value:
        if _attr(node, "data_format", "NHWC") != "NHWC":
            raise FerkitError(f"{self.source}: node {node['name']!r}: only NHWC convolutions are supported")
        x = args[0].torch4d()
        w = args[1].t
        s = tuple(_attr(node, "strides", [1, 1, 1, 1])[1:3])
        d = tuple(_attr(node, "dilations", [1, 1, 1, 1])[1:3])
        x = _padded(x, node, (int(w.shape[2]), int(w.shape[3])), s, d)
        if "Depthwise" in node["op"]:
            # Stored as (M, C, H, W) from TF's (H, W, C, M): PyTorch's grouped kernel is (C*M, 1, H, W), C-major.
            m, c = int(w.shape[0]), int(w.shape[1])
            y = F.conv2d(x, w.permute(1, 0, 2, 3).reshape(c * m, 1, *w.shape[2:]), stride=s, dilation=d, groups=c)
        else:
            y = F.conv2d(x, w, stride=s, dilation=d)
        if node["op"].startswith(("_Fused", "Fused")):
            y = _fused(y, node, args[2:], True)
        return Value(y, True)


def _flat_pads(x: torch.Tensor, k: Any, s: Any) -> tuple[int, int, int, int]:
    (t, b), (lft, r) = (_pads_same(int(x.shape[2 + i]), k[i], s[i], 1) for i in range(2))
    return lft, r, t, b


def _ref(name: str) -> str:
    """'node:0' -> 'node' (a node's first output; the graphs read here have one output per node)."""
    name = name.lstrip("^")
    head, _, tail = name.rpartition(":")
    return head if head and tail.isdigit() else name


def _topological(by_name: dict[str, dict[str, Any]], targets: list[str], source: str) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}
    for target in targets:
        stack = [(target, False)]
        while stack:  # iterative: a deep graph must not hit Python's recursion limit
            name, done = stack.pop()
            if done:
                state[name] = 2
                order.append(name)
                continue
            if state.get(name) == 2:
                continue
            if state.get(name) == 1:
                raise FerkitError(f"{source}: the graph has a cycle through {name!r}")
            if name not in by_name:
                raise FerkitError(f"{source}: node input {name!r} is not a node of the graph")
            state[name] = 1
            stack.append((name, True))
            for i in by_name[name].get("input", []):
                if not i.startswith("^") and state.get(_ref(i)) != 2:
                    stack.append((_ref(i), False))
    return order


def read_graph(model_json: str | Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, Any]]:
    """The nodes, the weights by name and the model.json of a TF.js graph model; every fault one FerkitError."""
    path = Path(model_json)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise FerkitError(f"{path}: {size:,} bytes; a model.json is at most {MAX_JSON_BYTES:,}")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FerkitError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FerkitError(f"{path}: not a TF.js model.json ({str(e)[:120]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("modelTopology"), dict):
        raise FerkitError(f"{path}: not a TF.js graph model (no modelTopology)")
    if doc.get("format") not in (None, "graph-model"):
        raise FerkitError(f"{path}: format {doc.get('format')!r}; only graph models are read (not layers models)")
    nodes = doc["modelTopology"].get("node")
    if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_NODES:
        raise FerkitError(f"{path}: modelTopology.node must be a list of 1 to {MAX_NODES:,} nodes")
    for n in nodes:
        if not (isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("op"), str)
                and all(isinstance(i, str) for i in n.get("input", []))):
            raise FerkitError(f"{path}: a node without a name and op, or with inputs that are not names")
    return nodes, _read_weights(path, doc.get("weightsManifest", [])), doc


def _read_weights(path: Path, manifest: Any) -> dict[str, np.ndarray]:
    if not isinstance(manifest, list):
        raise FerkitError(f"{path}: weightsManifest must be a list")
    out: dict[str, np.ndarray] = {}
    total = 0
    for group in manifest:
        paths, specs = group.get("paths", []), group.get("weights", [])
        shards = []
        for p in paths:
            shard = (path.parent / p).resolve()
            if path.parent.resolve() not in shard.parents:
                raise FerkitError(f"{path}: weight shard {p!r} lies outside the model's folder")
            if not shard.is_file():
                raise FerkitError(f"{path}: weight shard {p!r} is missing")
            shards.append(shard)
        sizes = []
        for w in specs:
            shape, q = w.get("shape", []), w.get("quantization")
            if not (isinstance(shape, list) and all(isinstance(s, int) and 0 <= s < 2**31 for s in shape)):
                raise FerkitError(f"{path}: weight {w.get('name')!r}: bad shape {shape!r}"[:200])
            dtype = (q or {}).get("dtype") or w.get("dtype")
            np_dtype = _QUANT.get(dtype) if q else _DTYPES.get(dtype)
            if np_dtype is None:
                raise FerkitError(f"{path}: weight {w.get('name')!r}: dtype {dtype!r} is not supported")
            n = math.prod(shape)
            sizes.append(n * np.dtype(np_dtype).itemsize)
            total += n * 4
            if total > MAX_WEIGHT_BYTES:
                raise FerkitError(f"{path}: weights of more than {MAX_WEIGHT_BYTES:,} bytes")
        have = sum(s.stat().st_size for s in shards)
        if have < sum(sizes):
            raise FerkitError(f"{path}: the shards hold {have:,} bytes; the manifest declares {sum(sizes):,}")
        buf = b"".join(s.read_bytes() for s in shards)
        offset = 0
        for w, nbytes in zip(specs, sizes, strict=True):
            q = w.get("quantization")
            raw = buf[offset:offset + nbytes]
            offset += nbytes
            shape = w.get("shape", [])
            if q:
                arr = np.frombuffer(raw, _QUANT[q["dtype"]])
                if q["dtype"] == "float16":
                    arr = arr.astype(np.float32)
                else:  # affine: min + q * scale
                    arr = (arr.astype(np.float32) * float(q.get("scale", 1.0)) + float(q.get("min", 0.0)))
                    if w.get("dtype") == "int32":
                        arr = np.round(arr).astype(np.int32)
            else:
                arr = np.frombuffer(raw, _DTYPES[w["dtype"]]).copy()
            out[w["name"]] = arr.reshape(shape)
    return out


def load_graph(model_json: str | Path, outputs: list[str] | None = None) -> TFJSGraph:
    """A TF.js graph model as a `TFJSGraph` module; outputs: the node names to return (default: the sinks)."""
    nodes, weights, _ = read_graph(model_json)
    return TFJSGraph(nodes, weights, outputs, source=str(model_json))
