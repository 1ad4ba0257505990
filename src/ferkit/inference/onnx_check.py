"""An ONNX file a user passes is hostile input too: what ferkit checks before it runs one (issue 32).

ONNX Runtime runs whatever a graph says: a Loop of 2^63 turns, a ConstantOfShape of 10^10 zeros, an Expand whose
target shape is read from the pixels. So a model that is not ferkit's own (a built-in asset of the package) goes
through, in this order, before anything runs in this process:

1. the file: a regular file of at most MAX_MODEL_BYTES, read here as protobuf (no `onnx` package needed) to at most
   MAX_NODES nodes and MAX_FIELDS fields, before ONNX Runtime parses it;
2. the graph (`check_operators`): standard ONNX operators only (no custom domains or model-local functions), no
   control flow or sequences (Loop, Scan, If, any operator holding a subgraph), weights inside the file (no external
   data, no sparse tensors), and no operator whose output size depends on the pixels: the size inputs of
   ConstantOfShape, Expand, Tile, Range, Resize, Pad, Reshape, Slice, ... must be computed from constants and tensor
   shapes only, and NonZero, Compress, Unique, ... are refused. Then every tensor's shape, so the memory and time of
   a run, depends on the input's shape alone, and the probe below measures them;
3. its first run (`first_run`): loading it and running it once on a blank 1 x 1 x crop x crop face happen in a child
   process limited to PROBE_MEMORY bytes of address space (Linux) and PROBE_SECONDS seconds; only a model that
   passes is loaded here. The report (declared inputs and outputs, the probe's output) is checked by
   ferkit.inference.onnx_classifier against the metadata: output N x classes, finite probabilities summing to one.

Each refusal is one FerkitError line naming the file. ferkit's own exports (every registry network, ensembles, the
MobileNet `faceres` with its Resize and TensorFlow-style Pad) pass: their computed sizes come from constants and
Shape nodes (tests/test_hostile_models.py exports them).
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ferkit.errors import FerkitError
from ferkit.inference import _first_run

MAX_MODEL_BYTES = 256 << 20  # ferkit's largest model, the `accurate` ensemble, is 25 MB
MAX_NODES = 100_000  # the `faceres` MobileNet has about 600; a graph of millions is slow to even load
MAX_FIELDS = 2_000_000  # protobuf fields read while scanning (weights are skipped whole when packed, as writers do)
PROBE_MEMORY = 512 << 20  # address space the first run may add to a bare Python with ONNX Runtime (about 150 MB)
PROBE_SECONDS = 30.0  # loading the model and one blank face, in a fresh process (about 1 s for ferkit's models)

# Operators whose output shape is read from a tensor's *value*, and which inputs those are. Fine when the values
# come from constants and shapes (ferkit's exports compute Pad's pads, Resize's sizes and Reshape's shapes so),
# refused when they depend on the pixels: then every tensor's shape follows from the input's shape alone, which is
# what makes a Shape node's output a constant of the run here, and the probe's run on a blank face representative.
SHAPE_INPUTS = {
    "ConstantOfShape": (0,), "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "Resize": (1, 2, 3),
    "Upsample": (1,), "Pad": (1, 3), "OneHot": (1,), "MaxUnpool": (2,), "CenterCropPad": (1,), "Col2Im": (1, 2),
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "TopK": (1,),
    "DFT": (1, 2), "STFT": (1, 3), "MelWeightMatrix": (0, 1, 2, 3, 4), "HannWindow": (0,), "HammingWindow": (0,),
    "BlackmanWindow": (0,), "AffineGrid": (1,),
    **{f"Reduce{r}": (1,) for r in ("Mean", "Sum", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp",
                                    "SumSquare")},
}
# Operators whose output size is the number of values that pass a test: it depends on the pixels whatever feeds them.
DATA_SHAPED = {"NonZero", "Compress", "Unique", "NonMaxSuppression", "StringSplit", "ImageDecoder"}
# Control flow and sequences: a classifier needs none of them, and they are how a graph loops or grows.
REFUSED = {"Loop", "Scan", "If", "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalGetElement",
           "OptionalHasElement"}
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class Node:
    op: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    subgraph: bool = False  # an attribute holds a graph (Loop, Scan, If, or a custom op)
    sparse: bool = False
    external: bool = False


@dataclass
class Facts:
    """What a scan of the file found, before ONNX Runtime reads it."""

    metadata: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    external: bool = False  # a weight stored in another file
    sparse: bool = False
    functions: int = 0  # model-local functions
    has_graph: bool = False


class _Damaged(Exception):
    pass


class _Reader:
    """Protobuf wire format over the mapped file: only the few fields ferkit needs are decoded."""

    def __init__(self, buf: mmap.mmap | bytes):
        self.buf, self.fields = buf, 0

    def varint(self, i: int, end: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if i >= end or shift > 63:
                raise _Damaged("a truncated or overlong number")
            b = self.buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value, i
            shift += 7

    def fields_of(self, start: int, end: int):
        """(field number, wire type, value): value an int, or (start, end) of a length-delimited field."""
        i = start
        while i < end:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise FerkitError(f"more than {MAX_FIELDS:,} protobuf fields")
            key, i = self.varint(i, end)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = self.varint(i, end)
            elif wire == 1:
                value, i = 0, i + 8
            elif wire == 5:
                value, i = 0, i + 4
            elif wire == 2:
                n, i = self.varint(i, end)
                value, i = (i, i + n), i + n
            else:
                raise _Damaged(f"wire type {wire}")
            if i > end or number == 0:
                raise _Damaged("a field runs past its message")
            yield number, wire, value

    def text(self, span: tuple[int, int], limit: int = 1 << 20) -> str:
        a, b = span
        return bytes(self.buf[a : min(b, a + limit)]).decode("utf-8", "replace")


def read_model(path: Path) -> Facts:
    """Scan an ONNX file's protobuf: metadata, top-level nodes, initializer names, what would load other files or
    hide operators. FerkitError for a file that is not one, is too large or too complex."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise FerkitError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FerkitError(f"{path}: no such model file")
    if st.st_size > MAX_MODEL_BYTES:
        raise FerkitError(f"{path}: {st.st_size:,} bytes, over the limit of {MAX_MODEL_BYTES:,} for a model file")
    if st.st_size == 0:
        raise FerkitError(f"{path}: not an ONNX model (empty file)")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _scan(_Reader(buf), st.st_size)
    except _Damaged as e:
        raise FerkitError(f"{path}: not an ONNX model (damaged protobuf: {e})") from None
    except FerkitError as e:
        raise FerkitError(f"{path}: not a model ferkit runs ({e})") from None
    except OSError as e:
        raise FerkitError(f"{path}: cannot read ({e.strerror or e})") from None


def _scan(r: _Reader, size: int) -> Facts:
    facts = Facts()
    for number, wire, value in r.fields_of(0, size):
        if wire != 2:
            continue
        if number == 14:  # metadata_props
            entry = {k: r.text(v) for k, w, v in r.fields_of(*value) if w == 2 and k in (1, 2)}
            facts.metadata[entry.get(1, "")] = entry.get(2, "")
        elif number == 7:  # graph
            facts.has_graph = True
            _graph(r, value, facts)
        elif number == 25:  # functions
            facts.functions += 1
    if not facts.has_graph:
        raise _Damaged("no graph")
    return facts


def _graph(r: _Reader, span: tuple[int, int], facts: Facts) -> None:
    for number, wire, value in r.fields_of(*span):
        if wire != 2:
            continue
        if number == 1:
            if len(facts.nodes) >= MAX_NODES:
                raise FerkitError(f"more than {MAX_NODES:,} nodes")
            facts.nodes.append(_node(r, value))
        elif number == 5:
            name, external = _tensor(r, value)
            facts.initializers.add(name)
            facts.external |= external
        elif number == 15:  # sparse_initializer
            facts.sparse = True


def _tensor(r: _Reader, span: tuple[int, int]) -> tuple[str, bool]:
    name, external = "", False
    for number, _wire, value in r.fields_of(*span):
        if number == 8:
            name = r.text(value)
        elif number in (13, 14) and value:  # external_data, data_location = EXTERNAL
            external = True
    return name, external


def _node(r: _Reader, span: tuple[int, int]) -> Node:
    node = Node("", "", "", [], [])
    for number, wire, value in r.fields_of(*span):
        if wire != 2:
            continue
        if number == 1:
            node.inputs.append(r.text(value))
        elif number == 2:
            node.outputs.append(r.text(value))
        elif number == 3:
            node.name = r.text(value, 200)
        elif number == 4:
            node.op = r.text(value, 200)
        elif number == 7:
            node.domain = r.text(value, 200)
        elif number == 5:  # attribute: g/graphs hold subgraphs, t/tensors may point at other files
            for k, w, v in r.fields_of(*value):
                if k in (6, 11):
                    node.subgraph = True
                elif k in (22, 23):
                    node.sparse = True
                elif k in (5, 10) and w == 2:
                    node.external |= _tensor(r, v)[1]
    return node


def check_operators(path: Path, facts: Facts) -> None:
    """The graph rules of the module docstring, for a model that is not ferkit's own."""
    where = f"{path}: a model from outside ferkit's package must"
    if facts.functions:
        raise FerkitError(f"{where} not define model-local functions (this one defines {facts.functions})")
    if facts.external or any(n.external for n in facts.nodes):
        raise FerkitError(f"{where} keep its weights inside the file (this one reads external data)")
    if facts.sparse or any(n.sparse for n in facts.nodes):
        raise FerkitError(f"{where} not hold sparse tensors")
    # Tensors whose values follow from constants and tensor shapes alone, never from the pixels.
    static = set(facts.initializers)
    for n in facts.nodes:
        label = f"operator {n.op[:40]!r}" + (f" (node {n.name[:60]!r})" if n.name else "")
        if n.domain not in STANDARD_DOMAINS:
            raise FerkitError(f"{where} use standard ONNX operators; {label} is from domain {n.domain[:40]!r}")
        if n.subgraph or n.op in REFUSED or n.op.startswith("Sequence"):
            raise FerkitError(f"{where} not loop or branch (Loop, Scan, If, sequences); it has {label}")
        if n.op in DATA_SHAPED:
            raise FerkitError(f"{where} take its sizes from constants and shapes; {label} gives as many values as "
                              "pass a test on the input's values")
        for i in SHAPE_INPUTS.get(n.op, ()):
            if i < len(n.inputs) and n.inputs[i] and n.inputs[i] not in static:
                raise FerkitError(f"{where} take its sizes from constants and shapes; {label} takes its output size "
                                  f"from {n.inputs[i][:60]!r}, which depends on the input's values")
        if n.op in ("Constant", "Shape", "Size") or all(i in static for i in n.inputs if i):
            static.update(n.outputs)


def first_run(path: Path, crop: int) -> dict:
    """Load `path` and run it once on a blank 1 x 1 x crop x crop face in a child process bounded by PROBE_MEMORY
    and PROBE_SECONDS; its report (ferkit.inference._first_run.describe). FerkitError when it takes more."""
    cmd = [sys.executable, "-P", "-c", "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')",
           _first_run_script(), str(path), str(crop), str(PROBE_MEMORY)]
    # One thread: the bound is the model's, not the thread pools' stacks and arenas.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    budget = f"{PROBE_MEMORY >> 20} MB and {PROBE_SECONDS:g} s"
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=env, timeout=PROBE_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise FerkitError(f"{path}: loading it and classifying one blank face took more than {PROBE_SECONDS:g} s; "
                          "refused") from None
    except OSError as e:
        raise FerkitError(f"{path}: cannot check the model in a separate process ({e.strerror or e})") from None
    try:
        report = json.loads(done.stdout[: 1 << 20])
        if not isinstance(report, dict):
            raise ValueError
    except ValueError:
        report = None
    if done.returncode != 0 or report is None:
        how = (f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0
               and -done.returncode in signal.Signals._value2member_map_ else f"exit {done.returncode}")
        raise FerkitError(f"{path}: loading it and classifying one blank face within {budget} failed ({how}); "
                          "refused")
    for key in ("load_error", "error"):
        if _out_of_memory(report.get(key)):
            raise FerkitError(f"{path}: loading it and classifying one blank face needs more than "
                              f"{PROBE_MEMORY >> 20} MB; refused")
    return report


def _first_run_script() -> str:
    return _first_run.__file__


def _out_of_memory(message: object) -> bool:
    text = str(message or "").lower()
    return any(s in text for s in ("bad_alloc", "bad allocation", "failed to allocate", "memoryerror",
                                   "out of memory", "cannot allocate"))

